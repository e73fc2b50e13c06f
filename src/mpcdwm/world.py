"""Differentiable world models: transition (diffusion / flow matching / MeanFlow / MLP), reward,
termination.

This module owns the "DWM" of MPCwDWM: everything from training the world model
on an offline :class:`~mpcdwm.data.Dataset` to the pure functions the planner
differentiates through. The quality report written beside the checkpoint is measured
by :mod:`mpcdwm.world_quality`.

Transition models predict the *normalised state change* ``x = (s' - s - mu_d) / sd_d``
given ``c = ((s - mu_s) / sd_s, a)``:

* ``diffusion``: an MLP denoiser ``f(x_k, c, emb(k))`` trained with the DDPM
  objective (predict the noise ``eps``, or ``x0``) on a short schedule
  (``denoise_steps`` = 5-20, cosine by default). Sampling runs the reverse chain
  with a ``lax.scan``; the caller supplies the noise (``noise_shape =
  (denoise_steps + 1, obs_dim)``: ``x_K`` and one draw per step), so for fixed
  noise the chain is a deterministic function of ``(s, a)``. ``ddpm`` uses all
  of the noise, ``ddim`` (eta = 0) only ``x_K``.
* ``flow``: conditional flow matching on the linear path ``x_t = (1-t) x_0 + t x_1``
  (``x_0`` noise, ``x_1`` data), sampled with 1-4 Euler or midpoint steps;
  ``noise_shape = (obs_dim,)`` is ``x_0``.
* ``meanflow``: MeanFlow (Geng et al., 2025) on the same path: the network learns the
  *average* velocity ``u(x_t, t, r)`` over ``[t, r]`` (``x_r = x_t + (r - t) u``), so one
  network call maps noise to a sample, ``x_1 = x_0 + u(x_0, 0, 1)`` (``flow_steps``
  defaults to 1; more steps split ``[0, 1]`` evenly). ``noise_shape = (obs_dim,)``.
* ``mlp``: a deterministic MLP (``noise`` ignored), or with ``mlp_gaussian`` a
  Gaussian whose sample is ``mean + std * noise``: the reference point.

Reward ``r(s, a)`` is an ensemble of MLPs (mean in raw reward units;
disagreement = ensemble std). Termination ``P(done | s, a, s')`` is an MLP
classifier trained with class-balanced cross-entropy (terminals are rare) whose
logit is shifted back by ``log(pos_weight)`` so probabilities stay calibrated.

Everything the planner calls takes RAW (unnormalised) inputs for ONE transition
(leading batch axes also work), is jittable, ``vmap``-able and differentiable:
see :class:`WorldModel`. Training goes through :func:`mpcdwm.train.fit`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from rich.console import Console

from mpcdwm.checkpoint import (
    CheckpointError,
    checkpoint_file,
    load_checkpoint,
    training_progress,
)
from mpcdwm.configs import check_config
from mpcdwm.data import Dataset, load_dataset
from mpcdwm.envs import check_dataset_against_env
from mpcdwm.files import dataset_identity, ensure_writable_dir, reading_dataset
from mpcdwm.nets import MLP, Ensemble, sinusoidal_embedding
from mpcdwm.train import fit
from mpcdwm.world_quality import print_quality, world_model_quality

Params = Any
Batch = dict[str, jax.Array]

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "silu": nn.silu,
    "relu": nn.relu,
    "mish": lambda x: x * jnp.tanh(nn.softplus(x)),
}
# Times in [0, 1] are scaled by this before the sinusoidal embedding, so its
# frequencies (1 .. 1e-4 rad per unit) resolve both 5 and 1000 steps.
TIME_SCALE = 1000.0

# MeanFlow training (Geng et al. 2025, Sec. 4 and Tab. 1). Their ablation's best ratio of
# r != t pairs is 25%: the other 75% have r = t, where the target is the plain flow-matching
# velocity, so the network also learns the instantaneous field (0% r != t is flow matching
# and fails at one step; 100% is worse than 25%).
MEANFLOW_UNEQUAL_FRACTION = 0.25
# Their adaptive loss weight sg(1 / (||u - u_tgt||^2 + c)^p), c = 1e-3. Their best p = 1 (for
# FID) cost ~40% in one-step MSE on hopper-medium (3k updates); p = 0 (plain MSE) matched
# p = 0.5 there, but diverged where the JVP target was wild (time scale 1000, below), and
# p = 0.5 (a pseudo-Huber loss) keeps some of that robustness.
MEANFLOW_WEIGHT_POWER = 0.5
MEANFLOW_WEIGHT_EPS = 1e-3
# MeanFlow's time embeddings use a far smaller scale than TIME_SCALE: the target contains
# d/dt of the network, and sin(1000 t)-features make it huge and noisy (one-step MSE 0.034 at
# 1000 vs 0.0055 at 1-10 on hopper-medium, 3k updates; flow matching 0.0054). Highest
# frequency 3 rad per unit time: smooth in t, still resolving the few steps a sampler uses.
MEANFLOW_TIME_SCALE = 3.0
# Default sampler steps when ``flow_steps`` is left unset.
DEFAULT_FLOW_STEPS = {"flow": 2, "meanflow": 1}


@dataclasses.dataclass(frozen=True)
class TrainWorldModelConfig:
    """`mpcdwm train-world-model`: transition, reward and termination models on one dataset."""

    dataset: str = "mpcdwm/hopper-medium-v0"
    """Minari dataset id, Minari dataset folder, or D4RL .hdf5 path."""
    model: Literal["diffusion", "flow", "meanflow", "mlp"] = "diffusion"
    """Transition model: conditional diffusion, flow matching, one-step MeanFlow, or plain MLP."""
    steps: int = 50_000
    """Gradient steps (all three models are updated at every step)."""
    out: Path = Path("runs/world_model")
    """Run folder: checkpoint.ckpt, metrics.jsonl, quality.json."""
    seed: int = 0
    """Seed of initialisation, batches, diffusion noise and the validation split."""
    env_id: str | None = None
    """Override the environment recorded in the dataset (e.g. Hopper-v5)."""
    denoise_steps: int = 5
    """Diffusion steps K (small on purpose: the planner differentiates through all of them)."""
    schedule: Literal["cosine", "linear"] = "cosine"
    """Diffusion noise schedule."""
    prediction: Literal["eps", "x0"] = "eps"
    """What the denoiser outputs: the noise (DDPM objective) or the clean sample."""
    sampler: Literal["ddpm", "ddim"] = "ddpm"
    """Reverse process: DDPM (uses all supplied noise) or deterministic DDIM (only x_K)."""
    clip_denoised: float = 10.0
    """Clip the denoised estimate to +-this (normalised units) in sampling; 0 = no clip."""
    flow_steps: int | None = None
    """Sampler steps of flow matching (default 2; 1-4 is the point) and MeanFlow (default 1)."""
    flow_solver: Literal["euler", "midpoint"] = "euler"
    """ODE solver of the flow-matching sampler (midpoint costs 2 network calls per step;
    MeanFlow steps are exact jumps, euler only)."""
    mlp_gaussian: bool = False
    """For model=mlp: predict mean and std and sample mean + std * noise (else deterministic)."""
    hidden_dims: tuple[int, ...] = (256, 256, 256)
    """Hidden widths of the denoiser / velocity / MLP transition network."""
    time_embed_dim: int = 32
    """Size of the sinusoidal time embedding fed to the denoiser (MeanFlow: one per time)."""
    activation: Literal["silu", "relu", "mish"] = "silu"
    """Hidden activation of every network (smooth ones give smoother planner gradients)."""
    reward_hidden_dims: tuple[int, ...] = (256, 256)
    """Hidden widths of each reward-ensemble member."""
    reward_ensemble: int = 5
    """Reward-ensemble size (its std is the disagreement the planner may penalise)."""
    termination_hidden_dims: tuple[int, ...] = (256, 256)
    """Hidden widths of the termination classifier."""
    max_pos_weight: float = 1000.0
    """Cap on the weight of terminal transitions in the balanced termination loss."""
    batch_size: int = 256
    """Transitions per gradient step."""
    lr: float = 3e-4
    """Adam learning rate (one optimiser over all three models)."""
    val_fraction: float = 0.1
    """Fraction of episodes held out for validation and the quality report."""
    quality_transitions: int = 10_000
    """Held-out transitions used for the one-step/reward/termination report (subsampled)."""
    quality_windows: int = 256
    """Held-out trajectory windows used for the open-loop error."""
    quality_horizons: tuple[int, ...] = (1, 5, 10)
    """Open-loop horizons H reported in quality.json."""
    eval_every: int = 10_000
    """Validation losses every this many steps (0 = only at the end)."""
    checkpoint_every: int = 10_000
    """Checkpoint every this many steps (rounded up to whole chunks)."""
    checkpoint_minutes: float = 5.0
    """Also checkpoint every this many minutes of wall time (0 = every chunk)."""
    chunk: int = 1000
    """Updates fused into one jitted program (any value resumes any run)."""
    log: tuple[Literal["wandb", "tensorboard"], ...] = ()
    """Extra metric backends besides metrics.jsonl."""
    drop_invalid: bool = False
    """Drop dataset rows with NaN/inf instead of failing."""
    progress: bool = True
    """Show progress bars."""
    resume: bool = True
    """Resume from out/checkpoint.ckpt when it exists (same config required)."""


# Fields that do not change what is trained; left out of the resume check. ``steps`` and
# ``chunk`` too: train.fit continues a run from any step to any target with any chunk.
_RUNTIME_FIELDS = (
    "out",
    "progress",
    "resume",
    "log",
    "eval_every",
    "checkpoint_every",
    "checkpoint_minutes",
    "steps",
    "chunk",
)


# --------------------------------------------------------------------------- networks


def _networks(cfg: TrainWorldModelConfig, obs_dim: int) -> dict[str, nn.Module]:
    act = ACTIVATIONS[cfg.activation]
    out = 2 * obs_dim if (cfg.model == "mlp" and cfg.mlp_gaussian) else obs_dim
    return {
        # Small final layer: a fresh denoiser predicts ~0, which keeps early
        # training (and untrained gradient tests) well conditioned.
        "transition": MLP(cfg.hidden_dims, out, activation=act, final_scale=0.1),
        "reward": Ensemble(cfg.reward_ensemble, cfg.reward_hidden_dims, 1, activation=act),
        "termination": MLP(cfg.termination_hidden_dims, 1, activation=act),
    }


def _transition_in_dim(cfg: TrainWorldModelConfig, obs_dim: int, act_dim: int) -> int:
    cond = obs_dim + act_dim
    if cfg.model == "mlp":
        return cond
    # MeanFlow conditions on two times: t and the interval length r - t.
    times = 2 if cfg.model == "meanflow" else 1
    return obs_dim + cond + times * cfg.time_embed_dim


def flow_steps(cfg: TrainWorldModelConfig) -> int:
    """Sampler steps of a flow / MeanFlow config: ``cfg.flow_steps``, or the model's default."""
    if cfg.flow_steps is not None:
        return cfg.flow_steps
    return DEFAULT_FLOW_STEPS.get(cfg.model, DEFAULT_FLOW_STEPS["flow"])


