"""Environments: making Gymnasium envs the one way every part sees them.

Observations reach agents, world models and planners as flat float32 vectors;
goal-conditioned (dict) observations are flattened by
:func:`mpcdwm.data.flatten_observation`, the layout datasets store. Maze environments
come from the optional ``maze`` extra (``gymnasium-robotics``) and get
:data:`MAZE_DEFAULTS`: the episode ends when the goal is reached (reward 1 on that step,
so a return is 1 for a success and 0 otherwise, as D4RL's AntMaze evaluation) and
AntMaze-v5 leaves out contact forces (31 = D4RL's 29 + goal). See :mod:`mpcdwm.maze`.

:func:`check_dataset_against_env` checks a dataset against the env it was recorded in.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import warnings
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from mpcdwm.data import Dataset, check_against_env, flatten_observation


class FlattenDictObservation(gym.ObservationWrapper, gym.utils.RecordConstructorArgs):
    """Flat ``float32`` observations from a dict observation space (fixed key order).

    Records its constructor args so that ``env.spec`` can be re-made (Minari needs it).
    """

    def __init__(self, env: gym.Env):
        gym.utils.RecordConstructorArgs.__init__(self)
        super().__init__(env)
        sample = flatten_observation(env.observation_space.sample())
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, sample.shape, np.float32)

    def observation(self, observation: Any) -> np.ndarray:
        return flatten_observation(observation)


MAZE_DEFAULTS: dict[str, Any] = {"continuing_task": False, "reset_target": False}
"""Keyword arguments every PointMaze/AntMaze env gets unless the caller overrides them."""

ANTMAZE_V5_DEFAULTS: dict[str, Any] = {"include_cfrc_ext_in_observation": False}
"""AntMaze-v5 without the 84 contact-force columns, sized like D4RL's observations."""

MPCDWM_ENVS: dict[str, dict[str, Any]] = {
    "mpcdwm/AntGoal-v1": {"entry_point": "mpcdwm.maze:AntGoalEnv", "max_episode_steps": 500},
    "mpcdwm/AntRoute-v1": {"entry_point": "mpcdwm.maze:AntRouteEnv", "max_episode_steps": 1000},
    **{
        f"mpcdwm/AntMaze_{size}_Eval-v5": {
            "entry_point": "mpcdwm.maze:make_eval_antmaze",
            "kwargs": {"size": size},
            "max_episode_steps": steps,  # D4RL's AntMaze time limits
        }
        for size, steps in (("UMaze", 700), ("Medium", 1000), ("Large", 1000))
    },
}
"""Environments this package defines (registered with Gymnasium on first use): the
goal-reaching ant whose policy walks AntMaze's waypoints (:class:`mpcdwm.maze.AntGoalEnv`),
and D4RL's AntMaze evaluation tasks, one fixed start and goal per maze
(:func:`mpcdwm.maze.make_eval_antmaze`): the env AntMaze datasets are evaluated in."""


def _register_robotics() -> None:
    """Register gymnasium-robotics' envs (ImportError without the maze extra). Its import
    prints a vendor notice about its Adroit hand envs on stderr on every command; a maze
    command has no use for it, so it is swallowed (errors still raise)."""
    with contextlib.redirect_stderr(io.StringIO()):
        import gymnasium_robotics
    gym.register_envs(gymnasium_robotics)


def _register_own(env_id: str) -> None:
    """Register ``env_id`` with Gymnasium if it is one of :data:`MPCDWM_ENVS`."""
    if env_id in MPCDWM_ENVS and env_id not in gym.registry:
        gym.register(env_id, **MPCDWM_ENVS[env_id])


def make_env(env_id: str, **kwargs: Any) -> gym.Env:
    """``gym.make(env_id)`` with dict observations flattened.

    Maze ids get :data:`MAZE_DEFAULTS` (and AntMaze-v5 :data:`ANTMAZE_V5_DEFAULTS`);
    ``kwargs`` override them. Raises a clear error for unknown ids and for maze
    ids without the extra.
    """
    _register_own(env_id)
    if "Maze" in env_id:
        defaults = dict(MAZE_DEFAULTS)
        if "AntMaze" in env_id and env_id.endswith("-v5"):
            defaults.update(ANTMAZE_V5_DEFAULTS)
        kwargs = {**defaults, **kwargs}
        try:
            _register_robotics()
        except ImportError as err:
            raise RuntimeError(
                f"{env_id} needs the maze extra: pip install 'mpcdwm[maze]'"
            ) from err
    try:
        env = gym.make(env_id, **kwargs)
    except gym.error.Error as err:
        raise ValueError(
            f"cannot make environment {env_id!r} ({err}). Use a Gymnasium id such as Hopper-v5."
        ) from err
    remove_maze_model_file(env)
    if isinstance(env.observation_space, gym.spaces.Dict):
        env = FlattenDictObservation(env)
    return env


