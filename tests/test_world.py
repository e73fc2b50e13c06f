"""World models: exact gradients through the samplers, noise semantics, shapes, learning on
real Hopper-v5 transitions, checkpoint round-trip and bad-input errors."""

from __future__ import annotations

import dataclasses

import gymnasium as gym
import h5py
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mpcdwm.checkpoint import CheckpointError
from mpcdwm.data import Dataset, load_dataset, make_dataset
from mpcdwm.nets import MLP
from mpcdwm.world import (
    ACTIVATIONS,
    TrainWorldModelConfig,
    WorldModel,
    init_params,
    load_world_model,
    make_world_model,
    meanflow_loss,
    meanflow_time_features,
    train_world_model,
)
from mpcdwm.world_quality import world_model_quality

OBS, ACT = 3, 2
TINY = TrainWorldModelConfig(
    hidden_dims=(16, 16),
    time_embed_dim=8,
    reward_hidden_dims=(8,),
    reward_ensemble=3,
    termination_hidden_dims=(8,),
    denoise_steps=4,
    clip_denoised=0.0,  # no clipping: every denoising step must carry gradient
)


def _tiny(model: str, dtype=jnp.float32, **changes) -> WorldModel:
    """An untrained tiny model (the gradient/shape tests need no training)."""
    cfg = dataclasses.replace(TINY, model=model, **changes)
    params = init_params(cfg, OBS, ACT, jax.random.key(1))
    # Scale the transition net up so the sampler is far from the identity map.
    params = jax.tree_util.tree_map(lambda x: (3.0 * x).astype(dtype), params)
    rng = np.random.default_rng(0)
    norm = {
        "obs_mean": rng.normal(size=OBS),
        "obs_std": rng.uniform(0.5, 2.0, OBS),
        "delta_mean": rng.normal(size=OBS) * 0.1,
        "delta_std": rng.uniform(0.5, 2.0, OBS),
        "reward_mean": 1.0,
        "reward_std": 2.0,
        "logit_offset": 0.5,
    }
    return make_world_model(params, cfg, norm, obs_dim=OBS, act_dim=ACT, env_id="Toy-v0")


SAMPLERS = {
    "ddpm": lambda dt: _tiny("diffusion", dt, sampler="ddpm"),
    "ddim": lambda dt: _tiny("diffusion", dt, sampler="ddim"),
    "ddpm-x0": lambda dt: _tiny("diffusion", dt, sampler="ddpm", prediction="x0"),
    "flow-euler": lambda dt: _tiny("flow", dt, flow_steps=3),
    "flow-midpoint": lambda dt: _tiny("flow", dt, flow_steps=2, flow_solver="midpoint"),
    "meanflow-2": lambda dt: _tiny("meanflow", dt, flow_steps=2),
    "mlp-gaussian": lambda dt: _tiny("mlp", dt, mlp_gaussian=True),
}


