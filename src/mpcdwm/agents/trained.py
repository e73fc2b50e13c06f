"""A trained agent as the planners use it: pure ``act``/``critic`` in RAW env units.

Owns :class:`TrainedAgent`, wrapping an agent's normalised-space functions
(:func:`make_trained_agent`), and loading one from a checkpoint (:func:`load_agent`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mpcdwm.agents.presets import AgentConfig, agent_module, config_from_dict
from mpcdwm.agents.transform import DataTransform
from mpcdwm.checkpoint import CheckpointError, checkpoint_file, load_checkpoint

Params = Any


@dataclasses.dataclass(frozen=True)
class TrainedAgent:
    """A trained agent as the planners use it; everything in RAW env units.

    ``act(actor_params, obs) -> action``: ``obs (..., obs_dim)`` raw observations,
    action ``(..., act_dim)`` within ``[action_low, action_high]``; pure, jittable and
    differentiable w.r.t. ``actor_params`` (normalisation constants are closed over).
    ``critic(critic_params, obs, action) -> q (...)``: min over the twin critics, in raw
    reward units (the training reward scale is undone; a reward shift ``c`` is undone
    as if the episode continued forever, i.e. ``c / (1 - gamma)`` is removed, which is
    exact up to a constant for gradients).
    """

    actor_params: Params
    critic_params: Params
    act: Callable[[Params, jax.Array], jax.Array]
    critic: Callable[[Params, jax.Array, jax.Array], jax.Array]
    gamma: float
    env_id: str
    obs_dim: int
    act_dim: int
    action_low: np.ndarray
    action_high: np.ndarray
    name: str
    meta: dict[str, Any]


def make_trained_agent(
    name: str,
    config: AgentConfig,
    actor_params: Params,
    critic_params: Params,
    transform: DataTransform,
    *,
    env_id: str,
    meta: dict[str, Any],
) -> TrainedAgent:
    """Wrap an agent's normalised-space ``act``/``critic`` into raw-unit pure functions."""
    module = agent_module(name)
    obs_mean = jnp.asarray(transform.stats.obs_mean, jnp.float32)
    obs_std = jnp.asarray(transform.stats.obs_std, jnp.float32)
    mid = jnp.asarray(transform.act_mid, jnp.float32)
    half = jnp.asarray(transform.act_half, jnp.float32)
    low, high = mid - half, mid + half
    scale = float(transform.stats.reward_scale)
    shift = transform.reward_shift
    gamma = float(config.gamma)

    def act(params: Params, obs: jax.Array) -> jax.Array:
        a = module.act(config, params, (obs - obs_mean) / obs_std)
        # tanh keeps a in [-1, 1]; the clip only guards float rounding at the bounds.
        return jnp.clip(mid + half * a, low, high)

    def critic(params: Params, obs: jax.Array, action: jax.Array) -> jax.Array:
        q = module.critic(config, params, (obs - obs_mean) / obs_std, (action - mid) / half)
        return (q.min(0) - shift / (1.0 - gamma)) / scale

    return TrainedAgent(
        actor_params=actor_params,
        critic_params=critic_params,
        act=act,
        critic=critic,
        gamma=gamma,
        env_id=env_id,
        obs_dim=int(obs_mean.shape[0]),
        act_dim=int(mid.shape[0]),
        action_low=np.asarray(low),
        action_high=np.asarray(high),
        name=name,
        meta=meta,
    )


def load_agent(run_dir_or_ckpt: str | Path, env_id: str | None = None) -> TrainedAgent:
    """Load a :func:`train_agent` checkpoint (a run directory or the ``.ckpt`` file).

    ``env_id``: when given, a checkpoint trained for another environment is an error.
    Missing, truncated or corrupted files raise :class:`~mpcdwm.checkpoint.CheckpointError`.
    """
    path = checkpoint_file(run_dir_or_ckpt)
    expect: dict[str, Any] = {"kind": "agent"}
    if env_id is not None:
        expect["env_id"] = env_id
    saved, meta = load_checkpoint(path, expect=expect)
    name = meta["agent"]
    config = config_from_dict(name, meta["agent_config"])
    train = saved["train"]
    actor = jax.tree_util.tree_map(jnp.asarray, train["actor"])
    critic = jax.tree_util.tree_map(jnp.asarray, train["critic"])
    agent = make_trained_agent(
        name,
        config,
        actor,
        critic,
        DataTransform.from_meta(meta),
        env_id=meta["env_id"],
        meta=meta,
    )
    if (agent.obs_dim, agent.act_dim) != (meta["obs_dim"], meta["act_dim"]):
        raise CheckpointError(f"{path}: normalisation statistics do not match obs/act sizes.")
    return agent
