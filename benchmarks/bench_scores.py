"""Scores: base agent vs MPCwDWM vs action-sequence gradient vs MPPI on collected datasets.

For every dataset folder given (Minari folders made by ``mpcdwm collect``), runs the
whole pipeline (``mpcdwm.pipeline.run``: base agent, world model, evaluation of every
planner in the real env) into ``OUT/<dataset name>/seed<k>``, then gathers all runs
with ``mpcdwm report`` and prints its tables of normalized scores and of each planner's
paired gain over the base agent (same episodes), with bootstrap 95% CIs and n = seeds x
episodes (:mod:`mpcdwm.report` computes both). Runs resume: re-running the command skips
finished stages, so budgets can be raised step by step.

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

from mpcdwm.mpc import MPCConfig
from mpcdwm.pipeline import AgentStage, EvalStage, RunConfig, WorldModelStage, run
from mpcdwm.report import (
    ReportConfig,
    build_tables,
    load_results,
    report,
    summarize,
    to_markdown,
)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("datasets", nargs="+", help="dataset folders or Minari ids")
    p.add_argument("--out", type=Path, default=Path("runs/scores"))
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--agent", default="rebrac", choices=["rebrac", "iql", "td3bc"])
    p.add_argument("--agent-steps", type=int, default=30_000)
    p.add_argument("--agent-batch-size", type=int, default=256)
    p.add_argument(
        "--world-model", default="diffusion", choices=["diffusion", "flow", "meanflow", "mlp"]
    )
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
                    agent=AgentStage(
                        kind=args.agent, steps=args.agent_steps, batch_size=args.agent_batch_size
                    ),
                    world_model=WorldModelStage(
                        kind=args.world_model, steps=args.world_model_steps
                    ),
                    eval=EvalStage(planners=tuple(args.planners), episodes=args.episodes),
                    mpc=mpc,
                    progress=args.progress,
                )
            )
            # Only the run's own evaluation: other eval.json files may sit below the run
            # (e.g. benchmarks/bench_planner_options.py writes RUN/planner_options/*).
            eval_files.append(out / "eval" / "eval.json")
    report_md = report(ReportConfig(runs=tuple(eval_files), out=args.out / "report"))
    # The same statistics as the report (one implementation): scores and paired gains with
    # bootstrap CIs and n = seeds x episodes.
    tables = build_tables(summarize([r for f in eval_files for r in load_results(f)]))
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
    for table in tables:
        if table.kind in ("score", "gain"):
            print(to_markdown(table))
    print(f"\nfull report: {report_md}")


if __name__ == "__main__":
    main()
