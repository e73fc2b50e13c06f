"""Inference-time adaptation (MPCwDWM) and the comparison planners on the same models.

This module owns the *decision*: from one real observation, think inside the
world model, then return one action. Three planners share the rollout code:

* ``mpc`` (the paper's method): ``adapt_steps`` (E) gradient steps on the policy
  parameters ``psi``; each rolls out ``num_rollouts`` (M) imagined trajectories of
  ``horizon`` (H) steps from the real state with ``a_h = act(psi, s_h)`` and
  ``s_{h+1} = next_state(s_h, a_h, noise_h)`` (noise drawn once per decision and
  held fixed, so the chain is a deterministic differentiable function of ``psi``),
  and ascends the surrogate return::

      J(psi) = mean_M [ sum_{h<H} gamma^h alive_h r(s_h, a_h)
                        + gamma^H alive_H Q(s_H, act(psi, s_H)) ]

  with ``alive_h = prod_{j<h} (1 - done_prob(s_j, a_j, s_{j+1}))``;
* ``action-grad``: the same gradient ascent on an open-loop action sequence
  ``(H, act_dim)`` initialised from the policy's imagined rollout;
* ``mppi``: TD-MPC-style sampling (Gaussian + policy-guided candidates, elites,
  softmax re-weighting, terminal critic);
* ``dream-mpc``: Dream-MPC (Spieler and Behnke, 2026), the closest published relative: a
  few action sequences proposed by the policy plus the previous step's plan shifted by one,
  each refined by gradient ascent, the best by imagined return minus the reward ensemble's
  disagreement (``uncertainty_penalty``) is executed and its tail kept as the next plan.

Each planner is ONE jitted function of the signature::

    step(policy_params, pretrained_params, models, obs, key, carry)
        -> (action, new_carry, diagnostics)

``models = {"world": world.params, "critic": agent.critic_params}``; ``obs``
``(obs_dim,)``; ``action (act_dim,)`` always finite and inside the action bounds;
``diagnostics`` a dict of scalars (imagined return before/after, gradient norm,
action change from the pretrained action, fallback 0/1).

The agent and world model are used only through their contracts
(:class:`mpcdwm.agents.TrainedAgent`, :class:`mpcdwm.world.WorldModel`): any
object with the same pure functions works (tests use analytic stand-ins).
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal, Protocol

import jax
import jax.numpy as jnp
import numpy as np
import optax

Params = Any
PlannerName = Literal["none", "mpc", "action-grad", "mppi", "dream-mpc"]
PLANNERS: tuple[str, ...] = ("none", "mpc", "action-grad", "mppi", "dream-mpc")


@dataclasses.dataclass(frozen=True)
class MPCConfig:
    """Budget and options of the inference-time planners (``--mpc.*`` flags)."""

    adapt_steps: int | None = None
    """E: gradient steps per real step (mpc, action-grad, dream-mpc). None: the preset's
    (1; 5 with ``preset reference``). With weights carried across real steps one step per
    decision continues the previous decision's optimisation."""
    num_rollouts: int | None = None
    """M: imagined trajectories per gradient step (noise drawn once per decision). None: the
    preset's (16; 256 with ``preset paper``)."""
    horizon: int = 5
    """H: imagined steps before the terminal critic."""
    gamma: float | None = None
    """Discount of the surrogate return (None = the agent's)."""
    lr: float | None = None
    """Step size of the policy-parameter update (0 = act exactly as the base policy). None:
    the preset's (5e-7; 5e-6 with ``preset paper``, 3e-5 with ``preset reference``). The
    paper picks it per dataset from {5e-7, 5e-6, 5e-5, 5e-4}; 5e-7 is the one step that did
    not lose on any of the IQL medium datasets here (BENCHMARKS.md, score vs latency). With
    Adam every weight moves by about ``lr`` per step whatever the gradient's size: 3e-4 moved
    Hopper's actions by ~0.7 and made it fall."""
    optimizer: Literal["adam", "sgd"] | None = None
    """Optimiser of the adaptation (its state is reset at every real step). None: the
    preset's (sgd, the paper's plain gradient ascent; adam with ``preset reference``)."""
    warm_start: bool | None = None
    """mpc: start each real step from the last step's adapted parameters (reset at episode
    start) instead of the pretrained. None: the preset's (True; False with ``preset
    reference``)."""
    trust_region: float = 0.0
    """Weight of the L2 penalty between adapted and pretrained actions (normalised units) at the
    visited imagined states; 0 = off."""
    uncertainty_penalty: float = 0.0
    """Weight of the reward-ensemble disagreement subtracted from imagined rewards; 0 = off."""
    ensemble_penalty: float = 0.0
    """Weight of the transition ensemble's disagreement subtracted along the imagined path
    (epistemic uncertainty that carries gradient, as in MOPO / MOBILE; beyond the paper). At
    every imagined step the planning world model and the ensemble's other members
    (independently trained world models of the same data: ``make_planner(..., ensemble=)``,
    ``mpcdwm evaluate --ensemble-world-models``) each predict ``s'`` from the same
    ``(s, a, noise)``; the disagreement is the std over members in units of the planning
    model's observation std, averaged over dimensions (0 where the members agree), discounted
    and summed like a reward. The path itself follows the planning model. 0 = off."""
    reward_ensemble: bool = False
    """Imagined rewards from the mean of every reward-ensemble member (True) or from the
    first member alone (default: the ensemble exists for its disagreement; at 5 members it
    was a quarter of a decision's arithmetic). Always the whole ensemble when
    ``uncertainty_penalty > 0``."""
    adapt: Literal["all", "last_layer"] = "all"
    """Which policy parameters adapt: all, or only the last Dense layer."""
    max_grad_norm: float = 0.0
    """Clip the adaptation gradient to this global norm; 0 = no clipping."""
    terminal_action: Literal["adapted", "pretrained"] = "adapted"
    """mpc: action fed to the terminal critic, ``Q(s_H, pi(s_H))``: the adapted policy's (the
    paper's surrogate) or the pretrained policy's, so that the gradient reaches ``psi`` only
    through the imagined states and rewards, never through the critic's action-gradient at
    ``s_H`` (the critic estimates the pretrained policy's value; action-grad and mppi always
    use the pretrained policy there)."""
    action_lr: float = 0.03
    """action-grad: Adam learning rate on the action sequence (normalised action units)."""
    dream_candidates: int = 4
    """dream-mpc: action sequences proposed by the policy (closed-loop imagined rollouts, each
    with its own noise) per decision, besides the previous step's shifted plan."""
    mppi_iterations: int = 6
    """mppi: refinement iterations (TD-MPC: 6)."""
    mppi_samples: int = 256
    """mppi: Gaussian candidate sequences per iteration."""
    mppi_policy_samples: int = 16
    """mppi: policy-guided candidate sequences (rolled out once, kept in every iteration)."""
    mppi_elites: int = 32
    """mppi: elite candidates that set the new mean and std."""
    mppi_temperature: float = 0.5
    """mppi: softmax temperature on elite values (values are divided by their std first)."""
    mppi_min_std: float = 0.05
    """mppi: lower bound of the sampling std (normalised action units)."""
    mppi_max_std: float = 2.0
    """mppi: initial / upper bound of the sampling std (normalised action units)."""
    unroll: bool = True
    """Unroll the horizon scan so XLA fuses across imagined steps (faster on CPU, slower
    compile)."""
    preset: Literal["none", "paper", "reference"] = "none"
    """Fills the budget fields left None (:data:`PRESETS`, applied by :func:`resolve`):
    ``none``: the default, the paper's amortised setting at a 4x cheaper budget than the
    reference (plain gradient steps, E=1, weights carried across the real steps of an
    episode and reset at its start, noise redrawn at every real step; M=16, lr=5e-7;
    5.7 ms a decision on two CPU cores, BENCHMARKS.md); ``paper``: the same at M=256,
    lr=5e-6; ``reference``: the earlier default and the expensive path of the
    score-vs-latency comparison (Adam, E=5 reset at every real step, M=16, lr=3e-5;
    22.7 ms). A field given explicitly always wins over the preset."""
    # The budget fields default to None so that a value given explicitly (even one equal to
    # a preset's) is never mistaken for "not given".
    update: Literal["gradient", "placebo"] = "gradient"
    """mpc: ``placebo`` runs the adaptation (and carries its weights on, as the real planner
    does), but acts with the pretrained weights moved along a fresh random direction, scaled
    so that the action at the real state differs from the pretrained action by as much as the
    adapted one does (to first order: same action change, no information from the model):
    the control a gain must beat (DESIGN.md, "Reading a gain"). A random direction of the
    same parameter norm moved Hopper's action ~15x less than the gradient did, and a random
    change added to carried weights accumulated (10x the gradient's over an episode), so
    neither is what is matched."""
    validate: bool = False
    """mpc: before acting, score the adapted and the pretrained policy on fresh noise
    draws (M rollouts each, paired) and act adapted only if its imagined return is higher
    by more than the standard error of the paired difference; otherwise act as the
    pretrained policy (and, with warm start, restart from its weights). Diagnostic
    ``accepted``. With a validation world model (``make_planner(..., validation_world=)``,
    ``mpcdwm evaluate --validation-world-model``), that independently trained model scores
    both policies."""
    termination: Literal["learned", "rule", "smooth-rule"] = "learned"
    """What ends an imagined episode: the world model's learned classifier, or the env's
    own rule, read from the Gymnasium env (:func:`mpcdwm.envs.task_rule`): the health rule
    of Hopper, Walker2d, Ant, or the goal of PointMaze/AntMaze, as a hard 0/1 mask
    (``rule``: no gradient through it) or a sigmoid of the distance to the boundary
    (``smooth-rule``: the gradient points away from falling, toward the goal). Envs
    without a rule fall back to ``learned``."""
    reward: Literal["learned", "rule", "smooth-rule"] = "learned"
    """What an imagined step earns: the world model's learned reward, or on goal-reaching
    envs (PointMaze, AntMaze) the env's sparse reward, 1 within the goal's radius (``rule``;
    its gradient is 0, the terminal critic alone steers) or its sigmoid (``smooth-rule``).
    The paper's method learns the reward; the rule is for sparse tasks whose few rewarded
    transitions a reward model cannot learn. Envs without a goal fall back to ``learned``."""
    termination_sharpness: float = 0.02
    """smooth-rule (termination and reward): width of the sigmoid at the boundary, in
    observation units (metres for a maze goal)."""
    diagnostics: bool = False
    """Also roll out what only the diagnostics need: for mpc and action-grad the return after
    the last update (``imagined_return_after``; one extra forward pass of M rollouts, about a
    third of a decision at E=1), for dream-mpc the proposals' return before refining
    (``imagined_return_before``). Off (the default): those diagnostics are NaN (null in
    eval.json) and the decision does only the work that chooses the action; the other
    diagnostics (return before the first update, action change, ...) are free and always kept."""