def remove_maze_model_file(env: gym.Env) -> None:
    """Delete the MuJoCo model file a gymnasium-robotics maze wrote for ``env``, if any.

    Every PointMaze/AntMaze env writes its model to a new ``/tmp/ant_maze<time>.xml`` and
    never removes it; once the env is built the model is loaded, so the file can go."""
    maze_xml = getattr(env.unwrapped, "tmp_xml_file_path", None)
    if maze_xml is not None:
        Path(maze_xml).unlink(missing_ok=True)


def limit_kwargs(max_episode_steps: int | None) -> dict[str, Any]:
    """:func:`make_env` keyword arguments for an episode time limit (None: the env's own)."""
    return {} if max_episode_steps is None else {"max_episode_steps": max_episode_steps}


def env_sizes(env: gym.Env) -> tuple[int, int]:
    """(obs_dim, act_dim) of a flat-observation continuous-control env."""
    if not isinstance(env.action_space, gym.spaces.Box):
        raise ValueError("mpcdwm handles continuous (Box) action spaces only.")
    return int(np.prod(env.observation_space.shape)), int(np.prod(env.action_space.shape))


def is_registered(env_id: str) -> bool:
    """Whether Gymnasium knows ``env_id`` (maze ids: once the maze extra registered them).

    Looks the id up without making the environment, so it never hides a broken install.
    The package's own ids (:data:`MPCDWM_ENVS`) count as registered.
    """
    _register_own(env_id)
    if "Maze" in env_id:
        try:
            _register_robotics()
        except ImportError:
            return False
    try:
        gym.spec(env_id)
    except gym.error.Error:  # no spec: unknown name, version or namespace
        return False
    return True


_UNCHECKED: set[str] = set()


def check_dataset_against_env(dataset: Dataset) -> None:
    """Check ``dataset``'s observation size and action range against ``dataset.env_id``.

    The env is made with :func:`make_env`, exactly as agents see it; any failure to make
    a registered env (a broken MuJoCo install, bad keyword arguments) is raised. Only an
    id that Gymnasium does not know skips the check, with one warning per id.
    """
    if not is_registered(dataset.env_id):
        if dataset.env_id not in _UNCHECKED:
            _UNCHECKED.add(dataset.env_id)
            warnings.warn(
                f"environment {dataset.env_id!r} is not registered in Gymnasium: dataset "
                f"{dataset.name!r} is not checked against it (observation size, action range).",
                stacklevel=2,
            )
        return
    env = make_env(dataset.env_id)
    try:
        check_against_env(dataset, env)
    finally:
        env.close()


# ----------------------------------------------------------------- health rules


@dataclasses.dataclass(frozen=True)
class HealthRule:
    """An env's termination rule on flat observations: the episode ends as soon as some
    ``obs[index[k]]`` leaves the open interval ``(low[k], high[k])`` (or is not finite).

    Read from the Gymnasium v5 env itself by :func:`health_rule`, so it follows the env's
    own ``healthy_*_range`` settings; model-based offline RL (MOPO, MOBILE) uses the same
    known rules for imagined rollouts.
    """

    env_id: str
    index: tuple[int, ...]
    low: tuple[float, ...]
    high: tuple[float, ...]

    def healthy(self, obs: np.ndarray) -> np.ndarray:
        """``(..., obs_dim) -> (...)`` bool, as the env's ``is_healthy``."""
        x = np.asarray(obs)[..., list(self.index)]
        inside = (x > np.asarray(self.low)) & (x < np.asarray(self.high))
        return inside.all(-1) & np.isfinite(obs).all(-1)


