"""Signals available without real returns, per adaptation step size: do they predict the step?

For one dataset, agent and world model (the runs ``bench_adaptation.py`` uses), walks
``--segments`` runs of ``--length`` consecutive dataset states with the paper preset
(E=1, weights carried across the segment, reset at its start) at each step size of the
paper's grid, and reports per step size:

* ``action change``: ``||a_adapted - a_pretrained||`` at the segment's last state (how far
  the carried weights moved the action; what ``select_step_size``'s trust region bounds);
* ``support``: the distance of ``(state, adapted action)`` to its nearest neighbour among
  the dataset's ``(state, action)`` pairs (states standardised, actions raw), divided by the
  same distance for dataset pairs among themselves (median over decisions): ~1 means the
  adapted actions are as close to the data as the data is to itself, > 1 that the planner
  acts where the data has no examples (a behaviour-support measure, as in offline RL).

Compare with the real returns of the same step sizes (``bench_adaptation.py``) to see
whether a signal separates the steps that help from those that hurt.

    python benchmarks/bench_step_signals.py data/hopper-medium-v0 --agent iql --seed 0
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree
from seed_runs import CACHE, load_seed_runs

from mpcdwm.data import load_dataset
from mpcdwm.envs import health_rule, make_env
from mpcdwm.mpc import PAPER_LR_GRID, MPCConfig, Planner, resolve


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dataset", type=Path, help="dataset folder, e.g. data/hopper-medium-v0")
    p.add_argument("--agent", default="iql", choices=["rebrac", "iql", "td3bc"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--segments", type=int, default=16)
    p.add_argument("--length", type=int, default=40)
    p.add_argument("--num-rollouts", type=int, default=16)
    p.add_argument("--neighbours-from", type=int, default=300_000, help="dataset pairs indexed")
    p.add_argument("--agents", type=Path, default=CACHE / "agents_d4rl")
    p.add_argument("--world-models", type=Path, default=CACHE / "wm_d4rl")
    args = p.parse_args()

    name, agent, world, wm_run = load_seed_runs(
        args.dataset, args.agent, args.seed, args.agents, args.world_models
    )
    env = make_env(agent.env_id)
    health = health_rule(env)
    env.close()
    data = load_dataset(str(args.dataset))
    mean, std = data.observations.mean(0), data.observations.std(0) + 1e-3

    def pairs(obs: np.ndarray, act: np.ndarray) -> np.ndarray:
        return np.concatenate([(obs - mean) / std, act], -1)

    rng = np.random.default_rng(args.seed)
    rows = rng.choice(len(data), size=min(len(data), args.neighbours_from), replace=False)
    tree = cKDTree(pairs(data.observations[rows], data.actions[rows]))
    # Data among itself: the nearest *other* pair (k=2; the first hit is the point itself).
    probe = rows[:2000]
    nearest = tree.query(pairs(data.observations[probe], data.actions[probe]), k=2)[0]
    within = np.median(nearest[:, 1])
    segments = data.segments(args.segments, args.length, seed=args.seed)

    print(f"Dataset: {args.dataset}; agent {args.agent} seed {args.seed}; world model {wm_run}")
    print("Command: python " + " ".join(sys.argv))
    print(f"{args.segments} segments x {args.length} states; data-to-data neighbour distance "
          f"{within:.3f}; load average {os.getloadavg()[0]:.1f}")  # fmt: skip
    print()
    print("| lr | final action change | support (median, all decisions) | support (last 10) |")
    print("|---|---|---|---|")
    paper = resolve(MPCConfig(preset="paper", num_rollouts=args.num_rollouts))
    for lr in PAPER_LR_GRID:
        t0 = time.perf_counter()
        planner = Planner("mpc", dataclasses.replace(paper, lr=lr), agent, world, args.seed, health)
        states, actions, final = [], [], []
        for i, segment in enumerate(segments):
            planner.reset(i)
            for obs in segment:
                action, diag = planner(obs)
                states.append(obs)
                actions.append(action)
            final.append(diag["action_change"])
        dist = tree.query(pairs(np.asarray(states), np.asarray(actions)), k=1)[0] / within
        last = dist.reshape(args.segments, args.length)[:, -10:]
        print(f"| {lr:g} | {np.mean(final):.3f} | {np.median(dist):.2f} | {np.median(last):.2f} |")
        print(f"  lr {lr:g}: {time.perf_counter() - t0:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
