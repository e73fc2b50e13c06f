"""Planners (mpcdwm.mpc): analytic point-mass stand-in and real InvertedPendulum-v5 models.

The stand-in world is a differentiable 1-D point mass (state: position, velocity; action:
force in [-1, 1]) with the known reward ``-pos^2 - 0.1 a^2``; the stand-in agent is a
one-layer tanh policy in the Flax parameter layout. The real part uses the tiny TD3+BC
agent and diffusion world model trained on InvertedPendulum-v5 data in conftest.py.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mpcdwm.mpc import MPCConfig, make_imagine, make_planner, validate_config

DT = 0.1


@dataclasses.dataclass(frozen=True)
class PointWorld:
    """Exact point-mass dynamics (the noise enters with weight 0: shape only)."""

    params: dict
    noise_shape: tuple[int, ...] = (2,)

    def next_state(self, params, s, a, noise):
        pos, vel = s[..., 0], s[..., 1]
        vel = vel + DT * params["gain"] * a[..., 0]
        return jnp.stack([pos + DT * vel, vel], -1) + 0.0 * noise

    def reward(self, params, s, a, members=None):
        return -jnp.square(s[..., 0]) - 0.1 * jnp.square(a[..., 0])

    def reward_disagreement(self, params, s, a):
        return jnp.abs(a[..., 0])

    def done_prob(self, params, s, a, s_next):
        return jnp.zeros(s.shape[:-1], s.dtype)


@dataclasses.dataclass(frozen=True)
class PointAgent:
    actor_params: dict
    critic_params: dict
    gamma: float = 0.99
    action_low: np.ndarray = dataclasses.field(default_factory=lambda: -np.ones(1, np.float32))
    action_high: np.ndarray = dataclasses.field(default_factory=lambda: np.ones(1, np.float32))

    def act(self, params, obs):
        layer = params["params"]["Dense_0"]
        return jnp.tanh(obs @ layer["kernel"] + layer["bias"])

    def critic(self, params, obs, action):
        return -params["w"] * jnp.square(obs[..., 0])


def _point(kernel=(0.5, 0.5), dtype=jnp.float32):
    """A deliberately poor policy: positive feedback pushes the mass away from 0."""
    actor = {
        "params": {
            "Dense_0": {
                "kernel": jnp.asarray(kernel, dtype).reshape(2, 1),
                "bias": jnp.zeros(1, dtype),
            }
        }
    }
    agent = PointAgent(actor, {"w": jnp.asarray(5.0, dtype)})
    return agent, PointWorld({"gain": jnp.asarray(1.0, dtype)})


def _true_return(decide, reset, s0, steps=40):
    s, total = np.asarray(s0, np.float32), 0.0
    reset()
    for _ in range(steps):
        a, _ = decide(s)
        assert np.all(np.isfinite(a)) and np.all(np.abs(a) <= 1.0)
        total += -(s[0] ** 2) - 0.1 * a[0] ** 2
        vel = s[1] + DT * a[0]
        s = np.array([s[0] + DT * vel, vel], np.float32)
    return total


def test_adaptation_raises_true_return_of_poor_policy():
    agent, world = _point()
    s0 = [1.0, 0.0]
    base = make_planner("none", MPCConfig(), agent, world)
    mpc = make_planner(
        "mpc", MPCConfig(adapt_steps=10, horizon=10, lr=0.3, num_rollouts=2), agent, world
    )
    r_base = _true_return(base, base.reset, s0)
    r_mpc = _true_return(mpc, mpc.reset, s0)
    # The base policy runs away (return far below -40); adaptation must recover most of it.
    assert r_base < -40.0, r_base
    assert r_mpc > 0.5 * r_base and r_mpc > r_base + 20.0, (r_base, r_mpc)


@pytest.mark.parametrize("terminal_action", ["adapted", "pretrained"])
def test_surrogate_gradient_matches_finite_differences(terminal_action):
    """The surrogate's gradient w.r.t. policy parameters, through the model and the terminal
    critic (fed the adapted or the frozen pretrained policy's action), matches central FD."""
    with jax.enable_x64(True):
        agent, world = _point(kernel=(0.3, -0.2), dtype=jnp.float64)
        cfg = MPCConfig(horizon=4, num_rollouts=3, uncertainty_penalty=0.1, ensemble_penalty=0.5)
        # A second transition model whose dynamics differ: its disagreement carries gradient.
        member = dataclasses.replace(world, params={"gain": jnp.asarray(1.7, jnp.float64)})
        imagine = make_imagine(cfg, agent, world, ensemble=[member])
        s0 = jnp.asarray([0.7, -0.3], jnp.float64)
        noise = jnp.zeros((3, 4, 2), jnp.float64)

        def params(flat):
            return {"params": {"Dense_0": {"kernel": flat[:2].reshape(2, 1), "bias": flat[2:]}}}

        psi0 = params(jnp.asarray([-0.5, 0.4, 0.0], jnp.float64))
        pretrained = lambda s: agent.act(psi0, s)  # noqa: E731
        terminal = pretrained if terminal_action == "pretrained" else None

        def surrogate(flat):
            psi = params(flat)
            ret, aux = imagine(
                lambda s: agent.act(psi, s),
                {"world": world.params, "critic": agent.critic_params, "ensemble": [member.params]},
                s0,
                noise,
                None,
                terminal,
            )
            assert aux["penalty"].shape == (3,)
            return ret.mean() - aux["penalty"].mean()

        x = jnp.asarray([0.3, -0.2, 0.1], jnp.float64)
        g = jax.grad(surrogate)(x)
        eps = 1e-6
        fd = jnp.stack(
            [
                (surrogate(x + eps * e) - surrogate(x - eps * e)) / (2 * eps)
                for e in jnp.eye(3, dtype=jnp.float64)
            ]
        )
        assert g.dtype == jnp.float64
        np.testing.assert_allclose(np.asarray(g), np.asarray(fd), rtol=1e-6, atol=1e-8)
        assert float(jnp.abs(g).max()) > 1e-3  # a real, non-trivial gradient


@pytest.mark.parametrize("name", ["mpc", "action-grad", "mppi", "dream-mpc", "none"])
def test_point_mass_planners_valid_and_improve_imagined_return(name):
    agent, world = _point()
    cfg = MPCConfig(
        adapt_steps=5,
        horizon=5,
        lr=0.1,
        num_rollouts=4,
        action_lr=0.3,
        mppi_samples=64,
        mppi_elites=16,
        mppi_iterations=4,
        diagnostics=True,
    )
    planner = make_planner(name, cfg, agent, world)
    for s in ([1.0, 0.0], [-2.0, 3.0], [50.0, -50.0]):
        a, diag = planner(np.asarray(s, np.float32))
        assert a.shape == (1,) and np.all(np.isfinite(a)) and abs(float(a[0])) <= 1.0
        assert diag["fallback"] == 0.0
        if name != "none":
            assert diag["imagined_return_after"] >= diag["imagined_return_before"] - 1e-4, diag
    assert planner.compile_s > 0


def test_bad_config_and_missing_world_model_are_named():
    with pytest.raises(ValueError, match="horizon"):
        validate_config(MPCConfig(horizon=0))
    with pytest.raises(ValueError, match="lr"):
        validate_config(MPCConfig(lr=-1.0))
    agent, _ = _point()
    with pytest.raises(ValueError, match="world model"):
        make_planner("mpc", MPCConfig(), agent, None)
    with pytest.raises(ValueError, match="unknown planner"):
        make_planner("cem", MPCConfig(), agent, None)


# --------------------------------------------------------------------------- real MuJoCo models

PENDULUM = "InvertedPendulum-v5"


@pytest.fixture(scope="module")
def pendulum(pendulum_runs):
    """The shared tiny TD3+BC agent and diffusion world model (see conftest.py), loaded."""
    from mpcdwm.agents import load_agent
    from mpcdwm.world import load_world_model

    agent_dir, wm_dir = pendulum_runs
    return load_agent(agent_dir), load_world_model(wm_dir)


SMALL = MPCConfig(
    diagnostics=True,
    adapt_steps=2,
    num_rollouts=4,
    horizon=3,
    mppi_samples=32,
    mppi_elites=8,
    mppi_policy_samples=4,
    mppi_iterations=2,
)


def _real_observations(n: int = 30):
    import gymnasium as gym

    env = gym.make(PENDULUM)
    obs, _ = env.reset(seed=3)
    out = []
    rng = np.random.default_rng(0)
    for _ in range(n):
        out.append(np.asarray(obs, np.float32))
        obs, _, term, trunc, _ = env.step(rng.uniform(-3, 3, size=1))
        if term or trunc:
            obs, _ = env.reset()
    env.close()
    return out


def assert_same_action(planned, base) -> None:
    """Equal to float32 rounding: bitwise on CPU; a GPU may fuse the actor differently inside the
    planner's program than alone and differ in the last bit (seen on an H200)."""
    np.testing.assert_allclose(planned, np.asarray(base), rtol=0, atol=1e-6)


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_zero_learning_rate_reproduces_base_actions(pendulum, optimizer):
    agent, world = pendulum
    cfg = dataclasses.replace(SMALL, lr=0.0, optimizer=optimizer)
    # Full float32 matmuls: on an NVIDIA GPU the default is TF32, and the planner's program may
    # fuse the actor differently than the actor alone; at TF32 the two then differ by more than
    # float32 rounding although the parameters are the same (this test failed so on an H200).
    with jax.default_matmul_precision("highest"):
        mpc = make_planner("mpc", cfg, agent, world)
        act = jax.jit(agent.act)
        for obs in _real_observations(10):
            a, diag = mpc(obs)
            assert_same_action(a, act(agent.actor_params, obs))
            assert diag["action_change"] <= 1e-6 and diag["fallback"] == 0.0
            assert diag["imagined_return_after"] == pytest.approx(diag["imagined_return_before"])


@pytest.mark.parametrize("name", ["mpc", "action-grad", "mppi", "dream-mpc"])
def test_injected_nan_falls_back_to_pretrained_action(pendulum, name):
    agent, world = pendulum
    bad = jax.tree_util.tree_map(lambda x: x.at[(0,) * x.ndim].set(jnp.nan), world.params)
    world_nan = dataclasses.replace(world, params=bad)
    planner = make_planner(name, SMALL, agent, world_nan)
    act = jax.jit(agent.act)
    for obs in _real_observations(3):
        a, diag = planner(obs)
        assert diag["fallback"] == 1.0, diag
        assert_same_action(a, act(agent.actor_params, obs))


@pytest.mark.parametrize("name", ["none", "mpc", "action-grad", "mppi", "dream-mpc"])
def test_actions_in_bounds_in_real_episodes_even_with_huge_steps(pendulum, name):
    from mpcdwm.rollout import run_episodes

    agent, world = pendulum
    # lr 10 / action_lr 10 / wide MPPI std push hard against the bounds.
    cfg = dataclasses.replace(SMALL, lr=10.0, action_lr=10.0, warm_start=True, mppi_max_std=2.0)
    planner = make_planner(name, cfg, agent, world)
    # run_episodes raises on any non-finite or out-of-bounds action.
    stats = run_episodes(
        PENDULUM, planner, episodes=2, seed=0, max_steps=40, on_episode_start=planner.reset
    )
    assert len(stats.returns) == 2 and len(stats.diagnostics) == sum(stats.lengths)
    for d in stats.diagnostics:
        assert np.isfinite(d["imagined_return_after"]) or d["fallback"] == 1.0


def test_adaptation_raises_real_return_of_weak_policy(pendulum):
    """A weakened base (pre-tanh output bias +1: it pushes the cart one way and the pole
    falls in ~2 steps) balances several times longer with MPCwDWM on the tiny real models.

    Measured when written: base [2, 2, 2, 2], mpc [33, 13, 7, 47] (mean ratio ~12; the
    assertion asks for 3x). Larger learning rates (0.05) did not help here.
    """
    from mpcdwm.rollout import run_episodes

    agent, world = pendulum
    params = jax.tree_util.tree_map(lambda x: x, agent.actor_params)
    layers = params["params"]
    last = max(layers, key=lambda k: int(k.split("_")[1]))
    layers[last] = {**layers[last], "bias": layers[last]["bias"] + 1.0}
    weak = dataclasses.replace(agent, actor_params=params)
    cfg = MPCConfig(adapt_steps=5, num_rollouts=8, horizon=5, lr=0.01, optimizer="adam")
    returns = {}
    for name in ("none", "mpc"):
        planner = make_planner(name, cfg, weak, world)
        stats = run_episodes(
            PENDULUM, planner, episodes=4, seed=0, max_steps=300, on_episode_start=planner.reset
        )
        returns[name] = float(np.mean(stats.returns))
    assert returns["none"] <= 5.0, returns  # the base really is weak
    assert returns["mpc"] >= 3.0 * returns["none"], returns


def test_reward_from_first_member_or_whole_ensemble(pendulum):
    """The planner's default reward is the first ensemble member; ``members=None`` the mean."""
    _, world = pendulum
    rng = np.random.default_rng(0)
    s = jnp.asarray(rng.normal(size=(7, world.obs_dim)), jnp.float32)
    a = jnp.asarray(rng.uniform(-1, 1, size=(7, world.act_dim)), jnp.float32)
    members = world.reward_members(world.params, s, a)
    assert members.shape == (world.config.reward_ensemble, 7)
    assert float(jnp.abs(members[0] - members[1]).max()) > 0  # distinct members
    np.testing.assert_allclose(world.reward(world.params, s, a), members.mean(0), rtol=1e-5)
    np.testing.assert_allclose(world.reward(world.params, s, a, 1), members[0], rtol=1e-5)
    with pytest.raises(ValueError, match="count"):
        world.reward_members(world.params, s, a, world.config.reward_ensemble + 1)


def test_cost_analysis_counts_the_compiled_decision_and_reuses_it():
    """XLA's FLOP count of a decision grows with the imagined rollouts M, and the program
    compiled for the count is the one that then decides."""
    agent, world = _point()
    obs = np.asarray([1.0, 0.0], np.float32)
    flops = {}
    for m in (8, 32):
        planner = make_planner("mpc", MPCConfig(num_rollouts=m, horizon=4), agent, world)
        flops[m] = planner.cost_analysis(obs)["flops"]
        compiled = planner._compiled
        action, _ = planner(obs)
        assert planner._compiled is compiled and np.all(np.isfinite(action))
    assert flops[32] > 2.5 * flops[8] > 0
