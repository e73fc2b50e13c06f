"""Decision latency of the planners (mpcdwm.mpc) on this machine, and its arithmetic floor.

Hopper sizes (obs 11, act 3); ReBRAC's default 3x256 actor and twin 3x256 critics; the
world model's default 3x256 denoiser, 5 x 2x256 reward ensemble and 2x256 termination
net. Weights are random (latency does not depend on them). Each configuration builds a
:class:`mpcdwm.mpc.Planner` (exactly what ``mpcdwm evaluate`` runs: one jitted program
and one device-to-host transfer per decision), compiles it ahead of time (compile time
reported separately), then times ``--decisions`` decisions on varying observations.

Sections (``--sections``, default all but ``grid``):

* ``reference``: the ``reference`` preset (Adam, E=5, M=16, H=5; the library's default
  until 2026-11-26), diffusion with 5 denoising steps (DDPM, fixed noise), before (the
  decision as it was: whole reward ensemble, diagnostics rollout) and after (first reward
  member, no diagnostics rollout); action-grad, mppi, none at the same budget.
* ``floor``: FLOPs per decision from the compiled program's cost analysis (XLA counts a
  loop body once, so the E-loop is multiplied out: ``E x FLOPs(E=1)``, plus the
  diagnostics rollout), divided by this CPU's measured matmul throughput at the decision's
  shapes (``(M, 256) @ (256, 256)``, weights resident in cache): the arithmetic floor, and
  latency / floor.
* ``amortized``: the paper's setting (E=1, weights carried across real steps; the library's
  default at M=16) at M in {16, 64, 256, 1024}, and with the one-step MeanFlow world model at
  M in {16, 64, 256}: latency and imagined rollouts per second.
* ``bf16``: matmul throughput in float32 vs bfloat16 at those shapes (mixed precision is
  worth building only where bf16 is faster).
* ``grid``: one knob at a time around the reference: E in {1,2,5,10}, M in {4,16,64},
  H in {1,3,5,10}, denoising steps {1,2,5,10,20}, flow matching with 1-4 Euler steps.

    nice -n 10 python benchmarks/bench_mpc.py                  # ~5 min
    nice -n 10 python benchmarks/bench_mpc.py --sections reference floor --decisions 300
    nice -n 10 python benchmarks/bench_mpc.py --sections grid --out benchmarks/results/mpc.md
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import platform
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from mpcdwm.agents import DataTransform, make_trained_agent, rebrac
from mpcdwm.data import NormStats
from mpcdwm.mpc import MPCConfig, make_planner, resolve
from mpcdwm.world import TrainWorldModelConfig, init_params, make_world_model

OBS_DIM, ACT_DIM = 11, 3


def build_agent(seed: int = 0):
    """ReBRAC with its default 3x256 networks, random weights, Hopper sizes, identity scaling."""
    config = rebrac.ReBRACConfig()
    state = rebrac.init(config, jax.random.PRNGKey(seed), OBS_DIM, ACT_DIM)
    transform = DataTransform(
        NormStats(np.zeros(OBS_DIM, np.float32), np.ones(OBS_DIM, np.float32), 1.0),
        np.zeros(ACT_DIM, np.float32),
        np.ones(ACT_DIM, np.float32),
        0.0,
    )
    return make_trained_agent(
        "rebrac", config, state.actor, state.critic, transform, env_id="Hopper-v5", meta={}
    )


def build_world(model: str = "diffusion", denoise_steps: int = 5, flow_steps: int = 2, seed=0):
    cfg = TrainWorldModelConfig(model=model, denoise_steps=denoise_steps, flow_steps=flow_steps)
    params = init_params(cfg, OBS_DIM, ACT_DIM, jax.random.PRNGKey(seed))
    norm = {
        "obs_mean": np.zeros(OBS_DIM, np.float32),
        "obs_std": np.ones(OBS_DIM, np.float32),
        "delta_mean": np.zeros(OBS_DIM, np.float32),
        "delta_std": np.full(OBS_DIM, 0.1, np.float32),
        "reward_mean": 0.0,
        "reward_std": 1.0,
        "logit_offset": 0.0,
    }
    return make_world_model(params, cfg, norm, obs_dim=OBS_DIM, act_dim=ACT_DIM, env_id="Hopper-v5")


def measure(planner_name: str, cfg: MPCConfig, agent, world, decisions: int) -> dict:
    planner = make_planner(planner_name, cfg, agent, world, seed=0)
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(decisions + 5, OBS_DIM)).astype(np.float32)
    compile_s = planner.compile(obs[0])
    for o in obs[:5]:  # warm caches / allocator
        planner(o)
    times = []
    fallbacks = 0
    for o in obs[5:]:
        t0 = time.perf_counter()
        _, diag = planner(o)
        times.append(1e3 * (time.perf_counter() - t0))
        fallbacks += diag["fallback"] > 0
    t = np.asarray(times)
    return {
        "median": float(np.median(t)),
        "p95": float(np.percentile(t, 95)),
        "compile_s": compile_s,
        "fallbacks": int(fallbacks),
    }


def compiled_flops(planner_name: str, cfg: MPCConfig, agent, world) -> float:
    """FLOPs of one compiled decision program as XLA's cost analysis counts them."""
    planner = make_planner(planner_name, cfg, agent, world, seed=0)
    return planner.cost_analysis(np.zeros(OBS_DIM, np.float32))["flops"]


