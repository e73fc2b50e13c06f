"""ReBRAC score parity: CORL's JAX ReBRAC and mpcdwm's, same data, budget, seeds and episodes.

For every seed, trains

- **mpcdwm**: ``mpcdwm train-agent --agent rebrac`` (the published preset for the dataset),
- **CORL**: the update functions of CORL's ``algorithms/offline/rebrac.py`` (its networks,
  losses, ``update_td3`` / ``update_td3_no_targets`` alternating every ``policy_freq``
  updates, its Adam train states), with the same preset values (betas, learning rates,
  batch), driven by mpcdwm's resumable training loop (``mpcdwm.train.fit``: uniform batch
  sampling, chunked ``lax.scan``, atomic checkpoints, evaluation every ``--eval-every``),

then evaluates both final policies on the same ``--episodes`` episode seeds
(``mpcdwm.evaluate.episode_seed``) with one evaluation loop. The data are the arrays
mpcdwm's ReBRAC trains on (raw states, raw rewards, actions in ``[-1, 1]``). Only the
update rule and the networks differ, which is what parity is about.

Prints each implementation's normalized score, mean [bootstrap 95% CI] (n = seeds x
episodes; ``mpcdwm.report``'s statistics), and the difference CORL - mpcdwm paired on
episode seeds. Results (one JSON per implementation and seed, plus the training curves)
go to ``--results``; checkpoints stay in ``--out``. Finished runs are skipped, so a rerun
with more ``--seeds`` adds seeds.

CORL's module is imported with its training-only dependencies stubbed (see
``bench_agents.py``); it needs ``chex`` importable (``PYTHONPATH`` is enough).

    PYTHONPATH=/path/with/chex python benchmarks/bench_rebrac_parity.py \\
        data/halfcheetah-medium-v0 --corl CORL/algorithms/offline/rebrac.py \\
        --seeds 0 1 2 --steps 100000 --batch-size 256
"""

from __future__ import annotations

import argparse
import functools
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mpcdwm.agents import TrainAgentConfig, train_agent
from mpcdwm.agents.presets import agent_config
from mpcdwm.agents.trained import load_agent
from mpcdwm.agents.transform import prepare_data
from mpcdwm.data import Dataset, load_dataset
from mpcdwm.envs import make_env
from mpcdwm.evaluate import episode_seed
from mpcdwm.report import mean_estimate, paired_gain
from mpcdwm.rollout import EpisodeStats, policy_decider, run_episodes
from mpcdwm.train import fit

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_agents import (  # noqa: E402
    _git_commit,
    _load_corl,
    corl_batch,
    corl_train_states,
    corl_updates,
)
from train_agents import finished  # noqa: E402

CURVE_SEED = TrainAgentConfig().eval_seed
RESULTS = Path(__file__).resolve().parent / "results" / "rebrac_parity"


def corl_update(m: Any, config: Any):
    """``(state, batch, key) -> (state, metrics)`` running CORL's update functions."""
    full, critic_only = corl_updates(m, config)
    names = ["critic_loss", "q_min", "actor_loss", "bc_mse_policy", "bc_mse_random", "action_mse"]

    def update(state: dict, batch: dict, key: jax.Array) -> tuple[dict, dict]:
        args = dict(
            key=key,
            actor=state["actor"],
            critic=state["critic"],
            batch=corl_batch(batch),
            metrics=m.Metrics.create(names),
        )
        # As CORL's loop: the full update (actor + targets) on every policy_freq-th step.
        _, actor, critic, metrics = jax.lax.cond(
            state["step"] % config.policy_freq == 0,
            functools.partial(full, **args),
            functools.partial(critic_only, **args),
        )
        total, count = metrics.accumulators["critic_loss"]  # (1,) each
        return (
            {"actor": actor, "critic": critic, "step": state["step"] + 1},
            {"critic_loss": (total / jnp.maximum(count, 1))[0]},
        )

    return update


def train_corl(
    m: Any, args: argparse.Namespace, dataset: Dataset, seed: int, out: Path
) -> tuple[Any, Any]:
    """Train CORL's ReBRAC on ``dataset`` (resumable); returns (actor params, act function)."""
    env = make_env(dataset.env_id)
    low, high = env.action_space.low, env.action_space.high
    env.close()
    config = agent_config(_ours_config(args, seed, out), dataset.name)
    data, transform = prepare_data(config, dataset, low, high)
    init_key, fit_key = jax.random.split(jax.random.key(seed))
    actor, critic = corl_train_states(
        m, init_key, dataset.obs_dim, dataset.act_dim, config.hidden_dims,
        config.actor_layer_norm, config.critic_layer_norm, config.actor_lr, config.critic_lr,
    )  # fmt: skip
    state = {"actor": actor, "critic": critic, "step": jnp.zeros((), jnp.int32)}
    apply_actor = actor.apply_fn
    mid, half = jnp.asarray(transform.act_mid), jnp.asarray(transform.act_half)

    def act(params: Any, obs: jax.Array) -> jax.Array:
        return mid + half * apply_actor(params, obs)  # CORL's actor ends in tanh

    def evaluate(train_state: dict) -> dict[str, float]:
        # The episodes train-agent's learning curve uses (its default eval_seed).
        params = train_state["actor"].params
        stats = _episodes(dataset.env_id, act, params, CURVE_SEED, args.eval_episodes)
        returns = np.asarray(stats.returns)
        return {"eval_return": float(returns.mean()),
                "eval_score": float(dataset.normalized_score(returns).mean())}  # fmt: skip

    meta = {"kind": "corl-rebrac", "config": {"dataset": dataset.name, "seed": seed,
            "batch_size": config.batch_size, "agent_config": repr(config)}}  # fmt: skip
    state, _ = fit(
        name="corl rebrac",
        update=corl_update(m, config),
        state=state,
        data=data,
        key=fit_key,
        steps=args.steps,
        batch_size=config.batch_size,
        out_dir=out,
        meta=meta,
        eval_fn=evaluate,
        eval_every=args.eval_every,
        progress=not args.no_progress,
    )
    return state["actor"].params, act