def _resolved(cfg: TrainWorldModelConfig) -> TrainWorldModelConfig:
    # ``flow_steps=None`` made explicit: what a stored config and a WorldModel carry.
    return dataclasses.replace(cfg, flow_steps=flow_steps(cfg))


def meanflow_time_features(t: jax.Array, r: jax.Array, dim: int) -> jax.Array:
    """MeanFlow's time input ``(..., 2 * dim)``: embeddings of ``t`` and of ``r - t``.

    ``t, r`` of shape ``(...)``, ``0 <= t <= r <= 1`` (t = 0 noise, 1 data). Embedding the
    interval length rather than ``r`` makes ``r = t`` (the instantaneous velocity) one fixed
    input, and it is the pair the MeanFlow paper found best. Scaled by
    :data:`MEANFLOW_TIME_SCALE`, not ``TIME_SCALE``: the loss differentiates through them.
    """
    return jnp.concatenate(
        [
            sinusoidal_embedding(t * MEANFLOW_TIME_SCALE, dim),
            sinusoidal_embedding((r - t) * MEANFLOW_TIME_SCALE, dim),
        ],
        axis=-1,
    )


def init_params(cfg: TrainWorldModelConfig, obs_dim: int, act_dim: int, key: jax.Array) -> Params:
    """Fresh parameters ``{"transition", "reward", "termination"}`` for ``cfg``."""
    return _init_params(cfg, obs_dim, act_dim, key)


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _init_params(cfg: TrainWorldModelConfig, obs_dim: int, act_dim: int, key: jax.Array):
    # One compiled program: much faster than Flax's op-by-op eager init.
    nets = _networks(cfg, obs_dim)
    k1, k2, k3 = jax.random.split(key, 3)
    return {
        "transition": nets["transition"].init(
            k1, jnp.zeros(_transition_in_dim(cfg, obs_dim, act_dim))
        ),
        "reward": nets["reward"].init(k2, jnp.zeros(obs_dim + act_dim)),
        "termination": nets["termination"].init(k3, jnp.zeros(2 * obs_dim + act_dim)),
    }