def decision_flops(cfg: MPCConfig, agent, world) -> float:
    """FLOPs per mpc decision: ``E x FLOPs(one gradient step)`` plus the diagnostics rollout.

    XLA's cost analysis counts the body of the E-loop once whatever E is, so one gradient
    step is measured as the whole program at E=1 without diagnostics (it also holds the two
    actor calls outside the loop: ~0.1% of it) and the diagnostics rollout as the difference
    that switching it on makes.
    """
    one = dataclasses.replace(cfg, preset="none", adapt_steps=1, diagnostics=False)
    step = compiled_flops("mpc", one, agent, world)
    extra = 0.0
    if cfg.diagnostics:
        extra = compiled_flops("mpc", dataclasses.replace(one, diagnostics=True), agent, world)
        extra -= step
    return cfg.adapt_steps * step + extra


def matmul_gflops(rows: int, dtype=jnp.float32, width: int = 256, repeats: int = 256) -> float:
    """Measured throughput (GFLOP/s) of ``(rows, width) @ (width, width)`` matmuls.

    A chain of ``repeats`` products inside one jitted loop (no per-call overhead), cycling
    through 4 weight matrices (1 MiB in float32: resident in cache, as a decision's are).
    """
    w = jax.random.normal(jax.random.PRNGKey(0), (4, width, width)) / np.sqrt(width)
    w = w.astype(dtype)
    x = jnp.ones((rows, width), dtype)

    @jax.jit
    def chain(x, w):
        return jax.lax.fori_loop(0, repeats, lambda i, x: x @ w[i % 4], x)

    chain(x, w).block_until_ready()
    times = []
    for _ in range(30):
        t0 = time.perf_counter()
        chain(x, w).block_until_ready()
        times.append(time.perf_counter() - t0)
    return 2.0 * rows * width * width * repeats / float(np.median(times)) / 1e9


def machine() -> str:
    """The device the decisions ran on: the accelerator's name, else this CPU's cores and model."""
    device = jax.devices()[0]
    if device.platform != "cpu":
        return f"{device.device_kind} ({device.platform}), host {os.cpu_count()} CPU cores"
    return f"{os.cpu_count()}-core CPU, {platform.processor() or platform.machine()}"


def row(label: str, r: dict) -> str:
    return (
        f"| {label} | {r['median']:.2f} | {r['p95']:.2f} | {r['compile_s']:.1f} |"
        f" {r['fallbacks']} |"
    )


