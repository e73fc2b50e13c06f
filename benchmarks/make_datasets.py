"""Make the D4RL-style locomotion datasets this project evaluates on, with one command.

For each env (HalfCheetah-v5, Hopper-v5, Walker2d-v5) and recipe, in this order:

* ``medium``: online TD3 (``mpcdwm collect``) trained until its deterministic evaluation
  return first reaches 1/3 of D4RL's expert reference (D4RL's medium point), then
  ``--medium-steps`` transitions recorded from that policy with action noise 0.1;
* ``medium-replay``: the TD3 replay buffer up to that point (reuses the cached agent);
* ``expert`` / ``medium-expert`` (only with ``--expert``): TD3 trained on to
  ``--expert-train-steps`` env steps (resumable); the expert is the best of its 10
  best-evaluated snapshots over 20 fresh episodes with the recording's noise
  (``CollectConfig.expert_candidates``), then recorded.

The medium and expert policies are kept as policy files in ``--policies`` (default
``benchmarks/policies/<env>-<recipe>-seed<seed>.ckpt``, ~300 KB each, committed): where one is
there, medium / expert / medium-expert record it (``mpcdwm collect --policy``, the same
transitions) instead of training TD3 for up to an hour or two, so a fresh machine remakes
them in minutes; where none is, the trained recipe writes it (``--save-policy``).
medium-replay always trains TD3 to the medium point (it is that run's replay buffer).

Datasets land in ``OUT/<env>-<recipe>-v0`` (Minari folders). A dataset whose folder already
exists is skipped, so the command resumes; the online agent resumes from its checkpoint in
``$MPCDWM_CACHE`` (default ~/.cache/mpcdwm). Per dataset, a summary (transitions, episodes,
normalized return, the TD3 step of the medium point, wall time, load average) goes to
``benchmarks/results/datasets/<name>.json`` and all of them to ``datasets.md`` (``--results``:
another folder, one per generation of data).

With ``--antmaze`` it makes D4RL's six AntMaze datasets instead (issue 15): the goal-reaching
ant shipped with the package (or, with ``--train-ant``, one trained here first: ``mpcdwm
collect --env mpcdwm/AntGoal-v1 --recipe expert``, online TD3 to ``--ant-train-steps`` env
steps (default 800k: the shipped ant is this run's expert, ~1.5 h on one core), resumable, its
expert snapshot chosen, a short recording of it kept as
``OUT/antgoal-expert-v0`` and its policy exported as ``OUT/antgoal-v1-seed0.ckpt``) driven
along BFS waypoints through ``AntMaze_{UMaze,Medium,Large}-v5`` with the ``play`` and
``diverse`` recipes, ``--antmaze-steps`` transitions each, into
``OUT/antmaze-<maze>-<recipe>-v0`` (their mean normalized return is the fraction of episodes
that reach their goal; their summaries add how the episodes end: at the goal, with the ant on
its back, upright at the time limit, and the share of transitions of an ant on its back).

    python benchmarks/make_datasets.py                       # medium + medium-replay, 3 envs
    python benchmarks/make_datasets.py --expert --expert-train-steps 1000000
    python benchmarks/make_datasets.py --envs HalfCheetah-v5 --recipes medium expert
    python benchmarks/make_datasets.py --antmaze --antmaze-steps 1000000 [--train-ant]
    python benchmarks/make_datasets.py --antmaze --mazes Large --antmaze-recipes diverse
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from mpcdwm.collect import ANT_GOAL_ENV, CollectConfig, collect, export_expert
from mpcdwm.data import Dataset, load_dataset
from mpcdwm.maze import ant_on_its_back
from mpcdwm.online_td3 import default_agent_dir

ENVS = ("HalfCheetah-v5", "Hopper-v5", "Walker2d-v5")
MAZES = ("UMaze", "Medium", "Large")
# Uniform random actions before the ant's TD3 acts: TD3's published setting for the MuJoCo
# tasks. Part of the ant's checkpoint identity (a run resumes only with the same value).
ANT_START_STEPS = 25_000
RESULTS = Path(__file__).resolve().parent / "results" / "datasets"
POLICIES = Path(__file__).resolve().parent / "policies"
LOCOMOTION_RECIPES = ("medium", "medium-replay", "expert", "medium-expert")
RECORDED = ("medium", "expert")  # the recipes whose policy is kept as a file
# D4RL v2 datasets of the same name (normalized mean return of their episodes), for reference.
D4RL_REFERENCE = {
    "halfcheetah-medium": 40.7,
    "hopper-medium": 44.3,
    "walker2d-medium": 62.1,
    "halfcheetah-medium-replay": 27.2,
    "hopper-medium-replay": 14.9,
    "walker2d-medium-replay": 14.8,
    "halfcheetah-medium-expert": 64.3,
    "hopper-medium-expert": 64.7,
    "walker2d-medium-expert": 82.7,
    "halfcheetah-expert": 88.1,
    "hopper-expert": 108.5,
    "walker2d-expert": 106.7,
}


def family(env: str) -> str:
    return env.split("-v")[0].lower()


def summarize(path: Path, name: str, seconds: float, cfg: CollectConfig, command: str) -> dict:
    ds = load_dataset(str(path))
    returns = ds.episode_returns()
    meta = ds.metadata
    row = {
        "name": name,
        "env": cfg.env,
        "recipe": cfg.recipe,
        "seed": cfg.seed,
        "transitions": int(len(ds.rewards)),
        "episodes": int(len(returns)),
        "mean_return": float(np.mean(returns)),
        "mean_normalized": float(np.mean(ds.normalized_score(returns))),
        "d4rl_reference_normalized": D4RL_REFERENCE.get(name),
        "wall_s": round(seconds, 1),
        "load_avg_1m_at_end": os.getloadavg()[0],
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "command": command,
    }
    if "antmaze" in name:
        row |= antmaze_outcomes(ds)
    for key in (
        "mpcdwm_medium_env_steps",
        "mpcdwm_medium_return",
        "mpcdwm_medium_reached",
        "mpcdwm_agent_env_steps",
        "mpcdwm_expert_return",
        "mpcdwm_expert_env_steps",
        "mpcdwm_agent_final_return",
        "mpcdwm_low_level_env_steps",
        "mpcdwm_policy_files",
        "mpcdwm_software",
        "mpcdwm_cpu",
        "mpcdwm_command",
    ):
        if key in meta:
            row[key.removeprefix("mpcdwm_")] = meta[key]
    return row


def antmaze_outcomes(ds: Dataset) -> dict:
    """How an AntMaze dataset's episodes end (goal, ant on its back, upright at the time
    limit) and its share of transitions whose ant lies on its back."""
    last = ds.episode_ends
    on_back = ant_on_its_back(ds.next_observations)
    goal = ds.terminals[last].astype(bool)
    back = on_back[last] & ~goal
    return {
        "episodes_at_goal": float(goal.mean()),
        "episodes_on_back": float(back.mean()),
        "episodes_upright_at_limit": float((~goal & ~back).mean()),
        "transitions_on_back": float(on_back.mean()),
    }


def table(rows: list[dict]) -> str:
    lines = [
        "| dataset | transitions | episodes | mean return | normalized | D4RL's (ref.) "
        "| TD3 steps at medium point | wall time | load avg |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ref = r.get("d4rl_reference_normalized")
        lines.append(
            f"| {r['name']} | {r['transitions']:,} | {r['episodes']:,} | {r['mean_return']:.1f} "
            f"| {r['mean_normalized']:.1f} | {'-' if ref is None else ref} "
            f"| {r.get('medium_env_steps', '-')} | {r['wall_s'] / 60:.1f} min "
            f"| {r['load_avg_1m_at_end']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def make(folder: Path, name: str, cfg: CollectConfig, command: str, results: Path) -> None:
    """Collect ``cfg`` into ``folder`` unless it exists; its summary into ``results`` (kept for
    a folder made earlier, whose wall time is not known here)."""
    summary = results / f"{name}.json"
    seconds = 0.0
    if folder.exists():
        print(f"[make_datasets] {folder} exists, skipped", flush=True)
        if summary.exists():
            return
    else:
        t0 = time.perf_counter()
        collect(cfg)
        seconds = time.perf_counter() - t0
    row = summarize(folder, name, seconds, cfg, command)
    summary.write_text(json.dumps(row, indent=1) + "\n")
    print(f"[make_datasets] {json.dumps(row)}", flush=True)


def policy_files(policies: Path, env: str, recipe: str, seed: int) -> dict[str, object]:
    """``CollectConfig`` fields for the policy files of ``env``'s medium and expert recipes:
    record the files that exist (``policy``), or save the one a trained recipe records
    (``save_policy``)."""
    path = {r: (policies / f"{family(env)}-{r}-seed{seed}.ckpt").resolve() for r in RECORDED}
    if recipe in RECORDED:
        if path[recipe].is_file():
            return {"policy": (path[recipe],)}
        return {"save_policy": path[recipe]}
    if recipe == "medium-expert" and all(p.is_file() for p in path.values()):
        return {"policy": (path["medium"], path["expert"])}
    return {}


def make_antmaze(args: argparse.Namespace, command: str) -> None:
    """The six AntMaze datasets, driven by the ant shipped with the package, or with
    ``--train-ant`` by one trained here (then exported beside the datasets)."""
    progress = not args.no_progress
    agent_dir = None
    if args.train_ant:
        ant = CollectConfig(
            env=ANT_GOAL_ENV,
            recipe="expert",
            steps=10_000,
            seed=args.seed,
            out=(args.out / "antgoal-expert-v0").resolve(),
            train_steps=args.ant_train_steps,
            start_steps=ANT_START_STEPS,
            progress=progress,
        )
        make(ant.out, "antgoal-expert", ant, command, args.results)
        agent_dir = default_agent_dir(ant)
        policy = export_expert(agent_dir, (args.out / f"antgoal-v1-seed{args.seed}.ckpt").resolve())
        print(f"[make_datasets] the ant's expert: {policy} (ship: copy to src/mpcdwm/assets/)")
    for recipe in args.antmaze_recipes:
        for maze in args.mazes:
            name = f"antmaze-{maze.lower()}-{recipe}"
            cfg = CollectConfig(
                env=f"AntMaze_{maze}-v5",
                recipe=recipe,
                steps=args.antmaze_steps,
                seed=args.seed,
                dataset_id=f"mpcdwm/{name}-seed{args.seed}-v0",
                out=(args.out / f"{name}-v0").resolve(),
                agent_dir=agent_dir,
                progress=progress,
            )
            make(cfg.out, name, cfg, command, args.results)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("data"))
    p.add_argument("--envs", nargs="+", default=list(ENVS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--medium-steps", type=int, default=1_000_000)
    p.add_argument("--train-steps", type=int, default=500_000, help="TD3 cap for medium")
    p.add_argument("--expert", action="store_true", help="also expert and medium-expert")
    p.add_argument(
        "--recipes",
        nargs="+",
        choices=LOCOMOTION_RECIPES,
        default=None,
        help="only these recipes (default: medium and medium-replay, with --expert all four)",
    )
    p.add_argument(
        "--policies",
        type=Path,
        default=POLICIES,
        help="policy files recorded instead of training TD3 (written when missing)",
    )
    p.add_argument("--expert-train-steps", type=int, default=1_000_000)
    p.add_argument("--antmaze", action="store_true", help="the six AntMaze datasets instead")
    p.add_argument(
        "--train-ant", action="store_true", help="train the goal-reaching ant, not the shipped one"
    )
    p.add_argument(
        "--ant-train-steps",
        type=int,
        default=800_000,
        help="the shipped ant's budget: its expert is the 755k snapshot of this run",
    )
    p.add_argument("--antmaze-steps", type=int, default=1_000_000)
    p.add_argument("--mazes", nargs="+", choices=MAZES, default=list(MAZES))
    p.add_argument(
        "--antmaze-recipes", nargs="+", choices=("play", "diverse"), default=["play", "diverse"]
    )
    p.add_argument(
        "--results",
        type=Path,
        default=RESULTS,
        help="folder of the per-dataset summaries and datasets.md (one per generation of data)",
    )
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args()
    command = " ".join(["python benchmarks/make_datasets.py", *sys.argv[1:]])

    args.results.mkdir(parents=True, exist_ok=True)
    if args.antmaze:
        make_antmaze(args, command)
    else:
        recipes = args.recipes or LOCOMOTION_RECIPES[: 4 if args.expert else 2]
        for recipe in recipes:
            for env in args.envs:
                name = f"{family(env)}-{recipe}"
                expertish = recipe in ("expert", "medium-expert")
                cfg = CollectConfig(
                    env=env,
                    recipe=recipe,
                    steps=args.medium_steps,
                    seed=args.seed,
                    dataset_id=f"mpcdwm/{name}-seed{args.seed}-v0",
                    out=(args.out / f"{name}-v0").resolve(),
                    train_steps=args.expert_train_steps if expertish else args.train_steps,
                    progress=not args.no_progress,
                    **policy_files(args.policies, env, recipe, args.seed),
                )
                make(cfg.out, name, cfg, command, args.results)
    rows = [json.loads(f.read_text()) for f in sorted(args.results.glob("*.json"))]
    (args.results / "datasets.md").write_text(table(rows))
    print(table(rows))


if __name__ == "__main__":
    main()
