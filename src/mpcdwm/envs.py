"""Environments: making Gymnasium envs the one way every part sees them.

Observations reach agents, world models and planners as flat float32 vectors;
goal-conditioned (dict) observations are flattened in
:data:`mpcdwm.data.DICT_OBS_ORDER`. Maze environments come from the optional
``maze`` extra (``gymnasium-robotics``) and get :data:`MAZE_DEFAULTS`: the episode
ends when the goal is reached (reward 1 on that step, so a return is 1 for a
success and 0 otherwise, as D4RL's AntMaze evaluation) and AntMaze-v5 leaves out
contact forces (31 = D4RL's 29 + goal). See :mod:`mpcdwm.maze`.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from mpcdwm.data import flatten_observation


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


def make_env(env_id: str, **kwargs: Any) -> gym.Env:
    """``gym.make(env_id)`` with dict observations flattened.

    Maze ids get :data:`MAZE_DEFAULTS` (and AntMaze-v5 :data:`ANTMAZE_V5_DEFAULTS`);
    ``kwargs`` override them. Raises a clear error for unknown ids and for maze
    ids without the extra.
    """
    if "Maze" in env_id:
        defaults = dict(MAZE_DEFAULTS)
        if env_id.startswith("AntMaze") and env_id.endswith("-v5"):
            defaults.update(ANTMAZE_V5_DEFAULTS)
        kwargs = {**defaults, **kwargs}
        try:
            import gymnasium_robotics

            gym.register_envs(gymnasium_robotics)
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
    if isinstance(env.observation_space, gym.spaces.Dict):
        env = FlattenDictObservation(env)
    return env


def env_sizes(env: gym.Env) -> tuple[int, int]:
    """(obs_dim, act_dim) of a flat-observation continuous-control env."""
    if not isinstance(env.action_space, gym.spaces.Box):
        raise ValueError("mpcdwm handles continuous (Box) action spaces only.")
    return int(np.prod(env.observation_space.shape)), int(np.prod(env.action_space.shape))
