"""Sparse-reward navigation tasks: PointMaze collection and the AntMaze gap.

Conventions (see :mod:`mpcdwm.envs`): maze envs get ``continuing_task=False``, so an
episode ends on the step that reaches the goal with reward 1; the return of an episode
is therefore 1 for a success and 0 otherwise, and the normalized score is a success
rate (ref_min_score=0, ref_max_score=1), as D4RL's AntMaze evaluation.

PointMaze collection follows D4RL maze2d: a waypoint controller follows the BFS
shortest path on the maze grid (read from ``env.unwrapped.maze``) to the goal, with
Gaussian action noise. Documented choice: instead of re-sampling the goal when it is
reached (D4RL's 1M-step continuing episodes) each episode ends at its goal and the
next one starts from a new random start/goal, which matches the evaluation episodes.

Flattened PointMaze observation (``DICT_OBS_ORDER``): ``[achieved_goal(2), x, y, vx, vy,
desired_goal(2)]`` = 8 columns.

AntMaze gap: collecting AntMaze needs a goal-conditioned low-level locomotion policy;
it is not built here. AntMaze is supported through loading D4RL HDF5 files (goal from
``infos/goal`` appended) and Minari ``D4RL/antmaze`` datasets, see :mod:`mpcdwm.data`.
"""

from __future__ import annotations

from collections import deque
from pathlib import Path
from typing import Any

import numpy as np

from mpcdwm.envs import limit_kwargs, make_env
from mpcdwm.minari_io import TRANSITION_FIELDS, write_minari

Cell = tuple[int, int]

POINTMAZE_NOISE = 0.3
"""Default std of the Gaussian action noise added to the BFS controller's actions (actions in
[-1, 1]), for the Python API and ``mpcdwm collect`` alike: enough spread for an offline
learner to see recoveries, little enough that (almost) every episode reaches its goal."""


def bfs_path(maze_map: list[list[int]], start: Cell, goal: Cell) -> list[Cell]:
    """Shortest 4-connected path of free cells (``maze_map[r][c] != 1``) from start to goal.

    Returns the cells including both ends. Raises ValueError if the goal is unreachable.
    """
    prev: dict[Cell, Cell | None] = {start: None}
    queue = deque([start])
    while queue:
        cell = queue.popleft()
        if cell == goal:
            break
        r, c = cell
        for nxt in ((r + 1, c), (r - 1, c), (r, c + 1), (r, c - 1)):
            if nxt not in prev and maze_map[nxt[0]][nxt[1]] != 1:
                prev[nxt] = cell
                queue.append(nxt)
    if goal not in prev:
        raise ValueError(f"goal cell {goal} is unreachable from {start}; check the maze map.")
    path = [goal]
    while prev[path[-1]] is not None:
        path.append(prev[path[-1]])  # type: ignore[arg-type]
    return path[::-1]


def waypoint_action(
    pos: np.ndarray, vel: np.ndarray, target: np.ndarray, kp: float = 10.0, kd: float = 1.0
) -> np.ndarray:
    """PD force toward ``target`` (all shape (2,)), clipped to PointMaze's [-1, 1] actions."""
    return np.clip(kp * (target - pos) - kd * vel, -1.0, 1.0).astype(np.float32)


def collect_pointmaze(
    env_id: str,
    *,
    episodes: int | None = None,
    steps: int | None = None,
    seed: int,
    noise: float = POINTMAZE_NOISE,
    max_episode_steps: int | None = None,
) -> dict[str, np.ndarray]:
    """Run the BFS waypoint controller for ``episodes`` episodes, or whole episodes until
    at least ``steps`` transitions (give exactly one of them).

    ``max_episode_steps``: episode time limit; None keeps the env's registered limit (300
    for UMaze, 600 Medium, 800 Large), the one evaluation episodes get.

    Returns collect-style transitions (observations (N, 8), actions (N, 2), rewards (N,),
    next_observations, terminals, truncations).
    """
    if (episodes is None) == (steps is None):
        raise ValueError("give exactly one of episodes= or steps= to collect_pointmaze.")
    if "PointMaze" not in env_id:
        raise ValueError(
            f"{env_id!r} is not a PointMaze id; maze collection covers PointMaze only."
        )
    env = make_env(env_id, **limit_kwargs(max_episode_steps))
    maze = env.unwrapped.maze
    rng = np.random.default_rng(seed)
    rows: dict[str, list[Any]] = {k: [] for k in TRANSITION_FIELDS}
    ep = 0
    while (ep < episodes) if episodes is not None else (len(rows["actions"]) < steps):
        obs, _ = env.reset(seed=seed + ep)
        ep += 1
        goal = obs[6:8]
        path = bfs_path(
            maze.maze_map,
            tuple(maze.cell_xy_to_rowcol(obs[2:4])),
            tuple(maze.cell_xy_to_rowcol(goal)),
        )
        waypoints = [np.asarray(maze.cell_rowcol_to_xy(np.array(c))) for c in path[1:-1]] + [goal]
        k, done = 0, False
        while not done:
            pos, vel = obs[2:4], obs[4:6]
            while (
                k < len(waypoints) - 1
                and np.linalg.norm(waypoints[k] - pos) < 0.5 * maze.maze_size_scaling
            ):
                k += 1
            act = waypoint_action(pos, vel, waypoints[k]) + noise * rng.standard_normal(2)
            act = np.clip(act, -1.0, 1.0).astype(np.float32)
            nxt, reward, term, trunc, _ = env.step(act)
            for key, val in zip(rows, (obs, act, reward, nxt, term, trunc), strict=True):
                rows[key].append(val)
            obs, done = nxt, term or trunc
    env.close()
    out = {k: np.asarray(v) for k, v in rows.items()}
    for k in ("observations", "actions", "rewards", "next_observations"):
        out[k] = out[k].astype(np.float32)
    out["terminals"] = out["terminals"].astype(bool)
    out["truncations"] = out["truncations"].astype(bool)
    return out


def write_pointmaze_dataset(
    env_id: str,
    *,
    episodes: int | None = None,
    steps: int | None = None,
    seed: int,
    out: str | None = None,
    dataset_id: str | None = None,
    noise: float = POINTMAZE_NOISE,
    max_episode_steps: int | None = None,
    overwrite: bool = False,
) -> str:
    """Collect with :func:`collect_pointmaze` and write a Minari dataset (ref scores 0 and 1).

    ``mpcdwm collect --env PointMaze_...`` runs exactly this, with the same defaults.
    Returns the dataset id, or ``out`` as a string.
    """
    if noise < 0 or (max_episode_steps is not None and max_episode_steps < 1):
        raise ValueError(
            f"PointMaze collection needs noise >= 0 and max_episode_steps >= 1 or None, got "
            f"{noise} and {max_episode_steps}."
        )
    data = collect_pointmaze(
        env_id,
        episodes=episodes,
        steps=steps,
        seed=seed,
        noise=noise,
        max_episode_steps=max_episode_steps,
    )
    name = env_id.split("-")[0].replace("PointMaze_", "").lower()
    return write_minari(
        data,
        dataset_id=dataset_id or f"mpcdwm/pointmaze-{name}-bfs-v0",
        env_id=env_id,
        max_episode_steps=max_episode_steps,
        ref_min_score=0.0,  # return 0 = goal not reached
        ref_max_score=1.0,  # return 1 = goal reached (episode ends there)
        extra_metadata={
            "mpcdwm_recipe": "bfs-waypoint",
            "mpcdwm_noise": noise,
            "mpcdwm_seed": seed,
        },
        out=Path(out) if out is not None else None,
        overwrite=overwrite,
    )
