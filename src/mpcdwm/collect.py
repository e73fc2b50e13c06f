"""D4RL-style datasets for any Gymnasium continuous-control env (``mpcdwm collect``).

This module owns the dataset recipes, the online TD3 agent that makes the
non-random ones, and writing the result as a Minari dataset:

* ``random``: uniform random actions.
* ``medium``: the first policy (checked at every evaluation) whose deterministic
  evaluation return reaches ``medium_fraction`` of the expert's (D4RL: about 1/3),
  rolled out with a little Gaussian action noise (D4RL rolled out stochastic
  SAC policies; a deterministic policy would visit one narrow tube of states).
* ``medium-replay``: the online agent's replay buffer up to that medium point.
* ``expert``: the fully trained agent, rolled out the same way.
* ``medium-expert``: ``steps`` medium transitions followed by ``steps`` expert ones.

The online agent is TD3 from :mod:`mpcdwm.agents.rebrac` (``td3_config``: the
offline agents' actor-critic code with the BC terms at zero). Training runs in
chunks: ``chunk`` Python env steps, then ``chunk`` TD3 updates fused in one jitted
``lax.scan`` that samples from a replay buffer kept on the device (update-to-data
ratio 1). The agent, its replay buffer, evaluation snapshots and progress are
checkpointed atomically in ``agent_dir`` (one folder per env + seed + agent
settings), so an interrupted collection resumes and one training serves every
recipe; asking for more ``train_steps`` later continues the same run.

Reference scores written into the dataset metadata: the D4RL pair for the
families D4RL covers (hopper, halfcheetah, walker2d, ant; so normalised scores
are comparable with published D4RL numbers), otherwise the measured mean return
of the random policy and of the final trained agent. Both measured returns are
stored too (``mpcdwm_random_return``, ``mpcdwm_expert_return``).

Shapes: an env observation is ``(obs_dim,)`` float32, an action ``(act_dim,)``;
the agent works in ``[-1, 1]`` and datasets hold actions in env units.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from mpcdwm.agents import rebrac
from mpcdwm.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from mpcdwm.data import ref_scores_for
from mpcdwm.envs import env_sizes, make_env
from mpcdwm.evaluate import run_episodes

Recipe = Literal["random", "medium", "medium-replay", "expert", "medium-expert"]
RECIPES: tuple[str, ...] = ("random", "medium", "medium-replay", "expert", "medium-expert")
Params = Any
Transitions = dict[str, np.ndarray]
"""Flat host-side transitions: observations ``(N, obs_dim)``, actions ``(N, act_dim)`` (env
units), rewards ``(N,)``, next_observations ``(N, obs_dim)``, terminals ``(N,)`` bool,
truncations ``(N,)`` bool (episode cut by a time limit or by the end of the data)."""
_FIELDS = ("observations", "actions", "rewards", "next_observations", "terminals", "truncations")
CHECKPOINT_NAME = "online_td3.ckpt"


@dataclasses.dataclass(frozen=True)
class CollectConfig:
    """Make a D4RL-style Minari dataset for a Gymnasium env (see :mod:`mpcdwm.collect`).

    PointMaze ids ignore ``recipe`` and the TD3 options: they record the BFS waypoint
    controller of :mod:`mpcdwm.maze` (D4RL maze2d style) for whole episodes until ``steps``
    transitions, with ``rollout_noise`` as its action noise.
    """

    env: str = "Hopper-v5"
    """Gymnasium environment id (continuous actions)."""
    recipe: Recipe = "medium"
    """Which D4RL recipe to record."""
    steps: int = 100_000
    """Transitions to record for random/medium/expert (medium-expert: this many of each;
    medium-replay: ignored, it is the whole replay buffer up to the medium point)."""
    seed: int = 0
    """Seed of everything: agent init, exploration, env resets, rollouts."""
    dataset_id: str | None = None
    """Minari dataset id; default ``mpcdwm/<env-family>-<recipe>-v0`` (mpcdwm/hopper-medium-v0)."""
    out: Path | None = None
    """Write the Minari dataset folder here instead of into the Minari root
    (``MINARI_DATASETS_PATH`` or ~/.minari/datasets)."""
    overwrite: bool = False
    """Replace an existing dataset with the same id / folder."""
    train_steps: int = 300_000
    """Env-step budget of the online TD3 agent (one update per env step)."""
    start_steps: int = 10_000
    """Uniform random actions for this many env steps before TD3 starts acting and learning."""
    expl_noise: float = 0.1
    """Std of the Gaussian exploration noise during training (actions in [-1, 1])."""
    rollout_noise: float = 0.1
    """Std of the Gaussian action noise when recording medium/expert rollouts (0: deterministic)."""
    medium_fraction: float = 1.0 / 3.0
    """Medium = first policy whose evaluation return reaches this fraction of the expert's."""
    eval_every: int = 5_000
    """Evaluate (deterministic policy) and snapshot the actor every this many env steps."""
    eval_episodes: int = 5
    """Episodes per evaluation."""
    chunk: int = 500
    """Env steps between fused blocks of as many TD3 updates (one jitted scan)."""
    checkpoint_every: int = 20_000
    """Checkpoint the online agent, its buffer and progress every this many env steps."""
    max_episode_steps: int | None = None
    """Episode time limit; None keeps the env's registered limit (1000 for MuJoCo)."""
    batch_size: int = 256
    """TD3 batch size (TD3 paper: 256)."""
    agent_dir: Path | None = None
    """Folder of the online agent's checkpoint; default a cache folder per env + seed
    (``$MPCDWM_CACHE`` or ~/.cache/mpcdwm, then collect/<env>-seed<seed>)."""
    ref_max_score: float | None = None
    """Expert return for normalised scores of envs without D4RL references; default: the
    trained online agent's final evaluation return."""
    progress: bool = True
    """Show rich progress bars."""


