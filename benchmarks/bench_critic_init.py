"""Does TD3+BC's critic stay bounded? Q statistics per network variant on one dataset.

Trains TD3+BC (``mpcdwm.agents.rebrac.td3bc_config``) with one network variant at a
time, no evaluation episodes, and every ``--every`` updates prints the critic on a
fixed probe of 20k dataset states: the mean and max of ``min_i Q_i(s, pi(s))``, the
mean of ``Q(s, a_data)``, the 99th percentile of ``Q(s, pi(s)) - Q(s, a_data)`` and the
critic loss. A bounded critic plateaus near the data's discounted return-to-go (printed
first, from the dataset's own rewards); a diverging one keeps climbing at its maximum
first. Variants:

* ``flax``: Flax's default init (LeCun-normal kernels, zero biases), what TD3+BC used
  here before;
* ``torch``: PyTorch's ``nn.Linear`` default, as TD3+BC's reference implementation;
* ``corl``: CORL's ReBRAC init (biases 0.1, small last layers), no LayerNorm;
* ``flax-ln``: Flax's init with LayerNorm in the critics (ReBRAC's stabiliser).

    python benchmarks/bench_critic_init.py data/walker2d-medium-v0 \
        --variants flax torch corl flax-ln --steps 100000

One compile per variant; ~100 updates/s on one core of the 2-core dev machine.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from mpcdwm.agents import rebrac
from mpcdwm.data import batches_to_device, load_dataset, return_to_go
from mpcdwm.train import make_chunk

VARIANTS = {
    "flax": {"network": "flax"},
    "torch": {"network": "torch"},
    "corl": {"network": "corl"},
    "flax-ln": {"network": "flax", "critic_layer_norm": True},
}


def probe_rows(dataset, count: int = 20_000) -> np.ndarray:
    """The fixed states the critic is read on (the same for every variant and run)."""
    return np.asarray(jax.random.randint(jax.random.key(7), (count,), 0, len(dataset)))


def run_variant(
    name: str, data: dict, rows: np.ndarray, steps: int, every: int, seed: int
) -> list[dict]:
    """Train one variant on ``data`` (:func:`batches_to_device`, normalised states) and read
    its critic on the probe ``rows`` every ``every`` updates."""
    cfg = rebrac.td3bc_config(**VARIANTS[name])
    obs_dim, act_dim = data["observations"].shape[1], data["actions"].shape[1]
    state = rebrac.init(cfg, jax.random.key(seed), obs_dim, act_dim)
    chunk = make_chunk(rebrac.make_update(cfg), cfg.batch_size, every)
    obs, act = data["observations"][rows], data["actions"][rows]
    key = jax.random.key(seed + 1)
    records, start = [], time.perf_counter()
    for i in range(steps // every):
        key, sub = jax.random.split(key)
        state, metrics = chunk(state, data, sub)
        q_pi = rebrac.critic(cfg, state.critic, obs, rebrac.act(cfg, state.actor, obs)).min(0)
        q_data = rebrac.critic(cfg, state.critic, obs, act).min(0)
        rec = {
            "variant": name,
            "step": (i + 1) * every,
            "seconds": round(time.perf_counter() - start, 1),
            "critic_loss": float(metrics["critic_loss"]),
            "q_pi_mean": float(q_pi.mean()),
            "q_pi_max": float(q_pi.max()),
            "q_data_mean": float(q_data.mean()),
            "gap_p99": float(jnp.percentile(q_pi - q_data, 99)),
        }
        records.append(rec)
        print(
            f"{name:8s} {rec['step']:>7d}  loss {rec['critic_loss']:10.3g}  "
            f"Q(s,pi) mean {rec['q_pi_mean']:9.4g} max {rec['q_pi_max']:9.4g}  "
            f"Q(s,a) mean {rec['q_data_mean']:9.4g}  gap p99 {rec['gap_p99']:8.3g}",
            flush=True,
        )
    return records


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("dataset", help="Minari dataset folder or id, or a D4RL .hdf5 file")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--steps", type=int, default=100_000)
    p.add_argument("--every", type=int, default=5_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="write the records here (JSON)")
    args = p.parse_args()
    dataset = load_dataset(args.dataset)
    ends = np.logical_or(dataset.terminals, dataset.timeouts)
    rows = probe_rows(dataset)
    rtg = return_to_go(dataset.rewards, 0.99, ends)[rows]
    print(
        f"{dataset.name}: discounted return-to-go on the probe states, mean {rtg.mean():.1f}, "
        f"99th percentile {np.percentile(rtg, 99):.1f}, max {rtg.max():.1f} "
        "(timeouts cut it short, so a slight underestimate)"
    )
    # Every variant is TD3+BC, so all train on the same normalised copy of the data.
    data = batches_to_device(dataset, dataset.norm_stats(normalize_obs=True))
    records = []
    for name in args.variants:
        records += run_variant(name, data, rows, args.steps, args.every, args.seed)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        summary = {
            "dataset": dataset.name,
            "seed": args.seed,
            "return_to_go": {"mean": float(rtg.mean()), "p99": float(np.percentile(rtg, 99))},
            "load_avg_1m_at_end": os.getloadavg()[0],
            "records": records,
        }
        args.out.write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
