"""Scores: base agent vs MPCwDWM vs action-sequence gradient vs MPPI on collected datasets.

For every dataset folder given (Minari folders made by ``mpcdwm collect``), runs the
whole pipeline (``mpcdwm.pipeline.run``: base agent, world model, evaluation of every
planner in the real env) into ``OUT/<dataset name>/seed<k>``, then gathers all runs
with ``mpcdwm report`` and prints a table of normalized scores with each planner's
gain over the base agent. Runs resume: re-running the command skips finished stages,
so budgets can be raised step by step.

    mpcdwm collect --env Hopper-v5 --recipe medium --steps 50000 --train-steps 60000 \
        --out data/hopper-medium-v0          # likewise HalfCheetah-v5, Walker2d-v5
    python benchmarks/bench_scores.py data/hopper-medium-v0 data/halfcheetah-medium-v0 \
        data/walker2d-medium-v0 --out runs/scores --seeds 0 1
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from mpcdwm.mpc import MPCConfig
from mpcdwm.pipeline import RunConfig, run
from mpcdwm.report import ReportConfig, load_rows, report


def gains_table(rows) -> str:
    """Markdown: per dataset, mean score of each method and its gain over the base agent
    (paired by seed: the same agent, world model and episode seeds)."""
    by = {}
    for r in rows:
        by.setdefault((r.dataset, r.method), {})[r.seed] = float(np.mean(r.scores))
    datasets = sorted({d for d, _ in by})
    methods = sorted({m for _, m in by}, key=lambda m: (m != "none", m))
    lines = [
        "| dataset | " + " | ".join(methods) + " |",
        "|---" * (len(methods) + 1) + "|",
    ]
    gains = {m: [] for m in methods}
    for d in datasets:
        base = by.get((d, "none"), {})
        cells = []
        for m in methods:
            per_seed = by.get((d, m), {})
            if not per_seed:
                cells.append("-")
                continue
            mean = np.mean(list(per_seed.values()))
            paired = [per_seed[s] - base[s] for s in per_seed if s in base]
            cell = f"{mean:.1f}"
            if m != "none" and paired:
                cell += f" ({np.mean(paired):+.1f})"
                gains[m].append(float(np.mean(paired)))
            cells.append(cell)
        lines.append(f"| {d} | " + " | ".join(cells) + " |")
    avg = [
        f"{np.mean(gains[m]):+.1f}" if m != "none" and len(gains[m]) == len(datasets) else "-"
        for m in methods
    ]
    lines.append("| mean gain over base | " + " | ".join(avg) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("datasets", nargs="+", help="dataset folders or Minari ids")
    p.add_argument("--out", type=Path, default=Path("runs/scores"))
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--agent", default="rebrac", choices=["rebrac", "iql", "td3bc"])
    p.add_argument("--agent-steps", type=int, default=30_000)
    p.add_argument("--agent-batch-size", type=int, default=256)
    p.add_argument("--world-model", default="diffusion", choices=["diffusion", "flow", "mlp"])
    p.add_argument("--world-model-steps", type=int, default=20_000)
    p.add_argument("--episodes", type=int, default=5)
    p.add_argument(
        "--planners",
        nargs="+",
        default=["none", "mpc", "action-grad", "mppi"],
        choices=["none", "mpc", "action-grad", "mppi"],
    )
    p.add_argument("--mppi-iterations", type=int, default=MPCConfig.mppi_iterations)
    p.add_argument("--mppi-samples", type=int, default=MPCConfig.mppi_samples)
    p.add_argument("--trust-region", type=float, default=MPCConfig.trust_region)
    p.add_argument("--lr", type=float, default=MPCConfig.lr)
    p.add_argument("--progress", action="store_true")
    args = p.parse_args()

    mpc = dataclasses.replace(
        MPCConfig(),
        mppi_iterations=args.mppi_iterations,
        mppi_samples=args.mppi_samples,
        trust_region=args.trust_region,
        lr=args.lr,
    )
    t0 = time.perf_counter()
    eval_files: list[Path] = []
    for dataset in args.datasets:
        for seed in args.seeds:
            out = args.out / Path(dataset).name / f"seed{seed}"
            run(
                RunConfig(
                    dataset=dataset,
                    out=out,
                    seed=seed,
                    agent=args.agent,
                    agent_steps=args.agent_steps,
                    agent_batch_size=args.agent_batch_size,
                    world_model=args.world_model,
                    world_model_steps=args.world_model_steps,
                    planners=tuple(args.planners),
                    episodes=args.episodes,
                    mpc=mpc,
                    progress=args.progress,
                )
            )
            # Only the run's own evaluation: other eval.json files may sit below the run
            # (e.g. benchmarks/bench_planner_options.py writes RUN/planner_options/*).
            eval_files.append(out / "eval" / "eval.json")
    report_md = report(ReportConfig(runs=tuple(eval_files), out=args.out / "report"))
    rows = [r for f in eval_files for r in load_rows(f)]
    mpc_cfg = json.dumps(dataclasses.asdict(mpc))
    print(f"# bench_scores  ({datetime.now(UTC):%Y-%m-%d %H:%M} UTC)")
    wall = time.perf_counter() - t0
    print(f"machine: {platform.machine()} {platform.processor() or 'cpu'}; wall {wall:.0f} s")
    print(
        f"budgets: {args.agent} {args.agent_steps} steps batch {args.agent_batch_size}; "
        f"{args.world_model} world model {args.world_model_steps} steps; {args.episodes} "
        f"episodes x seeds {args.seeds}"
    )
    print(f"planner config: {mpc_cfg}\n")
    print("Normalized score, mean over seeds (gain over the base agent, paired by seed):\n")
    print(gains_table(rows))
    print(f"\nfull report: {report_md}")


if __name__ == "__main__":
    main()