HEADER = "| configuration | median ms | p95 ms | compile s | fallbacks |\n|---|---|---|---|---|"
FLOOR_HEADER = (
    "| configuration | MFLOP per decision | matmul GFLOP/s at M rows | floor ms | median ms "
    "| latency / floor |\n|---|---|---|---|---|---|"
)
SECTIONS = ("reference", "floor", "amortized", "bf16", "grid")

# The decision before issue 14's changes: every reward-ensemble member at every imagined
# step, and the diagnostics-only rollout after the last update.
BEFORE = dict(reward_ensemble=True, diagnostics=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--decisions", type=int, default=200)
    ap.add_argument("--grid-decisions", type=int, default=60)
    ap.add_argument(
        "--sections", nargs="+", choices=SECTIONS, default=[s for s in SECTIONS if s != "grid"]
    )
    ap.add_argument(
        "--rollouts",
        type=int,
        nargs="+",
        default=[16, 64, 256, 1024],
        help="M values of the amortized section (a GPU affords 4096 and more)",
    )
    ap.add_argument("--out", type=Path, default=None, help="write the Markdown section here")
    args = ap.parse_args()

    agent = build_agent()
    world5 = build_world("diffusion", 5)
    ref = resolve(MPCConfig(preset="reference"))
    before = dataclasses.replace(ref, **BEFORE)
    now = datetime.datetime.now(datetime.UTC)
    lines = [
        "## MPC decision latency (benchmarks/bench_mpc.py)",
        "",
        f"- machine: {machine()}, jax {jax.__version__} ({jax.default_backend()}), "
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}; CPU affinity "
        f"{sorted(os.sched_getaffinity(0))}; load average at start "
        f"{' / '.join(f'{x:.1f}' for x in os.getloadavg())} (1/5/15 min; 2 cores: above 1 "
        "per core in use means other jobs shared it and the figures are inflated)",
        f"- command: `python {' '.join(sys.argv)}`",
        f"- date: {now:%Y-%m-%d %H:%M} UTC",
        "- Hopper sizes (obs 11, act 3), ReBRAC default 3x256 actor / twin 3x256 critics, "
        "world model default 3x256 denoiser + 5x(2x256) reward ensemble + 2x256 termination; "
        "random weights. Latency = one `Planner` call (jitted decision + one device_get), "
        f"{args.decisions} decisions (reference) / {args.grid_decisions} (grid) after 5 warm-up "
        "calls; compile time measured separately (ahead of time).",
    ]

    def emit(label, r):
        lines.append(row(label, r))
        print(lines[-1], flush=True)

    results: dict[str, dict] = {}
    if "reference" in args.sections or "floor" in args.sections:
        title = "### Reference budget (preset reference: Adam, E=5, M=16, H=5, diffusion 5 steps)"
        lines += ["", title, "", HEADER]
        for label, planner, cfg in [
            ("mpc before (reward ensemble, diagnostics rollout)", "mpc", before),
            ("mpc (first reward member, no diagnostics rollout)", "mpc", ref),
            ("mpc, horizon scan not unrolled", "mpc", dataclasses.replace(ref, unroll=False)),
            ("mpc, adapt last layer only", "mpc", dataclasses.replace(ref, adapt="last_layer")),
            ("action-grad", "action-grad", ref),
            ("mppi (6 iterations x (256 + 16 policy) samples, 32 elites)", "mppi", ref),
            ("none (base policy)", "none", ref),
        ]:
            if "reference" not in args.sections and planner != "mpc":
                continue
            results[label] = measure(planner, cfg, agent, world5, args.decisions)
            emit(label, results[label])

    amortized = {m: MPCConfig(preset="paper", num_rollouts=m) for m in args.rollouts}
    if "amortized" in args.sections:
        lines += [
            "",
            "### The paper's setting, amortized across real steps (E=1, weights carried), by M",
            "",
            "| world model | M | median ms | p95 ms | compile s | imagined rollouts / s |",
            "|---|---|---|---|---|---|",
        ]
        meanflow = build_world("meanflow", flow_steps=1)
        runs = [("diffusion, 5 DDPM steps", world5, m, cfg) for m, cfg in amortized.items()]
        runs += [("MeanFlow, 1 step", meanflow, m, amortized[m]) for m in args.rollouts]
        for label, world, m, cfg in runs:
            r = measure("mpc", cfg, agent, world, max(20, args.decisions // max(1, m // 64)))
            if world is world5:
                results[f"paper M={m}"] = r
            lines.append(
                f"| {label} | {m} | {r['median']:.2f} | {r['p95']:.2f} | {r['compile_s']:.1f} |"
                f" {m / r['median'] * 1e3:,.0f} |"
            )
            print(lines[-1], flush=True)

    throughput: dict[tuple[int, str], float] = {}
    if "floor" in args.sections or "bf16" in args.sections:
        for rows in sorted({16, 64, 256, 1024, *args.rollouts}):
            throughput[rows, "f32"] = matmul_gflops(rows, jnp.float32)
            if "bf16" in args.sections:
                throughput[rows, "bf16"] = matmul_gflops(rows, jnp.bfloat16)

    if "floor" in args.sections:
        lines += [
            "",
            "### Arithmetic floor (FLOPs from XLA's cost analysis / measured matmul throughput)",
            "",
            FLOOR_HEADER,
        ]
        floor_rows = [
            ("reference, before", before, "mpc before (reward ensemble, diagnostics rollout)"),
            (
                "reference, defaults",
                ref,
                "mpc (first reward member, no diagnostics rollout)",
            ),
        ]
        floor_rows += [(f"paper, M={m}", cfg, f"paper M={m}") for m, cfg in amortized.items()]
        for label, cfg, key in floor_rows:
            if key not in results:
                continue
            flops = decision_flops(resolve(cfg), agent, world5)
            gflops = throughput[resolve(cfg).num_rollouts, "f32"]
            floor_ms = flops / (gflops * 1e9) * 1e3
            median = results[key]["median"]
            lines.append(
                f"| {label} | {flops / 1e6:,.0f} | {gflops:.1f} | {floor_ms:.2f} | {median:.2f} "
                f"| {median / floor_ms:.2f} |"
            )
            print(lines[-1], flush=True)

    if "bf16" in args.sections:
        lines += [
            "",
            "### float32 vs bfloat16 matmul throughput (GFLOP/s, (rows, 256) @ (256, 256))",
            "",
            "| rows | float32 | bfloat16 | bf16 / f32 |",
            "|---|---|---|---|",
        ]
        for rows in (16, 64, 256, 1024):
            f32, bf16 = throughput[rows, "f32"], throughput[rows, "bf16"]
            lines.append(f"| {rows} | {f32:.1f} | {bf16:.1f} | {bf16 / f32:.2f} |")
            print(lines[-1], flush=True)

    if "grid" in args.sections:
        n = args.grid_decisions
        lines += ["", "### Grid (mpc; one knob varied from the reference)", "", HEADER]
        for e in (1, 2, 5, 10):
            emit(
                f"E={e}", measure("mpc", dataclasses.replace(ref, adapt_steps=e), agent, world5, n)
            )
        for m in (4, 16, 64):
            emit(
                f"M={m}", measure("mpc", dataclasses.replace(ref, num_rollouts=m), agent, world5, n)
            )
        for h in (1, 3, 5, 10):
            emit(f"H={h}", measure("mpc", dataclasses.replace(ref, horizon=h), agent, world5, n))
        for k in (1, 2, 5, 10, 20):
            emit(
                f"diffusion {k} denoising steps",
                measure("mpc", ref, agent, build_world("diffusion", k), n),
            )
        for k in (1, 2, 3, 4):
            emit(
                f"flow matching {k} Euler steps",
                measure("mpc", ref, agent, build_world("flow", flow_steps=k), n),
            )
    lines.append("")
    lines.append(f"- load average at the end: {' / '.join(f'{x:.1f}' for x in os.getloadavg())}")
    text = "\n".join(lines) + "\n"
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
