"""Offline base agents: ``mpcdwm train-agent`` runs, their checkpoints, and loading them back.

This package owns the offline agents (ReBRAC, the paper's base; IQL; TD3+BC,
which is ReBRAC's module with TD3+BC's config) and everything between a dataset
and a trained policy/critic that the planners consume:

* the per-agent data conventions, applied in exactly one place
  (:func:`prepare_data`): state normalisation, reward scaling/shifting, and the
  mapping of env actions to the agents' ``[-1, 1]``;
* :func:`train_agent` (a run directory with ``checkpoint.ckpt`` and ``metrics.jsonl``);
* :func:`load_agent` -> :class:`TrainedAgent`, whose ``act`` and ``critic`` are pure
  functions of parameters and RAW observations/actions, in RAW reward units.
"""

from __future__ import annotations

import dataclasses
import json
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from mpcdwm.agents import iql, rebrac
from mpcdwm.checkpoint import CheckpointError, load_checkpoint
from mpcdwm.data import Dataset, NormStats, batches_to_device, load_dataset
from mpcdwm.envs import make_env
from mpcdwm.evaluate import run_episodes
from mpcdwm.train import fit

AgentName = Literal["rebrac", "iql", "td3bc"]
AgentConfig = rebrac.ReBRACConfig | iql.IQLConfig
Params = Any


@dataclasses.dataclass(frozen=True)
class TrainAgentConfig:
    """``mpcdwm train-agent``: train an offline agent on a dataset."""

    dataset: str = ""
    """Minari dataset id or folder, or a D4RL .hdf5 file."""
    agent: AgentName = "rebrac"
    """Which agent: rebrac (the paper's base), iql, or td3bc."""
    steps: int = 1_000_000
    """Gradient updates in total (a rerun with more steps continues the run in --out)."""
    out: Path = Path("runs/agent")
    """Run directory (checkpoint.ckpt, metrics.jsonl)."""
    seed: int = 0
    """Seed of initialisation and batch sampling."""
    env_id: str | None = None
    """Environment id, when the dataset does not record it."""
    batch_size: int | None = None
    """Batch size; None = the agent's published value for this dataset."""
    eval_every: int = 50_000
    """Evaluate in the real env every this many updates and at the end (0 = never)."""
    eval_episodes: int = 10
    """Episodes per evaluation."""
    eval_seed: int = 10_000
    """Seed of the first evaluation episode (episode i uses eval_seed + i)."""
    chunk: int = 1000
    """Updates fused into one jitted program (part of the run's identity for resume)."""
    checkpoint_every: int = 10_000
    """Write the checkpoint every this many updates (rounded up to a chunk)."""
    log: tuple[str, ...] = ()
    """Extra log backends: wandb and/or tensorboard (if installed)."""
    resume: bool = True
    """Continue from out/checkpoint.ckpt when it exists."""
    drop_invalid: bool = False
    """Drop (and count) rows with NaN/inf or out-of-range actions instead of failing."""
    progress: bool = True
    """Show a progress bar."""
    actor_bc_coef: float | None = None
    """ReBRAC/TD3+BC beta1 (None = preset)."""
    critic_bc_coef: float | None = None
    """ReBRAC beta2 (None = preset)."""
    actor_lr: float | None = None
    """Actor learning rate (None = preset)."""
    critic_lr: float | None = None
    """Critic learning rate (None = preset)."""
    gamma: float | None = None
    """Discount (None = preset)."""
    hidden_dims: tuple[int, ...] | None = None
    """Hidden layer widths (None = preset)."""
    expectile: float | None = None
    """IQL expectile tau (None = preset)."""
    temperature: float | None = None
    """IQL inverse temperature beta (None = preset)."""
    alpha: float = 2.5
    """TD3+BC alpha (lambda = alpha / mean |Q|)."""
    agent_set: tuple[str, ...] = ()
    """Any other agent config field, as FIELD=VALUE (e.g. policy_noise=0.1)."""


def agent_module(name: str) -> types.ModuleType:
    """The module (``init``/``update``/``act``/``critic``) implementing agent ``name``."""
    if name in ("rebrac", "td3bc"):
        return rebrac
    if name == "iql":
        return iql
    raise ValueError(f"unknown agent {name!r}; choose rebrac, iql or td3bc.")


