"""PointMaze: offline ReBRAC vs ReBRAC + MPCwDWM (success rate = normalized score / 100).

Collects a PointMaze dataset with the BFS waypoint controller (``mpcdwm.maze``), then runs
``mpcdwm.pipeline.run`` on it: ReBRAC (actor BC weight ``--actor-bc-coef``: the MuJoCo
default gets no successes here) at batch 256, a diffusion world model, and the base policy
and the planners in the real env. Everything lands in ``OUT``; a re-run keeps the dataset,
resumes the training stages from their checkpoints, and skips an evaluation already done
with the same settings.

    python benchmarks/bench_maze.py --env PointMaze_UMaze-v3 --episodes 20
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from pathlib import Path

from mpcdwm.maze import write_pointmaze_dataset
from mpcdwm.mpc import MPCConfig
from mpcdwm.pipeline import AgentStage, EvalStage, RunConfig, WorldModelStage, run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--env", default="PointMaze_UMaze-v3")
    p.add_argument("--data-episodes", type=int, default=60)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--agent-steps", type=int, default=10_000)
    p.add_argument("--actor-bc-coef", type=float, default=0.1)
    p.add_argument("--world-model-steps", type=int, default=10_000)
    p.add_argument("--episodes", type=int, default=20)
    p.add_argument("--planners", nargs="+", default=["none", "mpc", "action-grad"])
    p.add_argument("--out", type=Path, default=Path("runs/maze"))
    args = p.parse_args()

    out = args.out / args.env
    data = out / "dataset"
    if not (data / "data").is_dir():
        write_pointmaze_dataset(
            args.env, episodes=args.data_episodes, seed=args.seed + 4, out=str(data)
        )
    run(
        RunConfig(
            dataset=str(data),
            out=out,
            seed=args.seed,
            agent=AgentStage(
                kind="rebrac",
                steps=args.agent_steps,
                batch_size=256,
                set=(f"actor_bc_coef={args.actor_bc_coef}",),
            ),
            world_model=WorldModelStage(kind="diffusion", steps=args.world_model_steps),
            eval=EvalStage(planners=tuple(args.planners), episodes=args.episodes),
            mpc=MPCConfig(),
            progress=False,
        )
    )
    path = out / "eval" / "eval.json"
    res = json.loads(path.read_text())["planners"]
    print(f"# bench_maze ({datetime.now(UTC):%Y-%m-%d %H:%M} UTC)")
    print(
        f"{args.env}: {args.data_episodes} BFS episodes (seed {args.seed + 4}); ReBRAC "
        f"{args.agent_steps} steps (actor_bc_coef {args.actor_bc_coef}, batch 256); diffusion "
        f"world model {args.world_model_steps} steps; {args.episodes} episodes, seed {args.seed}\n"
    )
    print("| method | success rate | latency ms (median) |")
    print("|---|---|---|")
    for name, r in res.items():
        rate = sum(x > 0.5 for x in r["returns"]) / len(r["returns"])
        print(f"| {name} | {rate:.2f} | {r['latency_ms']['median']:.1f} |")


if __name__ == "__main__":
    main()
