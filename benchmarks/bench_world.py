"""World-model benchmark: training speed, sampler speed (forward and forward+backward), the
cost of an MPC-shaped decision, and the quality table diffusion vs flow vs MeanFlow vs MLP on one
split.

Speed sections use Hopper's sizes (obs 11, act 3) and the default networks (3x256
denoiser, 5 x 2x256 reward ensemble, 2x256 termination); speed does not depend on
the weights, so they are untrained.

* training: updates/s of ``make_update`` fused by ``mpcdwm.train.make_chunk``
  (all three models per update, batch 256), as ``train-world-model`` runs it.
* sampling: ``next_state`` samples/s (jit(vmap), batch 1024) and forward+backward
  time per transition (gradient of the summed next states w.r.t. (s, a), batch 16
  = one MPC horizon step of M=16 rollouts, and batch 256), for diffusion with
  denoise_steps = 1, 2, 5, 10, 20, flow matching with 1-4 Euler / midpoint steps and
  MeanFlow with 1-2 steps.
* decision: one jitted MPCwDWM-shaped decision (E gradient steps on a 2x256 tanh
  policy through M rollouts of H steps: next_state + reward + done_prob each step,
  discounted; no critic) in ms, default E=5, M=16, H=5 — the 10 ms target.
* quality: each model trained with ``train_world_model`` on the same episode split
  of a Hopper dataset (``--dataset``; default ``mpcdwm/hopper-medium-v0`` when it is
  installed, else random-policy Hopper-v5 data collected here), reported by
  ``world_model_quality`` on the held-out episodes, with each sampler's network calls and
  next_state forward+backward cost (trained weights) beside it.

    python benchmarks/bench_world.py                       # everything
    python benchmarks/bench_world.py --skip-quality        # speed only (~2 min)
    python benchmarks/bench_world.py --skip-speed --train-steps 20000 --dataset PATH
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from mpcdwm.nets import MLP
from mpcdwm.train import make_chunk
from mpcdwm.world import (
    TrainWorldModelConfig,
    WorldModel,
    init_params,
    load_world_model,
    make_update,
    make_world_model,
    train_world_model,
)
from mpcdwm.world_quality import quality_markdown, world_model_quality

OBS_DIM, ACT_DIM = 11, 3


def _median_time(fn, *args, repeats: int = 20) -> float:
    jax.block_until_ready(fn(*args))  # compile
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _untrained(cfg: TrainWorldModelConfig) -> WorldModel:
    params = init_params(cfg, OBS_DIM, ACT_DIM, jax.random.key(0))
    norm = {
        "obs_mean": np.zeros(OBS_DIM),
        "obs_std": np.ones(OBS_DIM),
        "delta_mean": np.zeros(OBS_DIM),
        "delta_std": np.ones(OBS_DIM),
        "reward_mean": 0.0,
        "reward_std": 1.0,
        "logit_offset": 0.0,
    }
    return make_world_model(params, cfg, norm, obs_dim=OBS_DIM, act_dim=ACT_DIM, env_id="Hopper-v5")


def variants() -> list[tuple[str, TrainWorldModelConfig]]:
    base = TrainWorldModelConfig()
    out = [
        (f"diffusion K={k}", dataclasses.replace(base, denoise_steps=k)) for k in (1, 2, 5, 10, 20)
    ]
    out += [
        (f"flow euler {n}", dataclasses.replace(base, model="flow", flow_steps=n))
        for n in (1, 2, 3, 4)
    ]
    out += [
        (
            f"flow midpoint {n}",
            dataclasses.replace(base, model="flow", flow_steps=n, flow_solver="midpoint"),
        )
        for n in (1, 2)
    ]
    out += [
        (f"meanflow {n}", dataclasses.replace(base, model="meanflow", flow_steps=n)) for n in (1, 2)
    ]
    out.append(("mlp", dataclasses.replace(base, model="mlp")))
    return out


def net_calls(cfg: TrainWorldModelConfig) -> int:
    """Network evaluations per ``next_state`` of a (resolved) config."""
    if cfg.model == "diffusion":
        return cfg.denoise_steps
    if cfg.model == "flow":
        return cfg.flow_steps * (2 if cfg.flow_solver == "midpoint" else 1)
    if cfg.model == "meanflow":
        return cfg.flow_steps
    return 1


def grad_us_per_transition(wm: WorldModel, batch: int, repeats: int) -> float:
    """Median forward+backward time of next_state per transition (µs), gradient w.r.t. (s, a)."""
    step = jax.vmap(lambda s, a, z: wm.next_state(wm.params, s, a, z))
    grad = jax.jit(jax.grad(lambda s, a, z: step(s, a, z).sum(), argnums=(0, 1)))
    key = jax.random.key(batch)
    s = jax.random.normal(key, (batch, OBS_DIM))
    a = jnp.tanh(jax.random.normal(jax.random.fold_in(key, 1), (batch, ACT_DIM)))
    z = wm.sample_noise(jax.random.fold_in(key, 2), (batch,))
    return 1e6 * _median_time(grad, s, a, z, repeats=repeats) / batch


def bench_training(chunk: int, repeats: int) -> list[str]:
    rows = ["| model | updates/s | compile + first chunk (s) |", "|---|---:|---:|"]
    n = 100_000
    k = jax.random.split(jax.random.key(1), 6)
    data = {
        "obs": jax.random.normal(k[0], (n, OBS_DIM)),
        "act": jnp.tanh(jax.random.normal(k[1], (n, ACT_DIM))),
        "delta": jax.random.normal(k[2], (n, OBS_DIM)),
        "next_obs": jax.random.normal(k[3], (n, OBS_DIM)),
        "rew": jax.random.normal(k[4], (n,)),
        "done": (jax.random.uniform(k[5], (n,)) < 0.01).astype(jnp.float32),
    }
    base = TrainWorldModelConfig()
    for name, cfg in (
        ("diffusion K=5", base),
        ("diffusion K=20", dataclasses.replace(base, denoise_steps=20)),
        ("flow", dataclasses.replace(base, model="flow")),
        ("meanflow", dataclasses.replace(base, model="meanflow")),
        ("mlp", dataclasses.replace(base, model="mlp")),
    ):
        init_state, update = make_update(cfg, OBS_DIM, 0.0)
        state = init_state(init_params(cfg, OBS_DIM, ACT_DIM, jax.random.key(0)))
        run = make_chunk(update, cfg.batch_size, chunk)
        t0 = time.perf_counter()
        state, _ = run(state, data, jax.random.key(0))
        jax.block_until_ready(state)
        first = time.perf_counter() - t0
        rates = []
        for i in range(repeats):
            t0 = time.perf_counter()
            state, _ = run(state, data, jax.random.key(i + 1))
            jax.block_until_ready(state)
            rates.append(chunk / (time.perf_counter() - t0))
        rows.append(f"| {name} | {statistics.median(rates):.0f} | {first:.1f} |")
        print(rows[-1], flush=True)
    return rows


def bench_sampling(repeats: int) -> list[str]:
    rows = [
        "| transition model | net calls | samples/s (fwd, batch 1024) "
        "| fwd+bwd µs/transition (batch 16) | fwd+bwd µs/transition (batch 256) |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, cfg in variants():
        wm = _untrained(cfg)
        calls = net_calls(wm.config)
        step = jax.vmap(lambda s, a, z, wm=wm: wm.next_state(wm.params, s, a, z))
        fwd = jax.jit(step)
        grad = jax.jit(jax.grad(lambda s, a, z, step=step: step(s, a, z).sum(), argnums=(0, 1)))
        cells = []
        for b, fn in ((1024, fwd), (16, grad), (256, grad)):
            key = jax.random.key(b)
            s = jax.random.normal(key, (b, OBS_DIM))
            a = jnp.tanh(jax.random.normal(jax.random.fold_in(key, 1), (b, ACT_DIM)))
            z = wm.sample_noise(jax.random.fold_in(key, 2), (b,))
            t = _median_time(fn, s, a, z, repeats=repeats)
            cells.append(f"{b / t:,.0f}" if fn is fwd else f"{1e6 * t / b:.1f}")
        rows.append(f"| {name} | {calls} | " + " | ".join(cells) + " |")
        print(rows[-1], flush=True)
    return rows


def make_decision(wm: WorldModel, E: int, M: int, H: int, gamma: float = 0.99, lr: float = 1e-3):
    """An MPCwDWM-shaped decision: E gradient-ascent steps on policy params through M x H."""
    policy = MLP((256, 256), ACT_DIM, final_scale=1e-2)
    step_all = jax.vmap(
        lambda s, a, z: (
            wm.next_state(wm.params, s, a, z),
            wm.reward(wm.params, s, a),
        )
    )
    done_all = jax.vmap(lambda s, a, s1: wm.done_prob(wm.params, s, a, s1))

    def surrogate(pp, s0, noise):
        def step(carry, z):
            s, ret, alive = carry
            a = jnp.tanh(policy.apply(pp, s))
            s1, r = step_all(s, a, z)
            ret = ret + alive * r
            alive = alive * gamma * (1.0 - done_all(s, a, s1))
            return (s1, ret, alive), None

        init = (jnp.broadcast_to(s0, (M, OBS_DIM)), jnp.zeros(M), jnp.ones(M))
        (_, ret, _), _ = jax.lax.scan(step, init, noise)
        return ret.mean()

    @jax.jit
    def decide(pp, s0, key):
        noise = wm.sample_noise(key, (H, M))  # drawn once, held fixed over the E steps

        def body(_, pp):
            g = jax.grad(surrogate)(pp, s0, noise)
            return jax.tree_util.tree_map(lambda p, g: p + lr * g, pp, g)

        pp = jax.lax.fori_loop(0, E, body, pp)
        return jnp.tanh(policy.apply(pp, s0))

    return decide, policy.init(jax.random.key(0), jnp.zeros(OBS_DIM))


def bench_decision(E: int, M: int, H: int, repeats: int) -> list[str]:
    rows = [
        f"| transition model | decision ms (E={E}, M={M}, H={H}) | compile s |",
        "|---|---:|---:|",
    ]
    for name, cfg in variants():
        wm = _untrained(cfg)
        decide, pp = make_decision(wm, E, M, H)
        s0 = jnp.zeros(OBS_DIM)
        t0 = time.perf_counter()
        jax.block_until_ready(decide(pp, s0, jax.random.key(0)))
        compile_s = time.perf_counter() - t0
        t = _median_time(decide, pp, s0, jax.random.key(1), repeats=repeats)
        rows.append(f"| {name} | {1e3 * t:.1f} | {compile_s:.1f} |")
        print(rows[-1], flush=True)
    return rows


def _random_hopper(steps: int, seed: int = 0):
    import gymnasium as gym

    from mpcdwm.data import make_dataset

    env = gym.make("Hopper-v5")
    rng = np.random.default_rng(seed)
    fields = ("observations", "actions", "rewards", "next_observations", "terminals", "timeouts")
    rows: dict[str, list] = {k: [] for k in fields}
    obs, _ = env.reset(seed=seed)
    episode = 0
    for i in range(steps):
        act = rng.uniform(-1.0, 1.0, 3).astype(np.float32)
        nxt, rew, term, trunc, _ = env.step(act)
        trunc = trunc or i == steps - 1
        for k, v in zip(fields, (obs, act, rew, nxt, term, trunc), strict=True):
            rows[k].append(v)
        obs = nxt
        if term or trunc:
            episode += 1
            obs, _ = env.reset(seed=seed + episode)
    return make_dataset(
        {k: np.asarray(v) for k, v in rows.items()}, name="hopper-random-bench", env_id="Hopper-v5"
    )


def bench_quality(args) -> list[str]:
    from mpcdwm.data import load_dataset
    from mpcdwm.envs import check_dataset_against_env

    default = Path.home() / ".minari/datasets/mpcdwm/hopper-medium-v0"
    if args.dataset:
        dataset = load_dataset(args.dataset)
        check_dataset_against_env(dataset)
    elif default.exists():
        dataset = load_dataset("mpcdwm/hopper-medium-v0")
        check_dataset_against_env(dataset)
    else:
        print("(no mpcdwm/hopper-medium-v0 installed: random-policy Hopper-v5 data)")
        dataset = _random_hopper(args.random_steps)
    print(
        f"dataset {dataset.name}: {len(dataset)} transitions, "
        f"{int(dataset.episode_ends.sum())} episodes, {int(dataset.terminals.sum())} terminals"
    )
    _, val = dataset.split(0.1, args.seed)
    base = TrainWorldModelConfig(
        dataset=dataset.name, steps=args.train_steps, seed=args.seed, progress=args.progress
    )
    models = {
        "diffusion": base,
        "diffusion-x0": dataclasses.replace(base, prediction="x0"),
        "flow": dataclasses.replace(base, model="flow"),
        "meanflow": dataclasses.replace(base, model="meanflow"),
        "mlp": dataclasses.replace(base, model="mlp"),
    }
    results, timings, samplers = {}, [], {}
    out_root = Path(args.out or tempfile.mkdtemp(prefix="bench_world_"))
    key = jax.random.split(jax.random.key(args.seed), 4)[3]
    for name in args.models:
        cfg = dataclasses.replace(models[name], out=out_root / name, resume=False)
        t0 = time.perf_counter()
        train_world_model(cfg, dataset)
        timings.append(f"{name}: {args.train_steps} steps in {time.perf_counter() - t0:.0f} s")
        wm = load_world_model(cfg.out)
        label = {"flow": "flow (2 euler)", "meanflow": "meanflow (1 step)"}.get(name, name)
        if name.startswith("diffusion"):
            label = f"{name} (K=5 DDPM)"
        results[label] = json.loads((cfg.out / "quality.json").read_text())
        samplers[label] = wm
        # Same trained weights, other samplers: no retraining needed.
        kw = dict(max_transitions=10_000, num_windows=256)
        others = {}
        if name.startswith("diffusion"):
            others[f"{name} (K=5 DDIM)"] = wm.with_sampler(sampler="ddim")
        if name == "flow":
            for n, solver in ((1, "euler"), (4, "euler"), (2, "midpoint")):
                others[f"flow ({n} {solver})"] = wm.with_sampler(flow_steps=n, flow_solver=solver)
        if name == "meanflow":
            others["meanflow (2 steps)"] = wm.with_sampler(flow_steps=2)
        for label, other in others.items():
            results[label] = world_model_quality(other, val, key, **kw)
            samplers[label] = other
    # The cost each sampler adds to a planner: network calls and next_state fwd+bwd time
    # (batch 16 = one horizon step of M=16 rollouts; batch 256), trained weights.
    cost = [
        "| sampler | net calls | next_state fwd+bwd µs/transition (batch 16 / 256) |",
        "|---|---:|---:|",
    ]
    for label, wm in samplers.items():
        us = [grad_us_per_transition(wm, b, args.repeats) for b in (16, 256)]
        cost.append(f"| {label} | {net_calls(wm.config)} | {us[0]:.1f} / {us[1]:.1f} |")
        print(cost[-1], flush=True)
    return [quality_markdown(results), "", *cost, "", *timings]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--skip-speed", action="store_true")
    p.add_argument("--skip-quality", action="store_true")
    p.add_argument("--chunk", type=int, default=200, help="updates per timed training chunk")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--E", type=int, default=5)
    p.add_argument("--M", type=int, default=16)
    p.add_argument("--H", type=int, default=5)
    p.add_argument("--dataset", default=None, help="dataset id/path for the quality table")
    p.add_argument("--random-steps", type=int, default=30_000)
    p.add_argument("--train-steps", type=int, default=20_000)
    p.add_argument(
        "--models", nargs="+", default=["diffusion", "diffusion-x0", "flow", "meanflow", "mlp"]
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="folder for the trained models (default: temp)")
    p.add_argument("--progress", action="store_true")
    args = p.parse_args()

    header = [
        "# bench_world",
        f"command: python {' '.join(sys.argv)}",
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
        f"JAX {jax.__version__} on {jax.devices()[0].platform}",
        f"date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
    ]
    print("\n".join(header), flush=True)
    sections = []
    if not args.skip_speed:
        print("\n## training speed", flush=True)
        sections += ["## training speed", *bench_training(args.chunk, args.repeats)]
        print("\n## sampler speed", flush=True)
        sections += ["", "## sampler speed", *bench_sampling(args.repeats)]
        print("\n## MPC-shaped decision", flush=True)
        sections += [
            "",
            "## MPC-shaped decision",
            *bench_decision(args.E, args.M, args.H, args.repeats),
        ]
    if not args.skip_quality:
        print("\n## quality (held-out episodes)", flush=True)
        sections += ["", "## quality (held-out episodes)", *bench_quality(args)]
    print("\n" + "\n".join(header + [""] + sections))


if __name__ == "__main__":
    main()
