"""Environments: making Gymnasium envs the one way every part sees them.

Observations reach agents, world models and planners as flat float32 vectors;
goal-conditioned (dict) observations are flattened in
:data:`mpcdwm.data.DICT_OBS_ORDER`. Maze environments come from the optional
``maze`` extra (``gymnasium-robotics``).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from mpcdwm.data import flatten_observation


class FlattenDictObservation(gym.ObservationWrapper):
    """Flat ``float32`` observations from a dict observation space (fixed key order)."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        sample = flatten_observation(env.observation_space.sample())
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, sample.shape, np.float32)

    def observation(self, observation: Any) -> np.ndarray:
        return flatten_observation(observation)


def make_env(env_id: str, **kwargs: Any) -> gym.Env:
    """``gym.make(env_id)`` with dict observations flattened.

    Raises a clear error for unknown ids and for maze ids without the extra.
    """
    if "Maze" in env_id:
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