def default_dataset_id(env_id: str, recipe: str) -> str:
    """``mpcdwm/<family>-<recipe>-v0``; ``Hopper-v5`` gives family ``hopper``."""
    base = env_id.split("/")[-1].split(":")[-1]
    family = base.rsplit("-v", 1)[0] if base.rsplit("-v", 1)[-1].isdigit() else base
    return f"mpcdwm/{family.lower().replace('_', '-')}-{recipe}-v0"


def default_agent_dir(cfg: CollectConfig) -> Path:
    """Cache folder of the online agent for ``cfg.env`` and ``cfg.seed``."""
    root = Path(os.environ.get("MPCDWM_CACHE", Path.home() / ".cache" / "mpcdwm"))
    return root / "collect" / f"{cfg.env.replace('/', '_')}-seed{cfg.seed}"


def command_line(cfg: CollectConfig) -> str:
    """The ``mpcdwm collect`` command that reproduces ``cfg`` (non-default flags only)."""
    parts = ["mpcdwm collect"]
    always = {"env", "recipe", "steps", "seed"}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if f.name not in always and value == f.default:
            continue
        flag = "--" + f.name.replace("_", "-")
        if isinstance(value, bool):
            parts.append(flag if value else f"--no-{f.name.replace('_', '-')}")
        elif value is None:
            parts.append(f"{flag} None")
        else:
            parts.append(f"{flag} {value}")
    return " ".join(parts)


def _check_config(cfg: CollectConfig) -> None:
    if cfg.recipe not in RECIPES:
        raise ValueError(f"--recipe must be one of {RECIPES}, got {cfg.recipe!r}.")
    positive = ("steps", "train_steps", "eval_every", "eval_episodes", "chunk", "batch_size")
    for name in positive:
        if getattr(cfg, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(cfg, name)}.")
    if not 0.0 < cfg.medium_fraction <= 1.0:
        raise ValueError(f"--medium-fraction must be in (0, 1], got {cfg.medium_fraction}.")
    if cfg.start_steps < 0 or cfg.expl_noise < 0 or cfg.rollout_noise < 0:
        raise ValueError("--start-steps, --expl-noise and --rollout-noise must be >= 0.")