_AMORTISED: dict[str, Any] = {"optimizer": "sgd", "adapt_steps": 1, "warm_start": True}
PRESETS: dict[str, dict[str, Any]] = {
    "none": {**_AMORTISED, "num_rollouts": 16, "lr": 5e-7},
    "paper": {**_AMORTISED, "num_rollouts": 256, "lr": 5e-6},
    "reference": {
        "optimizer": "adam",
        "adapt_steps": 5,
        "warm_start": False,
        "num_rollouts": 16,
        "lr": 3e-5,
    },
}
"""What each ``--mpc.preset`` puts in the fields left None."""
PAPER_LR_GRID: tuple[float, ...] = (5e-7, 5e-6, 5e-5, 5e-4)
"""The per-dataset step sizes the paper's setting is reported with."""
STEP_SIZE_TRUST_REGION = 0.03
"""Largest distance ``||a_adapted - a_pretrained||`` (L2, in env action units) that the carried
weights may reach at the end of a walked dataset segment for :func:`select_step_size` to accept
a step size (opt-in: ``max_action_change``). Fitted on the IQL medium runs of BENCHMARKS.md (the
step real returns favoured ended at 0.006-0.024 over 40-state segments, the next larger one,
which lost, at 0.053-0.11). On held-out hopper-medium-replay it chose 5e-7 where 5e-5 gained 33
points: not a validated rule, hence not a default."""


def resolve(cfg: MPCConfig) -> MPCConfig:
    """``cfg`` with its preset applied (``preset`` becomes ``none``) and every None default
    filled in; idempotent."""
    if cfg.preset not in PRESETS:
        raise ValueError(f"--mpc.preset must be one of {', '.join(PRESETS)}, got {cfg.preset!r}.")
    fill = PRESETS[cfg.preset]
    changes = {name: value for name, value in fill.items() if getattr(cfg, name) is None}
    return dataclasses.replace(cfg, preset="none", **changes)


class AgentLike(Protocol):
    """What the planners need from an agent (see :class:`mpcdwm.agents.TrainedAgent`)."""

    actor_params: Params
    critic_params: Params
    gamma: float
    action_low: np.ndarray
    action_high: np.ndarray

    def act(self, params: Params, obs: jax.Array) -> jax.Array: ...
    def critic(self, params: Params, obs: jax.Array, action: jax.Array) -> jax.Array: ...


class HealthLike(Protocol):
    """An env's health rule on observations (see :class:`mpcdwm.envs.HealthRule`): the
    episode ends when ``obs[index]`` leaves the open interval ``(low, high)``."""

    index: tuple[int, ...]
    low: tuple[float, ...]
    high: tuple[float, ...]


class GoalLike(Protocol):
    """A goal-reaching env's rule on observations (see :class:`mpcdwm.envs.GoalRule`): the
    step reaching ``|obs[achieved] - obs[goal]| <= radius`` earns 1 and ends the episode."""

    achieved: tuple[int, ...]
    goal: tuple[int, ...]
    radius: float


TaskRuleLike = HealthLike | GoalLike
"""The env's known rule for imagined episodes (:func:`mpcdwm.envs.task_rule`)."""


class WorldLike(Protocol):
    """What the planners need from a world model (see :class:`mpcdwm.world.WorldModel`)."""

    params: Params
    noise_shape: tuple[int, ...]

    def next_state(self, params: Params, s: jax.Array, a: jax.Array, noise: jax.Array): ...
    def reward(
        self, params: Params, s: jax.Array, a: jax.Array, members: int | None = None
    ) -> jax.Array: ...
    def reward_disagreement(self, params: Params, s: jax.Array, a: jax.Array) -> jax.Array: ...
    def done_prob(self, params: Params, s: jax.Array, a: jax.Array, s_next: jax.Array): ...


DIAGNOSTICS = (
    "imagined_return_before",
    "imagined_return_after",
    "grad_norm",
    "action_change",
    "fallback",
    "accepted",
)


