"""``mpcdwm train-agent``: train an offline agent on a dataset into a run directory.

Owns :class:`TrainAgentConfig` and :func:`train_agent` (``checkpoint.ckpt`` and
``metrics.jsonl`` through :func:`mpcdwm.train.fit`, periodic evaluation in the real env).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import jax
import numpy as np

from mpcdwm.agents.presets import AgentConfig, AgentName, agent_config, agent_module
from mpcdwm.agents.trained import make_trained_agent
from mpcdwm.agents.transform import prepare_data
from mpcdwm.configs import check_config
from mpcdwm.data import Dataset, check_against_env, load_dataset
from mpcdwm.envs import make_env
from mpcdwm.files import dataset_identity, ensure_writable_dir, reading_dataset
from mpcdwm.rollout import policy_decider, run_episodes
from mpcdwm.train import fit


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
    """Updates fused into one jitted program (any value resumes any run: it sets only how
    often Python looks in, and the last chunk of a run is cut to end at --steps)."""
    checkpoint_every: int = 10_000
    """Write the checkpoint every this many updates (rounded up to a chunk)."""
    checkpoint_minutes: float = 5.0
    """Also checkpoint every this many minutes of wall time (0 = every chunk)."""
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


DATASET_FIX = "regenerate it (`mpcdwm collect`), download it again, or pass another --dataset"


def _dataset_location(dataset: Dataset, given: str) -> str:
    """The absolute path of the dataset's folder (Minari: the one holding ``data/``) or
    file (D4RL); what tells apart two datasets that share an id."""
    path = dataset.metadata.get("path")
    if path is None:
        return dataset_identity(given)
    path = Path(path).resolve()
    return str(path.parent if path.name == "data" else path)


def _agent_setting_flag(field: str) -> str:
    """How the user sets agent config field ``field``: its own flag and/or --agent-set."""
    own = field in {f.name for f in dataclasses.fields(TrainAgentConfig)}
    flag = f"--{field.replace('_', '-')} or " if own else ""
    return f"agent setting {field} ({flag}--agent-set {field}=...)"


def _run_identity(cfg: TrainAgentConfig, dataset: Dataset, config: AgentConfig) -> dict:
    """What must match for a resume: everything that changes the stream of updates."""
    ident = {
        "agent": cfg.agent,
        "dataset": dataset.name,
        "rows": len(dataset),
        "seed": cfg.seed,
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
    # Before any work: a bad setting or an unwritable --out must not cost a training run.
    check_config(cfg)
    ensure_writable_dir(cfg.out, "--out")
    module = agent_module(cfg.agent)
    with reading_dataset(cfg.dataset, DATASET_FIX):
        dataset = load_dataset(cfg.dataset, env_id=cfg.env_id, drop_invalid=cfg.drop_invalid)
    env = make_env(dataset.env_id)  # as agents see it: the data must fit it
    try:
        check_against_env(dataset, env)
        low, high = env.action_space.low, env.action_space.high
    finally:
        env.close()
    config = agent_config(cfg, dataset.name)
    # The preset with the overrides applied is checked too: a value may come from a flag
    # (--gamma), from --agent-set gamma=..., or from the preset itself.
    check_config(config, name=_agent_setting_flag)
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
        # The data's folder or file: two datasets may share an id (collect --out).
        "dataset_path": _dataset_location(dataset, cfg.dataset),
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
            dataset.env_id,
            policy_decider(agent.act, agent.actor_params),
            episodes=cfg.eval_episodes,
            seed=cfg.eval_seed,
        )
        returns = np.asarray(stats.returns)
        result = {"eval_return": float(returns.mean())}
        if dataset.ref_min_score is not None:  # no reference returns: no normalized score
            result["eval_score"] = float(dataset.normalized_score(returns).mean())
        if stats.goal_distances:  # goal tasks: how close it ends, where success is still 0
            result["eval_goal_distance"] = float(np.mean(stats.goal_distances))
        return result

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
        checkpoint_minutes=cfg.checkpoint_minutes,
        log_backends=cfg.log,
        resume=cfg.resume,
        progress=cfg.progress,
    )
    return Path(cfg.out)
