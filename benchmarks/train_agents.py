"""Base agents on the made datasets: learning curves and final scores with CIs.

For every dataset folder x agent x seed, trains the agent with ``mpcdwm train-agent``
(published presets; evaluation in the real env every ``--eval-every`` updates, 10 episodes),
then evaluates the final policy (``mpcdwm evaluate --planner none``, ``--episodes`` episodes,
episode seeds shared by every agent and seed). Runs resume from their checkpoints, and a
finished run is skipped, so the command can be re-run with more seeds or a larger budget.

Into ``--results`` (default ``benchmarks/results/agents_d4rl``) it copies each run's
``metrics.jsonl`` and ``eval.json`` (never checkpoints), draws ``curves.png`` (normalized
score vs updates, mean over seeds), writes ``convergence.md`` (is each curve still rising at
the end of its budget? see :func:`convergence_table`) and ``report/`` (``mpcdwm report``: final
scores, bootstrap 95% CIs over seeds x episodes).

    python benchmarks/make_datasets.py
    python benchmarks/train_agents.py data/hopper-medium-v0 data/halfcheetah-medium-v0 \\
        data/walker2d-medium-v0 --agents rebrac iql td3bc --seeds 0 1 2 --steps 100000
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np

from mpcdwm.agents import TrainAgentConfig, train_agent
from mpcdwm.checkpoint import CheckpointError, load_checkpoint
from mpcdwm.evaluate import EvaluateConfig, evaluate
from mpcdwm.pipeline import evaluation_is_current
from mpcdwm.report import ReportConfig, bootstrap_ci, report

RESULTS = Path(__file__).resolve().parent / "results" / "agents_d4rl"


def finished(run: Path, steps: int) -> bool:
    try:
        _, meta = load_checkpoint(run / "checkpoint.ckpt")
    except CheckpointError:
        return False
    return bool(meta.get("done")) and int(meta.get("step", 0)) >= steps


def curve(metrics: Path) -> tuple[np.ndarray, np.ndarray]:
    """(updates, normalized score) of the evaluation lines of one metrics.jsonl."""
    steps, scores = [], []
    for line in metrics.read_text().splitlines():
        row = json.loads(line) if line.strip() else {}
        if "eval_score" in row:
            steps.append(row["step"])
            scores.append(row["eval_score"])
    return np.asarray(steps), np.asarray(scores)


def seed_curves(agent_dir: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """:func:`curve` of every ``seed*/metrics.jsonl`` under one dataset x agent folder that
    has evaluations, in seed-folder order."""
    runs = [curve(m) for m in sorted(agent_dir.glob("seed*/metrics.jsonl"))]
    return [r for r in runs if len(r[0])]


def plot_curves(results: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = sorted(p.name for p in results.iterdir() if p.is_dir() and p.name != "report")
    fig, axes = plt.subplots(1, len(datasets), figsize=(4.5 * len(datasets), 3.6), squeeze=False)
    for ax, name in zip(axes[0], datasets, strict=True):
        for agent_dir in sorted((results / name).iterdir()):
            runs = seed_curves(agent_dir)
            if not runs:
                continue
            n = min(len(s) for s, _ in runs)
            x = runs[0][0][:n]
            y = np.stack([sc[:n] for _, sc in runs])
            ax.plot(x, y.mean(0), label=f"{agent_dir.name} ({len(runs)} seeds)")
            if len(runs) > 1:
                ax.fill_between(x, y.min(0), y.max(0), alpha=0.2)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("updates")
        ax.set_ylabel("normalized score (10 episodes)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = results / "curves.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _difference_of_means(late: np.ndarray, middle: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(late, axis=axis) - np.mean(middle, axis=axis)


def late_change(runs: list[tuple[np.ndarray, np.ndarray]]) -> tuple[float, float, float, int]:
    """Mean evaluation score in the last third of the updates minus the middle third.

    ``runs``: one (updates, score) curve per seed, over the same budget. Evaluations pooled over
    seeds within each third; the CI resamples evaluations within each third (a stratified
    bootstrap). Returns (change, CI low, CI high, evaluations per third). A CI above 0 says the
    curve was still rising: its budget is not shown to converge. Evaluations are 10-episode
    means, so a flat curve still moves a few points between them; the CI carries that noise.
    """
    budget = max(int(s[-1]) for s, _ in runs)
    late = np.concatenate([sc[s > 2 * budget / 3] for s, sc in runs])
    middle = np.concatenate([sc[(s > budget / 3) & (s <= 2 * budget / 3)] for s, sc in runs])
    if late.size < 2 or middle.size < 2:
        return float("nan"), float("nan"), float("nan"), 0
    lo, hi = bootstrap_ci([late, middle], _difference_of_means)
    return float(late.mean() - middle.mean()), lo, hi, min(late.size, middle.size)


def convergence_table(results: Path) -> Path:
    """``convergence.md``: per dataset x agent, the budget, the last evaluation (mean over
    seeds), and :func:`late_change` with its verdict (rising / falling / flat)."""
    rows = [
        "| dataset | agent | seeds | updates | last evaluation | last third - middle third "
        "[95% CI] | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for dataset in sorted(p for p in results.iterdir() if p.is_dir() and p.name != "report"):
        for agent_dir in sorted(p for p in dataset.iterdir() if p.is_dir()):
            runs = seed_curves(agent_dir)
            if not runs:
                continue
            budgets = {int(s[-1]) for s, _ in runs}
            if len(budgets) > 1:  # a run still training: compare only finished budgets
                top = max(budgets)
                runs = [r for r in runs if int(r[0][-1]) == top]
            change, lo, hi, n = late_change(runs)
            if not np.isfinite(change):
                verdict = "too few evaluations"
            elif lo > 0 and hi < 2:  # noise-level rise: scores are read to ~1 point
                verdict = "rising by < 2 points"
            elif lo > 0:
                verdict = "**still rising**"
            elif hi < 0:
                verdict = "falling"
            else:
                verdict = "flat"
            last = np.mean([sc[-1] for _, sc in runs])
            rows.append(
                f"| {dataset.name} | {agent_dir.name} | {len(runs)} | {int(runs[0][0][-1]):,} | "
                f"{last:.1f} | {change:+.1f} [{lo:+.1f}, {hi:+.1f}] (n = {n} per third) | "
                f"{verdict} |"
            )
    path = results / "convergence.md"
    path.write_text(
        "# Are the base agents converged at their budget?\n\n"
        "Normalized score of the training evaluations (10 episodes each, every `--eval-every` "
        "updates), pooled over seeds: the mean over the last third of the updates minus the "
        "mean over the middle third, with a percentile-bootstrap 95% CI (evaluations resampled "
        "within each third). *Still rising* (CI above 0): the budget is not shown to converge. "
        "Written by `benchmarks/train_agents.py`.\n\n" + "\n".join(rows) + "\n"
    )
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("datasets", nargs="+", type=Path)
    p.add_argument("--agents", nargs="+", default=["rebrac", "iql", "td3bc"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--steps", type=int, default=100_000)
    p.add_argument("--batch-size", type=int, default=None, help="default: each preset's")
    p.add_argument(
        "--agent-set",
        nargs="*",
        default=[],
        metavar="FIELD=VALUE",
        help="override agent config fields, as train-agent --agent-set (e.g. actor_bc_coef=0.1)",
    )
    p.add_argument("--eval-every", type=int, default=10_000)
    p.add_argument("--episodes", type=int, default=10, help="final evaluation episodes")
    p.add_argument("--out", type=Path, default=Path("runs/agents_d4rl"))
    p.add_argument("--results", type=Path, default=RESULTS)
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args()
    missing = [str(d) for d in args.datasets if not d.exists()]
    if missing:  # before any training: not a traceback hours into a chain
        p.error(f"no dataset folder {', '.join(missing)}; make it with benchmarks/make_datasets.py")

    for seed in args.seeds:
        for agent in args.agents:
            for dataset in args.datasets:
                name = dataset.name.removesuffix("-v0")
                run = args.out / name / agent / f"seed{seed}"
                keep = args.results / name / agent / f"seed{seed}"
                t0 = time.perf_counter()
                if not finished(run, args.steps):
                    train_agent(
                        TrainAgentConfig(
                            dataset=str(dataset),
                            agent=agent,
                            steps=args.steps,
                            out=run,
                            seed=seed,
                            batch_size=args.batch_size,
                            agent_set=tuple(args.agent_set),
                            eval_every=args.eval_every,
                            eval_episodes=10,
                            progress=not args.no_progress,
                        )
                    )
                eval_json = run / "eval" / "eval.json"
                final = EvaluateConfig(
                    agent=run,
                    world_model=None,
                    planner=("none",),
                    episodes=args.episodes,
                    seed=seed,
                    out=run / "eval",
                    progress=not args.no_progress,
                )
                # Stale also when the run was trained further (its checkpoint changed).
                if not evaluation_is_current(eval_json, final):
                    evaluate(final)
                keep.mkdir(parents=True, exist_ok=True)
                shutil.copy(run / "metrics.jsonl", keep / "metrics.jsonl")
                shutil.copy(eval_json, keep / "eval.json")
                took = time.perf_counter() - t0
                print(
                    f"[train_agents] {name} {agent} seed {seed}: {took / 60:.1f} min, "
                    f"load {os.getloadavg()[0]:.1f}",
                    flush=True,
                )
    print(f"curves: {plot_curves(args.results)}")
    print(f"convergence: {convergence_table(args.results)}")
    report(ReportConfig(runs=(args.results,), out=args.results / "report"))


if __name__ == "__main__":
    main()
