"""Guards of the adaptation (mpcdwm.mpc): the paper preset, the placebo control, the validated
step, the transition-ensemble disagreement penalty, and imagined termination and reward from the
env's own rules (mpcdwm.envs.health_rule, mpcdwm.envs.goal_rule)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_mpc import _point, _true_return
from test_world import ACT, OBS, _tiny

from mpcdwm.envs import goal_rule, health_rule, make_env, task_rule
from mpcdwm.mpc import (
    PRESETS,
    MPCConfig,
    balance_ensemble_penalty,
    make_done_fn,
    make_planner,
    make_reward_fn,
    resolve,
    select_step_size,
)


def test_presets_fill_the_budget_and_keep_explicit_choices():
    plain = resolve(MPCConfig())
    # The default is the paper's amortised setting at the cheap budget.
    assert (plain.optimizer, plain.adapt_steps, plain.warm_start) == ("sgd", 1, True)
    assert (plain.num_rollouts, plain.lr, plain.horizon) == (16, 5e-7, 5)
    paper = resolve(MPCConfig(preset="paper"))
    assert (paper.optimizer, paper.adapt_steps, paper.horizon, paper.warm_start) == (
        "sgd",
        1,
        5,
        True,
    )
    assert paper.num_rollouts == PRESETS["paper"]["num_rollouts"] and paper.lr == 5e-6
    reference = resolve(MPCConfig(preset="reference"))
    assert (reference.optimizer, reference.adapt_steps, reference.warm_start) == ("adam", 5, False)
    assert (reference.num_rollouts, reference.lr) == (16, 3e-5)
    # A preset never overrides a field given explicitly, budget fields included.
    mixed = resolve(MPCConfig(preset="reference", adapt_steps=2, warm_start=True, horizon=3))
    assert (mixed.adapt_steps, mixed.warm_start, mixed.horizon, mixed.optimizer) == (
        2,
        True,
        3,
        "adam",
    )
    mine = resolve(MPCConfig(preset="paper", lr=5e-4, num_rollouts=64))
    assert (mine.lr, mine.num_rollouts, mine.preset) == (5e-4, 64, "none")
    assert resolve(mine) == mine
    with pytest.raises(ValueError, match="preset"):
        resolve(MPCConfig(preset="papr"))  # type: ignore[arg-type]
    # A value given explicitly is kept even when it equals the plain default.
    explicit = resolve(MPCConfig(preset="paper", num_rollouts=16, lr=3e-5))
    assert (explicit.num_rollouts, explicit.lr) == (16, 3e-5)


def test_amortized_mode_continues_the_previous_steps_optimization():
    """E=1 with weights carried across real steps (the paper preset) is one long optimization:
    k decisions from the same state act as one decision with E=k (the point-mass model ignores
    its noise, so every step sees the same objective), and an episode start resets it."""
    agent, world = _point()
    s = np.asarray([1.0, 0.0], np.float32)
    amortized = make_planner(
        "mpc", MPCConfig(preset="paper", lr=0.05, num_rollouts=2, horizon=5), agent, world
    )
    for k in (1, 2, 3):
        a_amortized, _ = amortized(s)
        one_shot = make_planner(
            "mpc",
            MPCConfig(optimizer="sgd", adapt_steps=k, lr=0.05, num_rollouts=2, horizon=5),
            agent,
            world,
        )
        a_once, _ = one_shot(s)
        np.testing.assert_allclose(a_amortized, a_once, rtol=1e-5, atol=1e-6)
    amortized.reset(1)
    first_again, _ = amortized(s)
    fresh = make_planner(
        "mpc",
        MPCConfig(optimizer="sgd", adapt_steps=1, lr=0.05, num_rollouts=2, horizon=5),
        agent,
        world,
    )
    np.testing.assert_allclose(first_again, fresh(s)[0], rtol=1e-5, atol=1e-6)
    assert not np.allclose(first_again, a_amortized)  # three steps moved further than one


def test_placebo_moves_the_action_as_much_but_does_not_help():
    """Random direction scaled to the same action change at the real state: the action moves
    as much (to first order), while only the real gradient raises the true return of the poor
    point-mass policy."""
    agent, world = _point()
    cfg = MPCConfig(
        adapt_steps=10, horizon=10, lr=0.3, num_rollouts=2, optimizer="sgd", diagnostics=True
    )
    s0 = [1.0, 0.0]
    real = make_planner("mpc", cfg, agent, world)
    fake = make_planner("mpc", dataclasses.replace(cfg, update="placebo"), agent, world)
    _, d_real = real(np.asarray(s0, np.float32))
    _, d_fake = fake(np.asarray(s0, np.float32))
    assert d_real["action_change"] > 0.05
    assert d_fake["action_change"] == pytest.approx(d_real["action_change"], rel=0.3)
    small = dataclasses.replace(cfg, lr=3e-4, adapt_steps=1)  # linear regime: exact match
    _, d_small = make_planner("mpc", small, agent, world)(np.asarray(s0, np.float32))
    _, d_small_fake = make_planner(
        "mpc", dataclasses.replace(small, update="placebo"), agent, world
    )(np.asarray(s0, np.float32))
    assert d_small_fake["action_change"] == pytest.approx(d_small["action_change"], rel=0.02)
    # With weights carried across real steps, the placebo's deviation from the pretrained
    # action tracks the real planner's at every step (it does not accumulate).
    paper = MPCConfig(preset="paper", lr=1e-3, num_rollouts=2, horizon=5)
    real = make_planner("mpc", paper, agent, world)
    fake = make_planner("mpc", dataclasses.replace(paper, update="placebo"), agent, world)
    changes = []
    for _ in range(5):
        _, d_warm = real(np.asarray(s0, np.float32))
        _, d_warm_fake = fake(np.asarray(s0, np.float32))
        assert d_warm_fake["action_change"] == pytest.approx(d_warm["action_change"], rel=0.1)
        changes.append(d_warm["action_change"])
    assert changes[-1] > 3 * changes[0]  # the carried weights did move further
    assert d_fake["imagined_return_after"] < d_real["imagined_return_after"]
    assert _true_return(real, real.reset, s0) > _true_return(fake, fake.reset, s0) + 10.0


def test_validated_step_acts_adapted_only_when_it_imagines_better():
    agent, world = _point()
    s = np.asarray([1.0, 0.0], np.float32)
    base = make_planner("none", MPCConfig(), agent, world)
    a_base, _ = base(s)
    good = MPCConfig(
        preset="reference", adapt_steps=10, horizon=10, lr=0.3, num_rollouts=4, validate=True
    )
    planner = make_planner("mpc", good, agent, world)
    a, diag = planner(s)
    assert diag["accepted"] == 1.0 and not np.allclose(a, a_base)
    # A step against the gradient (negative lr is refused, so use a harmful placebo-free
    # setting: lr 0 gives no improvement, which must be rejected).
    idle = make_planner("mpc", dataclasses.replace(good, lr=0.0), agent, world)
    a, diag = idle(s)
    assert diag["accepted"] == 0.0 and np.allclose(a, a_base)


def test_an_independent_world_model_can_veto_the_validated_step():
    """The validated step judged by another world model: one that agrees accepts the
    adaptation; one whose dynamics are reversed (the planning model's 'improvement' is an
    error it does not share) rejects it, and the base action is taken."""
    agent, world = _point()
    s = np.asarray([1.0, 0.0], np.float32)
    a_base, _ = make_planner("none", MPCConfig(), agent, world)(s)
    cfg = MPCConfig(
        preset="reference", adapt_steps=10, horizon=10, lr=0.3, num_rollouts=4, validate=True
    )
    agreeing = dataclasses.replace(world, params={"gain": jnp.asarray(1.1, jnp.float32)})
    a, diag = make_planner("mpc", cfg, agent, world, validation_world=agreeing)(s)
    assert diag["accepted"] == 1.0 and not np.allclose(a, a_base)
    reversed_ = dataclasses.replace(world, params={"gain": jnp.asarray(-1.0, jnp.float32)})
    a, diag = make_planner("mpc", cfg, agent, world, validation_world=reversed_)(s)
    assert diag["accepted"] == 0.0 and np.allclose(a, a_base)
    with pytest.raises(ValueError, match="validated step"):
        make_planner("mpc", dataclasses.replace(cfg, validate=False), agent, world, 0, None, world)
    other = dataclasses.replace(world, params={"gain": jnp.ones(3, jnp.float32)})
    with pytest.raises(ValueError, match="network sizes"):
        make_planner("mpc", cfg, agent, world, validation_world=other)


def test_ensemble_penalty_keeps_the_adaptation_where_the_models_agree():
    """Two point-mass models that agree at rest but not on the force's gain: their
    disagreement grows with |a|. Weighted in, it shrinks the adapted action; a member identical
    to the planning model disagrees nowhere and changes nothing."""
    agent, world = _point()
    s = np.asarray([1.0, 0.0], np.float32)
    cfg = MPCConfig(
        preset="reference", adapt_steps=10, horizon=10, lr=0.3, num_rollouts=4, diagnostics=True
    )
    a_plain, d_plain = make_planner("mpc", cfg, agent, world)(s)
    penalized = dataclasses.replace(cfg, ensemble_penalty=20.0)
    twin = dataclasses.replace(world, params={"gain": jnp.asarray(1.0, jnp.float32)})
    a_twin, _ = make_planner("mpc", penalized, agent, world, ensemble=[twin])(s)
    np.testing.assert_allclose(a_twin, a_plain, atol=1e-6)
    unsure = dataclasses.replace(world, params={"gain": jnp.asarray(3.0, jnp.float32)})
    a_unsure, d_unsure = make_planner("mpc", penalized, agent, world, ensemble=[unsure])(s)
    assert np.abs(a_unsure).sum() < 0.8 * np.abs(a_plain).sum(), (a_unsure, a_plain)
    # The gradient still improves the imagined return: the penalty trims the step, not its sign.
    assert np.sign(a_unsure[0]) == np.sign(a_plain[0])
    with pytest.raises(ValueError, match="ensemble-penalty > 0"):
        make_planner("mpc", cfg, agent, world, ensemble=[unsure])
    with pytest.raises(ValueError, match="--ensemble-world-models"):
        make_planner("mpc", penalized, agent, world)
    other = dataclasses.replace(world, params={"gain": jnp.ones(3, jnp.float32)})
    with pytest.raises(ValueError, match="planning world model too"):
        make_planner("mpc", penalized, agent, None, ensemble=[unsure])
    with pytest.raises(ValueError, match="ensemble world model .*network sizes"):
        make_planner("action-grad", penalized, agent, world, ensemble=[other])
    # The base policy imagines nothing: an ensemble passed along is ignored.
    make_planner("none", penalized, agent, world, ensemble=[other])


def test_ensemble_penalty_weight_balances_the_gradients_without_real_returns():
    """The balancing weight is |grad return| / |grad penalty| on the data: a member twice as
    far from the planning model disagrees twice as much and gets half the weight; members that
    never disagree are refused."""
    agent, world = _point()
    states = np.asarray([[1.0, 0.0], [0.5, -0.3], [-0.8, 0.2]], np.float32)
    cfg = MPCConfig(horizon=5, num_rollouts=2)
    near = dataclasses.replace(world, params={"gain": jnp.asarray(1.5, jnp.float32)})
    far = dataclasses.replace(world, params={"gain": jnp.asarray(2.0, jnp.float32)})
    weight_near = balance_ensemble_penalty(cfg, agent, world, [near], states)
    weight_far = balance_ensemble_penalty(cfg, agent, world, [far], states)
    assert weight_near > 0 and weight_far == pytest.approx(weight_near / 2, rel=1e-3)
    with pytest.raises(ValueError, match="never disagree"):
        balance_ensemble_penalty(cfg, agent, world, [world], states)


def _random_states(env, n: int, rng: np.random.Generator):
    """Observations of states scattered across the healthy boundary, with the env's verdict."""
    u = env.unwrapped
    env.reset(seed=0)
    obs, healthy = [], []
    for _ in range(n):
        qpos = u.init_qpos + rng.normal(0, 0.5, u.model.nq) * rng.choice([0.1, 1.0, 3.0])
        qvel = u.init_qvel + rng.normal(0, 2.0, u.model.nv)
        u.set_state(qpos, qvel)
        obs.append(np.asarray(u._get_obs(), np.float32))
        healthy.append(bool(u.is_healthy))
    return np.stack(obs), np.asarray(healthy)