def _central_jacobian(f, x, h=1e-6):
    cols = [(f(x + h * e) - f(x - h * e)) / (2 * h) for e in np.eye(x.shape[0])]
    return jnp.stack(cols, axis=-1)


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_next_state_gradients_match_finite_differences(name):
    with jax.enable_x64(True):
        wm = SAMPLERS[name](jnp.float64)
        key = jax.random.key(3)
        s = jax.random.normal(key, (OBS,), jnp.float64)
        a = jnp.tanh(jax.random.normal(jax.random.fold_in(key, 1), (ACT,), jnp.float64))
        noise = jax.random.normal(jax.random.fold_in(key, 2), wm.noise_shape, jnp.float64)
        f = jax.jit(lambda s, a: wm.next_state(wm.params, s, a, noise))
        assert f(s, a).dtype == jnp.float64
        jac_s, jac_a = jax.jit(jax.jacrev(f, argnums=(0, 1)))(s, a)
        fd_s = _central_jacobian(lambda x: f(x, a), s)
        fd_a = _central_jacobian(lambda x: f(s, x), a)
        np.testing.assert_allclose(jac_s, fd_s, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(jac_a, fd_a, rtol=1e-5, atol=1e-7)
        # Not trivially passing: the model moves s' away from s in an action-dependent way.
        assert np.abs(jac_a).max() > 1e-2
        assert np.abs(jac_s - np.eye(OBS)).max() > 1e-2


def test_reward_and_termination_gradients_match_finite_differences():
    with jax.enable_x64(True):
        wm = _tiny("mlp", jnp.float64)
        s = jnp.array([0.3, -1.2, 0.7])
        a = jnp.array([0.2, -0.5])
        s1 = jnp.array([0.1, -0.9, 1.0])
        for fn in (
            lambda x: wm.reward(wm.params, x[:OBS], x[OBS:]),
            lambda x: wm.reward_disagreement(wm.params, x[:OBS], x[OBS:]),
            lambda x: wm.done_prob(wm.params, x[:OBS], x[OBS:], s1),
        ):
            x = jnp.concatenate([s, a])
            grad = jax.grad(fn)(x)
            fd = _central_jacobian(lambda y, fn=fn: fn(y)[None], x)[0]
            np.testing.assert_allclose(grad, fd, rtol=1e-5, atol=1e-9)
            assert np.abs(grad).max() > 1e-4


def test_noise_semantics_fixed_identical_different_differs():
    ddpm = _tiny("diffusion", sampler="ddpm")
    ddim = ddpm.with_sampler(sampler="ddim")
    s, a = jnp.ones(OBS), jnp.array([0.5, -0.5])
    step_ddpm = jax.jit(lambda z: ddpm.next_state(ddpm.params, s, a, z))
    step_ddim = jax.jit(lambda z: ddim.next_state(ddim.params, s, a, z))
    z1 = ddpm.sample_noise(jax.random.key(0))
    z2 = ddpm.sample_noise(jax.random.key(1))
    np.testing.assert_array_equal(step_ddpm(z1), step_ddpm(z1))
    assert np.abs(step_ddpm(z1) - step_ddpm(z2)).max() > 1e-3
    # DDPM uses the per-step noise; DDIM only x_K (noise[0]).
    z1_steps = z1.at[1:].set(z2[1:])
    assert np.abs(step_ddpm(z1) - step_ddpm(z1_steps)).max() > 1e-4
    np.testing.assert_allclose(step_ddim(z1), step_ddim(z1_steps), rtol=1e-6, atol=1e-6)
    assert np.abs(step_ddim(z1) - step_ddim(z2)).max() > 1e-3


@pytest.mark.parametrize("model", ["diffusion", "flow", "meanflow", "mlp"])
def test_shapes_jit_vmap_and_batch_axes(model):
    wm = _tiny(model)
    assert wm.kind == model and wm.obs_dim == OBS and wm.act_dim == ACT
    assert set(wm.params) == {"transition", "reward", "termination"}
    batch = 4
    s = jax.random.normal(jax.random.key(0), (batch, OBS))
    a = jax.random.uniform(jax.random.key(1), (batch, ACT), minval=-1, maxval=1)
    noise = wm.sample_noise(jax.random.key(2), (batch,))
    assert noise.shape == (batch, *wm.noise_shape)

    def one(s, a, z):
        s1 = wm.next_state(wm.params, s, a, z)
        return (
            s1,
            wm.reward(wm.params, s, a),
            wm.reward_disagreement(wm.params, s, a),
            wm.done_prob(wm.params, s, a, s1),
        )

    # Full float32 matmuls: on NVIDIA GPUs JAX's default is TF32, whose batched and single-row
    # products differ by up to ~0.7% (seen on an H200); this test is about batching semantics.
    with jax.default_matmul_precision("highest"):
        out_vmap = jax.jit(jax.vmap(one))(s, a, noise)
        one_jit = jax.jit(one)
        out_loop = [one_jit(s[i], a[i], noise[i]) for i in range(batch)]
        out_batch = jax.jit(one)(s, a, noise)  # leading batch axes work without vmap too
    for j, shape in enumerate([(batch, OBS), (batch,), (batch,), (batch,)]):
        assert out_vmap[j].shape == shape
        loop = np.stack([o[j] for o in out_loop])
        np.testing.assert_allclose(out_vmap[j], loop, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(out_vmap[j], out_batch[j], rtol=1e-5, atol=1e-5)
    assert np.all(out_vmap[2] >= 0) and np.all((out_vmap[3] >= 0) & (out_vmap[3] <= 1))
    assert np.all(np.isfinite(out_vmap[0]))


def test_meanflow_identity_one_step_sampler_and_settings():
    with jax.enable_x64(True):
        k = jax.random.split(jax.random.key(0), 3)
        x1 = jax.random.normal(k[0], (512, OBS))
        eps = jax.random.normal(k[1], (512, OBS))
        # With one data point per row the path from x_t runs straight to x1 (t = 0 noise,
        # 1 data), so its average velocity over any [t, r] is (x1 - x_t) / (1 - t): it
        # satisfies this convention's identity u = v + (r - t) du/dt exactly (a wrong
        # tangent sign or time direction gives du/dt != 0, hence a loss) ...
        exact = lambda x, t, r: (x1 - x) / (1.0 - t)  # noqa: E731
        assert meanflow_loss(exact, x1, eps, k[2]) < 1e-9
        # ... and a field that is right at r = t but not over intervals does not.
        off = lambda x, t, r: exact(x, t, r) * (1.0 + (r - t))  # noqa: E731
        assert meanflow_loss(off, x1, eps, k[2]) > 0.05

    # One network call by default: s' = s + (x0 + u(x0, t=0, r=1)) * sd + mu.
    wm = _tiny("meanflow")
    assert wm.config.flow_steps == 1 and wm.noise_shape == (OBS,)
    assert TrainWorldModelConfig(model="meanflow").flow_steps is None  # resolved per model
    s, a = jnp.array([0.3, -1.2, 0.7]), jnp.array([0.2, -0.5])
    x0 = wm.sample_noise(jax.random.key(4))
    c = wm.consts
    net = MLP(wm.config.hidden_dims, OBS, activation=ACTIVATIONS[wm.config.activation])
    inp = jnp.concatenate(
        [
            x0,
            (s - c["obs_mean"]) / c["obs_std"],
            a,
            meanflow_time_features(jnp.zeros(()), jnp.ones(()), wm.config.time_embed_dim),
        ]
    )
    by_hand = s + (x0 + net.apply(wm.params["transition"], inp)) * c["delta_std"] + c["delta_mean"]
    np.testing.assert_allclose(wm.next_state(wm.params, s, a, x0), by_hand, rtol=1e-5, atol=1e-5)
    two = wm.with_sampler(flow_steps=2)
    assert np.abs(two.next_state(two.params, s, a, x0) - by_hand).max() > 1e-3
    with pytest.raises(ValueError, match="flow-solver"):
        wm.with_sampler(flow_solver="midpoint")


def test_bad_shapes_raise_clear_errors():
    wm = _tiny("diffusion")
    z = wm.sample_noise(jax.random.key(0))
    with pytest.raises(ValueError, match="observations of size 3"):
        wm.next_state(wm.params, jnp.zeros(11), jnp.zeros(ACT), z)
    with pytest.raises(ValueError, match="actions of size 2"):
        wm.reward(wm.params, jnp.zeros(OBS), jnp.zeros(3))
    with pytest.raises(ValueError, match="sample_noise"):
        wm.next_state(wm.params, jnp.zeros(OBS), jnp.zeros(ACT), jnp.zeros(OBS))


# --------------------------------------------------------------------------- real Hopper data


def _collect_hopper(steps: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random-policy Hopper-v5 transitions (episodes end when it falls: real terminals)."""
    env = gym.make("Hopper-v5")
    rng = np.random.default_rng(seed)
    fields = ("observations", "actions", "rewards", "next_observations", "terminals", "timeouts")
    rows: dict[str, list] = {k: [] for k in fields}
    obs, _ = env.reset(seed=seed)
    episode = 0
    for i in range(steps):
        act = rng.uniform(-1.0, 1.0, env.action_space.shape).astype(np.float32)
        nxt, rew, term, trunc, _ = env.step(act)
        trunc = trunc or i == steps - 1
        for k, v in zip(fields, (obs, act, rew, nxt, term, trunc), strict=True):
            rows[k].append(v)
        obs = nxt
        if term or trunc:
            episode += 1
            obs, _ = env.reset(seed=seed + episode)
    env.close()
    return {k: np.asarray(v) for k, v in rows.items()}


@pytest.fixture(scope="module")
def hopper_file(tmp_path_factory) -> str:
    """A real D4RL-style .hdf5 file of 4000 Hopper-v5 transitions."""
    arrays = _collect_hopper(4000)
    path = tmp_path_factory.mktemp("data") / "hopper-random-test.hdf5"
    with h5py.File(path, "w") as f:
        for k, v in arrays.items():
            f[k] = v
        f.attrs["env_id"] = "Hopper-v5"
    return str(path)


TRAIN = dict(
    steps=3000,
    chunk=1000,
    hidden_dims=(128, 128),
    reward_hidden_dims=(64, 64),
    reward_ensemble=2,
    termination_hidden_dims=(64, 64),
    batch_size=256,
    lr=1e-3,
    quality_transitions=2000,
    quality_windows=64,
    progress=False,
)


@pytest.fixture(scope="module")
def trained(hopper_file, tmp_path_factory):
    cfg = TrainWorldModelConfig(
        dataset=hopper_file, model="diffusion", out=tmp_path_factory.mktemp("wm"), **TRAIN
    )
    run_dir = train_world_model(cfg)
    return cfg, run_dir


def test_trained_diffusion_beats_no_change_on_held_out_hopper(trained):
    import json

    cfg, run_dir = trained
    q = json.loads((run_dir / "quality.json").read_text())
    assert q["split"] == "validation" and q["transitions"] > 100
    # One-step error under 0.3 x that of "s' = s" (a random Hopper moves a lot per step) ...
    assert q["one_step_mse"] < 0.3 * q["no_change_mse"], q
    # ... and still well below it after 10 open-loop steps with recorded actions.
    assert q["open_loop_windows"] > 10
    assert q["open_loop_mse"]["10"] < 0.3 * q["open_loop_no_change_mse"]["10"], q
    # Reward explains most of its variance; falls are detected on balance.
    assert q["reward_nmse"] < 0.5, q
    assert q["terminals"] > 0 and q["termination_balanced_accuracy"] > 0.7, q


def test_trained_meanflow_beats_no_change_on_held_out_hopper(hopper_file, tmp_path):
    """One-step MeanFlow (one network call per transition) learns real dynamics too."""
    import json

    train = {**TRAIN, "steps": 2000, "quality_transitions": 1000, "quality_windows": 32}
    cfg = TrainWorldModelConfig(dataset=hopper_file, model="meanflow", out=tmp_path, **train)
    q = json.loads((train_world_model(cfg) / "quality.json").read_text())
    assert q["model"] == "meanflow" and q["split"] == "validation"
    assert q["one_step_mse"] < 0.3 * q["no_change_mse"], q
    assert q["open_loop_mse"]["10"] < 0.3 * q["open_loop_no_change_mse"]["10"], q


def test_checkpoint_round_trip_and_env_check(trained, hopper_file, tmp_path):
    cfg, run_dir = trained
    wm = load_world_model(run_dir, env_id="Hopper-v5")
    assert (wm.kind, wm.obs_dim, wm.act_dim, wm.env_id) == ("diffusion", 11, 3, "Hopper-v5")
    assert wm.noise_shape == (cfg.denoise_steps + 1, 11) and wm.meta["done"]
    # Recomputing the report from the loaded checkpoint reproduces quality.json exactly.
    import json

    dataset = load_dataset(hopper_file)
    _, val = dataset.split(cfg.val_fraction, cfg.seed)
    key = jax.random.split(jax.random.key(cfg.seed), 4)[3]
    q = world_model_quality(wm, val, key, max_transitions=2000, num_windows=64)
    stored = json.loads((run_dir / "quality.json").read_text())
    for k in ("one_step_mse", "reward_mse", "termination_accuracy"):
        assert q[k] == pytest.approx(stored[k], rel=1e-5), k
    assert load_world_model(run_dir / "checkpoint.ckpt").meta["env_id"] == "Hopper-v5"

    with pytest.raises(CheckpointError, match="Walker2d-v5"):
        load_world_model(run_dir, env_id="Walker2d-v5")
    blob = bytearray((run_dir / "checkpoint.ckpt").read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    (tmp_path / "checkpoint.ckpt").write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match="corrupt"):
        load_world_model(tmp_path)
    with pytest.raises(CheckpointError, match="No checkpoint"):
        load_world_model(tmp_path / "nowhere")
    # Same folder, different config: refuses to resume instead of mixing runs.
    with pytest.raises(CheckpointError, match="different config"):
        train_world_model(dataclasses.replace(cfg, lr=cfg.lr / 2))


def test_dataset_dimension_mismatch_errors(trained):
    _, run_dir = trained
    wm = load_world_model(run_dir)
    rng = np.random.default_rng(0)
    n = 64
    walker: Dataset = make_dataset(
        {
            "observations": rng.normal(size=(n, 17)),
            "actions": rng.uniform(-1, 1, (n, 6)),
            "rewards": rng.normal(size=n),
            "next_observations": rng.normal(size=(n, 17)),
            "terminals": np.zeros(n, bool),
            "timeouts": np.r_[np.zeros(n - 1, bool), True],
        },
        name="walker-toy",
        env_id="Walker2d-v5",
    )
    with pytest.raises(ValueError, match=r"obs/act sizes \(17, 6\).*expects \(11, 3\)"):
        world_model_quality(wm, walker, jax.random.key(0))
    with pytest.raises(ValueError, match="observations of size 11"):
        wm.next_state(
            wm.params, walker.observations[0], jnp.zeros(3), wm.sample_noise(jax.random.key(0))
        )
