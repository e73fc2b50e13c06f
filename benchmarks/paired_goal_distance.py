"""Paired final goal distances of adaptation runs on a goal task (AntMaze, PointMaze).

At success rates of 10-30% a 0/1 score separates only large effects on 30-50 episodes; how far
from its goal each episode ends (``goal_distances`` in eval.json, written by ``mpcdwm
evaluate`` for goal envs) is continuous and pairs episode by episode like the score. For one
``bench_adaptation.py`` seed folder, prints every method's success and final goal distance
beside the base's, with the paired change and its bootstrap 95% CI (``mpcdwm.report``'s
estimators), and each method's mean action change per decision.

    python benchmarks/paired_goal_distance.py \
        ~/.cache/mpcdwm/adaptation/antmaze-large-diverse/rebrac/seed0 paper-lr5e-06-M16-rule-rrule
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from mpcdwm.report import mean_estimate, paired_differences


def load(folder: Path) -> tuple[np.ndarray, np.ndarray, dict]:
    """(final goal distances, normalized scores, diagnostics) of one method's eval.json."""
    data = json.loads((folder / "eval.json").read_text())
    (planner,) = data["planners"].values()
    if "goal_distances" not in planner:
        raise SystemExit(f"{folder}/eval.json has no goal_distances: not a goal task's run.")
    return (
        np.asarray(planner["goal_distances"]),
        np.asarray(planner["normalized_scores"]),
        planner.get("diagnostics", {}),
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("seed_folder", type=Path, help="holds base/ and the methods' folders")
    p.add_argument("methods", nargs="+", help="method folders to compare with base/")
    args = p.parse_args()
    base_d, base_s, _ = load(args.seed_folder / "base")
    k = 0  # one seed folder: episodes pair by index, the seed key only labels them
    print(
        f"base: success x 100 {mean_estimate({k: base_s}).text()}, final goal distance (m) "
        f"{mean_estimate({k: base_d}).text()}"
    )
    for method in args.methods:
        dist, score, diag = load(args.seed_folder / method)
        if len(dist) != len(base_d):
            raise SystemExit(f"{method}: {len(dist)} episodes, base {len(base_d)}: not paired.")
        gain = mean_estimate(paired_differences({k: score}, {k: base_s}))
        change = mean_estimate(paired_differences({k: dist}, {k: base_d}))
        print(
            f"{method}: success x 100 {mean_estimate({k: score}).text()}, paired gain "
            f"{gain.text(signed=True)}; final goal distance (m) {mean_estimate({k: dist}).text()}, "
            f"paired change {change.text(signed=True)}; action change per decision "
            f"{diag.get('action_change', float('nan')):.4f}"
        )


if __name__ == "__main__":
    main()
