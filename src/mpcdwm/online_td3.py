"""The online TD3 agent that ``collect`` trains, acts with and records.

TD3 is :mod:`mpcdwm.agents.rebrac` with the BC terms at zero (``td3_config``). Training
runs in chunks: ``chunk`` Python env steps, then ``chunk`` TD3 updates fused in one jitted
``lax.scan`` that samples from a replay buffer kept on the device (update-to-data ratio 1).
The agent, its replay buffer, evaluation snapshots and progress are checkpointed
atomically in ``agent_dir`` (one folder per env + seed + agent settings; every
``checkpoint_every`` env steps and every ``checkpoint_minutes`` of wall time), so an interrupted
run resumes and one training serves every recipe; more ``train_steps`` later continue it.

The agent acts in ``[-1, 1]``; :func:`to_env_action` maps to env units. Settings come from
a :class:`~mpcdwm.collect.CollectConfig`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from mpcdwm.agents import config_from_dict, rebrac
from mpcdwm.checkpoint import (
    CheckpointError,
    config_differences,
    describe_differences,
    load_checkpoint,
    save_checkpoint,
)
from mpcdwm.envs import env_sizes, limit_kwargs, make_env
from mpcdwm.minari_io import TRANSITION_FIELDS, Transitions
from mpcdwm.rollout import run_episodes

if TYPE_CHECKING:
    from mpcdwm.collect import CollectConfig

Params = Any
CHECKPOINT_NAME = "online_td3.ckpt"


def default_agent_dir(cfg: CollectConfig) -> Path:
    """Cache folder of the online agent for ``cfg.env`` and ``cfg.seed``."""
    root = Path(os.environ.get("MPCDWM_CACHE", Path.home() / ".cache" / "mpcdwm"))
    return root / "collect" / f"{cfg.env.replace('/', '_')}-seed{cfg.seed}"


def agent_dir_of(cfg: CollectConfig) -> Path:
    """The online agent's folder: ``cfg.agent_dir``, else :func:`default_agent_dir`."""
    return Path(cfg.agent_dir) if cfg.agent_dir else default_agent_dir(cfg)


# ------------------------------------------------------------ acting and recording


