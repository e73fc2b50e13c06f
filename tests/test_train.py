"""The shared training loop and checkpoint files: round-trips, damage, resume equivalence."""

from __future__ import annotations

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mpcdwm.checkpoint import (
    MISSING,
    PROCESS_START,
    CheckpointError,
    config_differences,
    describe_differences,
    load_checkpoint,
    save_checkpoint,
)
from mpcdwm.nets import MLP
from mpcdwm.train import RunLogError, fit

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
    kw = {"chunk": 100, "checkpoint_every": 100, **kw}
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
        progress=False,
        **kw,
    )


def _updates_done(state) -> int:
    return int(state["opt"][0].count)  # Adam's own counter: one per applied update


def _logged(out_dir) -> list[dict]:
    return [json.loads(ln) for ln in (out_dir / "metrics.jsonl").read_text().splitlines()]


def _ckpt_meta(out_dir) -> dict:
    return load_checkpoint(out_dir / "checkpoint.ckpt")[1]


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


@pytest.mark.parametrize(
    ("first", "first_chunk", "target", "chunk"),
    [
        (300, 100, 600, 1000),  # was: TypeError ('NoneType' object is not callable)
        (250, 200, 420, 200),  # was: trained to 430, final checkpoint never written
        (100, 100, 250, 100),  # target not a multiple of the chunk
        (250, 100, 330, 100),  # remainder smaller than one chunk
        (200, 100, 450, 150),  # chunk changed between runs
    ],
)
def test_continuing_to_any_target_ends_exactly_there(
    tmp_path, data, first, first_chunk, target, chunk
):
    _fit(data, tmp_path, first, chunk=first_chunk)
    state, _ = _fit(data, tmp_path, target, chunk=chunk)
    assert _updates_done(state) == target
    meta = _ckpt_meta(tmp_path)
    assert (meta["step"], meta["target_steps"], meta["done"]) == (target, target, True)
    restored, _ = load_checkpoint(
        tmp_path / "checkpoint.ckpt",
        {"train": _state(), "key": jax.random.key(0), "step": np.int64(0)},
    )
    assert _updates_done(restored["train"]) == target
    steps = [r["step"] for r in _logged(tmp_path)]
    assert steps == sorted(set(steps)) and steps[-1] == target


