"""Implicit Q-Learning (Kostrikov, Nair & Levine 2022): expectile value, AWR actor.

This module owns IQL's networks, losses and one jittable update. Per step:

* value: expectile regression of ``V(s)`` onto ``min_i Q'_i(s, a)`` (target critics),
  ``L_V = E[|tau - 1(u < 0)| u^2]``, ``u = Q' - V``; in-sample, never queries unseen actions;
* critics: ``Q_i(s, a) -> r + gamma (1 - done) V(s')``;
* actor: advantage-weighted regression, ``E[min(exp(beta (Q' - V)), 100) * -log pi(a|s)]``,
  Gaussian policy with ``tanh`` mean and state-independent log std; cosine-decayed lr;
* Polyak-averaged target critics.

Shapes as in :mod:`mpcdwm.agents.rebrac`: ``obs (..., obs_dim)``, actions in
``[-1, 1]``, ``critic`` returns ``(2, ...)``. ``act`` is the deterministic mean.
Hyperparameters: IQL paper appendix and CORL's ``configs/offline/iql`` (read, not copied):
tau 0.7 / beta 3 on MuJoCo with rewards scaled by 1000/(max - min episode return),
tau 0.9 / beta 10 on AntMaze with rewards shifted by -1; normalised states.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

from mpcdwm.agents.rebrac import is_antmaze
from mpcdwm.nets import MLP, Ensemble

Params = Any
Batch = dict[str, jax.Array]

LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0
EXP_ADV_MAX = 100.0


@dataclasses.dataclass(frozen=True)
class IQLConfig:
    """IQL hyperparameters (defaults: D4RL MuJoCo)."""

    actor_lr: float = 3e-4
    """Initial actor learning rate (cosine-decayed over ``actor_lr_decay_steps``)."""
    critic_lr: float = 3e-4
    """Learning rate of the twin Q networks."""
    value_lr: float = 3e-4
    """Learning rate of the value network."""
    actor_lr_decay_steps: int = 1_000_000
    """Length of the actor's cosine schedule (fixed, so a longer rerun resumes exactly)."""
    hidden_dims: tuple[int, ...] = (256, 256)
    """Hidden layer widths of actor, critics and value network."""
    gamma: float = 0.99
    """Discount factor."""
    tau: float = 5e-3
    """Polyak rate of the target critics."""
    expectile: float = 0.7
    """Expectile of the value regression (0.7 MuJoCo, 0.9 AntMaze)."""
    temperature: float = 3.0
    """Inverse temperature beta of the advantage weights (3 MuJoCo, 10 AntMaze)."""
    deterministic_actor: bool = False
    """Weighted MSE to dataset actions instead of the Gaussian log-likelihood."""
    batch_size: int = 256
    """Batch size."""
    normalize_obs: bool = True
    """Train on observations standardised with dataset statistics."""
    normalize_reward: bool = True
    """Scale rewards by 1000 / (max - min episode return) (MuJoCo rule)."""
    reward_scale: float = 1.0
    """Extra reward multiplier."""
    reward_shift: float = 0.0
    """Added to rewards after scaling (AntMaze: -1)."""


def iql_preset(dataset_name: str, **overrides: Any) -> IQLConfig:
    """IQL as published for ``dataset_name``: MuJoCo defaults, or AntMaze (0.9, 10, r - 1)."""
    cfg = IQLConfig()
    if is_antmaze(dataset_name):
        cfg = IQLConfig(expectile=0.9, temperature=10.0, normalize_reward=False, reward_shift=-1.0)
    return dataclasses.replace(cfg, **overrides)


@struct.dataclass
class TrainState:
    """IQL's parameters and optimizer states; ``step`` counts updates (int32 scalar)."""

    actor: Params
    critic: Params
    critic_target: Params
    value: Params
    actor_opt: optax.OptState
    critic_opt: optax.OptState
    value_opt: optax.OptState
    step: jax.Array


def _mean_net(config: IQLConfig, act_dim: int) -> MLP:
    return MLP(config.hidden_dims, act_dim)


def _critic_net(config: IQLConfig) -> Ensemble:
    return Ensemble(2, config.hidden_dims, 1)


def _value_net(config: IQLConfig) -> MLP:
    return MLP(config.hidden_dims, 1)


def _optimizers(config: IQLConfig) -> tuple[optax.GradientTransformation, ...]:
    schedule = optax.cosine_decay_schedule(config.actor_lr, config.actor_lr_decay_steps)
    return optax.adam(schedule), optax.adam(config.critic_lr), optax.adam(config.value_lr)


def init(config: IQLConfig, key: jax.Array, obs_dim: int, act_dim: int) -> TrainState:
    """Fresh actor ``{"net", "log_std"}``, twin critics (+ target), value net, Adam states."""
    k_actor, k_critic, k_value = jax.random.split(key, 3)
    obs = jnp.zeros((1, obs_dim), jnp.float32)
    sa = jnp.zeros((1, obs_dim + act_dim), jnp.float32)
    actor = {
        "net": _mean_net(config, act_dim).init(k_actor, obs),
        "log_std": jnp.zeros((act_dim,), jnp.float32),
    }
    critic = _critic_net(config).init(k_critic, sa)
    value = _value_net(config).init(k_value, obs)
    actor_tx, critic_tx, value_tx = _optimizers(config)
    return TrainState(
        actor=actor,
        critic=critic,
        # A copy, not an alias: the training loop donates the state's buffers.
        critic_target=jax.tree_util.tree_map(jnp.copy, critic),
        value=value,
        actor_opt=actor_tx.init(actor),
        critic_opt=critic_tx.init(critic),
        value_opt=value_tx.init(value),
        step=jnp.zeros((), jnp.int32),
    )