@pytest.mark.parametrize("env_id", ["Hopper-v5", "Walker2d-v5", "Ant-v5"])
def test_health_rule_agrees_with_the_env_on_both_sides_of_the_boundary(env_id):
    env = make_env(env_id)
    rule = health_rule(env)
    assert rule is not None
    obs, healthy = _random_states(env, 400, np.random.default_rng(0))
    assert 0.1 < healthy.mean() < 0.9  # both sides are really sampled
    np.testing.assert_array_equal(rule.healthy(obs), healthy)
    # The jitted hard mask of the planner says the same.
    cfg = MPCConfig(termination="rule")
    done = jax.jit(jax.vmap(make_done_fn(cfg, None, rule), in_axes=(None, None, None, 0)))
    np.testing.assert_array_equal(
        np.asarray(done(None, None, None, jnp.asarray(obs))) > 0.5, ~healthy
    )
    env.close()


def test_envs_without_a_health_rule():
    env = make_env("HalfCheetah-v5")
    assert health_rule(env) is None
    env.close()
    env = make_env("Hopper-v5", terminate_when_unhealthy=False)
    assert health_rule(env) is None
    env.close()


def test_smooth_rule_gradient_points_away_from_falling():
    env = make_env("Hopper-v5")
    rule = health_rule(env)
    env.reset(seed=0)
    s = np.asarray(env.unwrapped._get_obs(), np.float32)
    env.close()
    done = make_done_fn(MPCConfig(termination="smooth-rule"), None, rule)
    # Height just above the floor of 0.7 and torso angle near its upper limit 0.2.
    s[0], s[1] = 0.72, 0.18
    p = float(done(None, None, None, jnp.asarray(s)))
    g = np.asarray(jax.grad(lambda x: done(None, None, None, x))(jnp.asarray(s)))
    assert 0.3 < p < 1.0
    assert g[0] < 0 and g[1] > 0  # higher is safer, more tilted is riskier
    assert np.all(g[2:] == 0) or np.abs(g[2:]).max() < 1e-6 * np.abs(g[:2]).max()
    # Well inside: nearly no chance of ending; outside: nearly certain.
    s[0], s[1] = 1.25, 0.0
    assert float(done(None, None, None, jnp.asarray(s))) < 0.01
    s[0] = 0.6
    assert float(done(None, None, None, jnp.asarray(s))) > 0.99


