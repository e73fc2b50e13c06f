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

AntMaze: collecting it needs a goal-conditioned low-level locomotion policy, as D4RL's
did. :class:`AntGoalEnv` (``mpcdwm/AntGoal-v0``) is the task such a policy is trained on
(``mpcdwm collect --env mpcdwm/AntGoal-v0 --recipe expert`` trains the project's online TD3
on it, checkpointed and resumable): Gymnasium's Ant walking to goals 2-5 m away. AntMaze
datasets are also loaded from D4RL HDF5 files (goal from ``infos/goal`` appended) and
Minari ``D4RL/antmaze`` datasets, see :mod:`mpcdwm.data`.
"""

from __future__ import annotations

from collections import deque
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from mpcdwm.envs import limit_kwargs, make_env
from mpcdwm.minari_io import TRANSITION_FIELDS, write_minari

Cell = tuple[int, int]

POINTMAZE_NOISE = 0.3
"""Default std of the Gaussian action noise added to the BFS controller's actions (actions in
[-1, 1]), for the Python API and ``mpcdwm collect`` alike: enough spread for an offline
learner to see recoveries, little enough that (almost) every episode reaches its goal."""


ANT_OBS_DIM = 27
"""Gymnasium Ant-v5 without x/y and contact forces: ``qpos[2:]`` (13) + ``qvel`` (14), the
layout of AntMaze-v5's ``observation`` (and of D4RL's AntMaze ant)."""


class AntGoalEnv(gym.Env):
    """Gymnasium's Ant (v5) walking to a goal: the low-level task of AntMaze collection.

    Observation ``(29,)``: the ant's own 27 entries (:data:`ANT_OBS_DIM`) then the goal
    relative to the torso, ``goal_xy - ant_xy`` (world frame; the orientation is in the
    ant's entries), so a policy trained here follows any waypoint given that way, AntMaze's
    included. Goals are drawn around the ant at a distance uniform in ``goal_distance``
    (metres) and a uniform angle. Reward per step: the torso's velocity toward the goal
    (m/s, the progress ``(d_before - d_after) / dt``) plus Ant-v5's own survive bonus,
    control cost and contact cost, so walking to the goal replaces walking along x. A goal
    counts as reached within ``goal_radius``: with ``resample_goal`` (training) a new goal
    is drawn and the episode goes on; without (evaluation), the episode ends there.
    Unhealthy ants end the episode as in Ant-v5. ``info``: ``goal`` (2,), ``success``
    (this step reached it), ``goals_reached`` (this episode). Registered as
    ``mpcdwm/AntGoal-v0`` (500 steps, 25 s) by :func:`mpcdwm.envs.make_env`.
    """

    metadata = {"render_modes": []}

    def __init__(
        self,
        goal_distance: tuple[float, float] = (2.0, 5.0),
        goal_radius: float = 0.5,
        resample_goal: bool = True,
        **ant_kwargs: Any,
    ) -> None:
        if not 0 < goal_distance[0] <= goal_distance[1] or not goal_radius > 0:
            raise ValueError(
                f"AntGoalEnv needs 0 < goal_distance[0] <= goal_distance[1] and goal_radius > 0, "
                f"got {goal_distance} and {goal_radius}."
            )
        kwargs = {"include_cfrc_ext_in_observation": False, **ant_kwargs}
        # The bare MuJoCo env: the time limit is this env's (its registration), not Ant's.
        self.ant = gym.make("Ant-v5", **kwargs).unwrapped
        if self.ant.observation_space.shape != (ANT_OBS_DIM,):
            raise ValueError(
                f"AntGoalEnv needs Ant-v5's {ANT_OBS_DIM}-entry observation (no x/y, no contact "
                f"forces), got {self.ant.observation_space.shape} from {ant_kwargs}."
            )
        self.goal_distance = (float(goal_distance[0]), float(goal_distance[1]))
        self.goal_radius = float(goal_radius)
        self.resample_goal = resample_goal
        self.action_space = self.ant.action_space
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (ANT_OBS_DIM + 2,), np.float32)
        self.goal = np.zeros(2)
        self.goals_reached = 0

    @property
    def dt(self) -> float:
        return float(self.ant.dt)

    def xy(self) -> np.ndarray:
        """The torso's (x, y), shape (2,)."""
        return np.array(self.ant.data.qpos[:2], dtype=np.float64)

    def _draw_goal(self) -> np.ndarray:
        distance = self.np_random.uniform(*self.goal_distance)
        angle = self.np_random.uniform(0.0, 2.0 * np.pi)
        return self.xy() + distance * np.array([np.cos(angle), np.sin(angle)])

    def _obs(self, ant_obs: np.ndarray) -> np.ndarray:
        return np.concatenate([ant_obs, self.goal - self.xy()]).astype(np.float32)

    def _info(self, success: bool) -> dict[str, Any]:
        return {"goal": self.goal.copy(), "success": success, "goals_reached": self.goals_reached}

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        # The ant's reset noise comes from this env's generator: one seed fixes the episode.
        ant_obs, _ = self.ant.reset(seed=int(self.np_random.integers(2**31)))
        self.goal = self._draw_goal()
        self.goals_reached = 0
        return self._obs(ant_obs), self._info(False)

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        before = np.linalg.norm(self.goal - self.xy())
        ant_obs, _, terminated, _, info = self.ant.step(action)
        after = np.linalg.norm(self.goal - self.xy())
        reward = (before - after) / self.dt + sum(
            float(info[k]) for k in ("reward_survive", "reward_ctrl", "reward_contact")
        )
        success = bool(after < self.goal_radius)
        if success:
            self.goals_reached += 1
            if self.resample_goal:
                self.goal = self._draw_goal()
            else:
                terminated = True
        return self._obs(ant_obs), float(reward), bool(terminated), False, self._info(success)

    def close(self) -> None:
        self.ant.close()


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
