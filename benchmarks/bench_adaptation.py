"""Does the adaptation pay off? Base vs MPCwDWM and its controls on trained runs (issue 13).

For one dataset and base-agent kind, every seed ``k`` uses its own trained agent
(``AGENTS/<name>/<agent>/seed<k>``, from ``benchmarks/train_agents.py``) and its own world
model (``WORLD_MODELS/<name>/diffusion/seed<k>``, ``mpcdwm train-world-model``). Each method
is evaluated with ``mpcdwm evaluate`` on the same episode seeds (``10000 k + i``), so every
gain pairs episode by episode with the base. Methods (``--methods``):

* ``base``: the pretrained policy (planner ``none``);
* ``paper``: MPCwDWM with the paper's setting (``--mpc.preset paper``: plain gradient steps,
  E=1, H=5, weights carried across an episode's real steps) at ``--num-rollouts`` M and step
  size ``--lr``;
* ``placebo``: ``paper`` with its parameter change replaced by a random direction that moves
  the action at the real state as much (the control a gain must beat: same action change, no
  information from the model);
* ``guarded``: ``paper`` plus the validated step (act adapted only when it beats the
  pretrained policy on fresh noise by more than the standard error) and the env's health rule as
  imagined termination (where the env has one);
* ``guarded-x``: ``guarded`` whose validation is judged by an independently trained world
  model (seed ``k + 1`` mod 3: errors exploited in one model rarely repeat in another);
* ``ensemble``: ``paper`` plus the transition-ensemble disagreement penalty
  (``--mpc.ensemble-penalty`` = ``--ensemble-penalty``) against the world models of the two
  other seeds (``k + 1``, ``k + 2`` mod 3), subtracted along the imagined path; its weight is
  given, or ``auto``: balanced so that on 64 dataset states the penalty's policy gradient is
  as large as the imagined return's (:func:`mpcdwm.mpc.balance_ensemble_penalty`, no real
  returns; kept in ``ensemble_penalty.json``);
* ``ensemble-placebo``: ``ensemble`` with the placebo's update (its matched control);
* ``reference``: MPCwDWM at the library's plain defaults (Adam, E=5, M=16, H=5), the
  expensive path of the score-vs-latency frontier;
* ``action-grad`` / ``dream-mpc``: the action-sequence gradient planner and its Dream-MPC
  form, at their defaults;
* ``dream-mpc-x``: ``dream-mpc`` ranking its candidates by imagined return minus the
  transition-ensemble disagreement (the same members and weight as ``ensemble``), as the
  Dream-MPC paper ranks them.

``--no-carry`` restarts every decision from the pretrained weights (``warm_start=False``: one
gradient step from the pretrained policy per real step) instead of the paper's weights carried
across the episode; folders get the suffix ``-cold``.

``--termination rule`` / ``smooth-rule`` ends the imagined episodes of ``paper``, ``placebo``
and ``ensemble`` by the env's health rule (mazes: reaching the goal) instead of the learned
termination model (folders get the suffix). ``--reward rule`` / ``smooth-rule`` gives them the
maze's own sparse reward instead of the learned one (suffix ``-r<reward>``; AntMaze/PointMaze).

``--horizon H`` imagines H steps instead of the preset's 5 (folders get the suffix ``-H<h>``).

``--lr auto`` chooses the step size WITHOUT real returns (:func:`mpcdwm.mpc.select_step_size`:
the largest of the paper's grid {5e-7, 5e-6, 5e-5, 5e-4} whose imagined improvement survives
validation while the carried weights, walked along 16 segments of 40 consecutive dataset
states, keep the action within ``STEP_SIZE_TRUST_REGION`` of the pretrained policy's, per
seed); the choice and the whole grid are written to ``step_size.json``.
Runs resume: an eval.json with the same configuration and episodes is kept. Result files
(eval.json, step_size.json, never checkpoints) are copied under ``--results`` and
``mpcdwm report`` writes the table with paired gains and bootstrap 95% CIs there.

    python benchmarks/bench_adaptation.py data/hopper-medium-v0 --agent iql --seeds 0 1 2 \\
        --episodes 30 --methods base paper placebo guarded
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np

from mpcdwm.agents import load_agent
from mpcdwm.data import load_dataset
from mpcdwm.envs import make_env, task_rule
from mpcdwm.evaluate import EvaluateConfig, chosen_by_fields, evaluate
from mpcdwm.files import write_json_atomic
from mpcdwm.mpc import (
    PAPER_LR_GRID,
    STEP_SIZE_TRUST_REGION,
    MPCConfig,
    balance_ensemble_penalty,
    resolve,
    select_step_size,
)
from mpcdwm.pipeline import same_checkpoints
from mpcdwm.report import ReportConfig, recorded_mpc, report
from mpcdwm.world import load_world_model

CACHE = Path.home() / ".cache" / "mpcdwm" / "runs"
RESULTS = Path(__file__).resolve().parent / "results" / "adaptation"
SEGMENTS, SEGMENT_LENGTH = 16, 40  # dataset segments walked by --lr auto
BALANCE_STATES = 64  # dataset states at which --ensemble-penalty auto balances the gradients
METHODS = (
    "base",
    "paper",
    "placebo",
    "guarded",
    "guarded-x",
    "ensemble",
    "ensemble-placebo",
    "reference",
    "action-grad",
    "dream-mpc",
    "dream-mpc-x",
)
WITH_LR = ("paper", "placebo", "guarded", "guarded-x", "ensemble", "ensemble-placebo")


def method_config(
    method: str, paper: MPCConfig, ensemble_penalty: float = 1.0
) -> tuple[str, MPCConfig]:
    """(planner name, MPCConfig) of one method; ``paper`` is the resolved paper setting."""
    if method == "base":
        return "none", paper
    if method == "paper":
        return "mpc", paper
    if method == "placebo":
        return "mpc", dataclasses.replace(paper, update="placebo")
    if method in ("guarded", "guarded-x"):
        return "mpc", dataclasses.replace(paper, validate=True, termination="rule")
    if method in ("ensemble", "ensemble-placebo"):
        update = "placebo" if method == "ensemble-placebo" else "gradient"
        return "mpc", dataclasses.replace(paper, ensemble_penalty=ensemble_penalty, update=update)
    if method == "reference":
        return "mpc", MPCConfig(preset="reference")
    if method in ("action-grad", "dream-mpc"):
        return method, MPCConfig(preset="reference")
    if method == "dream-mpc-x":
        return "dream-mpc", MPCConfig(preset="reference", ensemble_penalty=ensemble_penalty)
    raise ValueError(f"unknown method {method!r}; choose from {METHODS}")


def choose_step_size(agent_run: Path, wm_run: Path, dataset: str, cfg: MPCConfig, seed: int):
    """The paper grid's largest step whose improvement survives validation (no real returns)."""
    agent = load_agent(agent_run)
    world = load_world_model(wm_run, env_id=agent.env_id)
    env = make_env(agent.env_id)
    rule = task_rule(env)
    env.close()
    segments = load_dataset(dataset).segments(count=SEGMENTS, length=SEGMENT_LENGTH, seed=seed)
    return select_step_size(
        cfg, agent, world, segments, PAPER_LR_GRID, seed, rule,
        max_action_change=STEP_SIZE_TRUST_REGION,
    )  # fmt: skip