# --------------------------------------------------------------------------- schedules


def diffusion_schedule(steps: int, kind: str = "cosine") -> dict[str, np.ndarray]:
    """``alpha_bar`` and ``beta`` of a ``steps``-step schedule (float64, index 0 = least noise).

    Cosine: Nichol & Dhariwal (2021), betas capped at 0.999; linear: DDPM's
    1e-4 .. 0.02 range rescaled to ``steps`` (as in improved DDPM).
    """
    if steps < 1:
        raise ValueError(f"denoise_steps must be >= 1, got {steps}")
    if kind == "cosine":
        s = 0.008
        t = np.arange(steps + 1, dtype=np.float64) / steps
        f = np.cos((t + s) / (1 + s) * np.pi / 2) ** 2
        betas = np.clip(1.0 - f[1:] / f[:-1], 1e-5, 0.999)
    elif kind == "linear":
        scale = 1000.0 / steps
        betas = np.linspace(scale * 1e-4, min(scale * 0.02, 0.999), steps, dtype=np.float64)
    else:
        raise ValueError(f"unknown schedule {kind!r}; use 'cosine' or 'linear'")
    return {"betas": betas, "alpha_bar": np.cumprod(1.0 - betas)}


def _sampler_constants(cfg: TrainWorldModelConfig) -> dict[str, np.ndarray]:
    """Per-step constants of the sampler, in the order the reverse scan visits them.

    Precomputed once (time embeddings included) so each denoising step is one
    network call and a few multiply-adds.
    """
    if cfg.model == "diffusion":
        k = cfg.denoise_steps
        sched = diffusion_schedule(k, cfg.schedule)
        ab, beta = sched["alpha_bar"], sched["betas"]
        ab_prev = np.r_[1.0, ab[:-1]]
        rev = slice(None, None, -1)
        times = (np.arange(k) + 1.0) / k
        emb = np.asarray(sinusoidal_embedding(times * TIME_SCALE, cfg.time_embed_dim), np.float64)
        return {
            "emb": emb[rev],
            "sqrt_ab": np.sqrt(ab)[rev],
            "sqrt_1m_ab": np.sqrt(1.0 - ab)[rev],
            # DDPM posterior q(x_{k-1} | x_k, x0): mean = c0 x0 + ck x_k, std sigma.
            "c0": (np.sqrt(ab_prev) * beta / (1.0 - ab))[rev],
            "ck": (np.sqrt(1.0 - beta) * (1.0 - ab_prev) / (1.0 - ab))[rev],
            "sigma": np.sqrt(beta * (1.0 - ab_prev) / (1.0 - ab))[rev],
            # DDIM (eta = 0): x_{k-1} = sqrt(ab_prev) x0 + sqrt(1 - ab_prev) eps.
            "sqrt_ab_prev": np.sqrt(ab_prev)[rev],
            "sqrt_1m_ab_prev": np.sqrt(1.0 - ab_prev)[rev],
            # Training: embedding of step index k (0 = least noise).
            "train_emb": emb,
            "train_sqrt_ab": np.sqrt(ab),
            "train_sqrt_1m_ab": np.sqrt(1.0 - ab),
        }
    if cfg.model == "meanflow":
        n = flow_steps(cfg)
        if n < 1:
            raise ValueError(f"flow_steps must be >= 1, got {n}")
        if cfg.flow_solver != "euler":
            raise ValueError(
                "model=meanflow takes no --flow-solver: each step is an exact jump "
                "x_r = x_t + (r - t) u(x_t, t, r) (use euler, the default)"
            )
        # Step k jumps over [k/n, (k+1)/n]: times t_k and the interval 1/n.
        t0 = np.arange(n, dtype=np.float64) / n
        feats = meanflow_time_features(
            jnp.asarray(t0), jnp.asarray(t0 + 1.0 / n), cfg.time_embed_dim
        )
        return {"emb": np.asarray(feats, np.float64)}
    if cfg.model == "flow":
        n = flow_steps(cfg)
        if n < 1:
            raise ValueError(f"flow_steps must be >= 1, got {n}")
        t0 = np.arange(n, dtype=np.float64) / n
        mid = t0 + 0.5 / n
        emb = lambda t: np.asarray(  # noqa: E731
            sinusoidal_embedding(t * TIME_SCALE, cfg.time_embed_dim), np.float64
        )
        return {"emb": emb(t0), "emb_mid": emb(mid)}
    return {}


