"""Fault injection: run the real commands in subprocesses, break things as a kill would, rerun.

Each case is a row of the reliability table: continuing a finished run to a larger target,
``kill -9`` mid-training with time-based checkpoints, a metrics line cut by a kill and a
checkpoint temporary left by a kill during its write. Networks are tiny and each command
compiles one or two chunk sizes, so a case costs one or two process starts.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import mpcdwm
from mpcdwm.checkpoint import load_checkpoint

DATASET = Path(mpcdwm.__file__).parent / "assets" / "hopper-medium-v0"
# The shipped Hopper dataset with a small TD3+BC and no evaluation episodes: the cost is
# the process start and one compile per chunk size.
TRAIN_AGENT = [
    "train-agent",
    "--dataset",
    str(DATASET),
    "--agent",
    "td3bc",
    "--hidden-dims",
    "32",
    "32",
    "--batch-size",
    "64",
    "--eval-episodes",
    "0",
    "--no-progress",
]


def _run(args: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def _train_agent(out: Path, steps: int, *extra: str) -> subprocess.CompletedProcess:
    proc = _run(
        ["-m", "mpcdwm.cli", *TRAIN_AGENT, "--out", str(out), "--steps", str(steps), *extra],
        cwd=out.parent,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc


def _meta(out: Path) -> dict:
    return load_checkpoint(out / "checkpoint.ckpt")[1]


def _logged_steps(out: Path) -> list[int]:
    return [json.loads(ln)["step"] for ln in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A finished 100-update train-agent run (default --chunk 1000)."""
    out = tmp_path_factory.mktemp("faults") / "agent"
    _train_agent(out, 100)
    meta = _meta(out)
    assert (meta["step"], meta["done"]) == (100, True)
    return out


@pytest.fixture
def run_copy(finished_run, tmp_path) -> Path:
    out = tmp_path / "agent"
    shutil.copytree(finished_run, out)
    return out


def test_continuing_a_finished_run_to_a_larger_target_ends_there(run_copy):
    # 100 -> 250 with the default chunk: the remaining 150 is no multiple of anything the old
    # loop computed (it crashed with "'NoneType' object is not callable").
    proc = _train_agent(run_copy, 250)
    assert "resuming from step 100 of 250" in proc.stderr
    meta = _meta(run_copy)
    assert (meta["step"], meta["done"]) == (250, True)
    assert _logged_steps(run_copy) == [100, 250]


def test_debris_of_kills_neither_blocks_nor_outlives_the_next_run(run_copy):
    """A metrics line cut by a kill and a checkpoint temporary left by a kill during a save
    (one continuation run checks both: each case costs a process start and a compile)."""
    log = run_copy / "metrics.jsonl"
    with log.open("a") as f:
        f.write('{"step": 200, "actor_loss": -0.8')  # kill -9 in the middle of a write
    stale = run_copy / ".checkpoint.ckpt.k3x_9q2a.tmp"  # as left by a kill during a save
    unrelated = [run_copy / ".world.ckpt.k3x_9q2a.tmp", run_copy / "notes.tmp"]
    hour_ago = time.time() - 3600
    for p in (stale, *unrelated):
        p.write_bytes(b"\0" * 4096)
        os.utime(p, (hour_ago, hour_ago))

    proc = _train_agent(run_copy, 250)
    # The cut line: dropped with a one-line warning naming the file; the resume goes on.
    warnings = [ln for ln in proc.stderr.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 1 and str(log) in warnings[0], proc.stderr
    assert _logged_steps(run_copy) == [100, 250]
    assert _meta(run_copy)["step"] == 250
    # The temporary: removed; files that are not this checkpoint's temporaries: kept.
    assert not stale.exists()
    assert all(p.exists() for p in unrelated)


# Drives mpcdwm.train.fit directly: train-agent has no --checkpoint-minutes flag.
TOY_FIT = textwrap.dedent(
    """
    import sys

    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    from mpcdwm.train import fit

    out, steps, minutes = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    opt = optax.sgd(1e-3)
    x = np.random.default_rng(0).normal(size=(256, 4)).astype(np.float32)
    data = {"x": jnp.asarray(x), "y": jnp.asarray(x @ np.arange(4, dtype=np.float32))}


    def update(state, batch, key):
        loss, grad = jax.value_and_grad(
            lambda w: jnp.mean((batch["x"] @ w - batch["y"]) ** 2)
        )(state["w"])
        upd, opt_state = opt.update(grad, state["opt"])
        return {"w": optax.apply_updates(state["w"], upd), "opt": opt_state}, {"loss": loss}


    w = jnp.zeros(4)
    fit(
        name="toy",
        update=update,
        state={"w": w, "opt": opt.init(w)},
        data=data,
        key=jax.random.key(0),
        steps=steps,
        batch_size=32,
        out_dir=out,
        meta={"config": {"toy": 1}},
        chunk=50,
        checkpoint_every=10**9,  # never by steps: only the time-based checkpoint can save
        checkpoint_minutes=minutes,
        progress=False,
    )
    """
)


def test_kill_9_with_time_based_checkpoints_resumes_from_the_saved_step(tmp_path):
    script = tmp_path / "toy_fit.py"
    script.write_text(TOY_FIT)
    out = tmp_path / "toy"
    proc = subprocess.Popen(
        [sys.executable, str(script), str(out), str(10**9), "0.002"],  # save every ~0.1 s
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    ckpt = out / "checkpoint.ckpt"
    deadline = time.time() + 60
    try:
        while time.time() < deadline and proc.poll() is None:
            if ckpt.exists() and load_checkpoint(ckpt)[1]["step"] >= 500:
                break
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, err.decode()[-2000:]
    meta = load_checkpoint(ckpt)[1]
    saved = meta["step"]
    assert saved >= 500 and saved % 50 == 0 and not meta["done"]

    target = saved + 120  # not a multiple of the chunk
    rerun = _run([str(script), str(out), str(target), "5"], cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert f"resuming from step {saved} of {target}" in rerun.stderr
    meta = load_checkpoint(ckpt)[1]
    assert (meta["step"], meta["done"]) == (target, True)
    assert _logged_steps(out)[-1] == target
    assert not list(out.glob(".checkpoint.ckpt.*.tmp"))  # a save the kill cut is cleaned up