def act(config: IQLConfig, actor_params: Params, obs: jax.Array) -> jax.Array:
    """Deterministic (mean) action ``tanh(MLP(obs))``: ``(..., obs_dim) -> (..., act_dim)``."""
    act_dim = actor_params["log_std"].shape[-1]
    return jnp.tanh(_mean_net(config, act_dim).apply(actor_params["net"], obs))


def critic(
    config: IQLConfig, critic_params: Params, obs: jax.Array, action: jax.Array
) -> jax.Array:
    """Both Q values ``(2, ...)`` for ``obs (..., obs_dim)``, ``action (..., act_dim)``."""
    x = jnp.concatenate([obs, action], axis=-1)
    return _critic_net(config).apply(critic_params, x)[..., 0]


def value(config: IQLConfig, value_params: Params, obs: jax.Array) -> jax.Array:
    """State value ``(...)`` for ``obs (..., obs_dim)``."""
    return _value_net(config).apply(value_params, obs)[..., 0]


def expectile_loss(diff: jax.Array, expectile: float) -> jax.Array:
    """Asymmetric squared loss ``mean(|expectile - 1(diff < 0)| diff^2)``."""
    weight = jnp.where(diff < 0, 1.0 - expectile, expectile)
    return (weight * jnp.square(diff)).mean()


def value_loss(
    config: IQLConfig, value_params: Params, state: TrainState, batch: Batch
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Expectile regression of ``V(s)`` onto the target critics' ``min_i Q'_i(s, a)``."""
    q = critic(config, state.critic_target, batch["observations"], batch["actions"]).min(0)
    v = value(config, value_params, batch["observations"])
    loss = expectile_loss(jax.lax.stop_gradient(q) - v, config.expectile)
    return loss, {"value_loss": loss, "v_mean": v.mean()}


def critic_loss(
    config: IQLConfig, critic_params: Params, value_params: Params, batch: Batch
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """TD regression ``Q_i(s, a) -> r + gamma (1 - done) V(s')``, averaged over the two critics."""
    next_v = value(config, value_params, batch["next_observations"])
    target = batch["rewards"] + config.gamma * (1.0 - batch["dones"]) * next_v
    q = critic(config, critic_params, batch["observations"], batch["actions"])
    loss = jnp.square(q - jax.lax.stop_gradient(target)[None]).mean()
    return loss, {"critic_loss": loss, "q_mean": q.mean()}


def actor_loss(
    config: IQLConfig, actor_params: Params, advantage: jax.Array, batch: Batch
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """AWR: ``mean(min(exp(beta * adv), 100) * -log pi(a | s))`` (or weighted MSE)."""
    weights = jnp.minimum(jnp.exp(config.temperature * advantage), EXP_ADV_MAX)
    mean = act(config, actor_params, batch["observations"])
    if config.deterministic_actor:
        nll = jnp.square(mean - batch["actions"]).sum(-1)
    else:
        log_std = jnp.clip(actor_params["log_std"], LOG_STD_MIN, LOG_STD_MAX)
        z = (batch["actions"] - mean) / jnp.exp(log_std)
        nll = (0.5 * jnp.square(z) + log_std + 0.5 * jnp.log(2 * jnp.pi)).sum(-1)
    loss = (jax.lax.stop_gradient(weights) * nll).mean()
    return loss, {"actor_loss": loss, "adv_weight": weights.mean()}


def update(
    config: IQLConfig, state: TrainState, batch: Batch, key: jax.Array
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One IQL step (value, critics, actor, targets) on ``batch`` (keys as in ``rebrac.update``).

    ``key`` is unused (IQL's update is deterministic) but kept for the common signature.
    """
    del key
    actor_tx, critic_tx, value_tx = _optimizers(config)
    # Advantages for the actor use V before this step's value update (as the reference does).
    q_t = critic(config, state.critic_target, batch["observations"], batch["actions"]).min(0)
    advantage = q_t - value(config, state.value, batch["observations"])

    g, v_metrics = jax.grad(value_loss, argnums=1, has_aux=True)(config, state.value, state, batch)
    upd, value_opt = value_tx.update(g, state.value_opt, state.value)
    new_value = optax.apply_updates(state.value, upd)

    g, c_metrics = jax.grad(critic_loss, argnums=1, has_aux=True)(
        config, state.critic, new_value, batch
    )
    upd, critic_opt = critic_tx.update(g, state.critic_opt, state.critic)
    new_critic = optax.apply_updates(state.critic, upd)

    g, a_metrics = jax.grad(actor_loss, argnums=1, has_aux=True)(
        config, state.actor, advantage, batch
    )
    upd, actor_opt = actor_tx.update(g, state.actor_opt, state.actor)
    new_actor = optax.apply_updates(state.actor, upd)

    state = TrainState(
        actor=new_actor,
        critic=new_critic,
        critic_target=optax.incremental_update(new_critic, state.critic_target, config.tau),
        value=new_value,
        actor_opt=actor_opt,
        critic_opt=critic_opt,
        value_opt=value_opt,
        step=state.step + 1,
    )
    return state, {**v_metrics, **c_metrics, **a_metrics}


def make_update(config: IQLConfig):
    """``update`` with ``config`` bound: ``(state, batch, key) -> (state, metrics)`` for ``fit``."""

    def bound(state: TrainState, batch: Batch, key: jax.Array):
        return update(config, state, batch, key)

    return bound


__all__ = [
    "IQLConfig",
    "TrainState",
    "act",
    "actor_loss",
    "critic",
    "critic_loss",
    "expectile_loss",
    "init",
    "iql_preset",
    "make_update",
    "update",
    "value",
    "value_loss",
]
