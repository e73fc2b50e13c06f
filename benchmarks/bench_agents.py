"""Offline-agent training speed: fused updates per second (ReBRAC, and optionally IQL/TD3+BC).

Measures ``mpcdwm.train.make_chunk`` over the agent's ``update``: ``--chunk``
sampled updates fused into one jitted ``lax.scan``, exactly what ``train-agent``
runs. Data: Hopper-sized arrays (obs 11, act 3, 100k rows; speed does not depend
on the values). ReBRAC uses its Hopper preset: 3x256 actor and twin critics with
LayerNorm, policy_freq 2.

``--corl PATH`` also times CORL's JAX ReBRAC (``algorithms/offline/rebrac.py`` of a
CORL checkout, e.g. ``git clone https://github.com/corl-team/CORL``) on the same
machine, batch and network sizes. Its own ``update_td3``/``update_td3_no_targets``
run inside ``lax.fori_loop`` with ``lax.cond`` every ``policy_freq``, as its training
loop does. Its imports of d4rl/gym/pyrallis/wandb (unused by the update) are
stubbed here, and ``jax.tree_map`` (removed from recent JAX) is aliased to
``jax.tree_util.tree_map``; it needs ``chex`` importable (``PYTHONPATH`` is enough).
The implementations are timed in interleaved rounds (one chunk each per round), and
each of ours is compared to CORL by the median of its per-round speed ratios.

    python benchmarks/bench_agents.py --batch-sizes 256 1024
    PYTHONPATH=/path/with/chex python benchmarks/bench_agents.py \
        --corl CORL/algorithms/offline/rebrac.py
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import os
import platform
import statistics
import subprocess
import sys
import time
import types
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp

from mpcdwm.agents import iql, rebrac
from mpcdwm.train import make_chunk

OBS_DIM, ACT_DIM, ROWS = 11, 3, 100_000


def hopper_sized_data(key: jax.Array) -> dict[str, jax.Array]:
    """Random arrays with Hopper's sizes, keyed as ``update`` expects."""
    k = jax.random.split(key, 5)
    return {
        "observations": jax.random.normal(k[0], (ROWS, OBS_DIM)),
        "actions": jnp.tanh(jax.random.normal(k[1], (ROWS, ACT_DIM))),
        "rewards": jax.random.normal(k[2], (ROWS,)),
        "next_observations": jax.random.normal(k[3], (ROWS, OBS_DIM)),
        "next_actions": jnp.tanh(jax.random.normal(k[4], (ROWS, ACT_DIM))),
        "dones": jnp.zeros((ROWS,)),
    }


def time_interleaved(impls: list[dict], data, chunk: int, repeats: int) -> None:
    """Time one chunk of every implementation in turn, ``repeats`` rounds after a warm-up.

    Interleaving puts every implementation under the same machine state round by round
    (this machine's chunk times drift by +-25% over a minute), so the per-round ratio of
    two implementations is a fair comparison even when single rates are noisy. Adds
    ``first_s`` (compile + first chunk), ``rates`` and ``rate`` (median) to each dict.
    """
    for impl in impls:
        t0 = time.perf_counter()
        impl["state"], _ = impl["run"](impl["state"], data, jax.random.key(0))
        jax.block_until_ready(impl["state"])
        impl["first_s"], impl["rates"] = time.perf_counter() - t0, []
    for i in range(repeats):
        for impl in impls:
            t0 = time.perf_counter()
            impl["state"], metrics = impl["run"](impl["state"], data, jax.random.key(i + 1))
            jax.block_until_ready((impl["state"], metrics))
            impl["rates"].append(chunk / (time.perf_counter() - t0))
    for impl in impls:
        impl["rate"] = statistics.median(impl["rates"])


def bench_ours(agent: str, batch_size: int, chunk: int) -> dict:
    """mpcdwm's ``update`` for ``agent`` in ``make_chunk``, exactly as ``train-agent`` runs it."""
    if agent == "rebrac":
        module, config = rebrac, rebrac.rebrac_preset("hopper-medium-v2", batch_size=batch_size)
    elif agent == "td3bc":
        module, config = rebrac, rebrac.td3bc_config(batch_size=batch_size)
    else:
        module, config = iql, iql.IQLConfig(batch_size=batch_size)
    state = module.init(config, jax.random.key(0), OBS_DIM, ACT_DIM)
    run = make_chunk(module.make_update(config), batch_size, chunk)
    nets = "x".join(str(h) for h in config.hidden_dims)
    return {"impl": f"mpcdwm {agent}", "batch": batch_size, "nets": nets, "run": run,
            "state": state}  # fmt: skip