def test_fewer_steps_than_done_trains_nothing_and_changes_nothing(tmp_path, data, capsys):
    done, _ = _fit(data, tmp_path, 300)
    files = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    state, _ = _fit(data, tmp_path, 200)
    assert "already at step 300; 200 steps asked, nothing to train" in capsys.readouterr().err
    assert _updates_done(state) == 300
    for a, b in zip(jax.tree_util.tree_leaves(done), jax.tree_util.tree_leaves(state), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == files


def test_one_compile_per_chunk_size(tmp_path, data):
    traces = []

    def counting(state, batch, key):
        traces.append(1)  # runs once per trace, not per update
        return _update(state, batch, key)

    _fit(data, tmp_path, 250, update=counting)  # chunks of 100, 100, 50
    assert len(traces) == 2
    traces.clear()
    _fit(data, tmp_path, 250, update=counting)  # nothing left: nothing compiled
    assert traces == []


def test_time_based_checkpoint_bounds_the_loss_of_a_kill(tmp_path, data):
    class Killed(Exception):
        pass

    def kill_at(step):
        def eval_fn(state):
            if _updates_done(state) >= step:
                raise Killed  # as if killed right after this chunk, before its checkpoint
            return {}

        return eval_fn

    kw = {"checkpoint_every": 10_000, "eval_every": 100}
    # Step-based only (the old behaviour): killed at step 500 of 800, nothing saved.
    with pytest.raises(Killed):
        _fit(data, tmp_path / "steps", 800, eval_fn=kill_at(500), **kw)
    assert not (tmp_path / "steps" / "checkpoint.ckpt").exists()
    # With a time budget of ~0 every chunk is saved: only the killed chunk is lost.
    with pytest.raises(Killed):
        _fit(data, tmp_path / "time", 800, eval_fn=kill_at(500), checkpoint_minutes=0, **kw)
    meta = _ckpt_meta(tmp_path / "time")
    assert (meta["step"], meta["done"]) == (400, False)
    # And the resumed run still ends bit-for-bit where an uninterrupted one ends.
    resumed, _ = _fit(data, tmp_path / "time", 800, **kw)
    full, _ = _fit(data, tmp_path / "full", 800, **kw)
    for a, b in zip(
        jax.tree_util.tree_leaves(full), jax.tree_util.tree_leaves(resumed), strict=True
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_eval_results_only_on_the_lines_where_they_ran(tmp_path, data):
    calls = []

    def eval_fn(state):
        calls.append(_updates_done(state))
        return {"eval_score": float(len(calls))}

    _, last = _fit(data, tmp_path, 500, eval_fn=eval_fn, eval_every=200)
    assert calls == [200, 400, 500]
    lines = _logged(tmp_path)
    assert [r["step"] for r in lines if "eval_score" in r] == calls
    assert all("loss" in r for r in lines)
    assert last["eval_score"] == 3.0 and "loss" in last
    assert _ckpt_meta(tmp_path)["last"]["eval_score"] == 3.0


def test_torn_last_metrics_line_is_dropped_with_a_warning(tmp_path, data, capsys):
    _fit(data, tmp_path, 200)
    log = tmp_path / "metrics.jsonl"
    with log.open("a") as f:
        f.write('{"step": 300, "lo')  # killed mid-write
    _fit(data, tmp_path, 300)
    err = capsys.readouterr().err
    assert f"warning: {log}: dropped its cut last line" in err
    assert [r["step"] for r in _logged(tmp_path)] == [100, 200, 300]


def test_damaged_metrics_line_before_the_end_is_an_error(tmp_path, data):
    _fit(data, tmp_path, 200)
    log = tmp_path / "metrics.jsonl"
    first, second = log.read_text().splitlines()
    log.write_text(f"{first}\n{{garbage\n{second}\n")
    with pytest.raises(RunLogError, match=r"metrics\.jsonl, line 2: .*delete that line"):
        _fit(data, tmp_path, 300)
    assert log.read_text() == f"{first}\n{{garbage\n{second}\n"  # left for the user to fix


def test_resume_with_other_config_is_refused(tmp_path, data):
    _fit(data, tmp_path, 100)
    # The refusal names the setting that differs, saved value first.
    with pytest.raises(
        CheckpointError, match=r"different config \(saved -> now: lr 0\.01 -> 0\.05\)"
    ):
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


def test_save_removes_only_stale_temporaries_of_that_checkpoint(tmp_path):
    # Older than this process (a suite slower than an hour once made "an hour ago" too recent).
    old = PROCESS_START - 3600
    stale = tmp_path / ".a.ckpt.x1y2_z3w.tmp"  # left by a killed write of a.ckpt
    others = [
        tmp_path / ".b.ckpt.x1y2_z3w.tmp",  # another checkpoint's
        tmp_path / ".a.ckpt.toolongname.tmp",  # not a mkstemp name
        tmp_path / "a.ckpt.x1y2_z3w.tmp",  # not hidden
        tmp_path / "notes.tmp",
    ]
    fresh = tmp_path / ".a.ckpt.abcdefgh.tmp"  # a write newer than this process: not ours
    for p in [stale, *others, fresh]:
        p.write_bytes(b"x")
        os.utime(p, (old, old))
    os.utime(fresh, None)
    save_checkpoint(tmp_path / "a.ckpt", {"x": np.zeros(2)}, {})
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["a.ckpt", fresh.name, *(p.name for p in others)]
    )


def test_config_differences_name_nested_settings():
    saved = {"agent": {"lr": 3e-4, "network": "flax"}, "batch": 256, "old": 1}
    now = {"agent": {"lr": 3e-4, "network": "torch", "new": True}, "batch": 256}
    diff = config_differences(saved, now)
    assert diff == {
        "agent.network": ("flax", "torch"),
        "agent.new": (MISSING, True),
        "old": (1, MISSING),
    }
    assert config_differences(now, now) == {}
    # A setting stored as None is not the same as one that is absent.
    assert config_differences({"a": None}, {}) == {"a": (None, MISSING)}
    line = describe_differences(diff, limit=2)
    assert line == "agent.network 'flax' -> 'torch', agent.new (missing) -> True, and 1 more"