# --------------------------------------------------------------------------- acting


def _to_env(action: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Map ``[-1, 1]`` agent actions to the env's bounds ``[low, high]``."""
    return (low + 0.5 * (action + 1.0) * (high - low)).astype(np.float32)


def _make_actor_fns(td3: rebrac.ReBRACConfig) -> tuple[Callable, Callable]:
    """Jitted ``(greedy(actor, obs), noisy(actor, obs, eps, std))`` in ``[-1, 1]``."""

    def greedy(actor: Params, obs: jax.Array) -> jax.Array:
        return rebrac.act(td3, actor, obs)

    def noisy(actor: Params, obs: jax.Array, eps: jax.Array, std: jax.Array) -> jax.Array:
        return jnp.clip(rebrac.act(td3, actor, obs) + std * eps, -1.0, 1.0)

    return jax.jit(greedy), jax.jit(noisy)


def _rollout(
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
    env = make_env(env_id, **_limit_kwargs(max_episode_steps))
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
                env_a = _to_env(a, low, high)
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


def _limit_kwargs(max_episode_steps: int | None) -> dict[str, Any]:
    return {} if max_episode_steps is None else {"max_episode_steps": max_episode_steps}


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
    data = _rollout(
        env_id,
        None,
        rebrac.td3_config(),
        steps=_episode_budget(env_id, episodes, max_episode_steps),
        key=jax.random.fold_in(jax.random.key(seed), 7),
        noise=0.0,
        max_episode_steps=max_episode_steps,
    )
    returns = _episode_returns(data)
    complete = returns[:-1] if len(returns) > 1 else returns  # the cut last one is partial
    return float(np.mean(complete[:episodes]))


def _episode_budget(env_id: str, episodes: int, max_episode_steps: int | None) -> int:
    env = make_env(env_id, **_limit_kwargs(max_episode_steps))
    limit = env.spec.max_episode_steps if env.spec is not None else None
    env.close()
    return (episodes + 1) * int(limit or 1000)


def _episode_returns(data: Transitions) -> np.ndarray:
    ends = np.flatnonzero(data["terminals"] | data["truncations"])
    return np.add.reduceat(data["rewards"].astype(np.float64), np.r_[0, ends[:-1] + 1])


# ----------------------------------------------------------------- online TD3 agent


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
    for part in ("collect", "td3"):
        if saved_meta.get(part) != meta[part]:
            diff = {
                k: (saved_meta.get(part, {}).get(k), v)
                for k, v in meta[part].items()
                if saved_meta.get(part, {}).get(k) != v
            }
            raise CheckpointError(
                f"{path} holds an online agent trained with other settings "
                f"(saved, requested): {diff}. Pass another --agent-dir, or the same settings."
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
    buffer = {k: np.asarray(raw["buffer"][k]) for k in _FIELDS}
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
    console = console or Console(stderr=True)
    agent_dir = cfg.agent_dir or default_agent_dir(cfg)
    ckpt_path = agent_dir / CHECKPOINT_NAME
    td3 = rebrac.td3_config(batch_size=cfg.batch_size)
    meta = _agent_meta(cfg, td3)
    env = make_env(cfg.env, **_limit_kwargs(cfg.max_episode_steps))
    obs_dim, act_dim = env_sizes(env)
    low, high = env.action_space.low, env.action_space.high
    root_key = jax.random.key(cfg.seed)
    template = rebrac.init(td3, jax.random.fold_in(root_key, 1), obs_dim, act_dim)
    # Round the budget up to whole chunks: updates run in fixed-size fused blocks.
    total = math.ceil(cfg.train_steps / cfg.chunk) * cfg.chunk

    if ckpt_path.exists():
        run = _load_run(ckpt_path, meta, template)
        console.print(f"[collect] resuming online TD3 at env step {run.env_steps} ({ckpt_path})")
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
            return _to_env(np.asarray(greedy(actor, obs)), low, high), {}

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
                nxt, reward, term, trunc, _ = env.step(_to_env(a, low, high))
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
                if cfg.progress:
                    # One line per evaluation: a readable log when stderr is not a terminal.
                    console.print(
                        f"[collect] env step {run.env_steps}: eval return "
                        f"{run.evals[-1]['return']:.1f}, last episode {last_return:.1f}, "
                        f"{rate.replace('/s', ' per s')}"
                    )
            done = run.env_steps >= total or reached()
            if since_ckpt >= cfg.checkpoint_every or done:
                _save_run(ckpt_path, run, meta, done=run.env_steps >= total)
                since_ckpt = 0
            info = f"episode return {last_return:.1f}"
            if run.evals:
                info += f"  eval {run.evals[-1]['return']:.1f}"
            bar.update(task, completed=run.env_steps, rate=rate, info=info)
    env.close()
    return run


# -------------------------------------------------------------------- writing data


def _episode_buffers(data: Transitions) -> Iterator[Any]:
    """Minari ``EpisodeBuffer`` per episode: T+1 observations, T actions/rewards/flags."""
    from minari.data_collector import EpisodeBuffer

    ends = data["terminals"] | data["truncations"]
    ends[-1] = True
    stops = np.flatnonzero(ends) + 1
    start = 0
    for episode, stop in enumerate(stops):
        sl = slice(start, stop)
        obs = np.concatenate([data["observations"][sl], data["next_observations"][stop - 1][None]])
        trunc = data["truncations"][sl].copy()
        trunc[-1] |= not data["terminals"][stop - 1]
        yield EpisodeBuffer(
            id=episode,
            observations=obs,
            actions=data["actions"][sl],
            rewards=data["rewards"][sl],
            terminations=data["terminals"][sl],
            truncations=trunc,
            infos={},
        )
        start = stop


@contextmanager
def _minari_root(path: Path) -> Iterator[None]:
    """Point Minari at another datasets root for the duration (Minari reads the env var)."""
    old = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(path)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("MINARI_DATASETS_PATH", None)
        else:
            os.environ["MINARI_DATASETS_PATH"] = old


def write_minari(
    data: Transitions,
    *,
    dataset_id: str,
    env_id: str,
    max_episode_steps: int | None,
    ref_min_score: float,
    ref_max_score: float,
    extra_metadata: dict[str, Any],
    out: Path | None = None,
    overwrite: bool = False,
) -> str:
    """Write ``data`` as Minari dataset ``dataset_id``; returns the id, or the absolute ``out``.

    The dataset is built in a staging folder and moved into place, so a killed
    write never leaves half a dataset under the final name.
    """
    import minari
    from minari.storage import get_dataset_path

    # Absolute: Minari resolves a relative folder against its own root (MINARI_DATASETS_PATH).
    target = Path(out).resolve() if out is not None else get_dataset_path(dataset_id)
    if target.exists():
        if not overwrite:
            raise FileExistsError(
                f"dataset {dataset_id!r} already exists at {target}; pass --overwrite to replace "
                "it, or choose another --dataset-id / --out."
            )
    target.parent.mkdir(parents=True, exist_ok=True)
    env = make_env(env_id, **_limit_kwargs(max_episode_steps))
    stage = Path(tempfile.mkdtemp(prefix=".collect-", dir=target.parent))
    try:
        with _minari_root(stage), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # Minari nags about optional fields
            ds = minari.create_dataset_from_buffers(
                dataset_id=dataset_id,
                buffer=list(_episode_buffers(data)),
                env=env,
                algorithm_name=f"mpcdwm collect ({extra_metadata.get('mpcdwm_recipe', '?')})",
                author="mpcdwm",
                author_email="n/a",
                code_permalink="https://github.com/ (mpcdwm.collect)",
                ref_min_score=float(ref_min_score),
                ref_max_score=float(ref_max_score),
                description=f"D4RL-style dataset made by `{extra_metadata.get('mpcdwm_command')}`",
            )
            ds.storage.update_metadata(extra_metadata)
        if target.exists():
            shutil.rmtree(target)
        os.replace(stage / dataset_id, target)
    finally:
        env.close()
        shutil.rmtree(stage, ignore_errors=True)
    return str(target) if out is not None else dataset_id


# ------------------------------------------------------------------------ the command


def collect(cfg: CollectConfig) -> str:
    """Run ``mpcdwm collect``: record ``cfg.recipe`` for ``cfg.env`` and write it with Minari.

    Returns the Minari dataset id (or the folder ``cfg.out``), loadable with
    :func:`mpcdwm.data.load_dataset`.
    """
    if "PointMaze" in cfg.env:
        from mpcdwm import maze  # the maze controller replaces the online TD3 recipes

        return maze.write_pointmaze_dataset(
            cfg.env,
            steps=cfg.steps,
            seed=cfg.seed,
            noise=cfg.rollout_noise,
            out=None if cfg.out is None else str(cfg.out),
            dataset_id=cfg.dataset_id,
            overwrite=cfg.overwrite,
        )
    _check_config(cfg)
    console = Console(stderr=True)
    dataset_id = cfg.dataset_id or default_dataset_id(cfg.env, cfg.recipe)
    if cfg.out is not None and cfg.out.exists() and not cfg.overwrite:
        raise FileExistsError(f"{cfg.out} already exists; pass --overwrite or another --out.")
    td3 = rebrac.td3_config(batch_size=cfg.batch_size)
    d4rl = ref_scores_for(cfg.env)
    root_key = jax.random.key(cfg.seed)

    def rollout_key(recipe: str) -> jax.Array:
        # One key per recipe, so medium-expert is exactly the medium and expert datasets.
        return jax.random.fold_in(root_key, 100 + RECIPES.index(recipe))

    meta: dict[str, Any] = {
        "mpcdwm_command": command_line(cfg),
        "mpcdwm_seed": int(cfg.seed),
        "mpcdwm_recipe": cfg.recipe,
    }
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
    )

    def record(actor: Params | None, key: jax.Array, label: str) -> Transitions:
        with Progress(*columns, console=console, disable=not cfg.progress) as bar:
            return _rollout(
                cfg.env,
                actor,
                td3,
                steps=cfg.steps,
                key=key,
                noise=cfg.rollout_noise,
                max_episode_steps=cfg.max_episode_steps,
                progress=bar,
                label=label,
            )

    expert_return = cfg.ref_max_score
    if cfg.recipe == "random":
        data = record(None, rollout_key("random"), "random")
        rand = random_return(
            cfg.env, episodes=10, seed=cfg.seed, max_episode_steps=cfg.max_episode_steps
        )
        if d4rl is None and expert_return is None:
            expert_return = _trained_return(cfg)
    else:
        # With a known expert return the medium recipes only need training up to the
        # medium point; otherwise the expert's return is the fully trained agent's.
        medium_only = cfg.recipe in ("medium", "medium-replay") and d4rl is not None
        until = cfg.medium_fraction * d4rl[1] if medium_only else None
        run = train_online(cfg, until_medium=until, console=console)
        if not run.evals:
            raise RuntimeError("the online agent has no evaluation yet; raise --train-steps.")
        rand = run.random_return
        if until is None:
            meta["mpcdwm_expert_return"] = float(run.evals[-1]["return"])
            if expert_return is None:
                expert_return = run.evals[-1]["return"]
        expert_ref = d4rl[1] if d4rl is not None else expert_return
        idx, reached = run.medium_index(expert_ref, cfg.medium_fraction)
        medium = run.evals[idx]
        if not reached:
            console.print(
                f"[yellow]warning:[/] no evaluation reached {cfg.medium_fraction:.2f} x expert "
                f"return {expert_ref:.1f} within {run.env_steps} env steps; using the best "
                f"policy (return {medium['return']:.1f} at step {medium['env_steps']}). "
                "Raise --train-steps for a true medium policy."
            )
        meta.update(
            mpcdwm_medium_return=float(medium["return"]),
            mpcdwm_medium_env_steps=int(medium["env_steps"]),
            mpcdwm_medium_reached=bool(reached),
            mpcdwm_agent_env_steps=int(run.env_steps),
        )
        if cfg.recipe == "medium":
            data = record(run.snapshots[idx], rollout_key("medium"), "medium rollouts")
        elif cfg.recipe == "medium-replay":
            n = int(medium["env_steps"])
            data = {k: v[:n].copy() for k, v in run.buffer.items()}
            low, high = _action_bounds(cfg)
            data["actions"] = _to_env(data["actions"], low, high)
        elif cfg.recipe == "expert":
            data = record(run.state.actor, rollout_key("expert"), "expert rollouts")
        else:
            med = record(run.snapshots[idx], rollout_key("medium"), "medium rollouts")
            exp = record(run.state.actor, rollout_key("expert"), "expert rollouts")
            data = {k: np.concatenate([med[k], exp[k]]) for k in _FIELDS}
    meta["mpcdwm_random_return"] = float(rand)
    meta["mpcdwm_dataset_mean_return"] = float(np.mean(_episode_returns(data)))
    if d4rl is not None:
        ref_min, ref_max = d4rl
    elif expert_return is None:
        raise RuntimeError(
            f"{cfg.env} has no D4RL reference scores and no trained agent in "
            f"{cfg.agent_dir or default_agent_dir(cfg)}: pass --ref-max-score, or collect a "
            "medium/expert recipe first so the random dataset can use the agent's return."
        )
    else:
        ref_min, ref_max = rand, float(expert_return)
    if not ref_max > ref_min:
        raise RuntimeError(
            f"the expert return ({ref_max:.2f}) does not exceed the random return "
            f"({ref_min:.2f}); the online agent did not learn. Raise --train-steps."
        )
    result = write_minari(
        data,
        dataset_id=dataset_id,
        env_id=cfg.env,
        max_episode_steps=cfg.max_episode_steps,
        ref_min_score=ref_min,
        ref_max_score=ref_max,
        extra_metadata=meta,
        out=cfg.out,
        overwrite=cfg.overwrite,
    )
    console.print(
        f"[collect] wrote {len(data['rewards'])} transitions "
        f"({int((data['terminals'] | data['truncations']).sum())} episodes, mean return "
        f"{meta['mpcdwm_dataset_mean_return']:.1f}) to {result}"
    )
    return result


def _trained_return(cfg: CollectConfig) -> float | None:
    """Final evaluation return of a fully trained online agent in the agent folder, if any."""
    path = (cfg.agent_dir or default_agent_dir(cfg)) / CHECKPOINT_NAME
    if not path.exists():
        return None
    _, meta = load_checkpoint(path, expect={"kind": "collect-online-td3"})
    prog = meta["progress"]
    return float(prog["evals"][-1]["return"]) if prog["done"] and prog["evals"] else None


def _action_bounds(cfg: CollectConfig) -> tuple[np.ndarray, np.ndarray]:
    env = make_env(cfg.env, **_limit_kwargs(cfg.max_episode_steps))
    low, high = env.action_space.low, env.action_space.high
    env.close()
    return low, high


__all__ = [
    "RECIPES",
    "CollectConfig",
    "OnlineRun",
    "collect",
    "command_line",
    "default_agent_dir",
    "default_dataset_id",
    "random_return",
    "train_online",
    "write_minari",
]
