"""The shared training loop and checkpoint files: round-trips, damage, resume equivalence."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mpcdwm.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from mpcdwm.nets import MLP
from mpcdwm.train import fit

NET = MLP((16, 16), 1)
OPT = optax.adam(1e-2)


def _state(seed: int = 0):
    params = NET.init(jax.random.key(seed), jnp.zeros(3))
    return {"params": params, "opt": OPT.init(params)}


def _update(state, batch, key, scale=1.0):
    def loss_fn(p):
        noise = 0.01 * jax.random.normal(key, batch["y"].shape)  # uses the key: tests determinism
        pred = NET.apply(p, batch["x"])[:, 0]
        return jnp.mean((pred - batch["y"] - noise) ** 2) * scale

    loss, grads = jax.value_and_grad(loss_fn)(state["params"])
    updates, opt = OPT.update(grads, state["opt"])
    return {"params": optax.apply_updates(state["params"], updates), "opt": opt}, {"loss": loss}


@pytest.fixture(scope="module")
def data():
    x = np.random.default_rng(0).normal(size=(512, 3)).astype(np.float32)
    y = np.sin(x).sum(1)
    return {"x": jnp.asarray(x), "y": jnp.asarray(y)}


def _fit(data, out_dir, steps, update=_update, **kw):
    return fit(
        name="toy",
        update=update,
        state=_state(),
        data=data,
        key=jax.random.key(7),
        steps=steps,
        batch_size=32,
        out_dir=out_dir,
        meta={"config": {"lr": 1e-2}},
        chunk=100,
        checkpoint_every=100,
        progress=False,
        **kw,
    )


def test_fit_learns_and_resume_is_bit_exact(tmp_path, data):
    full, last = _fit(data, tmp_path / "full", 400)
    first_loss = float(jnp.mean((NET.apply(_state()["params"], data["x"])[:, 0] - data["y"]) ** 2))
    final_loss = float(jnp.mean((NET.apply(full["params"], data["x"])[:, 0] - data["y"]) ** 2))
    assert final_loss < 0.5 * first_loss

    # "Killed" after 200 steps, then run again to 400 in the same folder.
    _fit(data, tmp_path / "resumed", 200)
    resumed, _ = _fit(data, tmp_path / "resumed", 400)
    for a, b in zip(
        jax.tree_util.tree_leaves(full), jax.tree_util.tree_leaves(resumed), strict=True
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    steps_logged = [
        int(line.split('"step": ')[1].split(",")[0])
        for line in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
    ]
    assert steps_logged == [100, 200, 300, 400]


def test_resume_with_other_config_is_refused(tmp_path, data):
    _fit(data, tmp_path, 100)
    with pytest.raises(CheckpointError, match="different config"):
        fit(
            name="toy",
            update=_update,
            state=_state(),
            data=data,
            key=jax.random.key(7),
            steps=200,
            batch_size=32,
            out_dir=tmp_path,
            meta={"config": {"lr": 5e-2}},
            chunk=100,
            progress=False,
        )


def test_divergence_stops_with_state_saved(tmp_path, data):
    bad = functools.partial(_update, scale=jnp.nan)
    with pytest.raises(FloatingPointError, match="loss became nan"):
        _fit(data, tmp_path, 200, update=bad)
    assert (tmp_path / "diverged.ckpt").exists()


def test_checkpoint_roundtrip_and_damage(tmp_path):
    state = {**_state(), "key": jax.random.key(3), "step": np.int64(12)}
    path = save_checkpoint(tmp_path / "a.ckpt", state, {"env_id": "Hopper-v5", "obs_dim": 11})
    assert [p.name for p in tmp_path.iterdir()] == ["a.ckpt"]  # no temp file left behind
    restored, meta = load_checkpoint(
        path, target=_state() | {"key": jax.random.key(0), "step": np.int64(0)}
    )
    assert meta == {"env_id": "Hopper-v5", "obs_dim": 11}
    assert (
        jax.random.key_data(restored["key"]).tolist() == jax.random.key_data(state["key"]).tolist()
    )
    for a, b in zip(
        jax.tree_util.tree_leaves(restored["params"]),
        jax.tree_util.tree_leaves(state["params"]),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)

    with pytest.raises(CheckpointError, match="made for env_id='Hopper-v5'"):
        load_checkpoint(path, expect={"env_id": "Walker2d-v5"})

    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    (tmp_path / "flipped.ckpt").write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match="corrupted"):
        load_checkpoint(tmp_path / "flipped.ckpt")
    (tmp_path / "cut.ckpt").write_bytes(path.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(tmp_path / "cut.ckpt")
    with pytest.raises(CheckpointError, match="No checkpoint"):
        load_checkpoint(tmp_path / "missing.ckpt")

    other = {"params": MLP((16, 8), 1).init(jax.random.key(0), jnp.zeros(3))}
    with pytest.raises(CheckpointError, match="shape"):
        load_checkpoint(
            path,
            target={
                **other,
                "opt": OPT.init(other["params"]),
                "key": jax.random.key(0),
                "step": np.int64(0),
            },
        )