def health_rule(env: gym.Env) -> HealthRule | None:
    """The health rule of a MuJoCo locomotion env (Hopper, Walker2d, Ant, Humanoid-style
    ``healthy_*_range`` attributes), in observation coordinates; None when the env has no
    such rule or does not terminate on it (``terminate_when_unhealthy=False``).

    Planar bodies (Hopper, Walker2d: a ``healthy_angle_range``) keep height and angle at
    ``qpos[1:3]``; others (Ant) the height at ``qpos[2]``. Hopper also bounds every entry of
    ``state_vector()[2:]`` (``qpos[2:]`` and ``qvel``). Observation positions come from the
    env's ``observation_structure`` (``skipped_qpos`` entries of qpos are not observed).
    """
    u = env.unwrapped
    z_range = getattr(u, "_healthy_z_range", None)
    structure = getattr(u, "observation_structure", None)
    if z_range is None or structure is None or not getattr(u, "_terminate_when_unhealthy", True):
        return None
    skipped, n_qpos = int(structure["skipped_qpos"]), int(structure["qpos"])

    def qpos(j: int) -> int:
        if j < skipped:
            raise ValueError(f"qpos[{j}] is not observed in {env.spec.id if env.spec else env}")
        return j - skipped

    index, low, high = [], [], []

    def bound(i: int, lo_hi: tuple[float, float]) -> None:
        index.append(i)
        low.append(float(lo_hi[0]))
        high.append(float(lo_hi[1]))

    angle_range = getattr(u, "_healthy_angle_range", None)
    if angle_range is not None:  # planar: qpos = [x, z, angle, joints...]
        bound(qpos(1), z_range)
        bound(qpos(2), angle_range)
        state_range = getattr(u, "_healthy_state_range", None)
        if state_range is not None:  # state_vector()[2:] = qpos[2:] and qvel
            for j in range(2, skipped + n_qpos):
                bound(qpos(j), state_range)
            for j in range(int(structure["qvel"])):
                bound(n_qpos + j, state_range)
    else:  # 3-D body: qpos = [x, y, z, quaternion, joints...]
        bound(qpos(2), z_range)
    env_id = env.spec.id if env.spec is not None else type(u).__name__
    return HealthRule(env_id, tuple(index), tuple(low), tuple(high))


@dataclasses.dataclass(frozen=True)
class GoalRule:
    """A goal-reaching env's sparse task on flat observations: the step whose observation has
    ``|obs[achieved] - obs[goal]| <= radius`` earns reward 1 and ends the episode (the maze
    convention of :data:`MAZE_DEFAULTS`). Read from the env itself by :func:`goal_rule`."""

    env_id: str
    achieved: tuple[int, ...]
    goal: tuple[int, ...]
    radius: float

    def distance(self, obs: np.ndarray) -> np.ndarray:
        """``(..., obs_dim) -> (...)`` Euclidean distance from the achieved to the goal position."""
        obs = np.asarray(obs)
        gap = obs[..., list(self.achieved)] - obs[..., list(self.goal)]
        return np.linalg.norm(gap, axis=-1)

    def reached(self, obs: np.ndarray) -> np.ndarray:
        """``(..., obs_dim) -> (...)`` bool, as the env's ``compute_terminated``."""
        return self.distance(obs) <= self.radius


def goal_rule(env: gym.Env) -> GoalRule | None:
    """The goal rule of a goal-reaching env with dict observations (gymnasium-robotics
    PointMaze/AntMaze, ``continuing_task=False``), in flat observation coordinates; None for
    any other env. Positions come from :func:`mpcdwm.data.flatten_observation` of the env's
    own dict space; the radius from the env's ``compute_terminated`` (bisection to 1e-9, so
    it follows the env rather than a copied constant: 0.45 in gymnasium-robotics)."""
    u = env.unwrapped
    space = u.observation_space
    terminated = getattr(u, "compute_terminated", None)
    if (
        terminated is None
        or getattr(u, "continuing_task", True)
        or not isinstance(space, gym.spaces.Dict)
        or not {"achieved_goal", "desired_goal"} <= set(space.spaces)
    ):
        return None
    # Mark every entry with its key's number, flatten, and read where each key landed.
    keys = list(space.spaces)
    marked = {k: np.full(space[k].shape, i, np.float32) for i, k in enumerate(keys)}
    flat = flatten_observation(marked)
    where = {k: tuple(int(j) for j in np.flatnonzero(flat == i)) for i, k in enumerate(keys)}
    dim = len(where["achieved_goal"])

    def ends(distance: float) -> bool:
        offset = np.zeros(dim)
        offset[0] = distance
        return bool(terminated(np.zeros(dim), offset, {}))

    lo, hi = 0.0, 100.0
    if not ends(lo) or ends(hi):
        return None
    while hi - lo > 1e-9:
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if ends(mid) else (lo, mid)
    env_id = env.spec.id if env.spec is not None else type(u).__name__
    return GoalRule(env_id, where["achieved_goal"], where["desired_goal"], lo)


def task_rule(env: gym.Env) -> HealthRule | GoalRule | None:
    """The env's known termination rule for imagined episodes: its health rule (locomotion)
    or its goal rule (goal-reaching mazes); None when it has neither."""
    return health_rule(env) or goal_rule(env)
