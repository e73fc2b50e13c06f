"""Sparse-reward navigation tasks: PointMaze and AntMaze collection.

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

AntMaze, made here as D4RL did: :class:`AntGoalEnv` (``mpcdwm/AntGoal-v1``) is the task
of a goal-reaching low-level ant (``mpcdwm collect --env mpcdwm/AntGoal-v1 --recipe expert``
trains the project's online TD3 on it, checkpointed and resumable: Gymnasium's Ant walking
to goals 2-5 m away); :func:`collect_antmaze` drives it along BFS waypoints through
gymnasium-robotics' AntMaze with D4RL's ``play`` (hand-picked start and goal cells) and
``diverse`` (any cells) recipes, sparse reward 1 at the goal where the episode ends
(``mpcdwm collect --env AntMaze_Large-v5 --recipe diverse``). Their environment is D4RL's
evaluation task of the maze (:func:`make_eval_antmaze`, ``mpcdwm/AntMaze_Large_Eval-v5``: one
fixed start and goal), so agents trained on them are scored as D4RL scores. AntMaze datasets
are also loaded from D4RL HDF5 files (goal from ``infos/goal`` appended; evaluated on the same
tasks) and Minari ``D4RL/antmaze`` datasets, see :mod:`mpcdwm.data`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from mpcdwm.data import (
    D4RL_EVAL_CELLS,
    antmaze_eval_id,
    antmaze_eval_size,
    flatten_observation,
)
from mpcdwm.envs import limit_kwargs, make_env, remove_maze_model_file
from mpcdwm.minari_io import TRANSITION_FIELDS, write_minari

Cell = tuple[int, int]

POINTMAZE_NOISE = 0.3
"""Default std of the Gaussian action noise added to the BFS controller's actions (actions in
[-1, 1]), for the Python API and ``mpcdwm collect`` alike: enough spread for an offline
learner to see recoveries, little enough that (almost) every episode reaches its goal."""


ANT_OBS_DIM = 27
"""Gymnasium Ant-v5 without x/y and contact forces: ``qpos[2:]`` (13) + ``qvel`` (14), the
layout of AntMaze-v5's ``observation`` (and of D4RL's AntMaze ant)."""


ANT_GOAL_REWARD: dict[str, float] = {"healthy_reward": 0.25, "ctrl_cost_weight": 0.1}
"""Ant-v5's reward weights as :class:`AntGoalEnv` sets them (Ant-v5's own: 1.0 and 0.5).
With Ant-v5's survive bonus of 1 per step and its control cost, standing still outscored
walking to the goal at ~1 m/s: a TD3 ant trained on that reward to 760k env steps stood
still and reached 0-10% of its goals (``benchmarks/results/ant_goal/curve.md``, v0)."""


def goal_in_heading_frame(ant_obs: np.ndarray, offset_xy: np.ndarray) -> np.ndarray:
    """A world-frame (x, y) offset from the torso, shape (2,), in the frame of the torso's
    heading (its yaw, read from the quaternion ``ant_obs[1:5]`` = (w, x, y, z) of the
    27-entry ant observation): first entry ahead, second to the left. A policy given
    goals this way learns one gait per relative direction instead of one per heading."""
    w, x, y, z = (float(v) for v in ant_obs[1:5])
    yaw = np.arctan2(2.0 * (w * z + x * y), 1.0 - 2.0 * (y * y + z * z))
    c, s = np.cos(yaw), np.sin(yaw)
    dx, dy = float(offset_xy[0]), float(offset_xy[1])
    return np.array([c * dx + s * dy, -s * dx + c * dy])


def walking_reward(before: float, after: float, dt: float, ant_info: dict[str, Any]) -> float:
    """The goal-reaching ant's reward for one step, before any goal bonus: the torso's velocity
    toward its target (m/s, distances ``before`` and ``after`` the step of ``dt`` seconds) plus
    Ant-v5's survive bonus, control and contact costs from its step ``ant_info`` (at the weights
    of :data:`ANT_GOAL_REWARD`, which the env was made with)."""
    return (before - after) / dt + sum(
        float(ant_info[k]) for k in ("reward_survive", "reward_ctrl", "reward_contact")
    )


def torso_on_its_back(qpos: np.ndarray) -> bool:
    """Whether the ant with MuJoCo ``qpos`` (x, y, z, then the torso's quaternion w, x, y, z,
    then the joints) lies on its back (:func:`upside_down`)."""
    return bool(upside_down(qpos[4], qpos[5]))


class AntGoalEnv(gym.Env):
    """Gymnasium's Ant (v5) walking to a goal: the low-level task of AntMaze collection.

    Observation ``(29,)``: the ant's own 27 entries (:data:`ANT_OBS_DIM`) then the goal
    relative to the torso in the frame of its heading (:func:`goal_in_heading_frame`), so a
    policy trained here follows any waypoint given that way, AntMaze's included. Goals are
    drawn around the ant at a distance uniform in ``goal_distance`` (metres) and a uniform
    angle. Reward per step: the torso's velocity toward the goal (m/s, the progress
    ``(d_before - d_after) / dt``), ``goal_bonus`` on the step that reaches it, plus Ant-v5's
    survive bonus, control cost and contact cost at the weights of :data:`ANT_GOAL_REWARD`
    (``ant_kwargs`` override them), so walking to the goal pays and standing still does
    not. A goal counts as reached within ``goal_radius``: with ``resample_goal`` (training)
    a new goal is drawn and the episode goes on; without (evaluation), the episode ends
    there. Unhealthy ants end the episode as in Ant-v5, and so do ants on their back (the
    torso's up axis below the horizon; Ant-v5's height rule lets them lie there, but in a
    maze with no such rule a flipped ant is stuck for the rest of the episode: a first v1
    ant, trained without it, flipped in a quarter of its U-maze episodes). ``info``: ``goal``
    (2,), ``success`` (this step reached it), ``goals_reached`` (this episode), ``flipped``.
    Registered as
    ``mpcdwm/AntGoal-v1`` (500 steps, 25 s) by :func:`mpcdwm.envs.make_env` (``-v0``, with
    world-frame goals and Ant-v5's weights, is gone: its policies stood still).
    """

    metadata = {"render_modes": []}

    def __init__(
        self,
        goal_distance: tuple[float, float] = (2.0, 5.0),
        goal_radius: float = 0.5,
        resample_goal: bool = True,
        goal_bonus: float = 5.0,
        **ant_kwargs: Any,
    ) -> None:
        if not 0 < goal_distance[0] <= goal_distance[1] or not goal_radius > 0:
            raise ValueError(
                f"AntGoalEnv needs 0 < goal_distance[0] <= goal_distance[1] and goal_radius > 0, "
                f"got {goal_distance} and {goal_radius}."
            )
        kwargs = {"include_cfrc_ext_in_observation": False, **ANT_GOAL_REWARD, **ant_kwargs}
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
        self.goal_bonus = float(goal_bonus)
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
        goal = goal_in_heading_frame(ant_obs, self.goal - self.xy())
        return np.concatenate([ant_obs, goal]).astype(np.float32)

    def _info(self, success: bool, flipped: bool = False) -> dict[str, Any]:
        return {
            "goal": self.goal.copy(),
            "success": success,
            "goals_reached": self.goals_reached,
            "flipped": flipped,
        }

    def flipped(self) -> bool:
        """Whether the torso lies on its back (:func:`torso_on_its_back`)."""
        return torso_on_its_back(self.ant.data.qpos)

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
        reward = walking_reward(before, after, self.dt, info)
        success = bool(after < self.goal_radius)
        if success:
            reward += self.goal_bonus
            self.goals_reached += 1
            if self.resample_goal:
                self.goal = self._draw_goal()
            else:
                terminated = True
        flipped = self.flipped()
        terminated = terminated or flipped
        return (
            self._obs(ant_obs),
            float(reward),
            bool(terminated),
            False,
            self._info(success, flipped),
        )

    def close(self) -> None:
        self.ant.close()


class AntRouteEnv(gym.Env):
    """The goal-reaching ant's task inside a maze: walk a BFS route of waypoints.

    Each episode resets the ant in a random free cell of gymnasium-robotics'
    ``AntMaze_{maze}-v5`` with a goal in another (as the ``diverse`` recipe draws them) and
    hands it the route's waypoints as AntMaze collection does (:func:`route_waypoints`,
    :func:`next_waypoint`: cell centres, the next one once within half a cell, the goal last).
    Observation ``(29,)``, as :class:`AntGoalEnv`'s: the ant's 27 entries then the current
    waypoint relative to the torso in its heading's frame, so a policy trained here drives
    :func:`collect_antmaze` unchanged. Reward per step: the torso's velocity toward the
    current waypoint (m/s), ``goal_bonus`` on the step that reaches the goal (the episode
    ends there, as the maze's), and Ant-v5's survive bonus, control and contact costs at
    :data:`ANT_GOAL_REWARD`'s weights. A fall (Ant-v5's height rule) or an ant on its back
    ends the episode. Why: the open-arena ant falls ~0.5 times per 1000 steps and most of the
    data's failed routes end in a fall at the maze's turns and walls, which an ant trained in
    the open never meets. ``info``: ``goal`` (2,), ``success``, ``goals_reached`` (0 or 1),
    ``waypoint`` (2,), ``flipped``.
    Registered as ``mpcdwm/AntRoute-v1`` (the large maze, 1000 steps, D4RL's time limit).
    """

    metadata = {"render_modes": []}

    def __init__(self, maze: str = "Large", goal_bonus: float = 5.0) -> None:
        if maze not in D4RL_EVAL_CELLS:
            raise ValueError(f"AntRouteEnv mazes are {list(D4RL_EVAL_CELLS)}, got {maze!r}.")
        env = make_env(f"AntMaze_{maze}-v5", **ANT_GOAL_REWARD)
        self.maze_env = env.unwrapped  # this env's registration sets the time limit
        self.maze = self.maze_env.maze
        self.cells = antmaze_cells(self.maze.maze_map, f"AntMaze_{maze}-v5", "diverse")
        self.goal_bonus = float(goal_bonus)
        self.action_space = self.maze_env.action_space
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (ANT_OBS_DIM + 2,), np.float32)
        self.route: list[np.ndarray] = []
        self.k = 0

    @property
    def dt(self) -> float:
        return float(self.maze_env.ant_env.dt)

    def xy(self) -> np.ndarray:
        """The torso's (x, y), shape (2,)."""
        return np.array(self.maze_env.ant_env.data.qpos[:2], dtype=np.float64)

    def _obs(self, flat: np.ndarray) -> np.ndarray:
        ant = flat[2 : 2 + ANT_OBS_DIM]
        target = goal_in_heading_frame(ant, self.route[self.k] - self.xy())
        return np.concatenate([ant, target]).astype(np.float32)

    def _info(self, success: bool, flipped: bool = False) -> dict[str, Any]:
        return {
            "goal": self.route[-1].copy(),
            "success": success,
            "goals_reached": int(success),  # one goal per episode
            "waypoint": self.route[self.k].copy(),
            "flipped": flipped,
        }

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        picks = self.np_random.choice(len(self.cells), size=2, replace=False)
        start, goal = self.cells[picks[0]], self.cells[picks[1]]
        cells = {"reset_cell": np.array(start), "goal_cell": np.array(goal)}
        obs, _ = self.maze_env.reset(seed=int(self.np_random.integers(2**31)), options=cells)
        flat = flatten_observation(obs)
        self.route = route_waypoints(self.maze, start, goal, flat[-2:].astype(np.float64))
        self.k = next_waypoint(self.maze, self.route, self.xy())
        return self._obs(flat), self._info(False)

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        target = self.route[self.k]
        before = np.linalg.norm(target - self.xy())
        obs, _, _, _, info = self.maze_env.step(action)
        after = np.linalg.norm(target - self.xy())
        success = bool(info["success"])
        reward = walking_reward(before, after, self.dt, info) + self.goal_bonus * success
        flipped = torso_on_its_back(self.maze_env.ant_env.data.qpos)
        terminated = success or flipped or not self.maze_env.ant_env.is_healthy
        self.k = next_waypoint(self.maze, self.route, self.xy(), self.k)
        return (
            self._obs(flatten_observation(obs)),
            float(reward),
            terminated,
            False,
            self._info(success, flipped),
        )

    def close(self) -> None:
        self.maze_env.close()


def ant_goal_episodes(
    policy: Callable[[np.ndarray], np.ndarray],
    episodes: int,
    seed: int,
    resample_goal: bool = False,
    env_id: str = "mpcdwm/AntGoal-v1",
) -> dict[str, np.ndarray]:
    """Play ``policy`` (29 inputs -> 8 actions) for ``episodes`` episodes of ``env_id``;
    episode ``j`` resets with ``seed + j``. ``mpcdwm/AntGoal-v1``: by default evaluation
    episodes (``resample_goal=False``: an episode ends at its goal, on a fall, on the ant's
    back or at the 500-step limit); with ``resample_goal`` the ant walks on to a new goal
    at each one until it falls or time runs out. ``mpcdwm/AntRoute-v1``
    (:class:`AntRouteEnv`, ``resample_goal`` must be False): a route through the large maze
    per episode. Returns per episode ``success`` (bool, the last step reached a goal),
    ``steps`` (int), ``flipped`` (bool), ``fell`` (bool: ended by a fall, Ant-v5's height rule
    or on its back) and ``goals`` (int, goals reached)."""
    in_open = env_id.startswith("mpcdwm/AntGoal")
    if resample_goal and not in_open:
        raise ValueError(f"resample_goal is an option of mpcdwm/AntGoal-v1, not of {env_id}.")
    env = make_env(env_id, **({"resample_goal": resample_goal} if in_open else {}))
    out: dict[str, list] = {k: [] for k in ("success", "steps", "flipped", "fell", "goals")}
    for j in range(episodes):
        obs, _ = env.reset(seed=seed + j)
        done, t = False, 0
        while not done:
            obs, _, terminated, truncated, info = env.step(policy(obs))
            t += 1
            done = terminated or truncated
        out["success"].append(bool(info["success"]))
        out["steps"].append(t)
        out["flipped"].append(bool(info["flipped"]))
        out["fell"].append(bool(terminated and not info["success"]))
        out["goals"].append(int(info["goals_reached"]))
    env.close()
    return {k: np.array(v) for k, v in out.items()}


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

    def act(obs: np.ndarray, waypoint: np.ndarray) -> np.ndarray:
        noisy = waypoint_action(obs[2:4], obs[4:6], waypoint) + noise * rng.standard_normal(2)
        return np.clip(noisy, -1.0, 1.0).astype(np.float32)

    ep = 0
    while (ep < episodes) if episodes is not None else (len(rows["actions"]) < steps):
        obs, _ = env.reset(seed=seed + ep)
        ep += 1
        start, goal = (tuple(maze.cell_xy_to_rowcol(xy)) for xy in (obs[2:4], obs[6:8]))
        _drive_episode(env, obs, route_waypoints(maze, start, goal, obs[6:8]), act, rows)
    env.close()
    return _as_transitions(rows)


def route_waypoints(maze: Any, start: Cell, goal: Cell, goal_xy: np.ndarray) -> list[np.ndarray]:
    """Centres of the BFS path's cells between ``start`` and ``goal``, then the goal itself."""
    path = bfs_path(maze.maze_map, start, goal)
    inner = [np.asarray(maze.cell_rowcol_to_xy(np.array(c)), np.float64) for c in path[1:-1]]
    return [*inner, goal_xy]


def next_waypoint(maze: Any, waypoints: list[np.ndarray], position: np.ndarray, k: int = 0) -> int:
    """Index of the waypoint to head for: from ``k`` on, the first not within half a cell of
    ``position`` (the last, the goal, is never passed)."""
    half_cell = 0.5 * maze.maze_size_scaling
    while k < len(waypoints) - 1 and np.linalg.norm(waypoints[k] - position) < half_cell:
        k += 1
    return k


def _drive_episode(
    env: gym.Env,
    obs: np.ndarray,
    waypoints: list[np.ndarray],
    act: Callable[[np.ndarray, np.ndarray], np.ndarray],
    rows: dict[str, list[Any]],
    stuck: Callable[[np.ndarray], bool] | None = None,
    patience: int = 0,
) -> None:
    """Record one episode from ``obs`` into ``rows``: ``act(obs, waypoint)`` heads for the
    first waypoint not yet passed (within half a cell of the position ``obs[:2]``, the
    achieved goal of both mazes) until the env ends the episode, or until ``stuck(obs)`` has
    held for ``patience`` steps in a row (the episode is then truncated there)."""
    k, done, stuck_for = 0, False, 0
    while not done:
        k = next_waypoint(env.unwrapped.maze, waypoints, obs[:2], k)
        action = act(obs, waypoints[k])
        nxt, reward, term, trunc, _ = env.step(action)
        stuck_for = stuck_for + 1 if stuck is not None and stuck(nxt) else 0
        trunc = bool(trunc) or (stuck is not None and stuck_for >= patience and not term)
        for key, val in zip(rows, (obs, action, reward, nxt, term, trunc), strict=True):
            rows[key].append(val)
        obs, done = nxt, term or trunc


def _as_transitions(rows: dict[str, list[Any]]) -> dict[str, np.ndarray]:
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
    meta = {"mpcdwm_recipe": "bfs-waypoint", "mpcdwm_noise": noise, "mpcdwm_seed": seed}
    dataset_id = dataset_id or f"mpcdwm/pointmaze-{name}-bfs-v0"
    return _write_success_dataset(data, env_id, dataset_id, max_episode_steps, meta, out, overwrite)


def _write_success_dataset(
    data: dict[str, np.ndarray],
    env_id: str,
    dataset_id: str,
    max_episode_steps: int | None,
    metadata: dict[str, Any],
    out: str | None,
    overwrite: bool,
) -> str:
    """Write a maze dataset whose normalised score is the success rate."""
    return write_minari(
        data,
        dataset_id=dataset_id,
        env_id=env_id,
        max_episode_steps=max_episode_steps,
        ref_min_score=0.0,  # return 0 = goal not reached
        ref_max_score=1.0,  # return 1 = goal reached (episode ends there)
        extra_metadata=metadata,
        out=Path(out) if out is not None else None,
        overwrite=overwrite,
    )


# --------------------------------------------------------------------------- AntMaze

ANTMAZE_RECIPES: tuple[str, ...] = ("play", "diverse")
"""D4RL's AntMaze recipes: ``play`` drives between hand-picked start and goal cells,
``diverse`` between any free cells."""
ANTMAZE_NOISE = 0.2
"""Default std of the Gaussian noise added to the goal-reaching ant's actions ([-1, 1]; D4RL's
AntMaze datasets used 0.2 too)."""
ANTMAZE_FLIP_PATIENCE = 25
"""AntMaze collection ends an episode (a truncation) once the ant has lain on its back for
this many steps (1.25 s): it cannot turn back over. Without this rule 21-45% of the medium and
large maze episodes ended with the ant on its back and 42-46% of their transitions were of an
ant lying there until the time limit (~2% with it); the steps kept show where a flip leads."""


def ant_on_its_back(obs: np.ndarray) -> np.ndarray:
    """Whether the ant of flattened AntMaze observations ``(..., [xy (2), ant (27), goal (2)])``
    lies on its back: ``(...)`` bools (:func:`upside_down` of the torso's quaternion, the ant's
    entries 1-4 after its height), so a whole dataset is tested at once."""
    obs = np.asarray(obs)
    return upside_down(obs[..., 2 + 2], obs[..., 2 + 3])


def upside_down(qx: np.ndarray | float, qy: np.ndarray | float) -> np.ndarray:
    """Whether a body with orientation quaternion (w, ``qx``, ``qy``, z) has its up axis,
    ``1 - 2(qx^2 + qy^2)``, below the horizon (elementwise)."""
    return 1.0 - 2.0 * (np.square(qx) + np.square(qy)) < 0.0


UMAZE_PLAY_CELLS: list[Cell] = [(1, 1), (3, 1)]
"""``play`` cells of the U-maze: its two ends (D4RL's umaze task)."""


def eval_maze_map(size: str) -> list[list[Any]]:
    """Gymnasium-Robotics' ``size`` maze (UMaze, Medium, Large) with D4RL's evaluation start
    (``r``) and goal (``g``) cells placed (:data:`D4RL_EVAL_CELLS`)."""
    if size not in D4RL_EVAL_CELLS:
        raise ValueError(f"AntMaze evaluation mazes are {list(D4RL_EVAL_CELLS)}, got {size!r}.")
    from gymnasium_robotics.envs.maze import maps

    base = {"UMaze": maps.U_MAZE, "Medium": maps.MEDIUM_MAZE, "Large": maps.LARGE_MAZE}[size]
    grid = [list(row) for row in base]
    (rr, rc), (gr, gc) = D4RL_EVAL_CELLS[size]
    grid[rr][rc], grid[gr][gc] = maps.RESET, maps.GOAL
    return grid


def make_eval_antmaze(size: str, **kwargs: Any) -> gym.Env:
    """AntMaze-v5 with D4RL's evaluation task: every episode starts in the same cell and has
    the same goal (the env adds its position noise to both). Registered as
    ``mpcdwm/AntMaze_{size}_Eval-v5`` with D4RL's time limits (700 steps for UMaze, 1000
    otherwise; :data:`mpcdwm.envs.MPCDWM_ENVS`); ``kwargs`` go to the env."""
    from gymnasium_robotics.envs.maze.ant_maze_v5 import AntMazeEnv

    env = AntMazeEnv(maze_map=eval_maze_map(size), **kwargs)
    remove_maze_model_file(env)  # built directly too (probes), not only through make_env
    return env


def play_cells(env_id: str) -> list[Cell]:
    """Hand-picked start/goal cells of ``env_id``'s maze: the cells gymnasium-robotics marks
    ``c`` in its ``*_DIVERSE_GR`` map of the same maze (Medium, Large), the two ends of the
    U-maze; empty for other mazes."""
    if "_UMaze" in env_id:
        return list(UMAZE_PLAY_CELLS)
    from gymnasium_robotics.envs.maze import maps

    picked = {"_Medium": maps.MEDIUM_MAZE_DIVERSE_GR, "_Large": maps.LARGE_MAZE_DIVERSE_GR}
    grid = next((g for key, g in picked.items() if key in env_id), [])
    return [(r, c) for r, row in enumerate(grid) for c, cell in enumerate(row) if cell == "c"]


def antmaze_cells(maze_map: list[list[Any]], env_id: str, recipe: str) -> list[Cell]:
    """Cells the episodes of ``recipe`` start and end in: every free cell of ``maze_map``
    (``diverse``), or the :func:`play_cells` that are free in it (``play``; every free cell
    for mazes without hand-picked cells)."""
    if recipe not in ANTMAZE_RECIPES:
        raise ValueError(f"AntMaze recipes are {ANTMAZE_RECIPES}, got {recipe!r}.")
    free = [(r, c) for r, row in enumerate(maze_map) for c, cell in enumerate(row) if cell != 1]
    if recipe == "play":
        return [cell for cell in play_cells(env_id) if cell in free] or free
    return free


def waypoint_steering(
    policy: Callable[[np.ndarray], np.ndarray], noise: float, rng: np.random.Generator
) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """``act(obs, waypoint) -> action (8,)``: the goal-reaching ``policy`` steered toward
    ``waypoint`` (2,) from a flattened AntMaze observation ``obs`` (31,), as collection drives
    it: it sees the ant's 27 entries and the waypoint relative to the torso in its heading's
    frame, and its action gets N(0, ``noise``) from ``rng``, clipped to [-1, 1]."""

    def act(obs: np.ndarray, waypoint: np.ndarray) -> np.ndarray:
        ant = obs[2 : 2 + ANT_OBS_DIM]
        low_level = np.concatenate([ant, goal_in_heading_frame(ant, waypoint - obs[:2])])
        action = np.asarray(policy(low_level.astype(np.float32)))
        action = np.clip(action + noise * rng.standard_normal(action.shape), -1.0, 1.0)
        return action.astype(np.float32)

    return act


def collect_antmaze(
    env_id: str,
    policy: Callable[[np.ndarray], np.ndarray],
    *,
    recipe: str,
    steps: int,
    seed: int,
    noise: float = ANTMAZE_NOISE,
    max_episode_steps: int | None = None,
    env_kwargs: dict[str, Any] | None = None,
    flip_patience: int | None = ANTMAZE_FLIP_PATIENCE,
) -> dict[str, np.ndarray]:
    """Drive a goal-reaching ant through an AntMaze along BFS waypoints, as D4RL did.

    Each episode draws a start and a goal cell (two different ones when the recipe has
    more than one, :func:`antmaze_cells`), resets there (the env adds its position noise),
    and follows the shortest path of cells: ``policy`` (e.g. :func:`mpcdwm.online_td3.load_policy`
    of an agent trained on :class:`AntGoalEnv`) sees the ant's 27 entries and the next
    waypoint relative to the torso in its heading's frame, as in training; its action gets
    Gaussian ``noise``. Episodes end at the goal (reward 1, terminal), at the time limit, or
    once the ant has lain on its back for ``flip_patience`` steps (truncated; default
    :data:`ANTMAZE_FLIP_PATIENCE`, None: never), until at least ``steps`` transitions.
    ``env_kwargs`` go to the env (e.g. ``maze_map``). Returns collect-style transitions with
    the flattened observations ``[achieved_goal (2), ant (27), desired_goal (2)]``.
    """
    if steps < 1 or noise < 0 or (flip_patience is not None and flip_patience < 1):
        raise ValueError(
            "AntMaze collection needs steps >= 1, noise >= 0 and flip_patience >= 1 or None, "
            f"got {steps}, {noise}, {flip_patience}."
        )
    if not env_id.startswith("AntMaze"):
        raise ValueError(f"{env_id!r} is not an AntMaze id (e.g. AntMaze_Large-v5).")
    env = make_env(env_id, **limit_kwargs(max_episode_steps), **(env_kwargs or {}))
    maze = env.unwrapped.maze
    cells = antmaze_cells(maze.maze_map, env_id, recipe)
    rng = np.random.default_rng(seed)
    rows: dict[str, list[Any]] = {k: [] for k in TRANSITION_FIELDS}

    act = waypoint_steering(policy, noise, rng)
    ep = 0
    while len(rows["actions"]) < steps:
        picks = rng.choice(len(cells), size=2, replace=len(cells) < 2)
        start, goal = cells[picks[0]], cells[picks[1]]
        options = {"reset_cell": np.array(start), "goal_cell": np.array(goal)}
        obs, _ = env.reset(seed=seed + ep, options=options)
        ep += 1
        route = route_waypoints(maze, start, goal, obs[-2:])
        stuck = None if flip_patience is None else ant_on_its_back
        _drive_episode(env, obs, route, act, rows, stuck, flip_patience or 0)
    env.close()
    return _as_transitions(rows)


def write_antmaze_dataset(
    env_id: str,
    policy: Callable[[np.ndarray], np.ndarray],
    *,
    recipe: str,
    steps: int,
    seed: int,
    out: str | None = None,
    dataset_id: str | None = None,
    noise: float = ANTMAZE_NOISE,
    max_episode_steps: int | None = None,
    overwrite: bool = False,
    extra_metadata: dict[str, Any] | None = None,
    flip_patience: int | None = ANTMAZE_FLIP_PATIENCE,
) -> str:
    """Collect with :func:`collect_antmaze` and write a Minari dataset (ref scores 0 and 1:
    the normalised score is the success rate, as D4RL's AntMaze). The dataset's environment
    is the maze's evaluation task (:func:`antmaze_eval_id`: D4RL's fixed start and goal, its
    time limit), which agents trained on it are evaluated in; the maze collection ran in is
    kept as ``mpcdwm_collect_env``. Mazes without a D4RL task (e.g. ``AntMaze_Open-v5``)
    record themselves. Returns the id, or ``out`` as a string."""
    # Decided before the collection, which can take hours: the evaluation task's own time
    # limit, not the collection's.
    if antmaze_eval_size(env_id) is None:
        eval_id, eval_limit = env_id, max_episode_steps
    else:
        eval_id, eval_limit = antmaze_eval_id(env_id), None
    data = collect_antmaze(
        env_id,
        policy,
        recipe=recipe,
        steps=steps,
        seed=seed,
        noise=noise,
        max_episode_steps=max_episode_steps,
        flip_patience=flip_patience,
    )
    name = env_id.split("-")[0].replace("AntMaze_", "").lower()
    meta = {
        "mpcdwm_recipe": recipe,
        "mpcdwm_noise": noise,
        "mpcdwm_flip_patience": flip_patience,
        "mpcdwm_seed": seed,
        "mpcdwm_collect_env": env_id,
    }
    dataset_id = dataset_id or f"mpcdwm/antmaze-{name}-{recipe}-v0"
    meta |= extra_metadata or {}
    return _write_success_dataset(data, eval_id, dataset_id, eval_limit, meta, out, overwrite)