def _noise_shape(cfg: TrainWorldModelConfig, obs_dim: int) -> tuple[int, ...]:
    if cfg.model == "diffusion":
        return (cfg.denoise_steps + 1, obs_dim)
    return (obs_dim,)


# --------------------------------------------------------------------------- the model


@dataclasses.dataclass(frozen=True, eq=False)
class WorldModel:
    """A trained world model: parameters, normalisation constants, and pure functions of them.

    Every method takes ``params`` explicitly (pass ``wm.params``) and RAW inputs
    for one transition: ``s (obs_dim,)``, ``a (act_dim,)``, ``noise noise_shape``
    (leading batch axes, equal for all arguments, are allowed too). Jit, vmap
    and differentiate them freely. Hashes by identity, so it can be a static
    argument of ``jax.jit``.
    """

    params: Params
    noise_shape: tuple[int, ...]
    obs_dim: int
    act_dim: int
    env_id: str
    kind: str
    meta: dict[str, Any]
    config: TrainWorldModelConfig = TrainWorldModelConfig()
    consts: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

    @property
    def obs_scale(self) -> np.ndarray:
        """``(obs_dim,)`` the data's observation std: the unit of ensemble disagreement."""
        return self.consts["obs_std"]

    # -- transition ---------------------------------------------------------
    def next_state(self, params: Params, s: jax.Array, a: jax.Array, noise: jax.Array) -> jax.Array:
        """``s' (obs_dim,)`` from ``s (obs_dim,)``, ``a (act_dim,)``, ``noise noise_shape``.

        Deterministic for fixed ``noise``; differentiable w.r.t. all inputs
        through every denoising / integration step.
        """
        s, a = self._check(s, a)
        noise = jnp.asarray(noise)
        if noise.shape[noise.ndim - len(self.noise_shape) :] != self.noise_shape:
            raise ValueError(
                f"noise has shape {noise.shape}; this {self.kind} model needs (..., "
                f"{self.noise_shape}). Draw it with wm.sample_noise(key, batch_shape)."
            )
        c = self.consts
        cond = jnp.concatenate([(s - c["obs_mean"]) / c["obs_std"], a], axis=-1)
        net = _networks(self.config, self.obs_dim)["transition"]
        if self.kind == "diffusion":
            x = _reverse_diffusion(net, params["transition"], self.config, c, cond, noise)
        elif self.kind in ("flow", "meanflow"):
            # MeanFlow: the same scan, each step x += (1/n) u(x, t_k, t_k + 1/n).
            x = _integrate_flow(net, params["transition"], self.config, c, cond, noise)
        else:
            out = net.apply(params["transition"], cond)
            x = out[..., : self.obs_dim]
            if self.config.mlp_gaussian:
                x = x + _gaussian_std(out[..., self.obs_dim :]) * noise
        return s + x * c["delta_std"] + c["delta_mean"]

    # -- reward ---------------------------------------------------------------
    def reward_members(
        self, params: Params, s: jax.Array, a: jax.Array, count: int | None = None
    ) -> jax.Array:
        """Each reward-ensemble member's prediction ``(count, ...)`` in raw units.

        ``count``: only the first ``count`` members are evaluated (None = all); the members
        share no weights, so one member costs ``1 / reward_ensemble`` of the whole ensemble.
        """
        s, a = self._check(s, a)
        c = self.consts
        x = jnp.concatenate([(s - c["obs_mean"]) / c["obs_std"], a], axis=-1)
        net, p = _networks(self.config, self.obs_dim)["reward"], params["reward"]
        if count is not None:
            if not 1 <= count <= net.size:
                raise ValueError(f"count must be in [1, {net.size}], got {count}.")
            net, p = net.clone(size=count), jax.tree_util.tree_map(lambda w: w[:count], p)
        out = net.apply(p, x)[..., 0]
        return out * c["reward_std"] + c["reward_mean"]

    def reward(
        self, params: Params, s: jax.Array, a: jax.Array, members: int | None = None
    ) -> jax.Array:
        """Predicted reward (scalar, raw units): the mean of the first ``members`` ensemble
        members (None = all of them)."""
        return jnp.mean(self.reward_members(params, s, a, members), axis=0)

    def reward_disagreement(self, params: Params, s: jax.Array, a: jax.Array) -> jax.Array:
        """Ensemble standard deviation of the reward (scalar >= 0; 0 for a single member)."""
        members = self.reward_members(params, s, a)
        if members.shape[0] == 1:
            return jnp.zeros_like(members[0])
        # sqrt(var + tiny) keeps the gradient finite where members agree exactly.
        return jnp.sqrt(jnp.var(members, axis=0) + 1e-12)

    # -- termination ------------------------------------------------------------
    def done_logit(self, params: Params, s: jax.Array, a: jax.Array, s_next: jax.Array):
        """Calibrated logit of P(done | s, a, s')."""
        s, a = self._check(s, a)
        s_next, _ = self._check(s_next, a)
        c = self.consts
        x = jnp.concatenate(
            [(s - c["obs_mean"]) / c["obs_std"], a, (s_next - c["obs_mean"]) / c["obs_std"]],
            axis=-1,
        )
        logit = _networks(self.config, self.obs_dim)["termination"].apply(params["termination"], x)
        return logit[..., 0] - c["logit_offset"]

    def done_prob(self, params: Params, s: jax.Array, a: jax.Array, s_next: jax.Array):
        """P(done | s, a, s') in [0, 1] (scalar)."""
        return jax.nn.sigmoid(self.done_logit(params, s, a, s_next))

    # -- noise ----------------------------------------------------------------------
    def sample_noise(self, key: jax.Array, batch_shape: tuple[int, ...] = ()) -> jax.Array:
        """Standard normal noise of shape ``batch_shape + noise_shape``."""
        return jax.random.normal(key, tuple(batch_shape) + self.noise_shape)

    def with_sampler(
        self,
        sampler: str | None = None,
        flow_steps: int | None = None,
        flow_solver: str | None = None,
        clip_denoised: float | None = None,
    ) -> WorldModel:
        """The same trained model with another sampler (DDPM<->DDIM, flow steps/solver).

        The diffusion step count is fixed by training; flow and MeanFlow models are
        trained in continuous time, so any ``flow_steps`` works.
        """
        changes = {
            k: v
            for k, v in dict(
                sampler=sampler,
                flow_steps=flow_steps,
                flow_solver=flow_solver,
                clip_denoised=clip_denoised,
            ).items()
            if v is not None
        }
        cfg = _resolved(dataclasses.replace(self.config, **changes))
        consts = {**self.consts, **_as_consts(_sampler_constants(cfg))}
        return dataclasses.replace(
            self, config=cfg, consts=consts, noise_shape=_noise_shape(cfg, self.obs_dim)
        )

    def _check(self, s: Any, a: Any) -> tuple[jax.Array, jax.Array]:
        s, a = jnp.asarray(s), jnp.asarray(a)
        if s.ndim == 0 or s.shape[-1] != self.obs_dim:
            raise ValueError(
                f"state has shape {s.shape}, but this world model ({self.env_id}) takes "
                f"observations of size {self.obs_dim}. Use a model trained on this environment."
            )
        if a.ndim == 0 or a.shape[-1] != self.act_dim:
            raise ValueError(
                f"action has shape {a.shape}, but this world model ({self.env_id}) takes "
                f"actions of size {self.act_dim}."
            )
        if s.shape[:-1] != a.shape[:-1]:
            raise ValueError(
                f"state batch shape {s.shape[:-1]} differs from action batch shape "
                f"{a.shape[:-1]}; pass one transition (and jax.vmap over rollouts)."
            )
        return s, a