def agent_config(cfg: TrainAgentConfig, dataset_name: str) -> AgentConfig:
    """The published config of ``cfg.agent`` for ``dataset_name`` with ``cfg``'s overrides."""
    if cfg.agent == "rebrac":
        base: AgentConfig = rebrac.rebrac_preset(dataset_name)
    elif cfg.agent == "td3bc":
        base = rebrac.td3bc_config(alpha=cfg.alpha)
    elif cfg.agent == "iql":
        base = iql.iql_preset(dataset_name)
    else:
        agent_module(cfg.agent)  # raises the error naming the choices
    names = {f.name for f in dataclasses.fields(base)}
    overrides: dict[str, Any] = {}
    for field in (
        "actor_bc_coef",
        "critic_bc_coef",
        "actor_lr",
        "critic_lr",
        "gamma",
        "hidden_dims",
        "expectile",
        "temperature",
        "batch_size",
    ):
        value = getattr(cfg, field)
        if value is None:
            continue
        if field not in names:
            raise ValueError(f"--{field.replace('_', '-')} does not apply to agent {cfg.agent!r}.")
        overrides[field] = tuple(value) if field == "hidden_dims" else value
    overrides.update(_parse_sets(base, cfg.agent_set))
    return dataclasses.replace(base, **overrides)


