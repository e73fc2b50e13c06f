"""ReBRAC, TD3+BC and online TD3: one deterministic actor-critic, three configurations.

This module owns the TD3 family. ReBRAC (Tarasov et al. 2023) is TD3+BC with
its tricks switched on: LayerNorm in the critic, deep 3x256 networks, large
batches, a BC penalty in the actor (``actor_bc_coef``, beta1) *and* in the
critic target (``critic_bc_coef``, beta2, using the dataset's next action).
TD3+BC (Fujimoto & Gu 2021) keeps only the actor penalty; online TD3
(Fujimoto et al. 2018) has no penalty at all. They differ only in
:class:`ReBRACConfig`, so there is one ``init``/``update``/``act``/``critic``.

Shapes: ``obs (..., obs_dim)``, ``action (..., act_dim)`` in ``[-1, 1]``,
critic output ``(2, ...)`` (one row per twin critic). Observations and rewards
reach :func:`update` already normalised/scaled as the caller decided;
:mod:`mpcdwm.agents` applies the published conventions in one place.

Published hyperparameters: CORL's ``algorithms/offline/rebrac.py`` and
``configs/offline/rebrac/*`` (read, not copied), the ReBRAC paper's Table 7,
the TD3+BC paper's Table 3 and the TD3 paper.
"""

from __future__ import annotations

import dataclasses
from typing import Any, get_args

import jax
import jax.numpy as jnp
import optax
from flax import struct

from mpcdwm.nets import MLP, Ensemble, InitScheme

Params = Any
Batch = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class ReBRACConfig:
    """Hyperparameters of the TD3 family (defaults: ReBRAC on D4RL MuJoCo)."""

    actor_lr: float = 1e-3
    """Adam learning rate of the actor."""
    critic_lr: float = 1e-3
    """Adam learning rate of the twin critics."""
    hidden_dims: tuple[int, ...] = (256, 256, 256)
    """Hidden layer widths of actor and critics."""
    gamma: float = 0.99
    """Discount factor (ReBRAC uses 0.999 on AntMaze)."""
    tau: float = 5e-3
    """Polyak rate of the target networks."""
    actor_bc_coef: float = 1.0
    """beta1: weight of ||pi(s) - a||^2 in the actor loss (TD3+BC: 1/alpha, TD3: 0)."""
    critic_bc_coef: float = 1.0
    """beta2: weight of ||a' - a'_data||^2 subtracted from the target Q (0 for TD3+BC/TD3)."""
    bc_mean_over_actions: bool = False
    """Average the actor BC penalty over action dims (TD3+BC's MSE) instead of summing (ReBRAC)."""
    policy_noise: float = 0.2
    """Std of the target-policy smoothing noise (in action units of [-1, 1])."""
    noise_clip: float = 0.5
    """Clip of the target-policy smoothing noise."""
    policy_freq: int = 2
    """Update the actor and the targets every ``policy_freq`` critic updates."""
    normalize_q: bool = True
    """Divide the actor's Q term by stop_grad(mean |Q|) (ReBRAC, TD3+BC); off for TD3."""
    actor_layer_norm: bool = False
    """LayerNorm after every hidden layer of the actor."""
    critic_layer_norm: bool = True
    """LayerNorm after every hidden layer of the critics (ReBRAC's key trick)."""
    actor_final_scale: float = 1e-2
    """Initial scale of the actor's last layer (a fresh actor outputs near-zero actions);
    used by the ``flax`` network only."""
    network: InitScheme = "corl"
    """``corl``: CORL's ReBRAC networks (Dense, ReLU, then LayerNorm; PyTorch-style
    fan-in uniform kernels, biases 0.1, last layers uniform in +-1e-3 (actor) and
    +-3e-3 (critics)). ``torch``: PyTorch's ``nn.Linear`` defaults on every layer (the
    reference TD3+BC's networks; LayerNorm, if switched on, after the ReLU). ``flax``:
    LayerNorm before the ReLU and Flax's default init (what mpcdwm used before; the
    online TD3 of ``collect`` keeps it, so its datasets stay reproducible)."""
    batch_size: int = 1024
    """Batch size (ReBRAC: 1024 on MuJoCo, 256 on AntMaze; TD3+BC/TD3: 256)."""
    normalize_obs: bool = False
    """Train on observations standardised with dataset statistics (TD3+BC: yes; ReBRAC: no)."""
    normalize_reward: bool = False
    """Scale rewards by 1000 / (max - min episode return) (IQL's MuJoCo rule; off for ReBRAC)."""
    reward_scale: float = 1.0
    """Multiply rewards by this (ReBRAC on AntMaze: 100, as CORL does)."""
    reward_shift: float = 0.0
    """Add this to (scaled) rewards (0 for ReBRAC)."""