def _ours_config(args: argparse.Namespace, seed: int, out: Path) -> TrainAgentConfig:
    return TrainAgentConfig(
        dataset=str(args.dataset),
        out=out,
        agent="rebrac",
        steps=args.steps,
        seed=seed,
        batch_size=args.batch_size,
        eval_every=args.eval_every,
        eval_episodes=args.eval_episodes,
        progress=not args.no_progress,
    )


def _episodes(env_id: str, act: Any, params: Any, first: int, episodes: int) -> EpisodeStats:
    """``episodes`` episodes reset with seeds ``first, first + 1, ...``."""
    return run_episodes(env_id, policy_decider(act, params), episodes=episodes, seed=first)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dataset", type=Path, help="a dataset folder made by `mpcdwm collect`")
    p.add_argument("--corl", required=True, help="path to CORL's algorithms/offline/rebrac.py")
    p.add_argument("--corl-commit", default=None, help="CORL's commit, if not a git checkout")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=100_000)
    p.add_argument("--batch-size", type=int, default=None, help="default: the preset's (1024)")
    p.add_argument("--eval-every", type=int, default=10_000, help="learning-curve evaluations")
    p.add_argument("--eval-episodes", type=int, default=10, help="per learning-curve point")
    p.add_argument("--episodes", type=int, default=10, help="final evaluation episodes")
    p.add_argument("--out", type=Path, default=Path("runs/rebrac_parity"))
    p.add_argument("--results", type=Path, default=RESULTS)
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args()

    m = _load_corl(args.corl)
    dataset = load_dataset(str(args.dataset))
    results = args.results / args.dataset.name
    scores: dict[str, dict[int, list[float]]] = {"mpcdwm": {}, "CORL": {}}
    distances: dict[str, dict[int, list[float]]] = {"mpcdwm": {}, "CORL": {}}  # goal tasks
    for seed in args.seeds:
        for impl in ("mpcdwm", "CORL"):
            run = args.out / args.dataset.name / impl / f"seed{seed}"
            record = results / impl / f"seed{seed}.json"
            if record.exists() and finished(run, args.steps):
                saved = json.loads(record.read_text())
                if saved["steps"] == args.steps and saved["episodes"] == args.episodes:
                    scores[impl][seed] = saved["scores"]
                    if saved.get("goal_distances"):
                        distances[impl][seed] = saved["goal_distances"]
                    continue
            if impl == "mpcdwm":
                train_agent(_ours_config(args, seed, run))
                agent = load_agent(run)
                act, params = agent.act, agent.actor_params
            else:
                params, act = train_corl(m, args, dataset, seed, run)
            # The episode seeds `mpcdwm evaluate --seed SEED` uses.
            stats = _episodes(dataset.env_id, act, params, episode_seed(seed, 0), args.episodes)
            returns = stats.returns
            score = dataset.normalized_score(np.asarray(returns)).tolist()
            scores[impl][seed] = score
            record.parent.mkdir(parents=True, exist_ok=True)
            record.write_text(json.dumps({
                "impl": impl, "dataset": dataset.name, "seed": seed, "steps": args.steps,
                "batch_size": args.batch_size, "episodes": args.episodes,
                "episode_seeds": [episode_seed(seed, i) for i in range(args.episodes)],
                "returns": returns, "scores": score,
                "goal_distances": stats.goal_distances,  # empty off goal tasks
            }, indent=1))  # fmt: skip
            shutil.copy(run / "metrics.jsonl", results / impl / f"seed{seed}_metrics.jsonl")
            if stats.goal_distances:
                distances[impl][seed] = stats.goal_distances
            print(f"  {impl} seed {seed}: {np.mean(score):.1f}", file=sys.stderr)

    print(f"Dataset: {args.dataset} ({dataset.name}); {args.steps} updates, batch "
          f"{args.batch_size or 'preset'}; CORL {args.corl} at commit "
          f"{args.corl_commit or _git_commit(args.corl)}")  # fmt: skip
    print("Command: python " + " ".join(sys.argv))
    print()
    print("| implementation | normalized score, mean [95% CI] (n = seeds x episodes) | per seed |")
    print("|---|---|---|")
    est = {}
    for impl, per_seed in scores.items():
        est[impl] = mean_estimate(per_seed)
        seeds = ", ".join(f"{np.mean(v):.1f}" for _, v in sorted(per_seed.items()))
        print(f"| {impl} | {est[impl].text()} | {seeds} |")
    diff = paired_gain(scores["CORL"], scores["mpcdwm"])
    overlap = est["CORL"].ci_low <= est["mpcdwm"].ci_high and (
        est["mpcdwm"].ci_low <= est["CORL"].ci_high
    )
    print(f"| CORL - mpcdwm (paired on episode seeds) | {diff.text(signed=True)} | |")
    for impl, per_seed in distances.items():
        if per_seed:  # a goal task: how far from the goal the episodes end
            print(f"| {impl}: final distance to the goal | {mean_estimate(per_seed).text()} | |")
    print()
    print(f"CIs overlap: {'yes' if overlap else 'no'}")


if __name__ == "__main__":
    main()