@functools.cache  # once per path: the stubs below cannot be installed twice
def _load_corl(path: str) -> types.ModuleType:
    """Import CORL's rebrac.py with its training-only dependencies stubbed."""
    for name in ("d4rl", "gym", "wandb"):
        sys.modules.setdefault(name, types.ModuleType(name))
    if not hasattr(sys.modules["gym"], "Env"):
        sys.modules["gym"].Env = object  # only used in type hints there
    if importlib.util.find_spec("tqdm") is None:
        stub = types.ModuleType("tqdm")
        stub.auto = types.ModuleType("tqdm.auto")
        stub.auto.trange = range
        sys.modules.update({"tqdm": stub, "tqdm.auto": stub.auto})
    if "pyrallis" not in sys.modules:
        stub = types.ModuleType("pyrallis")
        stub.wrap = lambda *a, **k: lambda f: f
        sys.modules["pyrallis"] = stub
    if not hasattr(jax, "tree_map"):
        jax.tree_map = jax.tree_util.tree_map
    spec = importlib.util.spec_from_file_location("corl_rebrac", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CORL_KEYS = {  # CORL's batch keys <- mpcdwm's
    "states": "observations",
    "actions": "actions",
    "rewards": "rewards",
    "next_states": "next_observations",
    "next_actions": "next_actions",
    "dones": "dones",
}


def corl_batch(batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """mpcdwm's batch (or whole dataset) under the keys CORL's ReBRAC reads."""
    return {corl: batch[ours] for corl, ours in CORL_KEYS.items()}


def corl_train_states(
    m: types.ModuleType,
    key: jax.Array,
    obs_dim: int,
    act_dim: int,
    hidden_dims: Sequence[int],
    actor_ln: bool,
    critic_ln: bool,
    actor_lr: float,
    critic_lr: float,
) -> tuple[Any, Any]:
    """CORL's actor and critic train states, built as its ``main`` builds them (each target
    initialised with its online net's key: equal weights)."""
    import optax

    actor_key, critic_key = jax.random.split(key)
    obs, act = jnp.zeros((1, obs_dim)), jnp.zeros((1, act_dim))
    width, depth = hidden_dims[0], len(hidden_dims)
    actor_net = m.DetActor(act_dim, width, actor_ln, depth)
    critic_net = m.EnsembleCritic(width, 2, critic_ln, depth)
    actor = m.ActorTrainState.create(
        apply_fn=actor_net.apply,
        params=actor_net.init(actor_key, obs),
        target_params=actor_net.init(actor_key, obs),
        tx=optax.adam(actor_lr),
    )
    critic = m.CriticTrainState.create(
        apply_fn=critic_net.apply,
        params=critic_net.init(critic_key, obs, act),
        target_params=critic_net.init(critic_key, obs, act),
        tx=optax.adam(critic_lr),
    )
    return actor, critic


def corl_updates(m: types.ModuleType, hyper: Any) -> tuple[Callable, Callable]:
    """CORL's ``update_td3`` (critic, actor, targets) and ``update_td3_no_targets`` (critic
    only) with ``hyper``'s gamma, betas, tau, target noise and normalize_q bound."""
    kwargs = dict(
        gamma=hyper.gamma,
        actor_bc_coef=hyper.actor_bc_coef,
        critic_bc_coef=hyper.critic_bc_coef,
        tau=hyper.tau,
        policy_noise=hyper.policy_noise,
        noise_clip=hyper.noise_clip,
    )
    full = partial(m.update_td3, normalize_q=hyper.normalize_q, **kwargs)
    return full, partial(m.update_td3_no_targets, **kwargs)


def bench_corl(path: str, batch_size: int, chunk: int, data) -> dict:
    """CORL's ReBRAC update functions, driven like its training loop (fori_loop + cond)."""
    m = _load_corl(path)
    cfg = m.Config(dataset_name="hopper-medium-v2", batch_size=batch_size)
    buffer = m.ReplayBuffer(data=corl_batch(data))
    actor, critic = corl_train_states(
        m, jax.random.PRNGKey(0), OBS_DIM, ACT_DIM, [cfg.hidden_dim] * cfg.actor_n_hiddens,
        cfg.actor_ln, cfg.critic_ln, cfg.actor_learning_rate, cfg.critic_learning_rate,
    )  # fmt: skip
    full, critic_only = corl_updates(m, cfg)
    names = ["critic_loss", "q_min", "actor_loss", "batch_entropy", "bc_mse_policy",
             "bc_mse_random", "action_mse"]  # fmt: skip

    def body(i, carry):
        key, batch_key = jax.random.split(carry["key"])
        batch = carry["buffer"].sample_batch(batch_key, batch_size=batch_size)
        args = dict(key=key, actor=carry["actor"], critic=carry["critic"], batch=batch,
                    metrics=carry["metrics"])  # fmt: skip
        key, actor, critic, metrics = jax.lax.cond(
            i % cfg.policy_freq == 0, partial(full, **args), partial(critic_only, **args)
        )
        return {**carry, "key": key, "actor": actor, "critic": critic, "metrics": metrics}

    def run(carry, _data, _key):
        # CORL calls lax.fori_loop once per epoch; jit here only to time it the same way.
        carry = {**carry, "metrics": m.Metrics.create(names)}
        return jax.lax.fori_loop(0, chunk, body, carry), {}

    # The carry holds its metrics from the start: a carry that gains a key after the first
    # call would retrace and recompile inside the first timed round.
    carry = {"key": jax.random.PRNGKey(1), "actor": actor, "critic": critic, "buffer": buffer,
             "metrics": m.Metrics.create(names)}  # fmt: skip
    return {"impl": "CORL rebrac (JAX)", "batch": batch_size, "nets": "256x256x256",
            "run": jax.jit(run), "state": carry}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[256, 1024])
    parser.add_argument(
        "--agents", nargs="+", default=["rebrac"], choices=["rebrac", "td3bc", "iql"]
    )
    parser.add_argument("--chunk", type=int, default=1000, help="updates fused per jitted call")
    parser.add_argument(
        "--repeats", type=int, default=10, help="timed rounds after the warm-up (one chunk each)"
    )
    parser.add_argument("--corl", default=None, help="path to CORL's algorithms/offline/rebrac.py")
    parser.add_argument(
        "--corl-commit", default=None, help="CORL's commit, when --corl is not in a git checkout"
    )
    args = parser.parse_args()

    data = hopper_sized_data(jax.random.key(42))
    rows = []
    for bs in args.batch_sizes:
        impls = [bench_ours(agent, bs, args.chunk) for agent in args.agents]
        if args.corl:
            impls.append(bench_corl(args.corl, bs, args.chunk, data))
        time_interleaved(impls, data, args.chunk, args.repeats)
        for impl in impls:
            if args.corl and impl["impl"] == "mpcdwm rebrac":
                # Paired by round: both chunks ran back to back under the same load. Only ReBRAC
                # is compared: CORL's file is ReBRAC, the other agents are other algorithms.
                ratios = [a / b for a, b in zip(impl["rates"], impls[-1]["rates"], strict=True)]
                impl["vs_corl"] = statistics.median(ratios)
            print(f"  {impl['impl']} batch {bs}: {impl['rate']:.0f} upd/s", file=sys.stderr)
        rows += impls

    device = jax.devices()[0]
    print(f"Machine: {platform.processor() or platform.machine()}, {jax.device_count()} x "
          f"{device.device_kind} ({device.platform}), jax {jax.__version__}, "
          f"load average at the end {os.getloadavg()[0]:.2f}")  # fmt: skip
    print("Command: python " + " ".join(sys.argv))
    if args.corl:
        print(f"CORL: {args.corl} at commit {args.corl_commit or _git_commit(args.corl)}")
    print()
    print(
        "| implementation | batch | hidden | updates/s (median) | / CORL (median of per-round "
        "ratios) | all rounds | compile + first chunk (s) |"
    )
    print("|---|---:|---|---:|---:|---|---:|")
    for r in rows:
        spread = ", ".join(f"{x:.0f}" for x in r["rates"])
        ratio = f"{r['vs_corl']:.2f}" if "vs_corl" in r else ""
        print(f"| {r['impl']} | {r['batch']} | {r['nets']} | {r['rate']:.0f} | {ratio} | "
              f"{spread} | {r['first_s']:.1f} |")  # fmt: skip


def _git_commit(path: str) -> str:
    try:
        out = subprocess.run(
            ["git", "-C", os.path.dirname(os.path.abspath(path)), "rev-parse", "HEAD"],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "unknown (pass --corl-commit)"
    return out.stdout.strip()


if __name__ == "__main__":
    main()