def validate_config(cfg: MPCConfig) -> None:
    """Raise a ValueError naming the bad field and its valid range (of ``cfg`` resolved)."""
    cfg = resolve(cfg)
    positive = (
        "adapt_steps",
        "num_rollouts",
        "horizon",
        "mppi_iterations",
        "mppi_samples",
        "dream_candidates",
    )
    for name in positive:
        if getattr(cfg, name) < 1:
            flag = name.replace("_", "-")
            raise ValueError(f"--mpc.{flag} must be >= 1, got {getattr(cfg, name)}.")
    nonnegative = (
        "lr",
        "trust_region",
        "uncertainty_penalty",
        "ensemble_penalty",
        "max_grad_norm",
        "action_lr",
    )
    for name in nonnegative:
        value = getattr(cfg, name)
        if not np.isfinite(value) or value < 0:
            flag = name.replace("_", "-")
            raise ValueError(f"--mpc.{flag} must be finite and >= 0, got {value}.")
    if cfg.gamma is not None and not 0.0 <= cfg.gamma <= 1.0:
        raise ValueError(f"--mpc.gamma must be in [0, 1] (None = the agent's), got {cfg.gamma}.")
    if not 1 <= cfg.mppi_elites <= cfg.mppi_samples + cfg.mppi_policy_samples:
        raise ValueError(
            f"--mpc.mppi-elites must be between 1 and mppi_samples + mppi_policy_samples "
            f"({cfg.mppi_samples + cfg.mppi_policy_samples}), got {cfg.mppi_elites}."
        )
    if cfg.mppi_policy_samples < 0 or not 0 < cfg.mppi_min_std <= cfg.mppi_max_std:
        raise ValueError(
            "--mpc.mppi-policy-samples must be >= 0 and 0 < mppi_min_std <= mppi_max_std."
        )
    if cfg.optimizer not in ("adam", "sgd"):
        raise ValueError(f"--mpc.optimizer must be adam or sgd, got {cfg.optimizer!r}.")
    if cfg.adapt not in ("all", "last_layer"):
        raise ValueError(f"--mpc.adapt must be all or last_layer, got {cfg.adapt!r}.")
    if cfg.update not in ("gradient", "placebo"):
        raise ValueError(f"--mpc.update must be gradient or placebo, got {cfg.update!r}.")
    if cfg.termination not in ("learned", "rule", "smooth-rule"):
        raise ValueError(
            f"--mpc.termination must be learned, rule or smooth-rule, got {cfg.termination!r}."
        )
    if cfg.reward not in ("learned", "rule", "smooth-rule"):
        raise ValueError(f"--mpc.reward must be learned, rule or smooth-rule, got {cfg.reward!r}.")
    if not cfg.termination_sharpness > 0:
        raise ValueError(
            f"--mpc.termination-sharpness must be > 0, got {cfg.termination_sharpness}."
        )
    if cfg.terminal_action not in ("adapted", "pretrained"):
        raise ValueError(
            f"--mpc.terminal-action must be adapted or pretrained, got {cfg.terminal_action!r}."
        )


# --------------------------------------------------------------------------- helpers


def last_layer_mask(params: Params) -> list[bool]:
    """Per-leaf flags (in ``tree_leaves`` order): True for leaves of the last ``Dense_k`` layer.

    Works for any Flax MLP-style policy (ReBRAC's ``{"params": {"Dense_0": ...}}``,
    IQL's ``{"net": ...}``); raises if the tree has no ``Dense_k`` modules.
    """
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    layer = [max((int(k) for k in re.findall(r"Dense_(\d+)", p)), default=-1) for p in paths]
    top = max(layer, default=-1)
    if top < 0:
        raise ValueError(
            "--mpc.adapt last_layer needs a policy built from Flax Dense layers "
            f"(found leaves {paths}); use --mpc.adapt all."
        )
    return [k == top for k in layer]


def _action_bounds(agent: AgentLike) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    low = np.asarray(agent.action_low, np.float32).reshape(-1)
    high = np.asarray(agent.action_high, np.float32).reshape(-1)
    if low.shape != high.shape or not np.all(np.isfinite(low) & np.isfinite(high) & (low <= high)):
        raise ValueError(f"the agent's action bounds are not finite intervals: {low}, {high}.")
    return (
        jnp.asarray(low),
        jnp.asarray(high),
        jnp.asarray((high + low) / 2),
        jnp.asarray(np.maximum((high - low) / 2, 1e-6)),
    )


def safe_action(action: jax.Array, fallback: jax.Array, low: jax.Array, high: jax.Array):
    """``action`` if finite, else ``fallback`` (else the bounds' midpoint); clipped to bounds."""
    a = jnp.where(jnp.all(jnp.isfinite(action)), action, fallback)
    a = jnp.where(jnp.isfinite(a), a, (low + high) / 2)
    return jnp.clip(a, low, high)


def _base_action(
    agent: AgentLike, weights: Params, obs: jax.Array, bounds: tuple[jax.Array, jax.Array]
) -> jax.Array:
    """``(act_dim,)`` the base policy's action for ``obs`` under ``weights``, made safe (the
    bounds' midpoint if not finite, clipped): what every planner falls back to."""
    low, high = bounds
    return safe_action(agent.act(weights, obs), (low + high) / 2, low, high)