def _gaussian_std(raw: jax.Array) -> jax.Array:
    # Softplus with a floor: std never collapses to 0 and stays differentiable.
    return nn.softplus(raw) + 1e-3


def _reverse_diffusion(
    net: nn.Module, p: Params, cfg: TrainWorldModelConfig, c: dict, cond: jax.Array, noise
) -> jax.Array:
    """Run the reverse chain from ``noise[..., 0, :]``; ``lax.scan`` over the K steps."""
    noise = jnp.moveaxis(noise, -2, 0)  # (K + 1, ..., obs_dim)
    batch = cond.shape[:-1]
    clip = cfg.clip_denoised
    ddpm = cfg.sampler == "ddpm"

    def step(x, inp):
        emb = jnp.broadcast_to(inp["emb"], (*batch, inp["emb"].shape[-1]))
        out = net.apply(p, jnp.concatenate([x, cond, emb], axis=-1))
        if cfg.prediction == "eps":
            x0 = (x - inp["sqrt_1m_ab"] * out) / inp["sqrt_ab"]
        else:
            x0 = out
        if clip > 0:
            x0 = jnp.clip(x0, -clip, clip)
        if ddpm:
            x = inp["c0"] * x0 + inp["ck"] * x + inp["sigma"] * inp["z"]
        else:
            eps = (x - inp["sqrt_ab"] * x0) / inp["sqrt_1m_ab"]
            x = inp["sqrt_ab_prev"] * x0 + inp["sqrt_1m_ab_prev"] * eps
        return x, None

    names = ("emb", "sqrt_ab", "sqrt_1m_ab", "c0", "ck", "sigma", "sqrt_ab_prev", "sqrt_1m_ab_prev")
    xs = {k: c[k] for k in names}
    # Scalars per step broadcast against (..., obs_dim).
    ones = (1,) * (len(batch) + 1)
    xs = {k: (v if k == "emb" else v.reshape((-1, *ones))) for k, v in xs.items()}
    xs["z"] = noise[1:]
    x, _ = jax.lax.scan(step, noise[0], xs, unroll=True)
    return x


def _integrate_flow(
    net: nn.Module, p: Params, cfg: TrainWorldModelConfig, c: dict, cond: jax.Array, x: jax.Array
) -> jax.Array:
    """Integrate the learned velocity from t = 0 (noise) to t = 1 with ``flow_steps`` steps.

    ``c["emb"] (steps, E)``: the time input of each step (MeanFlow's holds both of its
    times, and its "velocity" is the average one, so the Euler step is exact).
    """
    batch = cond.shape[:-1]
    dt = 1.0 / flow_steps(cfg)

    def velocity(x, emb):
        emb = jnp.broadcast_to(emb, (*batch, emb.shape[-1]))
        return net.apply(p, jnp.concatenate([x, cond, emb], axis=-1))

    def step(x, inp):
        v = velocity(x, inp["emb"])
        if cfg.flow_solver == "midpoint":
            v = velocity(x + 0.5 * dt * v, inp["emb_mid"])
        return x + dt * v, None

    xs = {"emb": c["emb"], "emb_mid": c.get("emb_mid", c["emb"])}  # meanflow: no midpoint
    x, _ = jax.lax.scan(step, x, xs, unroll=True)
    return x


def _as_consts(d: dict[str, Any]) -> dict[str, np.ndarray]:
    # float64 NumPy: becomes float32 under default JAX and float64 under x64.
    return {k: np.asarray(v, np.float64) for k, v in d.items()}