def _steps_near_the_goal(env, episodes: int, rng: np.random.Generator):
    """Real PointMaze steps of a noisy controller pushing the ball into its goal from the next
    cell: next observations with the env's own terminated flag and reward."""
    obs_next, ended, rewards = [], [], []
    for ep in range(episodes):
        obs, _ = env.reset(seed=ep, options={"goal_cell": (1, 1), "reset_cell": (1, 2)})
        for _ in range(60):
            pos, vel, goal = obs[2:4], obs[4:6], obs[-2:]
            action = np.clip(2.0 * (goal - pos) - 0.5 * vel + rng.normal(0, 0.5, 2), -1, 1)
            obs, reward, terminated, truncated, _ = env.step(action.astype(np.float32))
            obs_next.append(obs)
            ended.append(terminated)
            rewards.append(reward)
            if terminated or truncated:
                break
    return np.stack(obs_next), np.asarray(ended), np.asarray(rewards)


def test_goal_rule_agrees_with_the_maze_on_real_steps():
    """PointMaze's goal, read from the env, ends and rewards exactly the steps the env does;
    the planner's jitted rule termination and reward say the same."""
    pytest.importorskip("gymnasium_robotics")
    env = make_env("PointMaze_UMaze-v3")
    rule = goal_rule(env)
    assert rule is not None and task_rule(env) == rule and health_rule(env) is None
    assert rule.achieved == (0, 1) and rule.goal == (6, 7) and rule.radius == pytest.approx(0.45)
    obs, ended, rewards = _steps_near_the_goal(env, 12, np.random.default_rng(0))
    env.close()
    assert 5 <= ended.sum() < len(ended) // 2  # both sides are really sampled
    np.testing.assert_array_equal(rule.reached(obs), ended)
    np.testing.assert_array_equal(rewards, ended.astype(float))
    cfg = MPCConfig(termination="rule", reward="rule")
    batched = lambda f: jax.jit(jax.vmap(f, in_axes=(None, None, None, 0)))  # noqa: E731
    done = batched(make_done_fn(cfg, None, rule))
    reward = batched(make_reward_fn(cfg, None, rule, None))
    np.testing.assert_array_equal(np.asarray(done(None, None, None, jnp.asarray(obs))), ended)
    np.testing.assert_array_equal(np.asarray(reward(None, None, None, jnp.asarray(obs))), ended)