def _decide(
    proposed: jax.Array,
    a0: jax.Array,
    ok: jax.Array,
    accepted: jax.Array,
    bounds: tuple[jax.Array, jax.Array],
    before: jax.Array,
    after: jax.Array,
    grad_norm: jax.Array,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The action a planner executes and its :data:`DIAGNOSTICS`, the same for every planner:
    ``proposed (act_dim,)`` when ``accepted``, else the base policy's ``a0`` (a failed or
    rejected plan never reaches the env); ``fallback`` marks a non-finite plan (``ok``
    false), ``accepted`` whether the plan was used."""
    low, high = bounds
    action = safe_action(jnp.where(accepted, proposed, a0), a0, low, high)
    return action, {
        "imagined_return_before": before,
        "imagined_return_after": after,
        "grad_norm": grad_norm,
        "action_change": jnp.linalg.norm(action - a0),
        "fallback": 1.0 - ok.astype(jnp.float32),
        "accepted": accepted.astype(jnp.float32),
    }


def random_step(
    action_of: Callable[[Params], jax.Array], params: Params, change: jax.Array, key: jax.Array
) -> Params:
    """The placebo's parameter change: ``params + c r``, ``r`` a standard-normal direction
    (one key per leaf) and ``c = change / |J r|`` with ``J r`` the directional derivative of
    ``action_of(params) (act_dim,)`` (one jvp), so the action moves by ``change`` to first
    order, as the adapted weights move it, without information from the model."""
    leaves, treedef = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(key, len(leaves))
    rand = [jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves, strict=True)]
    rand = treedef.unflatten(rand)
    _, along = jax.jvp(action_of, (params,), (rand,))
    scale = change / (jnp.linalg.norm(along) + 1e-12)
    return jax.tree_util.tree_map(lambda x, r: x + scale * r, params, rand)


def _all_finite(tree: Any) -> jax.Array:
    leaves = jax.tree_util.tree_leaves(tree)
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def _scan(f: Callable, init: Any, xs: Any, unroll: bool):
    return jax.lax.scan(f, init, xs, unroll=True if unroll else 1)


def _goal_distance(rule: GoalLike, s: jax.Array) -> jax.Array:
    gap = s[jnp.asarray(rule.achieved, jnp.int32)] - s[jnp.asarray(rule.goal, jnp.int32)]
    # sqrt(x + tiny), not norm: norm's gradient is NaN at the goal itself.
    return jnp.sqrt(jnp.sum(gap**2) + 1e-12)


def _is_goal_rule(rule: TaskRuleLike | None) -> bool:
    return rule is not None and hasattr(rule, "radius")


def _goal_reached(rule: GoalLike, mode: str, width: float) -> Callable[[jax.Array], jax.Array]:
    """``reached(s_next) -> scalar``: 1 within ``radius`` of the goal (``mode="rule"``, no
    gradient), else ``sigmoid((radius - distance) / width)`` (``smooth-rule``). The maze's
    sparse reward and its end of episode are the same test."""
    radius = float(rule.radius)
    if mode == "rule":
        return lambda s: (_goal_distance(rule, s) <= radius).astype(s.dtype)
    return lambda s: jax.nn.sigmoid((radius - _goal_distance(rule, s)) / width)


def make_done_fn(cfg: MPCConfig, world: WorldLike, rule: TaskRuleLike | None) -> Callable:
    """``done(world_params, s, a, s_next) -> probability (scalar)`` that an imagined episode
    ends at ``s_next``: the learned classifier, or the env's rule (``cfg.termination``).

    Health rules: ``rule``: 1 where any ruled entry of ``s_next`` is outside its interval or
    not finite (a hard mask, no gradient). ``smooth-rule``: ``1 - prod_k sigmoid((x_k -
    low_k) / w) sigmoid((high_k - x_k) / w)`` with ``w = termination_sharpness``, whose
    gradient pushes the imagined state back inside the healthy region. Goal rules: 1 within
    ``radius`` of the goal (``rule``), or ``sigmoid((radius - distance) / w)``.
    """
    if cfg.termination == "learned" or rule is None:
        return world.done_prob
    width = float(cfg.termination_sharpness)
    if _is_goal_rule(rule):
        reached = _goal_reached(rule, cfg.termination, width)
        hard_mask = cfg.termination == "rule"

        def goal_done(wp, s, a, s_next):
            del wp, s, a
            if hard_mask:  # as the health rule's mask: a non-finite state ends the episode
                return jnp.where(jnp.all(jnp.isfinite(s_next)), reached(s_next), 1.0)
            return reached(s_next)

        return goal_done

    idx = jnp.asarray(rule.index, jnp.int32)
    # Infinite bounds become far finite ones: same value, and a zero (not NaN) gradient.
    low = jnp.asarray(np.maximum(np.asarray(rule.low, np.float32), -1e6))
    high = jnp.asarray(np.minimum(np.asarray(rule.high, np.float32), 1e6))

    def hard(wp, s, a, s_next):
        del wp, s, a
        x = s_next[idx]
        healthy = jnp.all((x > low) & (x < high)) & jnp.all(jnp.isfinite(s_next))
        return 1.0 - healthy.astype(s_next.dtype)

    def smooth(wp, s, a, s_next):
        del wp, s, a
        x = s_next[idx]
        inside = jax.nn.sigmoid((x - low) / width) * jax.nn.sigmoid((high - x) / width)
        return 1.0 - jnp.prod(inside)

    return hard if cfg.termination == "rule" else smooth


def make_reward_fn(
    cfg: MPCConfig, world: WorldLike, rule: TaskRuleLike | None, members: int | None
) -> Callable:
    """``reward(world_params, s, a, s_next) -> scalar`` of an imagined step: the learned
    reward model (its first member, or the ensemble mean with ``members=None``), or with a
    goal rule and ``cfg.reward`` ``rule`` / ``smooth-rule`` the env's own sparse reward: 1
    within ``radius`` of the goal (no gradient), or ``sigmoid((radius - distance) / w)``,
    ``w = termination_sharpness``. Other rules (health) define no reward: learned."""
    if cfg.reward == "learned" or not _is_goal_rule(rule):

        def learned(wp, s, a, s_next):
            del s_next
            return world.reward(wp, s, a, members)

        return learned
    reached = _goal_reached(rule, cfg.reward, float(cfg.termination_sharpness))

    def goal_reward(wp, s, a, s_next):
        del wp, s, a
        return reached(s_next)

    return goal_reward


# --------------------------------------------------------------------------- rollouts


def make_imagine(
    cfg: MPCConfig,
    agent: AgentLike,
    world: WorldLike,
    rule: TaskRuleLike | None = None,
    ensemble: Sequence[WorldLike] = (),
) -> Callable:
    """``imagine(act_fn, models, s0, noise, seq=None, terminal_fn=None) -> (returns (M,), aux)``.

    ``act_fn(s) -> a`` is the closed-loop policy for states ``s (obs_dim,)``; it acts at
    every imagined step, or only at the terminal critic's step when an open-loop
    sequence ``seq (M, H, act_dim)`` (raw units) is given. ``terminal_fn`` (default
    ``act_fn``) gives the terminal critic's action instead. ``noise (M, H, *noise_shape)``.
    ``aux``: per-rollout ``states (M, H + 1, obs_dim)``, ``actions (M, H + 1, act_dim)``
    and ``penalty (M,)`` (the discounted sum of the weighted reward-ensemble and
    transition-ensemble disagreements). Rollouts are vmapped over M so every network call is
    one batched matmul. ``rule``: the env's health or goal rule, used when
    ``cfg.termination`` or ``cfg.reward`` asks for it (:func:`make_done_fn`,
    :func:`make_reward_fn`). ``ensemble``: the other transition models whose disagreement
    ``cfg.ensemble_penalty`` weighs (their weights arrive as
    ``models["ensemble"]``, in the same order).
    """
    gamma = float(agent.gamma if cfg.gamma is None else cfg.gamma)
    lam = float(cfg.uncertainty_penalty)
    lam_x = float(cfg.ensemble_penalty)
    others = tuple(ensemble) if lam_x > 0 else ()
    # Disagreement in the planning model's normalised units, so one weight fits every
    # observation dimension (stand-in worlds without normalisation constants: raw units).
    obs_scale = getattr(world, "obs_scale", 1.0)
    done_fn = make_done_fn(cfg, world, rule)
    members = None if (cfg.reward_ensemble or lam > 0) else 1
    reward_fn = make_reward_fn(cfg, world, rule, members)

    def one(act_fn: Callable, terminal_fn: Callable, models: dict, s0, noise, seq):
        wp = models["world"]

        def step(carry, inp):
            s, alive, disc, ret, pen = carry
            noise_h, a_seq = inp
            a = act_fn(s) if a_seq is None else a_seq
            if lam > 0:  # static: no disagreement network work when the penalty is off
                pen = pen + lam * disc * alive * world.reward_disagreement(wp, s, a)
            s_next = world.next_state(wp, s, a, noise_h)
            r = reward_fn(wp, s, a, s_next)
            if others:  # static, like lam: no extra models run when the penalty is off
                # Same noise for every member: members that learned the same dynamics map it
                # to the same s', so what differs is what the data did not pin down.
                preds = [s_next] + [
                    m.next_state(p, s, a, noise_h)
                    for m, p in zip(others, models["ensemble"], strict=True)
                ]
                # sqrt(var + tiny), not std: std's gradient is NaN where members agree exactly.
                spread = jnp.sqrt(jnp.var(jnp.stack(preds), axis=0) + 1e-12) / obs_scale
                pen = pen + lam_x * disc * alive * spread.mean(-1)
            d = done_fn(wp, s, a, s_next)
            ret = ret + disc * alive * r
            return (s_next, alive * (1.0 - d), disc * gamma, ret, pen), (s, a)

        zero = jnp.zeros((), s0.dtype)
        init = (s0, jnp.ones((), s0.dtype), jnp.ones((), s0.dtype), zero, zero)
        (s_h, alive, disc, ret, pen), (states, actions) = _scan(
            step, init, (noise, seq), cfg.unroll
        )
        a_h = terminal_fn(s_h)
        ret = ret + disc * alive * agent.critic(models["critic"], s_h, a_h)
        states = jnp.concatenate([states, s_h[None]], 0)
        actions = jnp.concatenate([actions, a_h[None]], 0)
        return ret, {"states": states, "actions": actions, "penalty": pen}

    def imagine(act_fn: Callable, models: dict, s0, noise, seq=None, terminal_fn=None):
        axes = (None, None, None, None, 0, None if seq is None else 0)
        terminal_fn = act_fn if terminal_fn is None else terminal_fn
        return jax.vmap(one, in_axes=axes)(act_fn, terminal_fn, models, s0, noise, seq)

    return imagine


# --------------------------------------------------------------------------- planners


def make_mpc_step(
    cfg: MPCConfig,
    agent: AgentLike,
    world: WorldLike,
    rule: TaskRuleLike | None = None,
    validation_world: WorldLike | None = None,
    ensemble: Sequence[WorldLike] = (),
) -> Callable:
    """The MPCwDWM decision as one jitted function (see the module docstring).

    ``carry = {"params": adapted params}`` (the next step's start when warm-starting).
    With ``cfg.update == "placebo"`` the action comes from the pretrained parameters moved
    along a random direction with the same action change at ``obs``; with ``cfg.validate``
    the adapted policy acts only when it beats the pretrained one on fresh noise (see
    :class:`MPCConfig`).
    """
    cfg = resolve(cfg)
    validate_config(cfg)
    low, high, _, half = _action_bounds(agent)
    imagine = make_imagine(cfg, agent, world, rule, ensemble)
    # The validated step's judge: an independently trained world model when one is given
    # (its own normalisation constants; its weights arrive as models["validation_world"]).
    if validation_world is None:
        judge_imagine, judge_key = imagine, "world"
    else:
        judge_imagine = make_imagine(cfg, agent, validation_world, rule)
        judge_key = "validation_world"
    tx = optax.adam(cfg.lr) if cfg.optimizer == "adam" else optax.sgd(cfg.lr)
    if cfg.max_grad_norm > 0:
        tx = optax.chain(optax.clip_by_global_norm(cfg.max_grad_norm), tx)
    H, M = cfg.horizon, cfg.num_rollouts
    trainable = (
        last_layer_mask(agent.actor_params)
        if cfg.adapt == "last_layer"
        else [True] * len(jax.tree_util.tree_leaves(agent.actor_params))
    )

    def split(psi):
        leaves, treedef = jax.tree_util.tree_flatten(psi)
        train = [x for x, t in zip(leaves, trainable, strict=True) if t]
        frozen = [x for x, t in zip(leaves, trainable, strict=True) if not t]
        return train, frozen, treedef

    def merge(train, frozen, treedef):
        it_t, it_f = iter(train), iter(frozen)
        return treedef.unflatten([next(it_t) if t else next(it_f) for t in trainable])

    def placebo(train0, train, frozen, treedef, obs, key):
        """``train0`` moved along a random direction by as much action change at ``obs`` as
        ``train`` (the adapted weights) makes (:func:`random_step`)."""

        def action(tr):
            return agent.act(merge(tr, frozen, treedef), obs)

        return random_step(action, train0, jnp.linalg.norm(action(train) - action(train0)), key)

    def step(psi_start, psi0, models, obs, key, carry_in):
        # The start point arrives as psi_start (the wrapper chooses it).
        k_noise, k_placebo, k_valid = jax.random.split(key, 3)
        noise = jax.random.normal(k_noise, (M, H, *world.noise_shape), obs.dtype)
        train0, frozen, treedef = split(psi_start)
        pi0 = lambda s: agent.act(psi0, s)  # noqa: E731
        terminal = pi0 if cfg.terminal_action == "pretrained" else None

        def objective(train):
            psi = merge(train, frozen, treedef)
            returns, aux = imagine(lambda s: agent.act(psi, s), models, obs, noise, None, terminal)
            value = returns.mean() - aux["penalty"].mean()
            if cfg.trust_region > 0:
                # Pretrained actions at the states the adapted policy visits (no gradient
                # through psi0: it is a fixed anchor).
                a0 = jax.lax.stop_gradient(agent.act(psi0, aux["states"]))
                dev = jnp.square((aux["actions"] - a0) / half).sum(-1).mean()
                value = value - cfg.trust_region * dev
            return -value, returns.mean()

        grad_fn = jax.value_and_grad(objective, has_aux=True)

        def adapt_step(state, _):
            train, opt_state = state
            (_, ret), grads = grad_fn(train)
            updates, opt_state = tx.update(grads, opt_state, train)
            return (optax.apply_updates(train, updates), opt_state), (ret, optax.tree.norm(grads))

        (train, _), (rets, norms) = jax.lax.scan(
            adapt_step, (train0, tx.init(train0)), None, length=cfg.adapt_steps
        )
        psi = merge(train, frozen, treedef)  # adapted; carried to the next step when warm
        acting = psi
        if cfg.update == "placebo":
            # Act with the PRETRAINED weights moved along a random direction by as much action
            # change (from the pretrained action) as the adaptation makes, and carry the
            # adapted weights on: the placebo's deviation tracks the real planner's at every
            # step instead of accumulating as a random walk over carried steps.
            pre = split(psi0)[0]
            acting = merge(placebo(pre, train, frozen, treedef, obs, k_placebo), frozen, treedef)
        pi = lambda s: agent.act(acting, s)  # noqa: E731
        if cfg.diagnostics:
            ret_after = imagine(pi, models, obs, noise, None, terminal)[0].mean()
        else:
            ret_after = jnp.full((), jnp.nan, obs.dtype)
        a0 = _base_action(agent, psi0, obs, (low, high))
        a = agent.act(acting, obs)
        ok = _all_finite(train) & jnp.all(jnp.isfinite(rets))
        ok = ok & jnp.all(jnp.isfinite(a))
        accepted = ok
        if cfg.validate:
            # Paired comparison on noise the adaptation never saw, against the PRETRAINED
            # policy (not the carried one: with warm start, steps that each beat the last can
            # drift far from psi0): act adapted only if its imagined gain exceeds the
            # standard error of that gain.
            fresh = jax.random.normal(k_valid, noise.shape, obs.dtype)
            # An independently trained world model, when given, judges instead: errors the
            # adaptation exploited in one model rarely repeat in another.
            judge = {**models, "world": models[judge_key]}
            gain = (
                judge_imagine(pi, judge, obs, fresh, None, terminal)[0]
                - judge_imagine(pi0, judge, obs, fresh, None, terminal)[0]
            )
            stderr = jnp.std(gain, ddof=1) / jnp.sqrt(M) if M > 1 else jnp.zeros(())
            accepted = ok & (gain.mean() > stderr)
        action, diag = _decide(a, a0, ok, accepted, (low, high), rets[0], ret_after, norms.mean())
        # A failed or rejected adaptation restarts from the pretrained weights: it must not
        # poison the next warm start.
        new_psi = jax.tree_util.tree_map(lambda x, y: jnp.where(accepted, x, y), psi, psi0)
        if cfg.validate:  # imagined gain on fresh noise beyond its standard error
            diag["validated_gain"] = gain.mean() - stderr
        return action, {**carry_in, "params": new_psi}, diag

    return jax.jit(step)


def make_none_step(
    cfg: MPCConfig,
    agent: AgentLike,
    world: WorldLike | None = None,
    rule: TaskRuleLike | None = None,
    ensemble: Sequence[WorldLike] = (),
) -> Callable:
    """The base policy with the planners' signature (no thinking; same diagnostics keys)."""
    del world, rule, ensemble
    validate_config(cfg)
    low, high, _, _ = _action_bounds(agent)

    def step(psi_start, psi0, models, obs, key, carry):
        del psi_start, models, key
        a0 = agent.act(psi0, obs)
        ok = jnp.all(jnp.isfinite(a0))
        action = safe_action(a0, (low + high) / 2, low, high)
        zero = jnp.zeros((), jnp.float32)
        diag = dict.fromkeys(DIAGNOSTICS, zero) | {"fallback": 1.0 - ok.astype(jnp.float32)}
        return action, carry, diag

    return jax.jit(step)


def make_action_grad_step(
    cfg: MPCConfig,
    agent: AgentLike,
    world: WorldLike,
    rule: TaskRuleLike | None = None,
    ensemble: Sequence[WorldLike] = (),
) -> Callable:
    """Gradient ascent on one open-loop action sequence ``(H, act_dim)`` (same E, M, H).

    The sequence starts from the pretrained policy's imagined rollout (mean over the M
    rollouts), lives in normalised action units (clipped to [-1, 1] when applied) and is
    scored on the same M fixed-noise rollouts and terminal critic as ``mpc``; Adam with
    ``action_lr``. The policy only acts at the terminal step. ``carry`` passes through.
    """
    validate_config(cfg)
    low, high, mid, half = _action_bounds(agent)
    imagine = make_imagine(cfg, agent, world, rule, ensemble)
    tx = optax.adam(cfg.action_lr)
    H, M = cfg.horizon, cfg.num_rollouts

    def step(psi_start, psi0, models, obs, key, carry):
        del psi_start
        noise = jax.random.normal(key, (M, H, *world.noise_shape), obs.dtype)
        pi0 = lambda s: agent.act(psi0, s)  # noqa: E731
        ret0, aux0 = imagine(pi0, models, obs, noise)
        u0 = ((aux0["actions"][:, :H] - mid) / half).mean(0)  # (H, act_dim)

        def objective(u):
            seq = mid + half * jnp.clip(u, -1.0, 1.0)
            returns, aux = imagine(pi0, models, obs, noise, jnp.broadcast_to(seq, (M, *seq.shape)))
            return -(returns.mean() - aux["penalty"].mean()), returns.mean()

        grad_fn = jax.value_and_grad(objective, has_aux=True)

        def adapt_step(state, _):
            u, opt_state = state
            (_, ret), grads = grad_fn(u)
            updates, opt_state = tx.update(grads, opt_state, u)
            return (optax.apply_updates(u, updates), opt_state), (ret, optax.tree.norm(grads))

        (u, _), (rets, norms) = jax.lax.scan(
            adapt_step, (u0, tx.init(u0)), None, length=cfg.adapt_steps
        )
        seq = mid + half * jnp.clip(u, -1.0, 1.0)
        if cfg.diagnostics:
            seqs = jnp.broadcast_to(seq, (M, *seq.shape))
            ret_after = imagine(pi0, models, obs, noise, seqs)[0].mean()
        else:
            ret_after = jnp.full((), jnp.nan, obs.dtype)
        a0 = _base_action(agent, psi0, obs, (low, high))
        ok = jnp.all(jnp.isfinite(u)) & jnp.all(jnp.isfinite(rets))
        action, diag = _decide(
            seq[0], a0, ok, ok, (low, high), ret0.mean(), ret_after, norms.mean()
        )
        return action, carry, diag

    return jax.jit(step)


def make_mppi_step(
    cfg: MPCConfig,
    agent: AgentLike,
    world: WorldLike,
    rule: TaskRuleLike | None = None,
    ensemble: Sequence[WorldLike] = (),
) -> Callable:
    """TD-MPC-style MPPI on the same world model, reward model and terminal critic.

    Candidates: ``mppi_policy_samples`` closed-loop policy rollouts (each with its own
    fixed noise; scored once, kept in every iteration) plus ``mppi_samples`` Gaussian
    open-loop sequences around the current mean (normalised units). Each iteration keeps
    the ``mppi_elites`` best, re-weights them by ``softmax((v - max) / std(v) /
    temperature)`` and refits mean and std (std clipped to ``[min_std, max_std]``). The
    action is the final mean's first step; every candidate uses the same world noise.
    ``grad_norm`` is 0 (no gradients). ``carry`` passes through.
    """
    validate_config(cfg)
    low, high, mid, half = _action_bounds(agent)
    imagine = make_imagine(cfg, agent, world, rule, ensemble)
    H, N, P, K = cfg.horizon, cfg.mppi_samples, cfg.mppi_policy_samples, cfg.mppi_elites
    act_dim = int(mid.shape[0])

    def step(psi_start, psi0, models, obs, key, carry):
        del psi_start
        k_noise, k_pol, k_iter = jax.random.split(key, 3)
        noise = jax.random.normal(k_noise, (1, H, *world.noise_shape), obs.dtype)
        pi0 = lambda s: agent.act(psi0, s)  # noqa: E731

        def score(u):  # u (B, H, act_dim) normalised -> values (B,)
            seq = mid + half * jnp.clip(u, -1.0, 1.0)
            noise_b = jnp.broadcast_to(noise, (u.shape[0], *noise.shape[1:]))
            returns, aux = imagine(pi0, models, obs, noise_b, seq)
            return jnp.nan_to_num(returns - aux["penalty"], nan=-jnp.inf)

        # Policy-guided candidates: closed-loop rollouts, each with its own noise.
        pol_noise = jax.random.normal(k_pol, (max(P, 1), H, *world.noise_shape), obs.dtype)
        pol_ret, pol_aux = imagine(pi0, models, obs, pol_noise)
        pol_u = (pol_aux["actions"][:, :H] - mid) / half
        pol_v = score(pol_u)
        mean0 = pol_u.mean(0)
        std0 = jnp.full((H, act_dim), cfg.mppi_max_std, obs.dtype)

        def iteration(state, k):
            mean, std = state
            eps = jax.random.normal(k, (N, H, act_dim), obs.dtype)
            u = jnp.clip(mean + std * eps, -1.0, 1.0)
            v = score(u)
            if P > 0:
                u, v = jnp.concatenate([u, pol_u]), jnp.concatenate([v, pol_v])
            elite_v, idx = jax.lax.top_k(v, K)
            elite_u = u[idx]
            finite = jnp.isfinite(elite_v)
            centred = jnp.where(finite, elite_v - elite_v.max(), -jnp.inf)
            scale = jnp.std(jnp.where(finite, elite_v, elite_v.max())) + 1e-6
            w = jax.nn.softmax(centred / scale / cfg.mppi_temperature)
            new_mean = jnp.einsum("k,kha->ha", w, elite_u)
            new_std = jnp.sqrt(jnp.einsum("k,kha->ha", w, jnp.square(elite_u - new_mean)))
            new_std = jnp.clip(new_std, cfg.mppi_min_std, cfg.mppi_max_std)
            return (new_mean, new_std), elite_v.max()

        keys = jax.random.split(k_iter, cfg.mppi_iterations)
        (mean, _), best = jax.lax.scan(iteration, (mean0, std0), keys)
        ret_after = score(mean[None])[0]
        a0 = _base_action(agent, psi0, obs, (low, high))
        a = mid + half * jnp.clip(mean[0], -1.0, 1.0)
        ok = jnp.all(jnp.isfinite(mean)) & jnp.isfinite(ret_after) & jnp.isfinite(best[-1])
        action, diag = _decide(
            a, a0, ok, ok, (low, high), pol_ret.mean(), ret_after, jnp.zeros((), jnp.float32)
        )
        return action, carry, diag

    return jax.jit(step)


def make_dream_step(
    cfg: MPCConfig,
    agent: AgentLike,
    world: WorldLike,
    rule: TaskRuleLike | None = None,
    ensemble: Sequence[WorldLike] = (),
) -> Callable:
    """Dream-MPC: refine a few candidate action sequences by gradient ascent and execute the
    best one's first action (see the module docstring).

    Candidates ``(C + 1, H, act_dim)`` in normalised units: ``dream_candidates`` closed-loop
    policy rollouts (their actions) and ``carry["plan"]``, the previous decision's best
    sequence shifted by one step (ignored at an episode's first decision). Each gets
    ``adapt_steps`` Adam steps (``action_lr``) on the same M fixed-noise rollouts and terminal
    critic as ``action-grad``; they are ranked by imagined return minus the weighted
    disagreements (``uncertainty_penalty``: the reward ensemble's; ``ensemble_penalty``: the
    transition ensemble's).
    """
    validate_config(cfg)
    low, high, mid, half = _action_bounds(agent)
    imagine = make_imagine(cfg, agent, world, rule, ensemble)
    tx = optax.adam(cfg.action_lr)
    H, M, C = cfg.horizon, cfg.num_rollouts, cfg.dream_candidates

    def step(psi_start, psi0, models, obs, key, carry):
        del psi_start
        k_noise, k_prop = jax.random.split(key)
        noise = jax.random.normal(k_noise, (M, H, *world.noise_shape), obs.dtype)
        pi0 = lambda s: agent.act(psi0, s)  # noqa: E731

        def value(u):  # (H, act_dim) normalised -> imagined return minus penalty
            seq = mid + half * jnp.clip(u, -1.0, 1.0)
            returns, aux = imagine(pi0, models, obs, noise, jnp.broadcast_to(seq, (M, *seq.shape)))
            return (returns - aux["penalty"]).mean()

        prop_noise = jax.random.normal(k_prop, (C, H, *world.noise_shape), obs.dtype)
        _, prop = imagine(pi0, models, obs, prop_noise)
        u0 = jnp.concatenate([(prop["actions"][:, :H] - mid) / half, carry["plan"][None]])
        values = jax.vmap(value)
        grads = jax.vmap(jax.grad(value))

        def adapt_step(state, _):
            u, opt_state = state
            g = grads(u)
            updates, opt_state = tx.update(jax.tree_util.tree_map(jnp.negative, g), opt_state, u)
            return (optax.apply_updates(u, updates), opt_state), optax.tree.norm(g)

        (u, _), norms = jax.lax.scan(adapt_step, (u0, tx.init(u0)), None, length=cfg.adapt_steps)
        # The previous plan competes only when there is one; NaN values never win.
        usable = jnp.arange(C + 1) < C + carry["has_plan"].astype(jnp.int32)
        v = jnp.where(usable, jnp.nan_to_num(values(u), nan=-jnp.inf), -jnp.inf)
        best = jnp.argmax(v)
        seq = u[best]
        a0 = _base_action(agent, psi0, obs, (low, high))
        ok = jnp.isfinite(v[best]) & jnp.all(jnp.isfinite(seq))
        plan = jnp.where(ok, jnp.concatenate([seq[1:], seq[-1:]]), jnp.zeros_like(seq))
        before = values(u0[:C]).max() if cfg.diagnostics else jnp.full((), jnp.nan, obs.dtype)
        a = mid + half * jnp.clip(seq[0], -1.0, 1.0)
        action, diag = _decide(a, a0, ok, ok, (low, high), before, v[best], norms.mean())
        return action, {**carry, "plan": plan, "has_plan": ok}, diag

    return jax.jit(step)


STEP_FACTORIES: dict[str, Callable] = {
    "none": make_none_step,
    "mpc": make_mpc_step,
    "action-grad": make_action_grad_step,
    "mppi": make_mppi_step,
    "dream-mpc": make_dream_step,
}


def make_step(
    name: str,
    cfg: MPCConfig,
    agent: AgentLike,
    world: WorldLike | None,
    rule: TaskRuleLike | None = None,
    validation_world: WorldLike | None = None,
    ensemble: Sequence[WorldLike] = (),
) -> Callable:
    """The jitted decision function of planner ``name`` (see the module docstring);
    ``rule``: the env's health or goal rule for ``cfg.termination`` / ``cfg.reward``;
    ``validation_world``: the validated mpc step's judge (:func:`check_validation_world`);
    ``ensemble``: the other transition models of ``cfg.ensemble_penalty``
    (:func:`check_ensemble`)."""
    if name not in STEP_FACTORIES:
        raise ValueError(f"unknown planner {name!r}; choose from {list(PLANNERS)}.")
    if name != "none" and world is None:
        raise ValueError(
            f"planner {name!r} needs a world model; pass --world-model DIR "
            "(train one with `mpcdwm train-world-model`) or use --planner none."
        )
    if name == "mpc":
        return make_mpc_step(resolve(cfg), agent, world, rule, validation_world, ensemble)
    return STEP_FACTORIES[name](resolve(cfg), agent, world, rule, ensemble)


class Planner:
    """A :data:`mpcdwm.evaluate.Decider` around one planner's jitted step.

    ``planner(obs) -> (action np (act_dim,), diagnostics dict of floats)``; call
    :meth:`reset` at every episode start (it resets the warm-start carry and the key
    stream to ``fold_in(PRNGKey(seed), episode)``, so every episode is reproducible).
    Per decision: one jitted program (key split, optional warm start, planner step) and
    one device-to-host transfer. :attr:`compile_s` is the ahead-of-time compile time.
    """

    def __init__(
        self,
        name: str,
        cfg: MPCConfig,
        agent: AgentLike,
        world: WorldLike | None,
        seed: int = 0,
        rule: TaskRuleLike | None = None,
        validation_world: WorldLike | None = None,
        ensemble: Sequence[WorldLike] = (),
    ) -> None:
        cfg = resolve(cfg)
        self.name, self.cfg, self.agent, self.seed = name, cfg, agent, seed
        check_validation_world(cfg, name, world, validation_world)
        ensemble = () if name == "none" else tuple(ensemble)  # the base policy imagines nothing
        check_ensemble(cfg, name, world, ensemble)
        step = make_step(name, cfg, agent, world, rule, validation_world, ensemble)
        self.psi0 = agent.actor_params
        self.models = {
            "world": None if world is None else world.params,
            "critic": agent.critic_params,
            "validation_world": None if validation_world is None else validation_world.params,
            "ensemble": tuple(m.params for m in ensemble),
        }
        warm = cfg.warm_start and name == "mpc"

        def decide(psi0, models, obs, state):
            key, sub = jax.random.split(state["key"])
            start = state["carry"]["params"] if warm else psi0
            action, carry, diag = step(start, psi0, models, obs, sub, state["carry"])
            return (action, diag), {"key": key, "carry": carry}

        self._decide = jax.jit(decide, donate_argnums=(3,))
        self._compiled = None
        self.compile_s = 0.0
        self.state: dict[str, Any] | None = None
        self.reset(0)

    def reset(self, episode: int = 0) -> None:
        """Start an episode: pretrained parameters, key ``fold_in(PRNGKey(seed), episode)``."""
        key = jax.random.fold_in(jax.random.PRNGKey(self.seed), episode)
        params = jax.tree_util.tree_map(jnp.array, self.psi0)  # a copy: the state is donated
        act_dim = int(np.asarray(self.agent.action_low).reshape(-1).shape[0])
        carry = {
            "params": params,  # mpc with warm_start: the last adapted parameters
            "plan": jnp.zeros((self.cfg.horizon, act_dim), jnp.float32),  # dream-mpc
            "has_plan": jnp.zeros((), bool),
        }
        self.state = {"key": key, "carry": carry}

    def compile(self, obs: np.ndarray) -> float:
        """Compile ahead of time for observations like ``obs``; returns seconds."""
        if self._compiled is None:
            t0 = time.perf_counter()
            lowered = self._decide.lower(
                self.psi0, self.models, jnp.asarray(obs, jnp.float32), self.state
            )
            self._compiled = lowered.compile()
            self.compile_s = time.perf_counter() - t0
        return self.compile_s

    def cost_analysis(self, obs: np.ndarray) -> dict[str, float]:
        """XLA's cost estimate of one compiled decision (``flops``, ``bytes accessed``, ...).

        XLA counts a loop body once: with ``adapt_steps`` E > 1 the gradient steps are
        counted once, not E times.
        """
        self.compile(obs)
        cost = self._compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost  # a list in older jax releases
        return {k: float(v) for k, v in cost.items()}

    def __call__(self, obs: np.ndarray) -> tuple[np.ndarray, dict[str, float]]:
        obs = np.asarray(obs, np.float32)
        if self._compiled is None:
            self.compile(obs)
        (action, diag), self.state = self._compiled(self.psi0, self.models, obs, self.state)
        action, diag = jax.device_get((action, diag))
        return np.asarray(action), {k: float(v) for k, v in diag.items()}


def select_step_size(
    cfg: MPCConfig,
    agent: AgentLike,
    world: WorldLike,
    states: np.ndarray,
    grid: tuple[float, ...] = PAPER_LR_GRID,
    seed: int = 0,
    rule: TaskRuleLike | None = None,
    validation_world: WorldLike | None = None,
    max_action_change: float | None = None,
) -> tuple[float | None, list[dict[str, float]]]:
    """Choose the adaptation step size without real returns (beyond the paper).

    For each ``lr`` of ``grid``, validated MPCwDWM decisions (``validate=True``) from
    ``states``: either ``(N, obs_dim)`` single states (e.g. dataset observations; one decision
    each, no warm start) or ``(N, T, obs_dim)`` segments of consecutive dataset states, walked
    decision by decision with ``cfg``'s own warm start, so that weights carried across real
    steps (the paper preset) drift as they would in an episode. A decision passes when the
    adapted policy's imagined gain over the pretrained policy, on noise the adaptation never saw
    (and judged by ``validation_world``, an independently trained model, when given), exceeds
    its standard error. Returns the largest ``lr`` that passes on at least half of the
    decisions and on average (None when none does), and one row per ``lr``: ``{"lr",
    "acceptance", "validated_gain", "action_change", "final_action_change"}`` (means over
    decisions; the last over each segment's last decision: how far the carried weights moved
    the action from the pretrained policy's).

    ``max_action_change`` adds a trust region: a step also needs ``final_action_change <=
    max_action_change`` (e.g. :data:`STEP_SIZE_TRUST_REGION`). Validation alone cannot stop a
    step that every world model trained on the same data over-rates (on Hopper and Walker2d
    an independently trained model accepted 5e-4, which makes the real hopper fall); the
    distance the carried weights move the action is what separated helpful from harmful steps.
    """
    states = np.asarray(states, np.float32)
    if states.ndim == 2:
        states, warm = states[:, None], False
    elif states.ndim == 3:
        warm = resolve(cfg).warm_start
    else:
        raise ValueError(
            f"states must be (N, obs_dim) states or (N, T, obs_dim) segments, got {states.shape}."
        )
    if states.shape[0] == 0 or states.shape[1] == 0:
        raise ValueError(f"states must be non-empty, got {states.shape}.")
    rows, chosen = [], None
    for lr in sorted(grid):
        trial = dataclasses.replace(resolve(cfg), lr=float(lr), validate=True, warm_start=warm)
        planner = Planner("mpc", trial, agent, world, seed, rule, validation_world)
        diags, last = [], []
        for i, segment in enumerate(states):
            planner.reset(i)
            for obs in segment:
                diags.append(planner(obs)[1])
            last.append(diags[-1]["action_change"])
        row = {
            "lr": float(lr),
            "acceptance": float(np.mean([d["accepted"] for d in diags])),
            "validated_gain": float(np.nanmean([d["validated_gain"] for d in diags])),
            "action_change": float(np.mean([d["action_change"] for d in diags])),
            "final_action_change": float(np.mean(last)),
        }
        rows.append(row)
        in_region = max_action_change is None or row["final_action_change"] <= max_action_change
        if row["acceptance"] >= 0.5 and row["validated_gain"] > 0 and in_region:
            chosen = float(lr)
    return chosen, rows


def balance_ensemble_penalty(
    cfg: MPCConfig,
    agent: AgentLike,
    world: WorldLike,
    ensemble: Sequence[WorldLike],
    states: np.ndarray,
    seed: int = 0,
) -> float:
    """An ``ensemble_penalty`` weight chosen without real returns (beyond the paper).

    At each of ``states (N, obs_dim)`` (e.g. dataset observations), one draw of ``cfg``'s
    M x H noise, the pretrained policy: the norm of the policy-parameter gradient of the imagined
    return divided by that of the ensemble's disagreement penalty at weight 1. Returns the
    median ratio: the weight at which, on the data, the penalty pulls the adaptation as hard as
    the return pushes it. Disagreement grows off the data, so there the penalty wins. Raises
    when the members never disagree (identical models give no gradient to balance).
    """
    states = np.asarray(states, np.float32)
    if states.ndim != 2 or states.shape[0] == 0:
        raise ValueError(f"states must be a non-empty (N, obs_dim) array, got {states.shape}.")
    if not ensemble:
        raise ValueError("balancing the ensemble penalty needs ensemble world models.")
    cfg = dataclasses.replace(resolve(cfg), ensemble_penalty=1.0)
    imagine = make_imagine(cfg, agent, world, None, ensemble)
    models = {
        "world": world.params,
        "critic": agent.critic_params,
        "ensemble": tuple(m.params for m in ensemble),
    }
    shape = (cfg.num_rollouts, cfg.horizon, *world.noise_shape)

    @jax.jit
    def gradient_norms(obs, key):
        noise = jax.random.normal(key, shape, obs.dtype)

        def parts(psi):
            returns, aux = imagine(lambda s: agent.act(psi, s), models, obs, noise)
            return jnp.stack([returns.mean(), aux["penalty"].mean()])

        jac = jax.jacrev(parts)(agent.actor_params)  # leaves (2, *parameter shape)
        squares = [jnp.square(x).reshape(2, -1).sum(1) for x in jax.tree_util.tree_leaves(jac)]
        return jnp.sqrt(sum(squares))  # (|grad return|, |grad penalty|)

    keys = jax.random.split(jax.random.PRNGKey(seed), states.shape[0])
    norms = np.stack([jax.device_get(gradient_norms(states[i], keys[i])) for i in range(len(keys))])
    usable = norms[:, 1] > 0
    if not usable.any():
        raise ValueError(
            "the ensemble members never disagree at these states (identical models?); "
            "train them with other --seed values."
        )
    return float(np.median(norms[usable, 0] / norms[usable, 1]))


def check_validation_world(
    cfg: MPCConfig, name: str, world: WorldLike | None, validation_world: WorldLike | None
) -> None:
    """A validation world model must be a model of the same kind and sizes as ``world``
    (trained with another seed), and only the validated mpc step uses it."""
    if validation_world is None:
        return
    if name != "mpc" or not cfg.validate:
        raise ValueError(
            "a validation world model is used only by the validated step: planner mpc with "
            "--mpc.validate."
        )
    if world is None:
        raise ValueError("a validation world model needs the planning world model too.")
    _check_same_model(world, validation_world, "validation world model")


def check_ensemble(
    cfg: MPCConfig, name: str, world: WorldLike | None, ensemble: Sequence[WorldLike]
) -> None:
    """Ensemble members go with ``cfg.ensemble_penalty > 0`` (and it with them), and each is a
    model of the same kind and sizes as ``world`` (trained with another seed)."""
    if name == "none":
        return
    if ensemble and cfg.ensemble_penalty <= 0:
        raise ValueError(
            "ensemble world models are used only by the disagreement penalty: set "
            "--mpc.ensemble-penalty > 0, or drop --ensemble-world-models."
        )
    if cfg.ensemble_penalty > 0 and not ensemble:
        raise ValueError(
            "--mpc.ensemble-penalty needs other world models to disagree with: pass "
            "--ensemble-world-models DIR [DIR ...] (the planning model's settings trained "
            "with other seeds)."
        )
    if ensemble and world is None:
        raise ValueError("ensemble world models need the planning world model too.")
    for member in ensemble:
        _check_same_model(world, member, "ensemble world model")


def _check_same_model(world: WorldLike, other: WorldLike, role: str) -> None:
    shapes = [jax.tree_util.tree_map(jnp.shape, w.params) for w in (world, other)]
    kinds = [getattr(w, "kind", None) for w in (world, other)]
    if kinds[0] != kinds[1] or shapes[0] != shapes[1] or world.noise_shape != other.noise_shape:
        raise ValueError(
            f"the {role} ({kinds[1]}) differs from the planning one ({kinds[0]}) in kind or "
            "network sizes; train it with the same settings and another --seed."
        )


def make_planner(
    name: str,
    cfg: MPCConfig,
    agent: AgentLike,
    world: WorldLike | None,
    seed: int = 0,
    rule: TaskRuleLike | None = None,
    validation_world: WorldLike | None = None,
    ensemble: Sequence[WorldLike] = (),
) -> Planner:
    """Build the :class:`Planner` (a Decider with ``reset``) for ``name``; ``validation_world``:
    an independently trained world model that judges the validated step (``cfg.validate``);
    ``ensemble``: independently trained world models whose disagreement with ``world`` is
    penalized (``cfg.ensemble_penalty``)."""
    return Planner(name, cfg, agent, world, seed, rule, validation_world, ensemble)
