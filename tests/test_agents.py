"""Offline agents on real data: losses, bounds, learning, checkpoints, resume, bad input.

The data come from the real InvertedPendulum-v5 (MuJoCo through Gymnasium): a
stabilising linear controller with Gaussian noise and 30% uniformly random
actions (mean episode return about 35 of a possible 1000), written to a
D4RL-format HDF5 file and read back through ``mpcdwm.data.load_dataset``.
Networks are tiny so the whole file runs in well under a minute.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mpcdwm.agents import (
    TrainAgentConfig,
    agent_config,
    iql,
    load_agent,
    prepare_data,
    rebrac,
    train_agent,
)
from mpcdwm.checkpoint import CheckpointError, load_checkpoint
from mpcdwm.data import load_dataset
from mpcdwm.rollout import policy_decider, run_episodes
from mpcdwm.train import make_chunk

ENV_ID = "InvertedPendulum-v5"
SMALL = (64, 64)


@pytest.fixture(scope="module")
def data_path(pendulum_data) -> Path:
    return pendulum_data


@pytest.fixture(scope="module")
def dataset(data_path):
    return load_dataset(str(data_path))


@pytest.fixture(scope="module")
def td3bc_run(data_path, tmp_path_factory) -> Path:
    """One real TD3+BC training (3000 updates, 2x64) with evaluation at the end."""
    cfg = TrainAgentConfig(
        dataset=str(data_path),
        agent="td3bc",
        steps=3000,
        out=tmp_path_factory.mktemp("runs") / "td3bc",
        chunk=1000,
        eval_every=3000,
        eval_episodes=5,
        hidden_dims=SMALL,
        progress=False,
    )
    return train_agent(cfg)


def _last_metrics(run: Path) -> dict:
    return json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])


# --------------------------------------------------------------------------- presets


def test_published_presets():
    cfg = rebrac.rebrac_preset("hopper-medium-replay-v2")
    assert (cfg.actor_bc_coef, cfg.critic_bc_coef) == (0.05, 0.5)
    assert (cfg.batch_size, cfg.gamma, cfg.actor_lr, cfg.critic_layer_norm) == (1024, 0.99, 1e-3, 1)
    # Minari and mpcdwm names map to the same table entries.
    assert rebrac.rebrac_preset("mujoco/walker2d/medium-v0").actor_bc_coef == 0.05
    assert rebrac.rebrac_preset("mpcdwm/hopper-medium-expert-v0").actor_bc_coef == 0.1
    assert rebrac.dataset_key("mpcdwm/hopper-medium-replay-v0") == "hopper-medium-replay"
    maze = rebrac.rebrac_preset("D4RL/antmaze/large-diverse-v1")
    assert (maze.gamma, maze.batch_size, maze.critic_lr, maze.reward_scale) == (
        0.999,
        256,
        5e-5,
        100.0,
    )
    assert (maze.actor_bc_coef, maze.critic_bc_coef) == (0.002, 0.002)
    unknown = rebrac.rebrac_preset("my-robot-data")
    assert (unknown.actor_bc_coef, unknown.critic_bc_coef) == rebrac.DEFAULT_BETAS
    td3bc = rebrac.td3bc_config()
    assert td3bc.critic_bc_coef == 0 and td3bc.actor_bc_coef == pytest.approx(1 / 2.5)
    assert td3bc.normalize_obs and not td3bc.critic_layer_norm and td3bc.normalize_q
    td3 = rebrac.td3_config()
    assert td3.actor_bc_coef == td3.critic_bc_coef == 0 and not td3.normalize_q
    maze_iql = iql.iql_preset("antmaze-umaze-v2")
    assert (maze_iql.expectile, maze_iql.temperature, maze_iql.reward_shift) == (0.9, 10.0, -1.0)
    assert iql.iql_preset("hopper-medium-v2").normalize_reward


def test_cli_overrides_reach_the_agent_config():
    cfg = TrainAgentConfig(
        dataset="x", actor_bc_coef=0.3, hidden_dims=(8,), agent_set=("policy_noise=0.1",)
    )
    got = agent_config(cfg, "hopper-medium-v2")
    assert (got.actor_bc_coef, got.critic_bc_coef, got.hidden_dims, got.policy_noise) == (
        0.3,
        0.01,
        (8,),
        0.1,
    )
    with pytest.raises(ValueError, match="expectile"):
        agent_config(dataclasses.replace(cfg, expectile=0.8), "hopper-medium-v2")
    with pytest.raises(ValueError, match="FIELD=VALUE"):
        agent_config(dataclasses.replace(cfg, agent_set=("no_such_field=1",)), "x")
    with pytest.raises(ValueError, match="not a valid float"):
        agent_config(dataclasses.replace(cfg, agent_set=("tau=fast",)), "x")


# --------------------------------------------------------------------------- losses


def _device_data(config, dataset):
    data, _ = prepare_data(config, dataset, np.full(1, -3.0), np.full(1, 3.0))
    return data


@pytest.mark.parametrize(
    "config",
    [
        rebrac.rebrac_config(hidden_dims=SMALL, batch_size=256, critic_bc_coef=0.1),
        rebrac.td3_config(hidden_dims=SMALL),
    ],
    ids=["rebrac", "td3"],
)
def test_td3_family_losses_fall_on_real_data(config, dataset):
    data = _device_data(config, dataset)
    state = rebrac.init(config, jax.random.key(0), dataset.obs_dim, dataset.act_dim)
    fixed = {k: v[:512] for k, v in data.items()}
    key = jax.random.key(1)
    before, _ = rebrac.critic_loss(config, state.critic, state, fixed, key)
    run = make_chunk(rebrac.make_update(config), config.batch_size, 400)
    state, metrics = run(state, data, jax.random.key(2))
    after, _ = rebrac.critic_loss(config, state.critic, state, fixed, key)
    assert int(state.step) == 400
    assert all(np.isfinite(float(v)) for v in metrics.values())
    assert float(after) < 0.5 * float(before)
    # The actor was updated every policy_freq steps and moved off its init.
    assert float(metrics["actor_loss"]) != 0.0
    a = rebrac.act(config, state.actor, data["observations"][:64])
    assert a.shape == (64, 1) and bool(jnp.all(jnp.abs(a) <= 1.0))


def test_rebrac_critic_penalty_is_beta2_times_next_action_gap(dataset):
    """The target Q drops by exactly gamma (1 - done) beta2 ||a~' - a'_data||^2."""
    base = rebrac.rebrac_config(hidden_dims=SMALL, critic_bc_coef=0.0)
    data = _device_data(base, dataset)
    batch = {k: v[:256] for k, v in data.items()}
    state = rebrac.init(base, jax.random.key(0), dataset.obs_dim, dataset.act_dim)
    key = jax.random.key(3)
    _, m0 = rebrac.critic_loss(base, state.critic, state, batch, key)
    penalised = dataclasses.replace(base, critic_bc_coef=2.0)
    _, m2 = rebrac.critic_loss(penalised, state.critic, state, batch, key)
    next_act = rebrac.act(base, state.actor_target, batch["next_observations"])
    noise = jnp.clip(0.2 * jax.random.normal(key, next_act.shape), -0.5, 0.5)
    gap = jnp.square(jnp.clip(next_act + noise, -1, 1) - batch["next_actions"]).sum(-1)
    expected = (base.gamma * (1 - batch["dones"]) * 2.0 * gap).mean()
    assert float(m0["target_q"] - m2["target_q"]) == pytest.approx(float(expected), rel=1e-4)
    assert float(expected) > 0


def test_rebrac_actor_bc_term_pulls_policy_to_data(dataset):
    """A large beta1 makes the actor imitate the data far more closely than beta1 = 0."""
    errors = []
    for beta1 in (0.0, 10.0):
        config = rebrac.rebrac_config(hidden_dims=SMALL, batch_size=256, actor_bc_coef=beta1)
        data = _device_data(config, dataset)
        state = rebrac.init(config, jax.random.key(0), dataset.obs_dim, dataset.act_dim)
        run = make_chunk(rebrac.make_update(config), 256, 400)
        state, _ = run(state, data, jax.random.key(4))
        pi = rebrac.act(config, state.actor, data["observations"])
        errors.append(float(jnp.square(pi - data["actions"]).mean()))
    # 30% of the data actions are uniform noise, so the error cannot go near 0.
    assert errors[1] < 0.8 * errors[0], errors


def test_iql_losses_fall_and_expectile_is_asymmetric(dataset):
    config = iql.IQLConfig(hidden_dims=SMALL)
    data, transform = prepare_data(config, dataset, np.full(1, -3.0), np.full(1, 3.0))
    returns = dataset.episode_returns()
    assert transform.stats.reward_scale == pytest.approx(1000 / (returns.max() - returns.min()))
    np.testing.assert_allclose(
        np.asarray(data["rewards"]), dataset.rewards * transform.stats.reward_scale, rtol=1e-6
    )
    u = jnp.array([-1.0, 2.0])
    assert float(iql.expectile_loss(u, 0.7)) == pytest.approx((0.3 * 1 + 0.7 * 4) / 2)
    state = iql.init(config, jax.random.key(0), dataset.obs_dim, dataset.act_dim)
    fixed = {k: v[:512] for k, v in data.items()}
    c0, _ = iql.critic_loss(config, state.critic, state.value, fixed)
    state, metrics = make_chunk(iql.make_update(config), 256, 400)(state, data, jax.random.key(5))
    c1, _ = iql.critic_loss(config, state.critic, state.value, fixed)
    assert all(np.isfinite(float(v)) for v in metrics.values())
    assert float(c1) < 0.5 * float(c0)
    # With expectile 0.7 > 0.5, V sits above the mean of Q(s, a) over data actions.
    q = iql.critic(config, state.critic_target, fixed["observations"], fixed["actions"]).min(0)
    v = iql.value(config, state.value, fixed["observations"])
    assert float((q - v < 0).mean()) > 0.5
    a1 = iql.act(config, state.actor, fixed["observations"])
    a2 = iql.act(config, state.actor, fixed["observations"])
    assert bool(jnp.all(a1 == a2)) and bool(jnp.all(jnp.abs(a1) <= 1.0))


# --------------------------------------------------------------------------- runs


def test_offline_td3bc_beats_the_behaviour_policy(td3bc_run, dataset):
    behaviour = float(dataset.episode_returns().mean())
    metrics = _last_metrics(td3bc_run)
    assert metrics["step"] == 3000
    assert metrics["eval_return"] > max(3 * behaviour, 150.0), (metrics, behaviour)
    if dataset.ref_min_score is None:
        # No reference returns (as here): no normalized score is logged, not a made-up one.
        assert "eval_score" not in metrics
    else:  # eval_score is the dataset's normalised score of the same returns.
        assert metrics["eval_score"] == pytest.approx(
            float(dataset.normalized_score(metrics["eval_return"]))
        )


def test_loaded_agent_reproduces_training_eval_and_is_differentiable(td3bc_run, dataset):
    agent = load_agent(td3bc_run, env_id=ENV_ID)
    assert (agent.name, agent.env_id, agent.obs_dim, agent.act_dim) == ("td3bc", ENV_ID, 4, 1)
    assert agent.gamma == 0.99 and agent.meta["kind"] == "agent"
    np.testing.assert_allclose(agent.action_low, [-3.0])
    # Same policy, same seeds: the reloaded agent scores exactly what training logged.
    stats = run_episodes(
        ENV_ID, policy_decider(agent.act, agent.actor_params), episodes=5, seed=10_000
    )
    assert np.mean(stats.returns) == pytest.approx(_last_metrics(td3bc_run)["eval_return"])

    # Raw observations in, raw actions out, within bounds even for wild inputs.
    obs = jnp.asarray(dataset.observations[:256])
    wild = 100.0 * jax.random.normal(jax.random.key(0), (256, 4))
    for o in (obs, wild):
        a = jax.jit(agent.act)(agent.actor_params, o)
        assert a.shape == (256, 1)
        assert bool(jnp.all((a >= -3.0) & (a <= 3.0)))
    q = jax.jit(agent.critic)(agent.critic_params, obs, jnp.asarray(dataset.actions[:256]))
    assert q.shape == (256,) and bool(jnp.all(jnp.isfinite(q)))
    # Reward is 1 per step, so Q in raw units lies within (0, 1 / (1 - gamma)] up to error.
    assert 0.0 < float(q.mean()) < 1.2 / (1 - agent.gamma)

    # d act / d actor_params agrees with central finite differences (float64).
    with jax.enable_x64(True):
        params = jax.tree_util.tree_map(lambda p: jnp.asarray(p, jnp.float64), agent.actor_params)
        o64 = jnp.asarray(dataset.observations[:32], jnp.float64)

        def objective(p):
            return jnp.sum(jnp.sin(agent.act(p, o64)))

        grads = jax.grad(objective)(params)
        assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree_util.tree_leaves(grads))
        leaves, treedef = jax.tree_util.tree_flatten(params)
        keys = jax.random.split(jax.random.key(7), len(leaves))
        direction = treedef.unflatten(
            [jax.random.normal(k, x.shape, jnp.float64) for k, x in zip(keys, leaves, strict=True)]
        )
        # A unit-norm direction and a small step, so no ReLU flips between the two points.
        norm = jnp.sqrt(sum(jnp.vdot(d, d) for d in jax.tree_util.tree_leaves(direction)))
        direction = jax.tree_util.tree_map(lambda d: d / norm, direction)

        def shifted(step: float) -> jax.Array:
            return objective(jax.tree_util.tree_map(lambda p, d: p + step * d, params, direction))

        h = 1e-7
        numeric = (shifted(h) - shifted(-h)) / (2 * h)
        pairs = zip(
            jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(direction), strict=True
        )
        analytic = sum(jnp.vdot(g, d) for g, d in pairs)
        assert float(analytic) == pytest.approx(float(numeric), rel=1e-6, abs=1e-9)
        assert abs(float(analytic)) > 1e-6


def test_iql_checkpoint_critic_is_in_raw_reward_units(data_path, dataset, tmp_path):
    out = train_agent(
        TrainAgentConfig(
            dataset=str(data_path),
            agent="iql",
            steps=200,
            out=tmp_path / "iql",
            chunk=100,
            eval_episodes=0,
            hidden_dims=SMALL,
            progress=False,
        )
    )
    agent = load_agent(out / "checkpoint.ckpt")
    meta = agent.meta
    scale = meta["reward_scale"]
    assert scale == pytest.approx(1000 / np.ptp(dataset.episode_returns()))
    saved, _ = load_checkpoint(out / "checkpoint.ckpt")
    config = iql.IQLConfig(**{**meta["agent_config"], "hidden_dims": SMALL})
    obs, act = dataset.observations[:64], dataset.actions[:64]
    stats = meta["norm_stats"]
    obs_n = (obs - np.asarray(stats["obs_mean"])) / np.asarray(stats["obs_std"])
    q_scaled = iql.critic(config, saved["train"]["critic"], obs_n, act / 3.0).min(0)
    np.testing.assert_allclose(
        np.asarray(agent.critic(agent.critic_params, obs, act)),
        np.asarray(q_scaled) / scale,
        rtol=1e-4,
        atol=1e-5,
    )


def test_killed_run_resumes_to_the_same_parameters(data_path, tmp_path):
    def cfg(out: Path, steps: int) -> TrainAgentConfig:
        return TrainAgentConfig(
            dataset=str(data_path),
            agent="rebrac",
            steps=steps,
            out=out,
            chunk=100,
            checkpoint_every=100,
            eval_episodes=0,
            hidden_dims=(32, 32),
            batch_size=64,
            progress=False,
        )

    whole = train_agent(cfg(tmp_path / "whole", 300))
    part = train_agent(cfg(tmp_path / "part", 200))  # the "killed" run, stopped after 200
    assert load_checkpoint(part / "checkpoint.ckpt")[1]["step"] == 200
    train_agent(cfg(part, 300))
    a, meta_a = load_checkpoint(whole / "checkpoint.ckpt")
    b, meta_b = load_checkpoint(part / "checkpoint.ckpt")
    assert meta_a["step"] == meta_b["step"] == 300
    leaves_a, leaves_b = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert len(leaves_a) == len(leaves_b) > 10
    for x, y in zip(leaves_a, leaves_b, strict=True):
        np.testing.assert_array_equal(x, y)
    # The metrics log was not duplicated by the resume.
    steps_logged = [
        json.loads(ln)["step"] for ln in (part / "metrics.jsonl").read_text().splitlines()
    ]
    assert steps_logged == [100, 200, 300]
    # Resuming with other hyperparameters is refused, with the fix named.
    with pytest.raises(CheckpointError, match=r"different config \(saved -> now: .*actor_bc_coef"):
        train_agent(dataclasses.replace(cfg(part, 400), actor_bc_coef=0.5))


# --------------------------------------------------------------------------- bad input


def test_bad_checkpoints_and_inputs_give_clear_errors(td3bc_run, tmp_path):
    with pytest.raises(CheckpointError, match="env_id='Hopper-v5'"):
        load_agent(td3bc_run, env_id="Hopper-v5")
    with pytest.raises(CheckpointError, match="No checkpoint"):
        load_agent(tmp_path / "nothing-here")
    blob = bytearray((td3bc_run / "checkpoint.ckpt").read_bytes())
    corrupt = tmp_path / "corrupt.ckpt"
    blob[len(blob) // 2] ^= 0xFF
    corrupt.write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match="corrupted"):
        load_agent(corrupt)
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(bytes(blob[: len(blob) // 3]))
    with pytest.raises(CheckpointError, match="truncated"):
        load_agent(truncated)
    with pytest.raises(ValueError, match="--dataset"):
        train_agent(TrainAgentConfig(dataset=""))
    with pytest.raises(ValueError, match="unknown agent"):
        train_agent(TrainAgentConfig(dataset=str(td3bc_run), agent="sac"))  # type: ignore[arg-type]