def rebrac_config(**overrides: Any) -> ReBRACConfig:
    """ReBRAC with the given fields replaced."""
    return dataclasses.replace(ReBRACConfig(), **overrides)


# (beta1, beta2) per D4RL dataset: CORL's configs/offline/rebrac/*.yaml (= ReBRAC paper, Table 7).
MUJOCO_BETAS: dict[str, tuple[float, float]] = {
    "halfcheetah-random": (0.001, 0.1),
    "halfcheetah-medium": (0.001, 0.01),
    "halfcheetah-expert": (0.01, 0.01),
    "halfcheetah-medium-expert": (0.01, 0.1),
    "halfcheetah-medium-replay": (0.01, 0.001),
    "halfcheetah-full-replay": (0.001, 0.1),
    "hopper-random": (0.001, 0.01),
    "hopper-medium": (0.01, 0.01),
    "hopper-expert": (0.1, 0.1),
    "hopper-medium-expert": (0.1, 0.01),
    "hopper-medium-replay": (0.05, 0.5),
    "hopper-full-replay": (0.01, 0.01),
    "walker2d-random": (0.01, 0.0),
    "walker2d-medium": (0.05, 0.1),
    "walker2d-expert": (0.01, 0.5),
    "walker2d-medium-expert": (0.01, 0.01),
    "walker2d-medium-replay": (0.05, 0.01),
    "walker2d-full-replay": (0.01, 0.01),
}
ANTMAZE_BETAS: dict[str, tuple[float, float]] = {
    "antmaze-umaze": (0.003, 0.002),
    "antmaze-umaze-diverse": (0.003, 0.001),
    "antmaze-medium-play": (0.001, 0.0005),
    "antmaze-medium-diverse": (0.001, 0.0),
    "antmaze-large-play": (0.002, 0.001),
    "antmaze-large-diverse": (0.002, 0.002),
}
DEFAULT_BETAS = (0.01, 0.01)
"""Unknown datasets: the pair CORL uses most often on MuJoCo (hopper-medium and five others);
mild on both terms. Override with ``actor_bc_coef`` / ``critic_bc_coef`` for your data."""
DEFAULT_ANTMAZE_BETAS = (0.002, 0.001)
"""AntMaze-like datasets not in the table: between the published large-maze values."""

_TASKS = (
    "medium-expert",
    "medium-replay",
    "full-replay",
    "umaze-diverse",
    "medium-play",
    "medium-diverse",
    "large-play",
    "large-diverse",
    "random",
    "medium",
    "expert",
    "umaze",
)


def dataset_key(dataset_name: str) -> str:
    """Canonical ``family-task`` key of a D4RL/Minari/mpcdwm dataset name, or ``""``.

    ``hopper-medium-replay-v2``, ``mujoco/hopper/medium-replay-v0`` and
    ``mpcdwm/Hopper-v5/medium-replay-v0`` all give ``hopper-medium-replay``.
    """
    name = dataset_name.lower().replace("_", "-").replace("/", "-")
    family = next((f for f in ("halfcheetah", "hopper", "walker2d", "antmaze") if f in name), "")
    if not family:
        return ""
    rest = name.split(family, 1)[1]
    # _TASKS lists longer names first, so "medium-replay" wins over "medium".
    task = next((t for t in _TASKS if t in rest), "")
    return f"{family}-{task}" if task else family