def ensemble_weight(
    given: str, agent_run: Path, wm_run: Path, members: tuple[Path, ...], dataset: str,
    cfg: MPCConfig, seed: int, keep: Path,
) -> float:  # fmt: skip
    """The ensemble method's weight: ``given``, or for ``auto`` the weight that balances the
    penalty's gradient against the imagined return's at dataset states
    (:func:`mpcdwm.mpc.balance_ensemble_penalty`), computed once per seed and kept in
    ``ensemble_penalty.json`` (recomputed when the step size or M changes)."""
    if given != "auto":
        return float(given)
    rule = {"states": BALANCE_STATES, "num_rollouts": cfg.num_rollouts, "lr": cfg.lr}
    path = keep / "ensemble_penalty.json"
    record = json.loads(path.read_text()) if path.exists() else None
    if record is None or record.get("rule") != rule:
        t0 = time.perf_counter()
        agent = load_agent(agent_run)
        world = load_world_model(wm_run, env_id=agent.env_id)
        ensemble = [load_world_model(m, env_id=agent.env_id) for m in members]
        obs = load_dataset(dataset).observations
        rows = np.random.default_rng(seed).choice(len(obs), BALANCE_STATES, replace=False)
        weight = balance_ensemble_penalty(cfg, agent, world, ensemble, obs[rows], seed)
        record = {"weight": weight, "rule": rule, "seconds": time.perf_counter() - t0}
        path.write_text(json.dumps(record, indent=1))
    print(f"[adaptation] seed {seed}: ensemble penalty {record['weight']:.3g} (balanced on data)")
    return float(record["weight"])


