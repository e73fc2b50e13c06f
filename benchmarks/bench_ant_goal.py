"""The goal-reaching ant's learning curve: success rate at reaching goals 2-5 m away (issue 15).

Reads the online TD3 agent that ``mpcdwm collect --env mpcdwm/AntGoal-v1 --recipe expert``
trains (its checkpoint keeps the actor of every evaluation), and plays each ``--every``-th
snapshot (and the final weights) for ``--episodes`` episodes of ``mpcdwm/AntGoal-v1`` with
``resample_goal=False``: an episode succeeds when the torso comes within 0.5 m of its goal
(drawn 2-5 m away) within the 500-step (25 s) limit, and ends there; it fails when the ant
falls (Ant-v5's health rule) or time runs out. Episode ``j`` resets with seed ``10_000 + j``
for every snapshot, so the points of the curve pair. Writes ``curve.json``, ``curve.md``
(success rate with a bootstrap 95% CI over episodes, the online evaluation return) and
``curve.png`` to ``--out``.

    python benchmarks/bench_ant_goal.py --agent-dir ~/.cache/mpcdwm/collect/mpcdwm_AntGoal-v1-seed0
"""

from __future__ import annotations

import argparse
import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from mpcdwm.maze import ant_goal_episodes
from mpcdwm.online_td3 import load_policies
from mpcdwm.report import mean_estimate

RESULTS = Path(__file__).resolve().parent / "results" / "ant_goal"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    default_dir = Path.home() / ".cache" / "mpcdwm" / "collect" / "mpcdwm_AntGoal-v1-seed0"
    p.add_argument("--agent-dir", type=Path, default=default_dir)
    p.add_argument("--episodes", type=int, default=20)
    p.add_argument("--every", type=int, default=10, help="evaluate every k-th snapshot")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()

    policies, progress = load_policies(args.agent_dir)  # one per evaluation snapshot
    evals = progress["evals"]
    chosen = sorted(set(range(0, len(evals), args.every)) | {len(evals) - 1})
    rows = []
    for i in chosen:
        t0 = time.perf_counter()
        played = ant_goal_episodes(policies[i], args.episodes, seed=10_000)
        reached = played["success"].astype(float).tolist()
        est = mean_estimate({0: reached})
        rows.append(
            {
                "snapshot": i,
                "env_steps": int(evals[i]["env_steps"]),
                "online_eval_return": float(evals[i]["return"]),
                "success": est.to_dict(),
                "success_text": est.text(),
                "success_per_episode": reached,
                "steps_per_episode": played["steps"].tolist(),
                "flipped": float(np.mean(played["flipped"])),
            }
        )
        print(
            f"[ant-goal] {evals[i]['env_steps']:>8} env steps: success {est.text()}, "
            f"on its back {np.mean(played['flipped']):.2f} "
            f"({time.perf_counter() - t0:.0f} s)",
            flush=True,
        )
    args.out.mkdir(parents=True, exist_ok=True)
    header = {
        "agent_dir": str(args.agent_dir),
        "episodes": args.episodes,
        "env_steps_trained": int(progress["env_steps"]),
        "done": bool(progress.get("done", False)),
        "date": f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "load_average": os.getloadavg(),
    }
    (args.out / "curve.json").write_text(json.dumps({**header, "curve": rows}, indent=1))
    lines = [
        f"# Goal-reaching ant (mpcdwm/AntGoal-v1), {header['date']}",
        "",
        f"`python benchmarks/bench_ant_goal.py --agent-dir {args.agent_dir} --episodes "
        f"{args.episodes} --every {args.every}`; trained {header['env_steps_trained']} env steps "
        f"(done: {header['done']}); load average "
        f"{' / '.join(f'{x:.1f}' for x in header['load_average'])}.",
        "",
        "| env steps | success rate, goals 2-5 m [95% CI] | ended on its back "
        "| online eval return |",
        "|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['env_steps']} | {r['success_text']} | {r['flipped']:.2f} "
            f"| {r['online_eval_return']:.1f} |"
        )
    (args.out / "curve.md").write_text("\n".join(lines) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [r["env_steps"] for r in rows]
    y = np.array([r["success"]["mean"] for r in rows])
    lo = np.array([r["success"]["ci_low"] or r["success"]["mean"] for r in rows])
    hi = np.array([r["success"]["ci_high"] or r["success"]["mean"] for r in rows])
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(x, y, marker="o")
    ax.fill_between(x, lo, hi, alpha=0.2)
    ax.set(xlabel="env steps (online TD3)", ylabel="success rate", ylim=(-0.02, 1.02))
    ax.set_title("goal-reaching ant: goals 2-5 m away")
    fig.tight_layout()
    fig.savefig(args.out / "curve.png", dpi=120)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