def is_antmaze(dataset_name: str) -> bool:
    """AntMaze datasets get ReBRAC's/IQL's AntMaze conventions."""
    return "antmaze" in dataset_name.lower()


def rebrac_preset(dataset_name: str, **overrides: Any) -> ReBRACConfig:
    """ReBRAC as published for ``dataset_name`` (D4RL, Minari or mpcdwm naming).

    MuJoCo: batch 1024, lr 1e-3, gamma 0.99, raw rewards, raw states.
    AntMaze: batch 256, actor lr 3e-4, critic lr 5e-5, gamma 0.999, rewards x100.
    beta1/beta2 from :data:`MUJOCO_BETAS` / :data:`ANTMAZE_BETAS`; datasets not in
    the tables get :data:`DEFAULT_BETAS` (:data:`DEFAULT_ANTMAZE_BETAS` for mazes).
    """
    key = dataset_key(dataset_name)
    if is_antmaze(dataset_name):
        beta1, beta2 = ANTMAZE_BETAS.get(key, DEFAULT_ANTMAZE_BETAS)
        cfg = ReBRACConfig(
            actor_lr=3e-4,
            critic_lr=5e-5,
            gamma=0.999,
            batch_size=256,
            actor_bc_coef=beta1,
            critic_bc_coef=beta2,
            reward_scale=100.0,
        )
    else:
        beta1, beta2 = MUJOCO_BETAS.get(key, DEFAULT_BETAS)
        cfg = ReBRACConfig(actor_bc_coef=beta1, critic_bc_coef=beta2)
    return dataclasses.replace(cfg, **overrides)


def td3bc_config(alpha: float = 2.5, **overrides: Any) -> ReBRACConfig:
    """TD3+BC as published: ``pi = argmax lambda Q - (pi(s) - a)^2``, ``lambda = alpha / mean|Q|``.

    Dividing that loss by ``alpha`` gives ``(1/alpha) MSE - Q / mean|Q|``, which
    is this module's actor loss with ``actor_bc_coef = 1/alpha`` and the BC term
    averaged over action dims; Adam is invariant to the constant factor.
    2x256 networks without LayerNorm, lr 3e-4, batch 256, normalised states, and
    PyTorch's default init (``network="torch"``) as in the reference implementation: with
    Flax's larger default init the critic diverged on a walker2d-medium dataset
    (BENCHMARKS.md, "TD3+BC's critic and its init").
    """
    cfg = ReBRACConfig(
        actor_lr=3e-4,
        critic_lr=3e-4,
        hidden_dims=(256, 256),
        actor_bc_coef=1.0 / alpha,
        critic_bc_coef=0.0,
        bc_mean_over_actions=True,
        critic_layer_norm=False,
        actor_final_scale=1.0,
        batch_size=256,
        normalize_obs=True,
        network="torch",
    )
    return dataclasses.replace(cfg, **overrides)


def td3_config(**overrides: Any) -> ReBRACConfig:
    """Online TD3 (Fujimoto et al. 2018): no BC terms, plain ``-Q`` actor loss, 2x256, lr 3e-4."""
    cfg = ReBRACConfig(
        actor_lr=3e-4,
        critic_lr=3e-4,
        hidden_dims=(256, 256),
        actor_bc_coef=0.0,
        critic_bc_coef=0.0,
        normalize_q=False,
        critic_layer_norm=False,
        actor_final_scale=1.0,
        batch_size=256,
        network="flax",
    )
    return dataclasses.replace(cfg, **overrides)


@struct.dataclass
class TrainState:
    """Everything one update changes. ``step`` counts critic updates (int32 scalar)."""

    actor: Params
    critic: Params
    actor_target: Params
    critic_target: Params
    actor_opt: optax.OptState
    critic_opt: optax.OptState
    step: jax.Array


def _network_style(config: ReBRACConfig, final_bound: float) -> dict[str, Any]:
    if config.network == "flax":
        return {}
    return {
        "norm_after_activation": True,
        "init_scheme": config.network,
        "final_bound": final_bound,
    }