def make_world_model(
    params: Params,
    cfg: TrainWorldModelConfig,
    norm: dict[str, Any],
    *,
    obs_dim: int,
    act_dim: int,
    env_id: str,
    meta: dict[str, Any] | None = None,
) -> WorldModel:
    """Assemble a :class:`WorldModel` from parameters, config and normalisation constants.

    ``norm``: ``obs_mean, obs_std, delta_mean, delta_std (obs_dim,)``,
    ``reward_mean, reward_std, logit_offset`` (scalars), e.g. from
    :func:`normalisation`.
    """
    cfg = _resolved(cfg)
    consts = _as_consts({**norm, **_sampler_constants(cfg)})
    return WorldModel(
        params=params,
        noise_shape=_noise_shape(cfg, obs_dim),
        obs_dim=obs_dim,
        act_dim=act_dim,
        env_id=env_id,
        kind=cfg.model,
        meta=dict(meta or {}),
        config=cfg,
        consts=consts,
    )


# --------------------------------------------------------------------------- training


def normalisation(dataset: Dataset, max_pos_weight: float = 1000.0) -> dict[str, Any]:
    """Normalisation constants of the inputs and targets, from (training) data."""
    delta = dataset.next_observations - dataset.observations
    n_pos = int(dataset.terminals.sum())
    n_neg = len(dataset) - n_pos
    # Balanced loss weight for the rare terminals; with none, no reweighting.
    pos_weight = float(np.clip(n_neg / n_pos, 1.0, max_pos_weight)) if n_pos else 1.0
    return {
        "obs_mean": dataset.observations.mean(0),
        "obs_std": dataset.observations.std(0) + 1e-3,
        "delta_mean": delta.mean(0),
        "delta_std": delta.std(0) + 1e-3,
        "reward_mean": float(dataset.rewards.mean()),
        "reward_std": float(dataset.rewards.std() + 1e-3),
        "logit_offset": math.log(pos_weight),
    }


def training_arrays(dataset: Dataset, norm: dict[str, Any]) -> dict[str, np.ndarray]:
    """Normalised arrays the update samples from (``(N, ...)`` float32)."""
    o = lambda x: (x - norm["obs_mean"]) / norm["obs_std"]  # noqa: E731
    delta = dataset.next_observations - dataset.observations
    arrays = {
        "obs": o(dataset.observations),
        "act": dataset.actions,
        "delta": (delta - norm["delta_mean"]) / norm["delta_std"],
        "next_obs": o(dataset.next_observations),
        "rew": (dataset.rewards - norm["reward_mean"]) / norm["reward_std"],
        "done": dataset.terminals.astype(np.float32),
    }
    return {k: np.asarray(v, np.float32) for k, v in arrays.items()}


def meanflow_loss(
    average_velocity: Callable[[jax.Array, jax.Array, jax.Array], jax.Array],
    x1: jax.Array,
    eps: jax.Array,
    key: jax.Array,
) -> jax.Array:
    """MeanFlow loss (scalar) of ``average_velocity(x (n, d), t (n, 1), r (n, 1)) -> (n, d)``
    (the network, conditions bound in) on data ``x1 (n, d)`` with noise ``eps (n, d)``.

    The paper runs time from data (0) to noise (1) with ``z = (1-t) x + t eps``; here, as
    in ``flow``, t = 0 is noise and t = 1 data: ``x_t = (1-t) eps + t x1``, velocity
    ``v = dx_t/dt = x1 - eps``. Sampling moves *up* in time, so the average velocity is
    conditioned on the point at the earlier (noisier) time ``t`` and the target time
    ``r >= t``:

        u(x_t, t, r) = 1/(r - t) * integral_t^r v(x_s, s) ds,    x_r = x_t + (r - t) u.

    Differentiating ``(r - t) u = integral_t^r v ds`` in ``t`` (``r`` fixed) gives the
    MeanFlow identity in this convention (the paper's, with ``t -> 1 - t`` and ``v -> -v``):

        u = v + (r - t) du/dt,    du/dt = v . d_x u + d_t u   (total derivative),

    one ``jax.jvp`` along the tangent ``(dx, dt, dr) = (v, 1, 0)``. The target
    ``v + (r - t) du/dt`` is stop-gradiented, as in the paper; with ``r = t`` it is the
    flow-matching target. Times: two uniform draws, ``t`` the smaller (uniform, like
    ``flow``, rather than the paper's logit-normal, which almost never draws t near 0 and
    r near 1 together, the very interval the one-step sampler uses), then
    ``r = t`` for all but :data:`MEANFLOW_UNEQUAL_FRACTION` of the rows. Each row's squared
    error is weighted adaptively (:data:`MEANFLOW_WEIGHT_POWER`).
    """
    n = x1.shape[0]
    k_a, k_b, k_eq = jax.random.split(key, 3)
    a, b = jax.random.uniform(k_a, (n, 1)), jax.random.uniform(k_b, (n, 1))
    t = jnp.minimum(a, b)
    r = jnp.where(
        jax.random.uniform(k_eq, (n, 1)) < MEANFLOW_UNEQUAL_FRACTION, jnp.maximum(a, b), t
    )
    xt = (1.0 - t) * eps + t * x1
    v = x1 - eps
    u, du_dt = jax.jvp(average_velocity, (xt, t, r), (v, jnp.ones_like(t), jnp.zeros_like(r)))
    target = jax.lax.stop_gradient(v + (r - t) * du_dt)
    err = jnp.sum((u - target) ** 2, axis=-1)  # (n,)
    weight = jax.lax.stop_gradient((err + MEANFLOW_WEIGHT_EPS) ** -MEANFLOW_WEIGHT_POWER)
    return jnp.mean(weight * err)


