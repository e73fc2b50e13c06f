"""Does the imagined gradient point uphill in the real environment? (issue 13 diagnostic)

MPCwDWM moves the policy's weights along the gradient of an *imagined* objective: the
world model's H-step return plus the critic's value at the horizon. Where the adaptation
loses real return (ReBRAC bases, large steps), either the world model's gradient is wrong,
or it is right about an objective that is the wrong one (a short horizon closed by a critic
that over-rates off-data actions). This benchmark tells the two apart without any planner
noise in between: at real states the base policy visits, MuJoCo is reset to the exact
simulator state and the same parameter change is scored four ways.

For each state ``s`` (every ``--stride``-th step of base-policy episodes) and step size
``lr``, the candidate weights are ``theta0 + lr * g`` with ``g`` the gradient of the imagined
objective at ``s`` (the paper setting's first step: plain gradient, M noise draws, H steps),
and the **placebo** ``theta0 + c * r``: a random direction ``r`` scaled so that the action at
``s`` moves as much (the control of ``bench_adaptation.py``). Gains over ``theta0``, paired
per state:

* ``imagined``: the imagined objective on fresh noise (what the planner believes);
* ``real h``: the same objective in the real simulator: h real steps with the candidate
  policy, real rewards and termination, the critic at the h-th state, for h = H (the world
  model replaced by the truth; the critic stays) and longer h (``--real-horizons``: does an
  improvement of the H-step objective survive when more of the future is real?);
* ``first action``: the real discounted return over ``--real-steps`` steps when only the
  first action comes from the candidate and the base policy acts after it (what one
  decision of the planner changes; no critic);
* ``policy``: the real discounted return over ``--real-steps`` steps with the candidate
  policy throughout (what weights carried across steps change; no critic).

``imagined`` > 0 with ``real H`` <= 0 means the world model's gradient is wrong; ``real H`` > 0
with the longer horizons <= 0 means the world model is right about an objective whose critic
or horizon misleads. The long real returns are chaotic (a 0.001 action change moves a
200-step HalfCheetah return by +-10), so they need many states. Each gain is the mean over
states with a bootstrap 95% CI; a gain counts beyond its placebo's.

    python benchmarks/bench_gradient_fidelity.py data/hopper-medium-v0 --agent rebrac --seed 0
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from seed_runs import CACHE, load_seed_runs

from mpcdwm.envs import health_rule, make_env
from mpcdwm.mpc import MPCConfig, make_imagine, random_step, resolve
from mpcdwm.report import bootstrap_ci

RESULTS = Path(__file__).resolve().parent / "results" / "gradient_fidelity"


def visited_states(env, act, params, episodes: int, stride: int, seed: int) -> list[tuple]:
    """``(obs, qpos, qvel)`` at every ``stride``-th step of ``episodes`` base-policy episodes."""
    states = []
    for ep in range(episodes):
        obs, _ = env.reset(seed=seed * 1000 + ep)
        done, t = False, 0
        while not done:
            if t % stride == 0:
                data = env.unwrapped.data
                states.append((obs.copy(), data.qpos.copy(), data.qvel.copy()))
            obs, _, term, trunc, _ = env.step(np.asarray(act(params, obs)))
            done, t = term or trunc, t + 1
    return states


def real_returns(
    env, act, first: object, then: object, qpos, qvel, gamma: float, steps: int,
    critic=None, critic_at: tuple[int, ...] = (),
) -> dict:  # fmt: skip
    """Discounted real returns of ONE rollout from the simulator state ``(qpos, qvel)``: the
    first action from weights ``first``, the rest from ``then``. ``{"return": the return over
    ``steps`` steps, h: the return over h steps closed by ``critic(obs_h, then)`` for h in
    ``critic_at``}``; an episode that ends first keeps its return, without the critic."""
    u = env.unwrapped  # no time limit: the horizons are ours
    u.set_state(qpos, qvel)
    obs, ret, disc, out = u._get_obs(), 0.0, 1.0, {}
    for n in range(1, max((steps, *critic_at)) + 1):
        obs, reward, term, _, _ = u.step(np.asarray(act(first if n == 1 else then, obs)))
        ret += disc * float(reward)
        disc *= gamma
        if n == steps:
            out["return"] = ret
        if n in critic_at and not term:
            out[n] = ret + disc * float(critic(obs, then))
        if term:
            break
    return {k: out.get(k, ret) for k in ("return", *critic_at)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("dataset", type=Path, help="dataset folder, e.g. data/hopper-medium-v0")
    p.add_argument("--agent", default="rebrac", choices=["rebrac", "iql", "td3bc"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--episodes", type=int, default=3, help="base-policy episodes to draw from")
    p.add_argument("--stride", type=int, default=10, help="keep every stride-th visited state")
    p.add_argument("--states", type=int, default=48, help="at most this many states")
    p.add_argument("--lr", type=float, nargs="+", default=[5e-7, 5e-6, 5e-5])
    p.add_argument("--num-rollouts", type=int, default=16, help="M")
    p.add_argument("--termination", default="learned", choices=["learned", "rule", "smooth-rule"])
    p.add_argument("--real-steps", type=int, default=200, help="horizon of the real returns")
    p.add_argument(
        "--real-horizons",
        type=int,
        nargs="+",
        default=[25, 100],
        help="critic-closed real objectives beyond H (H itself is always measured)",
    )
    p.add_argument("--agents", type=Path, default=CACHE / "agents_d4rl")
    p.add_argument("--world-models", type=Path, default=CACHE / "wm_d4rl")
    p.add_argument("--results", type=Path, default=RESULTS)
    args = p.parse_args()

    t_start = time.perf_counter()
    name, agent, world, _ = load_seed_runs(
        args.dataset, args.agent, args.seed, args.agents, args.world_models
    )
    env = make_env(agent.env_id)
    cfg = resolve(
        MPCConfig(preset="paper", num_rollouts=args.num_rollouts, termination=args.termination)
    )
    imagine = make_imagine(cfg, agent, world, health_rule(env))
    models = {"world": world.params, "critic": agent.critic_params, "ensemble": ()}
    theta0 = agent.actor_params
    M, H = cfg.num_rollouts, cfg.horizon
    horizons = sorted({H, *args.real_horizons})
    measures = ("imagined", *(f"real {h}" for h in horizons), "first action", "policy")

    act = jax.jit(agent.act)
    critic_value = jax.jit(
        lambda obs, psi: agent.critic(agent.critic_params, obs, agent.act(psi, obs))
    )

    def objective(psi, obs, noise):
        return imagine(lambda s: agent.act(psi, s), models, obs, noise)[0]  # (M,)

    grad_fn = jax.jit(jax.grad(lambda psi, obs, noise: objective(psi, obs, noise).mean()))
    imagined = jax.jit(objective)

    @jax.jit
    def placebo(psi, obs, target, key):
        """``psi`` moved along a random direction by ``target`` action change at ``obs``."""
        return random_step(lambda q: agent.act(q, obs), psi, target, key)

    def moved(g, lr):
        return jax.tree_util.tree_map(lambda x, d: x + lr * d, theta0, g)

    def real(psi, qpos, qvel) -> dict[str, float]:
        """The real measures of ``psi`` from ``(qpos, qvel)``: two rollouts (``psi`` throughout;
        its first action only)."""
        through = real_returns(
            env, act, psi, psi, qpos, qvel, agent.gamma, args.real_steps,
            critic_value, tuple(horizons),
        )  # fmt: skip
        first = real_returns(env, act, psi, theta0, qpos, qvel, agent.gamma, args.real_steps)
        return {
            **{f"real {h}": through[h] for h in horizons},
            "first action": first["return"],
            "policy": through["return"],
        }

    states = visited_states(env, act, theta0, args.episodes, args.stride, args.seed)
    rng = np.random.default_rng(args.seed)
    if len(states) > args.states:
        states = [states[i] for i in sorted(rng.choice(len(states), args.states, replace=False))]
    key = jax.random.PRNGKey(args.seed)
    gains = {(lr, d, m): [] for lr in args.lr for d in ("gradient", "placebo") for m in measures}
    action_change = {lr: [] for lr in args.lr}
    for obs, qpos, qvel in states:
        key, k_grad, k_fresh, k_rand = jax.random.split(key, 4)
        obs_j = jnp.asarray(obs, jnp.float32)
        noise = jax.random.normal(k_grad, (M, H, *world.noise_shape), jnp.float32)
        fresh = jax.random.normal(k_fresh, noise.shape, jnp.float32)
        g = grad_fn(theta0, obs_j, noise)
        a0 = np.asarray(act(theta0, obs_j))
        base = {"imagined": np.asarray(imagined(theta0, obs_j, fresh)), **real(theta0, qpos, qvel)}
        for lr in args.lr:
            theta = moved(g, lr)
            change = float(np.linalg.norm(np.asarray(act(theta, obs_j)) - a0))
            action_change[lr].append(change)
            candidates = {
                "gradient": theta,
                "placebo": placebo(theta0, obs_j, jnp.float32(change), k_rand),
            }
            for d, psi in candidates.items():
                score = {
                    "imagined": float(
                        np.mean(np.asarray(imagined(psi, obs_j, fresh)) - base["imagined"])
                    ),
                    **real(psi, qpos, qvel),
                }
                for m in measures:
                    gain = score[m] if m == "imagined" else score[m] - base[m]
                    gains[(lr, d, m)].append(gain)
    env.close()

    def estimate(xs: list[float]) -> dict[str, float]:
        x = np.asarray(xs)
        lo, hi = bootstrap_ci([x], np.mean)
        return {"mean": float(x.mean()), "ci": [lo, hi], "positive": float((x > 0).mean())}

    rows = []
    for lr in args.lr:
        for d in ("gradient", "placebo"):
            row = {"lr": lr, "direction": d, "action_change": float(np.mean(action_change[lr]))}
            row.update({m: estimate(gains[(lr, d, m)]) for m in measures})
            # Per-state gains, in state order, so directions pair state by state later.
            row["per_state"] = {m: [float(g) for g in gains[(lr, d, m)]] for m in measures}
            rows.append(row)
    record = {
        "dataset": name,
        "agent": args.agent,
        "seed": args.seed,
        "states": len(states),
        "num_rollouts": M,
        "horizon": H,
        "termination": args.termination,
        "real_steps": args.real_steps,
        "measures": list(measures),
        "gamma": agent.gamma,
        "rows": rows,
        "command": "python " + " ".join(sys.argv),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__} on "
        f"{jax.default_backend()}",
        "load_avg_1m_at_end": os.getloadavg()[0],
        "seconds": round(time.perf_counter() - t_start, 1),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }
    args.results.mkdir(parents=True, exist_ok=True)
    stem = f"{name}-{args.agent}-seed{args.seed}" + (
        "" if args.termination == "learned" else f"-{args.termination}"
    )
    (args.results / f"{stem}.json").write_text(json.dumps(record, indent=1) + "\n")
    text = to_markdown(record)
    (args.results / f"{stem}.md").write_text(text)
    print(text)


def to_markdown(record: dict) -> str:
    measures = record["measures"]

    def cell(e: dict) -> str:
        lo, hi = e["ci"]
        return f"{e['mean']:+.2f} [{lo:+.2f}, {hi:+.2f}] ({100 * e['positive']:.0f}% > 0)"

    lines = [
        f"# Gradient fidelity: {record['dataset']}, {record['agent']} seed {record['seed']}",
        "",
        f"{record['states']} real states visited by the base policy; M={record['num_rollouts']}, "
        f"H={record['horizon']}, imagined termination {record['termination']}; real h: h real "
        "steps closed by the critic; first action / policy: real returns over "
        f"{record['real_steps']} steps (gamma {record['gamma']}). Gains over the base weights in "
        "return units, mean over states [bootstrap 95% CI] (share of states with a gain > 0).",
        "",
        f"`{record['command']}` ({record['date']}, {record['machine']}, load "
        f"{record['load_avg_1m_at_end']:.1f}, {record['seconds'] / 60:.1f} min)",
        "",
        "| lr | direction | action change | " + " | ".join(measures) + " |",
        "|---|---|---|" + "---|" * len(measures),
    ]
    for r in record["rows"]:
        cells = " | ".join(cell(r[m]) for m in measures)
        lines.append(f"| {r['lr']:g} | {r['direction']} | {r['action_change']:.3f} | {cells} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