def _actor_net(config: ReBRACConfig, act_dim: int) -> MLP:
    return MLP(
        config.hidden_dims,
        act_dim,
        layer_norm=config.actor_layer_norm,
        final_scale=config.actor_final_scale,
        **_network_style(config, final_bound=1e-3),
    )


def _critic_net(config: ReBRACConfig) -> Ensemble:
    return Ensemble(
        2,
        config.hidden_dims,
        1,
        layer_norm=config.critic_layer_norm,
        **_network_style(config, final_bound=3e-3),
    )


def _optimizers(config: ReBRACConfig) -> tuple[optax.GradientTransformation, ...]:
    return optax.adam(config.actor_lr), optax.adam(config.critic_lr)


def _act_dim(actor_params: Params) -> int:
    """Action size read from the actor's last Dense bias (so ``act`` needs no extra argument)."""
    layers = actor_params["params"]
    last = max((k for k in layers if k.startswith("Dense_")), key=lambda k: int(k.split("_")[1]))
    return int(layers[last]["bias"].shape[-1])


def init(config: ReBRACConfig, key: jax.Array, obs_dim: int, act_dim: int) -> TrainState:
    """Fresh actor, twin critics, their targets and Adam states."""
    if config.policy_freq < 1:
        raise ValueError(f"policy_freq must be >= 1, got {config.policy_freq}.")
    if config.network not in get_args(InitScheme):
        choices = ", ".join(repr(c) for c in get_args(InitScheme))
        raise ValueError(f"network must be one of {choices}, got {config.network!r}.")
    actor_key, critic_key = jax.random.split(key)
    obs = jnp.zeros((1, obs_dim), jnp.float32)
    act = jnp.zeros((1, act_dim), jnp.float32)
    actor = _actor_net(config, act_dim).init(actor_key, obs)
    critic = _critic_net(config).init(critic_key, jnp.concatenate([obs, act], -1))
    actor_tx, critic_tx = _optimizers(config)
    return TrainState(
        actor=actor,
        critic=critic,
        # Copies, not aliases: the training loop donates the state's buffers.
        actor_target=jax.tree_util.tree_map(jnp.copy, actor),
        critic_target=jax.tree_util.tree_map(jnp.copy, critic),
        actor_opt=actor_tx.init(actor),
        critic_opt=critic_tx.init(critic),
        step=jnp.zeros((), jnp.int32),
    )


def act(config: ReBRACConfig, actor_params: Params, obs: jax.Array) -> jax.Array:
    """Deterministic action ``tanh(MLP(obs))`` in ``[-1, 1]``, ``(..., obs_dim) -> (..., act_dim)``.

    Differentiable w.r.t. ``actor_params``; the action size is read from the params.
    """
    net = _actor_net(config, _act_dim(actor_params))
    return jnp.tanh(net.apply(actor_params, obs))


def critic(
    config: ReBRACConfig, critic_params: Params, obs: jax.Array, action: jax.Array
) -> jax.Array:
    """Both critics' Q values ``(2, ...)``: ``obs (..., obs_dim)``, ``action (..., act_dim)``."""
    x = jnp.concatenate([obs, action], axis=-1)
    return _critic_net(config).apply(critic_params, x)[..., 0]


def _bc_penalty(config: ReBRACConfig, a: jax.Array, b: jax.Array) -> jax.Array:
    sq = jnp.square(a - b)
    return sq.mean(-1) if config.bc_mean_over_actions else sq.sum(-1)


