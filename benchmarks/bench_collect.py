"""Collection speed: env steps/s of recording and TD3 updates/s of ``mpcdwm collect``.

Times the pieces ``collect`` runs, on a real MuJoCo env (default Hopper-v5):

* recording: ``steps`` transitions with uniform random actions, and with a TD3 actor
  (one jitted policy call per env step, as medium/expert recordings do);
* online TD3: ``chunk`` updates fused in one jitted ``lax.scan`` over a device replay
  buffer (``--batch-size``, default 256 as in TD3), as ``collect``'s training loop runs.

    python benchmarks/bench_collect.py
    python benchmarks/bench_collect.py --env Walker2d-v5 --steps 5000
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from datetime import UTC, datetime

import jax
import jax.numpy as jnp
import numpy as np

from mpcdwm.agents import rebrac
from mpcdwm.envs import env_sizes, make_env
from mpcdwm.online_td3 import _device_rows, _empty, _train_chunk_fn, record_rollout


def record_rate(env_id: str, steps: int, actor, td3) -> float:
    t0 = time.perf_counter()
    record_rollout(
        env_id, actor, td3, steps=steps, key=jax.random.key(0), noise=0.1, max_episode_steps=None
    )
    return steps / (time.perf_counter() - t0)


def td3_rate(td3, obs_dim: int, act_dim: int, batch: int, chunk: int, repeats: int):
    rows = 100_000
    rng = np.random.default_rng(0)
    buf = _empty(rows, obs_dim, act_dim)
    buf["observations"][:] = rng.standard_normal((rows, obs_dim))
    buf["next_observations"][:] = rng.standard_normal((rows, obs_dim))
    buf["actions"][:] = rng.uniform(-1, 1, (rows, act_dim))
    buf["rewards"][:] = rng.standard_normal(rows)
    device = _device_rows(buf, 0, rows)
    state = rebrac.init(td3, jax.random.key(0), obs_dim, act_dim)
    run = _train_chunk_fn(td3, batch, chunk)
    t0 = time.perf_counter()
    state, m = run(state, device, jnp.int32(rows), jax.random.key(1))
    jax.block_until_ready(m)
    compile_s = time.perf_counter() - t0
    rates = []
    for i in range(repeats):
        t0 = time.perf_counter()
        state, m = run(state, device, jnp.int32(rows), jax.random.key(2 + i))
        jax.block_until_ready(m)
        rates.append(chunk / (time.perf_counter() - t0))
    return compile_s, statistics.median(rates)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--env", default="Hopper-v5")
    p.add_argument("--steps", type=int, default=10_000, help="transitions per recording")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--chunk", type=int, default=500, help="fused updates (collect's default)")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()

    env = make_env(args.env)
    obs_dim, act_dim = env_sizes(env)
    env.close()
    td3 = rebrac.td3_config(batch_size=args.batch_size)
    actor = rebrac.init(td3, jax.random.key(0), obs_dim, act_dim).actor

    random_sps = record_rate(args.env, args.steps, None, td3)
    policy_sps = record_rate(args.env, args.steps, actor, td3)
    compile_s, upd = td3_rate(td3, obs_dim, act_dim, args.batch_size, args.chunk, args.repeats)

    print(f"# bench_collect ({datetime.now(UTC):%Y-%m-%d %H:%M} UTC)")
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__} "
        f"({jax.default_backend()}); load average {os.getloadavg()[0]:.1f}"
    )
    print(
        f"env {args.env} (obs {obs_dim}, act {act_dim}); {args.steps} transitions per recording\n"
    )
    print("| what | rate |")
    print("|---|---|")
    print(f"| record, random actions | {random_sps:,.0f} env steps/s |")
    print(f"| record, TD3 actor (one jitted call per step) | {policy_sps:,.0f} env steps/s |")
    print(
        f"| online TD3 updates, batch {args.batch_size}, {args.chunk} fused | {upd:,.0f} "
        f"updates/s (compile {compile_s:.1f} s) |"
    )


if __name__ == "__main__":
    main()