def up_to_date(eval_json: Path, cfg: EvaluateConfig) -> bool:
    if not eval_json.exists():
        return False
    data = json.loads(eval_json.read_text())
    current = json.loads(json.dumps(dataclasses.asdict(resolve(cfg.mpc))))
    stored = json.loads(json.dumps(recorded_mpc(data)))
    same_mpc = all(stored.get(k) == v for k, v in current.items())
    # The base policy does not plan: its settings are not part of what it did.
    same_mpc |= cfg.planner == ("none",)
    # A retrained agent or world model (another checkpoint digest) makes it stale too.
    fresh = same_mpc and data["config"]["episodes"] == cfg.episodes and same_checkpoints(data, cfg)
    chosen_by = chosen_by_fields(cfg.chosen_by)
    if fresh and data.get("chosen_by", {}) != chosen_by:
        # Only the label of a rule-chosen value differs (files written before it was
        # recorded): the episodes stand, the label is brought up to date.
        data["chosen_by"] = chosen_by
        write_json_atomic(eval_json, data)
    return fresh


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("dataset", help="dataset folder, e.g. data/hopper-medium-v0")
    p.add_argument("--agent", default="rebrac", choices=["rebrac", "iql", "td3bc"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--episodes", type=int, default=10)
    p.add_argument("--methods", nargs="+", default=list(METHODS[:4]), choices=METHODS)
    p.add_argument("--num-rollouts", type=int, default=64, help="M of paper/placebo/guarded")
    p.add_argument("--lr", default="auto", help="step size, or 'auto' (no real returns)")
    p.add_argument(
        "--ensemble-penalty",
        default="auto",
        help="weight of the ensemble method, or 'auto' (balanced on dataset states, no real "
        "returns; written to ensemble_penalty.json)",
    )
    p.add_argument(
        "--termination",
        default="learned",
        choices=["learned", "rule", "smooth-rule"],
        help="what ends imagined episodes in paper/placebo/ensemble (guarded: always rule)",
    )
    p.add_argument(
        "--reward",
        default="learned",
        choices=["learned", "rule", "smooth-rule"],
        help="imagined reward of paper/placebo/ensemble: learned, or the maze's goal rule",
    )
    p.add_argument(
        "--no-carry",
        action="store_true",
        help="start every decision from the pretrained weights (warm_start=False) instead of "
        "carrying the adapted weights across the episode (the paper's)",
    )
    p.add_argument(
        "--horizon",
        type=int,
        default=None,
        help="imagined horizon H of paper/placebo/ensemble (default: the preset's, 5); "
        "folders get the suffix -H<h>",
    )
    p.add_argument("--agents", type=Path, default=CACHE / "agents_d4rl")
    p.add_argument("--world-models", type=Path, default=CACHE / "wm_d4rl")
    p.add_argument("--out", type=Path, default=CACHE / "adaptation")
    p.add_argument("--results", type=Path, default=RESULTS)
    p.add_argument("--progress", action="store_true")
    args = p.parse_args()

    name = Path(args.dataset).name.removesuffix("-v0")
    for seed in args.seeds:
        agent_run = args.agents / name / args.agent / f"seed{seed}"
        wm_run = args.world_models / name / "diffusion" / f"seed{seed}"
        run = args.out / name / args.agent / f"seed{seed}"
        keep = args.results / name / args.agent / f"seed{seed}"
        keep.mkdir(parents=True, exist_ok=True)
        paper = resolve(
            MPCConfig(
                preset="paper",
                num_rollouts=args.num_rollouts,
                termination=args.termination,
                reward=args.reward,
                warm_start=False if args.no_carry else None,
                **({} if args.horizon is None else {"horizon": args.horizon}),
            )
        )
        if args.lr == "auto":
            rule = {"num_rollouts": args.num_rollouts, "segments": [SEGMENTS, SEGMENT_LENGTH],
                    "max_action_change": STEP_SIZE_TRUST_REGION}  # fmt: skip
            choice_file = keep / "step_size.json"
            choice = json.loads(choice_file.read_text()) if choice_file.exists() else None
            if choice is None or choice.get("rule") != rule:
                t0 = time.perf_counter()
                lr, rows = choose_step_size(agent_run, wm_run, args.dataset, paper, seed)
                choice = {
                    "lr": lr,
                    "rule": rule,
                    "grid": rows,
                    "seconds": time.perf_counter() - t0,
                }
                choice_file.write_text(json.dumps(choice, indent=1))
            # Nothing survives validation: the smallest step (the base policy, nearly).
            lr = choice["lr"] if choice["lr"] is not None else min(PAPER_LR_GRID)
            print(f"[adaptation] {name} seed {seed}: lr {lr:g} (chosen without real returns)")
        else:
            lr = float(args.lr)
        paper = dataclasses.replace(paper, lr=lr)
        other_world = {  # independently trained world models: the other seeds'
            k: args.world_models / name / "diffusion" / f"seed{(seed + k) % 3}" for k in (1, 2)
        }
        for method in args.methods:
            # One folder per step size, so several can be compared on the same episodes.
            folder = f"{method}-lr{lr:g}" if method in WITH_LR else method
            if method in WITH_LR and args.num_rollouts != 64:
                folder += f"-M{args.num_rollouts}"
            if method in WITH_LR and method not in ("guarded", "guarded-x"):
                folder += "" if args.termination == "learned" else f"-{args.termination}"
                folder += "" if args.reward == "learned" else f"-r{args.reward}"
            if method in WITH_LR and args.no_carry:
                folder += "-cold"
            if method in WITH_LR and args.horizon is not None:
                folder += f"-H{args.horizon}"
            judge = other_world[1] if method == "guarded-x" else None
            members, weight = (), 0.0
            chosen_by = ["lr=select_step_size"] if args.lr == "auto" and method in WITH_LR else []
            if method.startswith("ensemble") or method == "dream-mpc-x":
                given = args.ensemble_penalty
                if given != "auto" or method != "dream-mpc-x":
                    folder += "-xauto" if given == "auto" else f"-x{float(given):g}"
                members = (other_world[1], other_world[2])
                weight = ensemble_weight(
                    given, agent_run, wm_run, members, args.dataset, paper, seed, keep
                )
                if given == "auto":
                    chosen_by.append("ensemble_penalty=balance_ensemble_penalty")
            planner, mpc = method_config(method, paper, weight)
            cfg = EvaluateConfig(
                agent=agent_run,
                world_model=None if planner == "none" else wm_run,
                validation_world_model=judge,
                ensemble_world_models=members,
                planner=(planner,),
                episodes=args.episodes,
                seed=seed,
                out=run / folder,
                mpc=mpc,
                chosen_by=tuple(chosen_by),
                progress=args.progress,
            )
            t0 = time.perf_counter()
            if not up_to_date(run / folder / "eval.json", cfg):
                evaluate(cfg)
            (keep / folder).mkdir(exist_ok=True)
            shutil.copy(run / folder / "eval.json", keep / folder / "eval.json")
            print(
                f"[adaptation] {name} {args.agent} seed {seed} {folder}: "
                f"{(time.perf_counter() - t0) / 60:.1f} min, load {os.getloadavg()[0]:.1f}",
                flush=True,
            )
    report(ReportConfig(runs=(args.results / name,), out=args.results / name / "report"))


if __name__ == "__main__":
    main()