def test_smooth_goal_reward_gradient_points_at_the_goal_and_rules_need_a_goal():
    pytest.importorskip("gymnasium_robotics")
    env = make_env("PointMaze_UMaze-v3")
    rule = goal_rule(env)
    env.close()
    cfg = MPCConfig(reward="smooth-rule", termination_sharpness=0.1)
    reward = make_reward_fn(cfg, None, rule, None)
    s = np.zeros(8, np.float32)
    s[:2] = s[2:4] = [0.3, 0.4]  # 0.5 from the goal at the origin: just outside the radius
    r = float(reward(None, None, None, jnp.asarray(s)))
    g = np.asarray(jax.grad(lambda x: reward(None, None, None, x))(jnp.asarray(s)))
    assert 0.2 < r < 0.5
    # Finite differences agree; the gradient moves the ball (achieved) toward the goal.
    eps = 1e-3
    for i in (0, 1, 6):
        d = np.zeros(8, np.float32)
        d[i] = eps
        fd = (reward(None, None, None, s + d) - reward(None, None, None, s - d)) / (2 * eps)
        assert float(fd) == pytest.approx(g[i], rel=1e-2)
    assert np.dot(g[:2], -s[:2]) > 0 and np.all(g[2:6] == 0)
    # Without a goal rule (a locomotion env's health rule) the learned reward is used.
    world = _tiny("mlp")
    hopper = make_env("Hopper-v5")
    learned = make_reward_fn(cfg, world, health_rule(hopper), None)
    hopper.close()
    s_, a_ = jnp.linspace(-1.0, 1.0, OBS), jnp.linspace(0.5, -0.5, ACT)
    assert float(learned(world.params, s_, a_, s_)) == float(world.reward(world.params, s_, a_))
    with pytest.raises(ValueError, match="--mpc.reward must be"):
        make_planner("mpc", MPCConfig(reward="goal"), *_point())