def critic_loss(
    config: ReBRACConfig,
    critic_params: Params,
    state: TrainState,
    batch: Batch,
    key: jax.Array,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Twin-critic TD loss with target smoothing and ReBRAC's target BC penalty (beta2).

    ``y = r + gamma (1 - done) [min_i Q'_i(s', a~') - beta2 ||a~' - a'_data||^2]``
    with ``a~' = clip(pi'(s') + clip(noise), -1, 1)``. Loss: batch-mean squared
    error summed over the two critics (as TD3 and CORL do).
    """
    next_act = act(config, state.actor_target, batch["next_observations"])
    noise = config.policy_noise * jax.random.normal(key, next_act.shape)
    noise = jnp.clip(noise, -config.noise_clip, config.noise_clip)
    next_act = jnp.clip(next_act + noise, -1.0, 1.0)
    next_q = critic(config, state.critic_target, batch["next_observations"], next_act).min(0)
    next_q = next_q - config.critic_bc_coef * jnp.square(next_act - batch["next_actions"]).sum(-1)
    target = batch["rewards"] + config.gamma * (1.0 - batch["dones"]) * next_q
    target = jax.lax.stop_gradient(target)
    q = critic(config, critic_params, batch["observations"], batch["actions"])
    loss = jnp.square(q - target[None]).mean(1).sum(0)
    return loss, {"critic_loss": loss, "q_mean": q.mean(), "target_q": target.mean()}


def actor_loss(
    config: ReBRACConfig, actor_params: Params, state: TrainState, batch: Batch
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """``mean(beta1 ||pi(s) - a||^2 - lambda min_i Q_i(s, pi(s)))``, ``lambda = 1/mean|Q|``."""
    pi = act(config, actor_params, batch["observations"])
    q = critic(config, state.critic, batch["observations"], pi).min(0)
    lam = jax.lax.stop_gradient(1.0 / (jnp.abs(q).mean() + 1e-6)) if config.normalize_q else 1.0
    bc = _bc_penalty(config, pi, batch["actions"])
    loss = (config.actor_bc_coef * bc - lam * q).mean()
    return loss, {"actor_loss": loss, "bc_mse": jnp.square(pi - batch["actions"]).mean()}


def update(
    config: ReBRACConfig, state: TrainState, batch: Batch, key: jax.Array
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One critic step; every ``policy_freq`` steps also one actor step and Polyak targets.

    ``batch``: observations, actions, rewards, next_observations, next_actions,
    dones (``(B, ...)``). Pure and jittable; use with ``functools.partial(update, config)``.
    Actor metrics are reported times ``policy_freq`` on actor steps and 0 otherwise,
    so their mean over a chunk (a multiple of ``policy_freq``) is the mean over actor steps.
    """
    actor_tx, critic_tx = _optimizers(config)
    grads, c_metrics = jax.grad(critic_loss, argnums=1, has_aux=True)(
        config, state.critic, state, batch, key
    )
    updates, critic_opt = critic_tx.update(grads, state.critic_opt, state.critic)
    state = state.replace(critic=optax.apply_updates(state.critic, updates), critic_opt=critic_opt)

    def actor_step(s: TrainState) -> tuple[TrainState, dict[str, jax.Array]]:
        g, metrics = jax.grad(actor_loss, argnums=1, has_aux=True)(config, s.actor, s, batch)
        upd, actor_opt = actor_tx.update(g, s.actor_opt, s.actor)
        new_actor = optax.apply_updates(s.actor, upd)
        s = s.replace(
            actor=new_actor,
            actor_opt=actor_opt,
            actor_target=optax.incremental_update(new_actor, s.actor_target, config.tau),
            critic_target=optax.incremental_update(s.critic, s.critic_target, config.tau),
        )
        return s, jax.tree_util.tree_map(lambda m: m * config.policy_freq, metrics)

    def skip(s: TrainState) -> tuple[TrainState, dict[str, jax.Array]]:
        return s, {"actor_loss": jnp.zeros(()), "bc_mse": jnp.zeros(())}

    state, a_metrics = jax.lax.cond(state.step % config.policy_freq == 0, actor_step, skip, state)
    state = state.replace(step=state.step + 1)
    return state, {**c_metrics, **a_metrics}


def make_update(config: ReBRACConfig):
    """``update`` with ``config`` bound: ``(state, batch, key) -> (state, metrics)`` for ``fit``."""

    def bound(state: TrainState, batch: Batch, key: jax.Array):
        return update(config, state, batch, key)

    return bound


__all__ = [
    "ReBRACConfig",
    "TrainState",
    "act",
    "actor_loss",
    "critic",
    "critic_loss",
    "init",
    "make_update",
    "rebrac_config",
    "rebrac_preset",
    "td3_config",
    "td3bc_config",
    "update",
]