def to_env_action(action: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Map ``[-1, 1]`` agent actions to the env's bounds ``[low, high]``."""
    return (low + 0.5 * (action + 1.0) * (high - low)).astype(np.float32)


def _make_actor_fns(td3: rebrac.ReBRACConfig) -> tuple[Callable, Callable]:
    """Jitted ``(greedy(actor, obs), noisy(actor, obs, eps, std))`` in ``[-1, 1]``."""

    def greedy(actor: Params, obs: jax.Array) -> jax.Array:
        return rebrac.act(td3, actor, obs)

    def noisy(actor: Params, obs: jax.Array, eps: jax.Array, std: jax.Array) -> jax.Array:
        return jnp.clip(rebrac.act(td3, actor, obs) + std * eps, -1.0, 1.0)

    return jax.jit(greedy), jax.jit(noisy)


def record_rollout(
    env_id: str,
    actor: Params | None,
    td3: rebrac.ReBRACConfig,
    *,
    steps: int,
    key: jax.Array,
    noise: float,
    max_episode_steps: int | None,
    progress: Progress | None = None,
    label: str = "rollout",
) -> Transitions:
    """Record ``steps`` transitions of ``actor`` (``None``: uniform random actions).

    Each episode resets with a seed drawn from ``key``; the last episode is cut
    at ``steps`` and marked truncated, as D4RL's data ends.
    """
    env = make_env(env_id, **limit_kwargs(max_episode_steps))
    obs_dim, act_dim = env_sizes(env)
    low, high = env.action_space.low, env.action_space.high
    _, noisy = _make_actor_fns(td3)
    seed_key, noise_key = jax.random.split(key)
    reset_base = int(jax.random.randint(seed_key, (), 0, 2**30))
    out = _empty(steps, obs_dim, act_dim)
    task = progress.add_task(label, total=steps, info="") if progress is not None else None
    episode, ep_return, returns = 0, 0.0, []
    obs, _ = env.reset(seed=reset_base)
    block = 1000
    try:
        for start in range(0, steps, block):
            n = min(block, steps - start)
            noise_key, sub = jax.random.split(noise_key)
            if actor is None:
                draws = np.asarray(jax.random.uniform(sub, (n, act_dim), minval=-1.0, maxval=1.0))
            else:
                draws = np.asarray(jax.random.normal(sub, (n, act_dim)))
            for j in range(n):
                i = start + j
                obs = np.asarray(obs, np.float32)
                if actor is None:
                    a = draws[j]
                else:
                    a = np.asarray(noisy(actor, obs, draws[j], noise))
                env_a = to_env_action(a, low, high)
                nxt, reward, term, trunc, _ = env.step(env_a)
                _put(out, i, obs, env_a, reward, nxt, term, trunc)
                ep_return += float(reward)
                obs = nxt
                if term or trunc:
                    returns.append(ep_return)
                    episode, ep_return = episode + 1, 0.0
                    obs, _ = env.reset(seed=reset_base + episode)
            if task is not None:
                mean = f"return {np.mean(returns[-10:]):.1f}" if returns else ""
                progress.update(task, completed=start + n, info=mean)
    finally:
        env.close()
    out["truncations"][-1] |= not out["terminals"][-1]
    return out


def select_expert(
    cfg: CollectConfig,
    run: OnlineRun,
    td3: rebrac.ReBRACConfig,
    *,
    noise: float,
    key: jax.Array,
    console: Console | None = None,
) -> tuple[int, list[dict[str, float]]]:
    """Pick the expert among the run's evaluation snapshots, as it will be recorded.

    The ``cfg.expert_candidates`` snapshots with the highest training evaluations (ties: the
    later) each run ``cfg.expert_select_episodes`` fresh episodes with Gaussian action noise
    ``noise`` (the recording's); every candidate sees the same reset seeds and noise draws,
    so the comparison is paired. Training evaluations are few deterministic episodes on fixed
    seeds and overrate policies that fall under noise. Returns the chosen snapshot's index
    and one row per candidate (``snapshot``, ``env_steps``, ``train_eval``, ``select_return``).
    ``expert_candidates == 0`` keeps the last weights (index ``-1``, no rows).
    """
    if cfg.expert_candidates == 0 or not run.snapshots:
        return -1, []
    order = sorted(range(len(run.evals)), key=lambda i: (run.evals[i]["return"], i))
    candidates = sorted(order[-cfg.expert_candidates :])
    env = make_env(cfg.env, **limit_kwargs(cfg.max_episode_steps))
    low, high = env.action_space.low, env.action_space.high
    act_dim = int(np.prod(env.action_space.shape))
    limit = int(env.spec.max_episode_steps or 1000) if env.spec is not None else 1000
    env.close()
    _, noisy = _make_actor_fns(td3)
    # One noise sequence per episode, drawn once and replayed for every candidate.
    draws = [
        np.asarray(jax.random.normal(jax.random.fold_in(key, e), (limit, act_dim)))
        for e in range(cfg.expert_select_episodes)
    ]
    at = {"episode": 0, "t": 0}

    def new_episode(e: int) -> None:
        at.update(episode=e, t=0)

    rows = []
    for n, i in enumerate(candidates):

        def decide(obs: np.ndarray, actor: Params = run.snapshots[i]) -> tuple[np.ndarray, dict]:
            a = np.asarray(noisy(actor, obs, draws[at["episode"]][at["t"]], noise))
            at["t"] += 1
            return to_env_action(a, low, high), {}

        stats = run_episodes(
            cfg.env,
            decide,
            episodes=cfg.expert_select_episodes,
            seed=cfg.seed * 100_003 + 2_000_000,  # not the training evaluations' seeds
            on_episode_start=new_episode,
            max_steps=cfg.max_episode_steps,
        )
        rows.append(
            {
                "snapshot": i,
                "env_steps": int(run.evals[i]["env_steps"]),
                "train_eval": float(run.evals[i]["return"]),
                "select_return": float(np.mean(stats.returns)),
            }
        )
        if console is not None and cfg.progress:
            console.print(
                f"[collect] expert candidate {n + 1}/{len(candidates)} (env step "
                f"{rows[-1]['env_steps']}): {rows[-1]['select_return']:.1f} over "
                f"{cfg.expert_select_episodes} episodes with noise {noise:g}",
                markup=False,
            )
    best = max(rows, key=lambda r: (r["select_return"], r["snapshot"]))
    return int(best["snapshot"]), rows


def _empty(n: int, obs_dim: int, act_dim: int) -> Transitions:
    return {
        "observations": np.zeros((n, obs_dim), np.float32),
        "actions": np.zeros((n, act_dim), np.float32),
        "rewards": np.zeros((n,), np.float32),
        "next_observations": np.zeros((n, obs_dim), np.float32),
        "terminals": np.zeros((n,), bool),
        "truncations": np.zeros((n,), bool),
    }


def _put(buf: Transitions, i: int, obs, act, reward, nxt, term, trunc) -> None:
    buf["observations"][i] = obs
    buf["actions"][i] = act
    buf["rewards"][i] = reward
    buf["next_observations"][i] = nxt
    buf["terminals"][i] = term
    buf["truncations"][i] = trunc


def random_return(
    env_id: str, *, episodes: int, seed: int, max_episode_steps: int | None = None
) -> float:
    """Mean return of the uniform random policy over ``episodes`` episodes (D4RL's ref_min)."""
    data = record_rollout(
        env_id,
        None,
        rebrac.td3_config(),
        steps=_episode_budget(env_id, episodes, max_episode_steps),
        key=jax.random.fold_in(jax.random.key(seed), 7),
        noise=0.0,
        max_episode_steps=max_episode_steps,
    )
    returns = episode_returns(data)
    complete = returns[:-1] if len(returns) > 1 else returns  # the cut last one is partial
    return float(np.mean(complete[:episodes]))


def _episode_budget(env_id: str, episodes: int, max_episode_steps: int | None) -> int:
    env = make_env(env_id, **limit_kwargs(max_episode_steps))
    limit = env.spec.max_episode_steps if env.spec is not None else None
    env.close()
    return (episodes + 1) * int(limit or 1000)


def episode_returns(data: Transitions) -> np.ndarray:
    """Undiscounted return of every episode of ``data``, in order (the last may be cut)."""
    ends = np.flatnonzero(data["terminals"] | data["truncations"])
    return np.add.reduceat(data["rewards"].astype(np.float64), np.r_[0, ends[:-1] + 1])


# ----------------------------------------------------------------- training


@dataclasses.dataclass
class OnlineRun:
    """Host-side state of the online TD3 run (everything its checkpoint holds).

    ``buffer`` arrays have ``capacity`` rows, the first ``size`` are filled; actions
    are in the agent's ``[-1, 1]``. ``evals`` lists ``{"env_steps", "return"}`` per
    evaluation and ``snapshots`` the actor params at each.
    """

    state: rebrac.TrainState
    key: jax.Array
    buffer: Transitions
    size: int
    env_steps: int
    episodes: int
    evals: list[dict[str, float]]
    snapshots: list[Params]
    random_return: float

    def medium_index(self, expert_return: float, fraction: float) -> tuple[int, bool]:
        """Index of the first evaluation reaching ``fraction * expert_return`` and whether
        one did; if none did, the best one (and False)."""
        target = fraction * expert_return
        for i, e in enumerate(self.evals):
            if e["return"] >= target:
                return i, True
        return int(np.argmax([e["return"] for e in self.evals])), False


def _agent_meta(cfg: CollectConfig, td3: rebrac.ReBRACConfig) -> dict[str, Any]:
    """Settings that must match to resume an online run (``train_steps`` may grow)."""
    keep = (
        "env",
        "seed",
        "start_steps",
        "expl_noise",
        "eval_every",
        "eval_episodes",
        "chunk",
        "max_episode_steps",
        "batch_size",
    )
    return {
        "collect": {k: getattr(cfg, k) for k in keep},
        "td3": {k: v if not isinstance(v, tuple) else list(v) for k, v in vars(td3).items()},
    }


def _train_chunk_fn(td3: rebrac.ReBRACConfig, batch_size: int, chunk: int) -> Callable:
    """Jitted ``(state, buffer, size, key) -> (state, metrics)``: ``chunk`` TD3 updates on
    batches drawn uniformly from the first ``size`` rows of the device buffer."""

    def run(state, buffer, size, key):
        def step(carry, k):
            batch_key, update_key = jax.random.split(k)
            idx = jax.random.randint(batch_key, (batch_size,), 0, size)
            batch = {
                "observations": buffer["observations"][idx],
                "actions": buffer["actions"][idx],
                "rewards": buffer["rewards"][idx],
                "next_observations": buffer["next_observations"][idx],
                # TD3's critic target has no BC term; the key is part of the batch contract.
                "next_actions": jnp.zeros_like(buffer["actions"][idx]),
                "dones": buffer["dones"][idx],
            }
            return rebrac.update(td3, carry, batch, update_key)

        state, metrics = jax.lax.scan(step, state, jax.random.split(key, chunk))
        return state, jax.tree_util.tree_map(jnp.mean, metrics)

    return jax.jit(run, donate_argnums=0)


@functools.partial(jax.jit, donate_argnums=0)
def _insert(buffer: dict[str, jax.Array], rows: dict[str, jax.Array], start: jax.Array):
    """Write ``rows`` into the device ``buffer`` at row ``start``."""
    return jax.tree_util.tree_map(
        lambda b, r: jax.lax.dynamic_update_slice_in_dim(b, r, start, 0), buffer, rows
    )


def _device_rows(buf: Transitions, lo: int, hi: int) -> dict[str, jax.Array]:
    return {
        "observations": jnp.asarray(buf["observations"][lo:hi]),
        "actions": jnp.asarray(buf["actions"][lo:hi]),
        "rewards": jnp.asarray(buf["rewards"][lo:hi]),
        "next_observations": jnp.asarray(buf["next_observations"][lo:hi]),
        "dones": jnp.asarray(buf["terminals"][lo:hi], jnp.float32),
    }


def _save_run(path: Path, run: OnlineRun, meta: dict[str, Any], done: bool) -> None:
    n = run.size
    payload = {
        "train": run.state,
        "key": jax.random.key_data(run.key),
        "buffer": {k: v[:n] for k, v in run.buffer.items()},
        "snapshots": {str(i): s for i, s in enumerate(run.snapshots)},
    }
    progress = {
        "env_steps": run.env_steps,
        "episodes": run.episodes,
        "size": n,
        "evals": run.evals,
        "random_return": run.random_return,
        "done": done,
    }
    save_checkpoint(path, payload, {**meta, "kind": "collect-online-td3", "progress": progress})


def _load_run(path: Path, meta: dict[str, Any], template: rebrac.TrainState) -> OnlineRun:
    raw, saved_meta = load_checkpoint(path, expect={"kind": "collect-online-td3"})
    # TD3 settings added after a checkpoint was written ran at these values before.
    legacy = {"td3": {"network": "flax"}}
    for part in ("collect", "td3"):
        saved_part = {**legacy.get(part, {}), **saved_meta.get(part, {})}
        diff = config_differences(saved_part, meta[part], part)
        if diff:
            raise CheckpointError(
                f"{path} holds an online agent trained with other settings (saved -> "
                f"requested: {describe_differences(diff)}). Pass another --agent-dir, or the "
                "same settings."
            )
    try:
        state = serialization.from_state_dict(template, raw["train"])
        snapshots = [
            serialization.from_state_dict(template.actor, raw["snapshots"][k])
            for k in sorted(raw.get("snapshots", {}), key=int)
        ]
    except (ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{path} does not match the online agent ({err}).") from err
    prog = saved_meta["progress"]
    buffer = {k: np.asarray(raw["buffer"][k]) for k in TRANSITION_FIELDS}
    return OnlineRun(
        state=jax.tree_util.tree_map(jnp.asarray, state),
        key=jax.random.wrap_key_data(jnp.asarray(raw["key"])),
        buffer=buffer,
        size=int(prog["size"]),
        env_steps=int(prog["env_steps"]),
        episodes=int(prog["episodes"]),
        evals=list(prog["evals"]),
        snapshots=snapshots,
        random_return=float(prog["random_return"]),
    )


POLICY_KIND = "online-td3-policy"
"""``kind`` of a policy file (:func:`export_policy`): one actor's weights, no replay buffer."""


def _restore_actors(
    td3: rebrac.ReBRACConfig, stored: Sequence[Any], obs_dim: int, act_dim: int, where: Path
) -> list[Params]:
    """Actor params from stored weights (state dicts), checked against ``td3``'s network."""
    template = rebrac.init(td3, jax.random.key(0), obs_dim, act_dim).actor
    actors = []
    for weights in stored:
        try:
            actor = serialization.from_state_dict(template, weights)
        except (ValueError, KeyError, TypeError) as err:
            raise CheckpointError(f"{where} does not match the online agent ({err}).") from err
        actors.append(jax.tree_util.tree_map(jnp.asarray, actor))
    return actors


def _greedy_policies(
    td3: rebrac.ReBRACConfig, actors: Sequence[Params]
) -> list[Callable[[np.ndarray], np.ndarray]]:
    """Greedy ``policy(obs (obs_dim,)) -> action (act_dim,)`` in ``[-1, 1]`` for actor params,
    one jitted function shared by all."""
    greedy, _ = _make_actor_fns(td3)
    policies = []
    for actor in actors:

        def policy(obs: np.ndarray, actor: Params = actor) -> np.ndarray:
            return np.asarray(greedy(actor, jnp.asarray(obs, jnp.float32)))

        policies.append(policy)
    return policies


def _read_online(agent_dir: Path) -> tuple[dict[str, Any], dict[str, Any], int, int]:
    """(raw state, meta, obs_dim, act_dim) of the online agent's checkpoint in ``agent_dir``."""
    path = Path(agent_dir) / CHECKPOINT_NAME
    if not path.exists():
        raise CheckpointError(
            f"no online agent at {path}; train one with `mpcdwm collect --env ENV --recipe "
            "expert --agent-dir DIR`, or pass the folder that holds it."
        )
    raw, meta = load_checkpoint(path, expect={"kind": "collect-online-td3"})
    obs_dim = int(np.asarray(raw["buffer"]["observations"]).shape[1])
    act_dim = int(np.asarray(raw["buffer"]["actions"]).shape[1])
    return raw, meta, obs_dim, act_dim


def _stored_actor(raw: dict[str, Any], path: Path, snapshot: int | None) -> Any:
    stored = raw.get("snapshots", {})
    if snapshot is not None and str(snapshot) not in stored:
        raise CheckpointError(
            f"{path} has {len(stored)} evaluation snapshots; --snapshot {snapshot} is not one."
        )
    return raw["train"]["actor"] if snapshot is None else stored[str(snapshot)]


def load_policies(
    agent_dir: Path, snapshots: Sequence[int | None] | None = None
) -> tuple[list[Callable[[np.ndarray], np.ndarray]], dict[str, Any]]:
    """Greedy policies of the online TD3 agent in ``agent_dir``, for driving it outside
    ``collect`` (e.g. the goal-reaching ant through AntMaze), from one read of its checkpoint:
    for each entry of ``snapshots`` the weights of evaluation number ``i``
    (``progress["evals"][i]``; a learning curve) or, for None, its latest weights; every
    evaluation's when ``snapshots`` is None.

    Returns ``(policies, progress)``: each ``policy(obs (obs_dim,)) -> action (act_dim,)`` in
    ``[-1, 1]`` (one jitted function shared by all), and the checkpoint's progress record
    (``env_steps``, ``evals``, ``done``). Raises :class:`~mpcdwm.checkpoint.CheckpointError`
    naming the folder when there is no trained agent or no such snapshot.
    """
    raw, meta, obs_dim, act_dim = _read_online(agent_dir)
    path = Path(agent_dir) / CHECKPOINT_NAME
    if snapshots is None:
        snapshots = sorted(int(k) for k in raw.get("snapshots", {}))
    td3 = config_from_dict("rebrac", meta["td3"])
    stored = [_stored_actor(raw, path, i) for i in snapshots]
    actors = _restore_actors(td3, stored, obs_dim, act_dim, path)
    return _greedy_policies(td3, actors), dict(meta["progress"])


def load_policy(
    agent_dir: Path, snapshot: int | None = None
) -> tuple[Callable[[np.ndarray], np.ndarray], dict[str, Any]]:
    """One policy of :func:`load_policies`: the latest weights, or evaluation ``snapshot``'s."""
    (policy,), progress = load_policies(agent_dir, [snapshot])
    return policy, progress


def export_policy(agent_dir: Path, path: Path, snapshot: int | None = None) -> Path:
    """Write one policy of the online agent in ``agent_dir`` (evaluation ``snapshot``'s weights,
    or the latest) to ``path``: its actor alone (kilobytes, where the online checkpoint holds
    the whole replay buffer), what a package ships so a user can drive the policy without
    the online run (:func:`load_policy_file`). Its meta records the env, the settings, the
    env steps the weights were trained for and their deterministic evaluation return
    (``eval_return``; None for latest weights that were not evaluated)."""
    raw, meta, obs_dim, act_dim = _read_online(agent_dir)
    actor = _stored_actor(raw, Path(agent_dir) / CHECKPOINT_NAME, snapshot)
    progress, evals = meta["progress"], meta["progress"]["evals"]
    if snapshot is None:
        env_steps = progress["env_steps"]
        # The latest weights have an evaluation only when training stopped right after one.
        latest = [e for e in evals if e["env_steps"] == env_steps]
        eval_return = latest[-1]["return"] if latest else None
    else:
        env_steps, eval_return = evals[snapshot]["env_steps"], evals[snapshot]["return"]
    return save_checkpoint(
        path,
        {"actor": actor},
        {
            "kind": POLICY_KIND,
            "env": meta["collect"]["env"],
            "collect": meta["collect"],
            "td3": meta["td3"],
            "obs_dim": obs_dim,
            "act_dim": act_dim,
            "env_steps": int(env_steps),
            "eval_return": None if eval_return is None else float(eval_return),
            "snapshot": snapshot,
        },
    )


def read_policy_file(
    path: Path, env: str | None = None
) -> tuple[Params, rebrac.ReBRACConfig, dict[str, Any]]:
    """``(actor params, TD3 config, meta)`` of a file of :func:`export_policy`; ``env``: the
    env it must have been trained in (a :class:`~mpcdwm.checkpoint.CheckpointError`
    otherwise). What ``collect --policy`` records."""
    expect = {"kind": POLICY_KIND} | ({} if env is None else {"env": env})
    raw, meta = load_checkpoint(path, expect=expect)
    td3 = config_from_dict("rebrac", meta["td3"])
    (actor,) = _restore_actors(td3, [raw["actor"]], meta["obs_dim"], meta["act_dim"], path)
    return actor, td3, meta


def load_policy_file(
    path: Path, env: str | None = None
) -> tuple[Callable[[np.ndarray], np.ndarray], dict[str, Any]]:
    """The greedy policy in a file of :func:`export_policy`, and its meta (see
    :func:`read_policy_file`)."""
    actor, td3, meta = read_policy_file(path, env)
    (policy,) = _greedy_policies(td3, [actor])
    return policy, meta


def _grow(buffer: Transitions, capacity: int) -> Transitions:
    """Copy of ``buffer`` with room for ``capacity`` rows."""
    out = {}
    for k, v in buffer.items():
        grown = np.zeros((capacity, *v.shape[1:]), v.dtype)
        grown[: len(v)] = v
        out[k] = grown
    return out


def train_online(
    cfg: CollectConfig,
    *,
    until_medium: float | None = None,
    console: Console | None = None,
) -> OnlineRun:
    """Train (or resume) the online TD3 agent in ``cfg.agent_dir`` up to ``cfg.train_steps``.

    ``until_medium``: stop early once an evaluation return reaches this value (the
    medium threshold), which is all the medium recipes need when the expert's return
    is known in advance; a later call with the same folder continues training.
    Returns the run (agent, replay buffer, evaluation snapshots).
    """
    console = console or Console(stderr=True, soft_wrap=True)
    agent_dir = agent_dir_of(cfg)
    ckpt_path = agent_dir / CHECKPOINT_NAME
    td3 = rebrac.td3_config(batch_size=cfg.batch_size)
    meta = _agent_meta(cfg, td3)
    env = make_env(cfg.env, **limit_kwargs(cfg.max_episode_steps))
    obs_dim, act_dim = env_sizes(env)
    low, high = env.action_space.low, env.action_space.high
    root_key = jax.random.key(cfg.seed)
    template = rebrac.init(td3, jax.random.fold_in(root_key, 1), obs_dim, act_dim)
    # Round the budget up to whole chunks: updates run in fixed-size fused blocks.
    total = math.ceil(cfg.train_steps / cfg.chunk) * cfg.chunk

    if ckpt_path.exists():
        run = _load_run(ckpt_path, meta, template)
        console.print(
            f"[collect] resuming online TD3 at env step {run.env_steps} ({ckpt_path})", markup=False
        )
    else:
        run = OnlineRun(
            state=template,
            key=jax.random.fold_in(root_key, 2),
            buffer=_empty(0, obs_dim, act_dim),
            size=0,
            env_steps=0,
            episodes=0,
            evals=[],
            snapshots=[],
            random_return=random_return(
                cfg.env,
                episodes=10,
                seed=cfg.seed,
                max_episode_steps=cfg.max_episode_steps,
            ),
        )

    def reached() -> bool:
        return until_medium is not None and any(e["return"] >= until_medium for e in run.evals)

    if run.env_steps >= total or reached():
        env.close()
        return run

    capacity = max(total, run.size)
    run.buffer = _grow(run.buffer, capacity)
    dev_buffer = jax.tree_util.tree_map(
        lambda x: jnp.zeros((capacity, *x.shape[1:]), x.dtype),
        _device_rows(run.buffer, 0, 1),
    )
    dev_buffer = _insert(dev_buffer, _device_rows(run.buffer, 0, run.size), jnp.int32(0))
    train_chunk = _train_chunk_fn(td3, cfg.batch_size, cfg.chunk)
    greedy, noisy = _make_actor_fns(td3)
    expl = jnp.float32(cfg.expl_noise)

    def evaluate() -> float:
        actor = run.state.actor

        def decide(obs: np.ndarray) -> tuple[np.ndarray, dict[str, float]]:
            return to_env_action(np.asarray(greedy(actor, obs)), low, high), {}

        stats = run_episodes(
            cfg.env,
            decide,
            episodes=cfg.eval_episodes,
            seed=cfg.seed * 100_003 + 1_000_000,
            max_steps=cfg.max_episode_steps,
        )
        return float(np.mean(stats.returns))

    # A resumed run starts a fresh episode (the env's mid-episode state is not saved):
    # the buffered episode is cut there, so mark its last transition as truncated.
    if run.size and not (run.buffer["terminals"][run.size - 1]):
        run.buffer["truncations"][run.size - 1] = True
    obs, _ = env.reset(seed=cfg.seed * 100_003 + run.episodes)
    obs = np.asarray(obs, np.float32)
    ep_return, last_return, metrics = 0.0, float("nan"), {}
    since_ckpt = 0
    # Also by wall time: env steps can be slow (big envs, evaluations), and a kill should
    # cost at most checkpoint_minutes. Saving does not change what an uninterrupted run makes.
    saved_at = time.monotonic()
    columns = (
        TextColumn("[bold]TD3 online"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
    )
    with Progress(*columns, console=console, disable=not cfg.progress) as bar:
        task = bar.add_task("td3", total=total, completed=run.env_steps, rate="", info="")
        while run.env_steps < total and not reached():
            t0 = time.perf_counter()
            run.key, act_key, upd_key = jax.random.split(run.key, 3)
            learning = run.env_steps >= cfg.start_steps
            if learning:
                draws = np.asarray(jax.random.normal(act_key, (cfg.chunk, act_dim)))
            else:
                draws = np.asarray(
                    jax.random.uniform(act_key, (cfg.chunk, act_dim), minval=-1.0, maxval=1.0)
                )
            lo = run.size
            for j in range(cfg.chunk):
                if run.env_steps + j < cfg.start_steps:
                    a = draws[j]
                else:
                    a = np.asarray(noisy(run.state.actor, obs, draws[j], expl))
                nxt, reward, term, trunc, _ = env.step(to_env_action(a, low, high))
                nxt = np.asarray(nxt, np.float32)
                _put(run.buffer, run.size, obs, a, reward, nxt, term, trunc)
                run.size += 1
                ep_return += float(reward)
                obs = nxt
                if term or trunc:
                    last_return, ep_return = ep_return, 0.0
                    run.episodes += 1
                    obs, _ = env.reset(seed=cfg.seed * 100_003 + run.episodes)
                    obs = np.asarray(obs, np.float32)
            t_env = time.perf_counter() - t0
            run.env_steps += cfg.chunk
            since_ckpt += cfg.chunk
            dev_buffer = _insert(dev_buffer, _device_rows(run.buffer, lo, run.size), jnp.int32(lo))
            t1 = time.perf_counter()
            if run.env_steps > cfg.start_steps:
                run.state, m = train_chunk(run.state, dev_buffer, jnp.int32(run.size), upd_key)
                metrics = {k: float(v) for k, v in jax.device_get(m).items()}
                for k, v in metrics.items():
                    if not math.isfinite(v):
                        raise FloatingPointError(
                            f"online TD3 {k} became {v} at env step {run.env_steps}; "
                            "try another --seed or a smaller learning rate."
                        )
            t_upd = time.perf_counter() - t1
            rate = f"{cfg.chunk / max(t_env, 1e-9):.0f} env/s"
            if run.env_steps > cfg.start_steps:
                rate += f" {cfg.chunk / max(t_upd, 1e-9):.0f} upd/s"
            crossed = (
                run.env_steps // cfg.eval_every > (run.env_steps - cfg.chunk) // cfg.eval_every
            )
            if crossed or run.env_steps >= total:
                run.evals.append({"env_steps": run.env_steps, "return": evaluate()})
                # A copy: np.asarray could alias device memory that the donated update reuses.
                run.snapshots.append(jax.tree_util.tree_map(np.array, run.state.actor))
                # One line per evaluation, with or without the bar: the log a background
                # run (--no-progress, stderr to a file) is followed by.
                console.print(
                    f"[collect] env step {run.env_steps}: eval return "
                    f"{run.evals[-1]['return']:.1f}, last episode {last_return:.1f}, "
                    f"{rate.replace('/s', ' per s')}",
                    markup=False,
                )
            done = run.env_steps >= total or reached()
            overdue = time.monotonic() - saved_at >= 60.0 * cfg.checkpoint_minutes
            if since_ckpt >= cfg.checkpoint_every or done or overdue:
                _save_run(ckpt_path, run, meta, done=run.env_steps >= total)
                since_ckpt, saved_at = 0, time.monotonic()
            info = f"episode return {last_return:.1f}"
            if run.evals:
                info += f"  eval {run.evals[-1]['return']:.1f}"
            bar.update(task, completed=run.env_steps, rate=rate, info=info)
    env.close()
    return run