def _parse_sets(base: AgentConfig, items: tuple[str, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    fields = {f.name: f for f in dataclasses.fields(base)}
    for item in items:
        name, sep, text = item.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or name not in fields:
            raise ValueError(
                f"--agent-set {item!r}: expected FIELD=VALUE with FIELD one of {sorted(fields)}."
            )
        current = getattr(base, name)
        try:
            if isinstance(current, bool):
                if text.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(text)
                value: Any = text.lower() in ("true", "1")
            elif isinstance(current, tuple):
                value = tuple(int(v) for v in text.replace(",", " ").split())
            else:
                value = type(current)(text)
        except ValueError as err:
            raise ValueError(
                f"--agent-set {item!r}: {text!r} is not a valid {type(current).__name__}."
            ) from err
        out[name] = value
    return out


def config_from_dict(name: str, d: dict[str, Any]) -> AgentConfig:
    """Rebuild an agent config stored (as JSON) in a checkpoint's meta."""
    cls = iql.IQLConfig if name == "iql" else rebrac.ReBRACConfig
    d = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
    return cls(**d)


@dataclasses.dataclass(frozen=True)
class DataTransform:
    """How raw env quantities map to what an agent trained on (and back).

    ``obs_n = (obs - obs_mean) / obs_std``; ``a_n = (a - act_mid) / act_half``
    (agents act in ``[-1, 1]``); ``r_n = r * reward_scale + reward_shift``.
    """

    stats: NormStats
    act_mid: np.ndarray
    act_half: np.ndarray
    reward_shift: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "norm_stats": self.stats.to_dict(),
            "act_mid": self.act_mid.tolist(),
            "act_half": self.act_half.tolist(),
            "reward_shift": self.reward_shift,
        }

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> DataTransform:
        return cls(
            NormStats.from_dict(meta["norm_stats"]),
            np.asarray(meta["act_mid"], np.float32),
            np.asarray(meta["act_half"], np.float32),
            float(meta["reward_shift"]),
        )


def prepare_data(
    config: AgentConfig, dataset: Dataset, action_low: np.ndarray, action_high: np.ndarray
) -> tuple[dict[str, jax.Array], DataTransform]:
    """Apply the agent's data conventions; returns device arrays for ``fit`` and the transform.

    The one place for: state normalisation (``normalize_obs``), IQL's MuJoCo reward
    scale ``1000 / (max - min episode return)`` (``normalize_reward``), the constant
    ``reward_scale`` (ReBRAC AntMaze: 100) and ``reward_shift`` (IQL AntMaze: -1), and
    mapping actions from ``[low, high]`` to ``[-1, 1]``.
    """
    scale = float(config.reward_scale)
    if config.normalize_reward:
        returns = dataset.episode_returns()
        spread = float(returns.max() - returns.min()) if len(returns) > 1 else 0.0
        if spread <= 1e-8:
            raise ValueError(
                f"dataset {dataset.name!r}: reward normalisation needs episodes with different "
                "returns (max - min return is 0); pass --agent-set normalize_reward=false."
            )
        scale *= 1000.0 / spread
    stats = dataset.norm_stats(normalize_obs=config.normalize_obs, reward_scale=scale)
    low = np.asarray(action_low, np.float32).reshape(-1)
    high = np.asarray(action_high, np.float32).reshape(-1)
    if low.shape[0] != dataset.act_dim or not np.all(np.isfinite(low) & np.isfinite(high)):
        raise ValueError(
            f"dataset {dataset.name!r}: actions have {dataset.act_dim} dims but the env's bounded "
            f"action space has {low.shape[0]}; check --env-id."
        )
    transform = DataTransform(stats, (high + low) / 2, (high - low) / 2, float(config.reward_shift))
    data = batches_to_device(dataset, stats)
    mid, half = jnp.asarray(transform.act_mid), jnp.asarray(transform.act_half)
    data["actions"] = (data["actions"] - mid) / half
    data["next_actions"] = (data["next_actions"] - mid) / half
    data["rewards"] = data["rewards"] + transform.reward_shift
    return data, transform


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

    def decider(self) -> Callable[[np.ndarray], tuple[np.ndarray, dict[str, float]]]:
        """A decider for :func:`mpcdwm.evaluate.run_episodes` running the frozen policy."""
        act_jit = jax.jit(self.act)
        params = self.actor_params

        def decide(obs: np.ndarray) -> tuple[np.ndarray, dict[str, float]]:
            return np.asarray(act_jit(params, obs)), {}

        return decide


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


def _run_identity(cfg: TrainAgentConfig, dataset: Dataset, config: AgentConfig) -> dict:
    """What must match for a resume: everything that changes the stream of updates."""
    ident = {
        "agent": cfg.agent,
        "dataset": dataset.name,
        "rows": len(dataset),
        "seed": cfg.seed,
        "chunk": cfg.chunk,
        "agent_config": dataclasses.asdict(config),
    }
    # Through JSON so the comparison with the stored copy sees lists, not tuples.
    return json.loads(json.dumps(ident))


def train_agent(cfg: TrainAgentConfig) -> Path:
    """Train ``cfg.agent`` on ``cfg.dataset``; returns the run directory ``cfg.out``.

    Writes ``checkpoint.ckpt`` (state, key, step and meta: kind="agent", agent,
    config, env_id, obs/act dims, action bounds, norm stats, dataset, gamma,
    reward scale/shift) and ``metrics.jsonl``; evaluates every ``eval_every``
    updates in the real env (``eval_return``, ``eval_score`` = normalised score).
    """
    if not cfg.dataset:
        raise ValueError("train-agent needs --dataset (a Minari id/folder or a D4RL .hdf5 file).")
    if cfg.steps < 1:
        raise ValueError(f"--steps must be positive, got {cfg.steps}.")
    module = agent_module(cfg.agent)
    dataset = load_dataset(cfg.dataset, env_id=cfg.env_id, drop_invalid=cfg.drop_invalid)
    config = agent_config(cfg, dataset.name)
    env = make_env(dataset.env_id)
    try:
        low, high = env.action_space.low, env.action_space.high
    finally:
        env.close()
    data, transform = prepare_data(config, dataset, low, high)

    init_key, fit_key = jax.random.split(jax.random.key(cfg.seed))
    state = module.init(config, init_key, dataset.obs_dim, dataset.act_dim)
    meta = {
        "kind": "agent",
        "agent": cfg.agent,
        "config": _run_identity(cfg, dataset, config),
        "agent_config": dataclasses.asdict(config),
        "env_id": dataset.env_id,
        "obs_dim": dataset.obs_dim,
        "act_dim": dataset.act_dim,
        "action_low": np.asarray(low).tolist(),
        "action_high": np.asarray(high).tolist(),
        "dataset": dataset.name,
        "ref_min_score": dataset.ref_min_score,
        "ref_max_score": dataset.ref_max_score,
        "gamma": config.gamma,
        "reward_scale": transform.stats.reward_scale,
        **transform.to_dict(),
    }

    def evaluate(train_state: Any) -> dict[str, float]:
        agent = make_trained_agent(
            cfg.agent,
            config,
            train_state.actor,
            train_state.critic,
            transform,
            env_id=dataset.env_id,
            meta=meta,
        )
        stats = run_episodes(
            dataset.env_id, agent.decider(), episodes=cfg.eval_episodes, seed=cfg.eval_seed
        )
        returns = np.asarray(stats.returns)
        return {
            "eval_return": float(returns.mean()),
            "eval_score": float(dataset.normalized_score(returns).mean()),
        }

    fit(
        name=f"train-agent {cfg.agent}",
        update=module.make_update(config),
        state=state,
        data=data,
        key=fit_key,
        steps=cfg.steps,
        batch_size=config.batch_size,
        out_dir=cfg.out,
        meta=meta,
        chunk=cfg.chunk,
        eval_fn=evaluate if cfg.eval_episodes > 0 else None,
        eval_every=cfg.eval_every,
        checkpoint_every=cfg.checkpoint_every,
        log_backends=cfg.log,
        resume=cfg.resume,
        progress=cfg.progress,
    )
    return Path(cfg.out)


def load_agent(run_dir_or_ckpt: str | Path, env_id: str | None = None) -> TrainedAgent:
    """Load a :func:`train_agent` checkpoint (a run directory or the ``.ckpt`` file).

    ``env_id``: when given, a checkpoint trained for another environment is an error.
    Missing, truncated or corrupted files raise :class:`~mpcdwm.checkpoint.CheckpointError`.
    """
    path = Path(run_dir_or_ckpt)
    if path.is_dir():
        path = path / "checkpoint.ckpt"
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


__all__ = [
    "DataTransform",
    "TrainAgentConfig",
    "TrainedAgent",
    "agent_config",
    "agent_module",
    "iql",
    "load_agent",
    "make_trained_agent",
    "prepare_data",
    "rebrac",
    "train_agent",
]