def test_dream_mpc_recovers_the_poor_policy_and_reuses_its_plan():
    """Dream-MPC (refined policy proposals + the shifted previous plan) raises the true return
    of the runaway point-mass policy; from the second decision on the kept plan competes."""
    agent, world = _point()
    cfg = MPCConfig(adapt_steps=10, horizon=10, num_rollouts=2, action_lr=0.3, diagnostics=True)
    base = make_planner("none", cfg, agent, world)
    dream = make_planner("dream-mpc", dataclasses.replace(cfg, dream_candidates=3), agent, world)
    s0 = [1.0, 0.0]
    r_base = _true_return(base, base.reset, s0)
    r_dream = _true_return(dream, dream.reset, s0)
    assert r_dream > 0.5 * r_base and r_dream > r_base + 20.0, (r_base, r_dream)
    dream.reset(0)
    assert not bool(dream.state["carry"]["has_plan"])
    _, diag = dream(np.asarray(s0, np.float32))
    assert bool(dream.state["carry"]["has_plan"]) and diag["accepted"] == 1.0
    assert diag["imagined_return_after"] >= diag["imagined_return_before"]


def test_step_size_chosen_without_real_returns_rejects_steps_that_do_not_help():
    """No step (lr 0) never survives validation; a real gradient step does and is chosen; a
    large random (placebo) step on a good policy loses imagined return on fresh noise and is
    not chosen, while a small one is harmless."""
    states = np.asarray([[1.0, 0.0], [0.5, 0.2], [-0.8, 0.1], [1.5, -0.3]], np.float32)
    cfg = MPCConfig(adapt_steps=1, horizon=10, num_rollouts=4, optimizer="sgd")
    agent, world = _point()
    lr, rows = select_step_size(cfg, agent, world, states, grid=(0.0, 1e-2))
    assert lr == 1e-2 and rows[0]["acceptance"] == 0.0 and rows[1]["acceptance"] == 1.0
    good, world = _point(kernel=(-3.0, -3.0))
    placebo = dataclasses.replace(cfg, update="placebo")
    lr, rows = select_step_size(placebo, good, world, states, grid=(0.1, 10.0))
    assert rows[1]["validated_gain"] < 0 and lr != 10.0
    with pytest.raises(ValueError, match="states"):
        select_step_size(cfg, agent, world, np.zeros((0, 2)))