def make_loss(cfg: TrainWorldModelConfig, obs_dim: int, logit_offset: float) -> Callable:
    """``loss(params, batch, key) -> (total, metrics)`` over all three models.

    The three networks share no parameters, so one summed loss with one Adam
    trains each exactly as if it had its own optimiser.
    """
    nets = _networks(cfg, obs_dim)
    c = _as_consts(_sampler_constants(cfg))
    pos_weight = math.exp(logit_offset)

    def transition_loss(p, batch, key):
        x1, cond = batch["delta"], jnp.concatenate([batch["obs"], batch["act"]], -1)
        n = x1.shape[0]
        k_t, k_eps = jax.random.split(key)
        eps = jax.random.normal(k_eps, x1.shape)
        if cfg.model == "diffusion":
            k = jax.random.randint(k_t, (n,), 0, cfg.denoise_steps)
            sa, s1m = jnp.asarray(c["train_sqrt_ab"])[k, None], jnp.asarray(c["train_sqrt_1m_ab"])
            xk = sa * x1 + s1m[k, None] * eps
            out = nets["transition"].apply(
                p, jnp.concatenate([xk, cond, jnp.asarray(c["train_emb"], jnp.float32)[k]], -1)
            )
            return jnp.mean((out - (eps if cfg.prediction == "eps" else x1)) ** 2)
        if cfg.model == "flow":
            t = jax.random.uniform(k_t, (n, 1))
            xt = (1.0 - t) * eps + t * x1
            emb = sinusoidal_embedding(t[:, 0] * TIME_SCALE, cfg.time_embed_dim)
            v = nets["transition"].apply(p, jnp.concatenate([xt, cond, emb], -1))
            return jnp.mean((v - (x1 - eps)) ** 2)
        if cfg.model == "meanflow":

            def average_velocity(x, t, r):
                feats = meanflow_time_features(t[:, 0], r[:, 0], cfg.time_embed_dim)
                return nets["transition"].apply(p, jnp.concatenate([x, cond, feats], -1))

            return meanflow_loss(average_velocity, x1, eps, k_t)
        out = nets["transition"].apply(p, cond)
        mean = out[:, :obs_dim]
        if not cfg.mlp_gaussian:
            return jnp.mean((mean - x1) ** 2)
        std = _gaussian_std(out[:, obs_dim:])
        return jnp.mean(0.5 * ((mean - x1) / std) ** 2 + jnp.log(std))

    def reward_loss(p, batch):
        x = jnp.concatenate([batch["obs"], batch["act"]], -1)
        pred = nets["reward"].apply(p, x)[..., 0]  # (ensemble, batch)
        return jnp.mean((pred - batch["rew"]) ** 2)

    def termination_loss(p, batch):
        x = jnp.concatenate([batch["obs"], batch["act"], batch["next_obs"]], -1)
        logit = nets["termination"].apply(p, x)[:, 0]
        y = batch["done"]
        per = pos_weight * y * nn.softplus(-logit) + (1.0 - y) * nn.softplus(logit)
        return jnp.mean(per) / (0.5 * (1.0 + pos_weight))  # O(1) whatever the weight

    def loss(params, batch, key):
        lt = transition_loss(params["transition"], batch, key)
        lr = reward_loss(params["reward"], batch)
        ld = termination_loss(params["termination"], batch)
        return lt + lr + ld, {"loss_transition": lt, "loss_reward": lr, "loss_termination": ld}

    return loss


