"""Base agents on the made datasets: learning curves and final scores with CIs.

For every dataset folder x agent x seed, trains the agent with ``mpcdwm train-agent``
(published presets; evaluation in the real env every ``--eval-every`` updates, 10 episodes),
then evaluates the final policy (``mpcdwm evaluate --planner none``, ``--episodes`` episodes,
episode seeds shared by every agent and seed). Runs resume from their checkpoints, and a
finished run is skipped, so the command can be re-run with more seeds or a larger budget.

Into ``--results`` (default ``benchmarks/results/agents_d4rl``) it copies each run's
``metrics.jsonl`` and ``eval.json`` (never checkpoints), draws ``curves.png`` (normalized
score vs updates, mean over seeds), writes ``convergence.md`` (is each curve still rising at
the end of its budget? see :func:`convergence_table`), ``scores.md`` (final scores per
dataset x agent beside CORL's published ones, :func:`scores_table`) and ``report/``
(``mpcdwm report``: final scores, bootstrap 95% CIs over seeds x episodes).

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
from mpcdwm.report import Estimate, ReportConfig, bootstrap_ci, mean_estimate, report

RESULTS = Path(__file__).resolve().parent / "results" / "agents_d4rl"
# make_datasets.py's summaries of the first generation of data (the data column of scores.md).
DATA_SUMMARIES = RESULTS.parent / "datasets"


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


def finished_curves(agent_dir: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """:func:`seed_curves` of the seeds at the largest budget (a run still training, or one
    left at a smaller budget, is not compared with finished ones)."""
    runs = seed_curves(agent_dir)
    if runs:
        top = max(int(s[-1]) for s, _ in runs)
        runs = [r for r in runs if int(r[0][-1]) == top]
    return runs


def verdict(change: float, lo: float, hi: float) -> str:
    """Read :func:`late_change`: rising / falling / flat, or too few evaluations."""
    if not np.isfinite(change):
        return "too few evaluations"
    if lo > 0 and hi < 2:  # noise-level rise: scores are read to ~1 point
        return "rising by < 2 points"
    if lo > 0:
        return "**still rising**"
    if hi < 0:
        return "falling"
    return "flat"


def _agent_dirs(results: Path) -> list[tuple[str, Path]]:
    """(dataset name, agent folder) under a results folder, sorted."""
    return [
        (dataset.name, agent_dir)
        for dataset in sorted(p for p in results.iterdir() if p.is_dir() and p.name != "report")
        for agent_dir in sorted(p for p in dataset.iterdir() if p.is_dir())
    ]


def convergence_table(results: Path) -> Path:
    """``convergence.md``: per dataset x agent, the budget, the last evaluation (mean over
    seeds), and :func:`late_change` with its :func:`verdict`."""
    rows = [
        "| dataset | agent | seeds | updates | last evaluation | last third - middle third "
        "[95% CI] | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for dataset, agent_dir in _agent_dirs(results):
        runs = finished_curves(agent_dir)
        if not runs:
            continue
        change, lo, hi, n = late_change(runs)
        last = np.mean([sc[-1] for _, sc in runs])
        rows.append(
            f"| {dataset} | {agent_dir.name} | {len(runs)} | {int(runs[0][0][-1]):,} | "
            f"{last:.1f} | {change:+.1f} [{lo:+.1f}, {hi:+.1f}] (n = {n} per third) | "
            f"{verdict(change, lo, hi)} |"
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


# CORL's reproduced D4RL scores, for reference only: different data (D4RL's -v2 datasets, made
# by other policies) and budget (1M updates; ReBRAC at batch 1024). "Last Scores", Gym-MuJoCo
# table of the CORL README (github.com/corl-team/CORL, commit eeeeef2): mean +- std over seeds.
# CORL publishes no scores for the -expert datasets.
CORL_LAST_SCORES: dict[str, dict[str, str]] = {
    "halfcheetah-medium": {"rebrac": "64.0 ± 0.7", "iql": "48.3 ± 0.2", "td3bc": "48.1 ± 0.2"},
    "halfcheetah-medium-replay": {
        "rebrac": "51.2 ± 0.3",
        "iql": "44.5 ± 0.2",
        "td3bc": "44.8 ± 0.6",
    },
    "halfcheetah-medium-expert": {
        "rebrac": "103.8 ± 3.0",
        "iql": "94.7 ± 0.5",
        "td3bc": "90.8 ± 6.0",
    },
    "hopper-medium": {"rebrac": "102.3 ± 0.2", "iql": "67.5 ± 3.8", "td3bc": "60.4 ± 3.5"},
    "hopper-medium-replay": {"rebrac": "95.0 ± 6.5", "iql": "97.4 ± 6.4", "td3bc": "64.4 ± 21.5"},
    "hopper-medium-expert": {
        "rebrac": "109.5 ± 2.3",
        "iql": "107.4 ± 7.8",
        "td3bc": "101.2 ± 9.1",
    },
    "walker2d-medium": {"rebrac": "85.8 ± 0.8", "iql": "80.9 ± 3.2", "td3bc": "82.7 ± 4.8"},
    "walker2d-medium-replay": {
        "rebrac": "84.3 ± 2.3",
        "iql": "82.2 ± 3.0",
        "td3bc": "85.6 ± 4.0",
    },
    "walker2d-medium-expert": {
        "rebrac": "111.9 ± 0.4",
        "iql": "111.7 ± 0.9",
        "td3bc": "110.0 ± 0.4",
    },
}


def final_estimate(
    agent_dir: Path,
) -> tuple[Estimate, int, int | None, dict[int, float]] | None:
    """Final-evaluation normalized score of the seeds at the largest budget: (mean with its
    bootstrap CI over seeds x episodes, updates, batch size or None when the seeds' batches
    differ, each seed's own mean), or None without eval files."""
    runs: dict[int, tuple[int, int, list[float]]] = {}
    for eval_file in sorted(agent_dir.glob("seed*/eval.json")):
        data = json.loads(eval_file.read_text())
        agent = data["agent"]
        scores = data["planners"]["none"]["normalized_scores"]
        runs[int(agent["seed"])] = (int(agent["steps"]), int(agent["config"]["batch_size"]), scores)
    if not runs:
        return None
    top = max(steps for steps, _, _ in runs.values())
    kept = {seed: r for seed, r in runs.items() if r[0] == top}
    batches = {batch for _, batch, _ in kept.values()}
    estimate = mean_estimate({seed: scores for seed, (_, _, scores) in kept.items()})
    per_seed = {seed: float(np.mean(scores)) for seed, (_, _, scores) in sorted(kept.items())}
    return estimate, top, batches.pop() if len(batches) == 1 else None, per_seed


def scores_table(results: Path, datasets: Path = DATA_SUMMARIES) -> Path:
    """``scores.md``: one row per dataset, one column per agent: the final score with its
    bootstrap CI (n = seeds x episodes), the budget, and the curve's :func:`verdict` when it is
    not flat; beside them the data's own normalized return (``datasets/<name>.json``, the
    summaries of ``make_datasets.py``) and CORL's published D4RL scores of the same name
    (reference only)."""
    cells: dict[str, dict[str, str]] = {}
    agents: list[str] = []
    for dataset, agent_dir in _agent_dirs(results):
        found = final_estimate(agent_dir)
        if found is None:
            continue
        estimate, steps, batch, per_seed = found
        cell = f"{estimate.text()}, {steps // 1000}k x {batch or 'mixed'}"
        if len(per_seed) > 1:
            # The CI resamples episodes of these trained policies; how far the seeds' own
            # means lie apart shows the training's spread, which that CI does not cover.
            cell += f"; seeds {' / '.join(f'{v:.1f}' for v in per_seed.values())}"
        runs = finished_curves(agent_dir)
        said = verdict(*late_change(runs)[:3]) if runs else "flat"
        if said not in ("flat", "rising by < 2 points"):
            cell += f", {said.strip('*')}"
        cells.setdefault(dataset, {})[agent_dir.name] = cell
        if agent_dir.name not in agents:
            agents.append(agent_dir.name)
    order = [a for a in ("rebrac", "iql", "td3bc") if a in agents] + sorted(
        a for a in agents if a not in ("rebrac", "iql", "td3bc")
    )
    rows = [
        f"| dataset | data | {' | '.join(order)} | CORL, D4RL -v2 ({' / '.join(order)}) |",
        "|---" * (len(order) + 3) + "|",
    ]
    for dataset in sorted(cells):
        summary = datasets / f"{dataset}.json"
        data = (
            f"{json.loads(summary.read_text())['mean_normalized']:.1f}" if summary.exists() else "-"
        )
        corl = CORL_LAST_SCORES.get(dataset, {})
        rows.append(
            f"| {dataset} | {data} | "
            + " | ".join(cells[dataset].get(a, "-") for a in order)
            + " | "
            + (" / ".join(corl.get(a, "-") for a in order) if corl else "-")
            + " |"
        )
    path = results / "scores.md"
    path.write_text(
        "# Base agents: final scores\n\n"
        "Normalized score of the final policy (`mpcdwm evaluate --planner none`), mean [bootstrap"
        " 95% CI] over seeds x episodes pooled (episode seeds shared by every agent), then the "
        "budget (updates x batch) of the seeds at the largest budget and each seed's own mean "
        "(the CI resamples episodes of these trained policies, so it does not cover how much "
        "another training seed would differ: the seeds' spread shows that); *still rising* / "
        "*falling* is `convergence.md`'s verdict on the training curve. *data*: the dataset's own"
        " mean normalized return. Last column, for reference only: CORL's reproduced scores on "
        "D4RL's datasets of the same name (other data, 1M updates), mean ± std over seeds. "
        "Written by "
        "`benchmarks/train_agents.py`.\n\n" + "\n".join(rows) + "\n"
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
    p.add_argument(
        "--data-summaries",
        type=Path,
        default=DATA_SUMMARIES,
        help="make_datasets.py's summaries of these datasets (its --results), for the data column",
    )
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
    print(f"scores: {scores_table(args.results, args.data_summaries)}")
    report(ReportConfig(runs=(args.results,), out=args.results / "report"))


if __name__ == "__main__":
    main()