def test_step_size_on_segments_follows_the_carried_weights():
    """Segments of consecutive states are walked with the preset's warm start: the carried
    weights keep moving, so the last decision's action is further from the base policy's
    than one decision's; single states (N, obs_dim) are one decision each."""
    states = np.asarray([[1.0, 0.0], [0.5, 0.2], [-0.8, 0.1]], np.float32)
    cfg = MPCConfig(preset="paper", horizon=10, num_rollouts=4)
    agent, world = _point()
    _, single = select_step_size(cfg, agent, world, states, grid=(1e-2,))
    segments = np.repeat(states[:, None], 4, axis=1)  # (3, 4, 2)
    _, walked = select_step_size(cfg, agent, world, segments, grid=(1e-2,))
    assert walked[0]["final_action_change"] > 2 * single[0]["final_action_change"] > 0
    with pytest.raises(ValueError, match="segments"):
        select_step_size(cfg, agent, world, np.zeros((2, 3, 4, 2)))


def test_step_size_trust_region_keeps_the_largest_step_within_it():
    """Both steps survive validation; the trust region on the carried weights' final action
    change rejects the one that moves the action further than allowed."""
    states = np.repeat(np.asarray([[1.0, 0.0], [0.5, 0.2]], np.float32)[:, None], 3, axis=1)
    cfg = MPCConfig(preset="paper", horizon=10, num_rollouts=4)
    agent, world = _point()
    lr, rows = select_step_size(cfg, agent, world, states, grid=(1e-3, 1e-2))
    assert lr == 1e-2 and all(r["acceptance"] == 1.0 for r in rows)
    small, large = (r["final_action_change"] for r in rows)
    assert 0 < small < large
    between = (small + large) / 2
    lr, _ = select_step_size(cfg, agent, world, states, (1e-3, 1e-2), max_action_change=between)
    assert lr == 1e-3