def make_update(cfg: TrainWorldModelConfig, obs_dim: int, logit_offset: float):
    """``(init_state(params), update(state, batch, key))`` for :func:`mpcdwm.train.fit`."""
    opt = optax.adam(cfg.lr)
    loss = make_loss(cfg, obs_dim, logit_offset)

    def init_state(params: Params) -> dict[str, Any]:
        return {"params": params, "opt": opt.init(params)}

    def update(state, batch, key):
        grads, metrics = jax.grad(loss, has_aux=True)(state["params"], batch, key)
        updates, opt_state = opt.update(grads, state["opt"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        return {"params": params, "opt": opt_state}, metrics

    return init_state, update


def _plain_config(cfg: TrainWorldModelConfig) -> dict[str, Any]:
    out = {}
    cfg = _resolved(cfg)  # flow_steps as used: runs from before its default was None match
    for f in dataclasses.fields(cfg):
        if f.name in _RUNTIME_FIELDS:
            continue
        v = getattr(cfg, f.name)
        out[f.name] = list(v) if isinstance(v, tuple) else v
    # A relative and an absolute path to the same data are the same dataset.
    out["dataset"] = dataset_identity(cfg.dataset)
    return out


def _config_from_plain(d: dict[str, Any]) -> TrainWorldModelConfig:
    names = {f.name for f in dataclasses.fields(TrainWorldModelConfig)}
    kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in names}
    return TrainWorldModelConfig(**kw)


def train_world_model(cfg: TrainWorldModelConfig, dataset: Dataset | None = None) -> Path:
    """Train (or resume) transition, reward and termination models; returns the run folder.

    Writes ``cfg.out/checkpoint.ckpt`` (through :func:`mpcdwm.train.fit`, meta
    ``kind="world_model"``), ``metrics.jsonl`` and ``quality.json`` (held-out
    report, also printed). ``dataset`` overrides loading ``cfg.dataset``.
    """
    # Before any work: a bad setting or an unwritable --out must not cost a training run.
    _validate_config(cfg)
    ensure_writable_dir(cfg.out, "--out")
    console = Console(stderr=True, soft_wrap=True)
    if dataset is None:
        with reading_dataset(cfg.dataset, DATASET_FIX):
            dataset = load_dataset(cfg.dataset, env_id=cfg.env_id, drop_invalid=cfg.drop_invalid)
        check_dataset_against_env(dataset)
    if dataset.dropped_rows:
        console.print(f"[yellow]dropped {dataset.dropped_rows} row(s) with NaN/inf[/]")
    if cfg.val_fraction > 0:
        train_ds, val_ds = dataset.split(cfg.val_fraction, cfg.seed)
    else:
        train_ds, val_ds = dataset, dataset
    norm = normalisation(train_ds, cfg.max_pos_weight)
    data = {k: jnp.asarray(v) for k, v in training_arrays(train_ds, norm).items()}
    val = {k: jnp.asarray(v) for k, v in training_arrays(val_ds, norm).items()}

    key = jax.random.key(cfg.seed)
    k_init, k_fit, k_val, k_quality = jax.random.split(key, 4)
    init_state, update = make_update(cfg, dataset.obs_dim, norm["logit_offset"])
    state = init_state(init_params(cfg, dataset.obs_dim, dataset.act_dim, k_init))

    loss = make_loss(cfg, dataset.obs_dim, norm["logit_offset"])
    val_loss = jax.jit(lambda p: loss(p, _subsample(val, 4096), k_val)[1])

    def eval_fn(state):
        return {f"val_{k}": float(v) for k, v in val_loss(state["params"]).items()}

    meta = {
        "kind": "world_model",
        "model": cfg.model,
        "env_id": dataset.env_id,
        "dataset": dataset.name,
        "obs_dim": dataset.obs_dim,
        "act_dim": dataset.act_dim,
        "config": _plain_config(cfg),
        "steps": cfg.steps,  # the target of the run (not part of its identity)
        "norm": {k: np.asarray(v).tolist() for k, v in norm.items()},
        "train_transitions": len(train_ds),
        "val_transitions": len(val_ds),
        "train_terminals": int(train_ds.terminals.sum()),
    }
    state, _ = fit(
        name=f"world model ({cfg.model})",
        update=update,
        state=state,
        data=data,
        key=k_fit,
        steps=cfg.steps,
        batch_size=cfg.batch_size,
        out_dir=cfg.out,
        meta=meta,
        chunk=cfg.chunk,
        eval_fn=eval_fn,
        eval_every=cfg.eval_every or cfg.steps,
        checkpoint_every=cfg.checkpoint_every,
        checkpoint_minutes=cfg.checkpoint_minutes,
        log_backends=tuple(cfg.log),
        resume=cfg.resume,
        progress=cfg.progress,
        console=console,
    )
    wm = make_world_model(
        state["params"],
        cfg,
        norm,
        obs_dim=dataset.obs_dim,
        act_dim=dataset.act_dim,
        env_id=dataset.env_id,
        meta=meta,
    )
    quality = world_model_quality(
        wm,
        val_ds,
        k_quality,
        horizons=cfg.quality_horizons,
        max_transitions=cfg.quality_transitions,
        num_windows=cfg.quality_windows,
    )
    quality["split"] = "validation" if cfg.val_fraction > 0 else "train (val_fraction=0)"
    (Path(cfg.out) / "quality.json").write_text(json.dumps(quality, indent=2) + "\n")
    print_quality({cfg.model: quality}, console, title=f"world model quality ({dataset.name})")
    return Path(cfg.out)


def _subsample(data: Batch, n: int) -> Batch:
    # Deterministic evenly spaced rows: validation losses comparable over time.
    size = next(iter(data.values())).shape[0]
    idx = np.linspace(0, size - 1, min(n, size)).astype(np.int32)
    return {k: v[idx] for k, v in data.items()}


DATASET_FIX = "regenerate it (`mpcdwm collect`), download it again, or pass another --dataset"


def _validate_config(cfg: TrainWorldModelConfig) -> None:
    """Every numeric setting in its valid range (:data:`mpcdwm.configs.FIELD_RULES`: steps,
    sizes, lr, val_fraction, ...); one error naming each bad flag."""
    if not cfg.dataset:
        raise ValueError("train-world-model needs --dataset (a Minari id/folder or .hdf5 file).")
    check_config(cfg)


# --------------------------------------------------------------------------- loading


def load_world_model(run_dir_or_ckpt: str | Path, env_id: str | None = None) -> WorldModel:
    """Load a trained world model from its run folder (or ``checkpoint.ckpt`` path).

    ``env_id``: if given, the model must have been trained for it
    (:class:`~mpcdwm.checkpoint.CheckpointError` otherwise). Missing, corrupt
    or foreign checkpoints raise ``CheckpointError`` with the fix.
    """
    path = checkpoint_file(run_dir_or_ckpt)
    _, meta = load_checkpoint(path, expect={"kind": "world_model"})
    if env_id is not None and meta.get("env_id") != env_id:
        raise CheckpointError(
            f"{path} is a world model for {meta.get('env_id')!r}, but {env_id!r} is needed. "
            f"Train one on a {env_id} dataset (`mpcdwm train-world-model --dataset ...`)."
        )
    cfg = _config_from_plain(meta["config"])
    obs_dim, act_dim = int(meta["obs_dim"]), int(meta["act_dim"])
    norm = meta["norm"]
    init_state, _ = make_update(cfg, obs_dim, float(norm["logit_offset"]))
    params = init_params(cfg, obs_dim, act_dim, jax.random.key(0))
    template = {"train": init_state(params), "key": jax.random.key(0), "step": np.int64(0)}
    saved, meta = load_checkpoint(path, template)
    if not meta.get("done", False):
        warnings.warn(
            f"{path} is from an unfinished run ({training_progress(meta, cfg.steps)}); "
            "resume `mpcdwm train-world-model` with the same --out to finish it.",
            stacklevel=2,
        )
    params = jax.tree_util.tree_map(jnp.asarray, saved["train"]["params"])
    return make_world_model(
        params, cfg, norm, obs_dim=obs_dim, act_dim=act_dim, env_id=meta["env_id"], meta=meta
    )
