"""Fault injection: run the real commands in subprocesses, break things as a kill would, rerun.

Each case is a row of the reliability table (README, "Reliability"): continuing a finished
run to a larger target (with another --chunk; world models to more --steps), ``kill -9``
mid-training with time-based checkpoints, Ctrl-C, a metrics line cut by a kill, a checkpoint
temporary left by a kill during its write; damaged inputs (empty or foreign ``.hdf5``, a
Minari file cut in half, cut ``metadata.json``/``eval.json``/``config.yaml``, config values
of the wrong type), bad settings, output folders that cannot be written, a full disk, a
missing optional dependency, ``--overwrite`` of a folder mpcdwm did not write, and a dataset
given as a relative and then an absolute path. Every failure must be one line that names the
file or flag, with exit status 2 and no traceback.

Networks are tiny and each command compiles one or two chunk sizes; a command that fails
before any work costs only its process start (about a second).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

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


ENV = {"PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module", autouse=True)
def shared_compilation_cache(tmp_path_factory):
    """One JAX compilation cache for this module's processes: the commands compile the same
    small programs, so a later process loads them (seconds instead of ten)."""
    ENV["JAX_COMPILATION_CACHE_DIR"] = str(tmp_path_factory.mktemp("jax-cache"))
    ENV["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    yield
    del ENV["JAX_COMPILATION_CACHE_DIR"], ENV["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]


def _run(
    args: list[str], cwd: Path, timeout: float = 600, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    # A hang guard, not a speed limit: a loaded 2-core machine takes minutes where a quiet one
    # takes seconds (the 120 s this had failed a fixture beside two trainings).
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **ENV, **(env or {})},
    )


def _cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``mpcdwm ARGS`` in a fresh process, as a user runs it."""
    return _run(["-m", "mpcdwm.cli", *args], cwd=cwd, env=env)


def _one_line_error(proc: subprocess.CompletedProcess) -> str:
    """The failure's single stderr line (exit status 2, no traceback)."""
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
    return lines[0]


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


# ------------------------------------------------------------- continuing runs (issue 16 item 1)


def test_train_agent_resumes_with_another_chunk(run_copy):
    # --chunk was part of the run's identity: a resume with another value was refused,
    # although fit continues any run with any chunk.
    proc = _train_agent(run_copy, 250, "--chunk", "50")
    assert "resuming from step 100 of 250" in proc.stderr
    assert (_meta(run_copy)["step"], _meta(run_copy)["done"]) == (250, True)


# The MLP transition model: resuming is the same for every kind, and it compiles fastest.
TINY_WORLD = [
    "train-world-model",
    "--model", "mlp",
    "--hidden-dims", "32", "32",
    "--reward-hidden-dims", "32",
    "--termination-hidden-dims", "32",
    "--reward-ensemble", "2",
    "--batch-size", "64",
    "--quality-transitions", "200",
    "--quality-windows", "8",
    "--quality-horizons", "1", "2",
    "--no-progress",
]  # fmt: skip


def test_world_model_continues_to_more_steps_from_an_absolute_path(tmp_path):
    """A finished world model asked for more --steps (with another --chunk, the dataset now
    spelled as an absolute path) continues; all three used to refuse the resume."""
    shutil.copytree(DATASET, tmp_path / "hopper")
    first = _cli(*TINY_WORLD, "--dataset", "hopper", "--out", "wm", "--steps", "40", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    more = ["--dataset", str(tmp_path / "hopper"), "--out", "wm", "--steps", "60", "--chunk", "7"]
    second = _cli(*TINY_WORLD, *more, cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resuming from step 40 of 60" in second.stderr
    meta = _meta(tmp_path / "wm")
    assert (meta["step"], meta["done"], meta["steps"]) == (60, True, 60)


# ------------------------------------------------------------------ Ctrl-C (item 4)


def test_ctrl_c_says_where_the_run_resumes_and_it_does(tmp_path):
    out = tmp_path / "agent"
    # Checkpoints only by wall time (every chunk with 0 minutes): --checkpoint-minutes
    # reaches fit from the command line.
    args = [*TRAIN_AGENT, "--out", str(out), "--steps", "1000000", "--chunk", "50"]
    args += ["--checkpoint-every", "1000000000", "--checkpoint-minutes", "0"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "mpcdwm.cli", *args],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **ENV},
        # Python turns SIGINT into KeyboardInterrupt unless the parent left it ignored.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    ckpt = out / "checkpoint.ckpt"
    deadline = time.time() + 60
    try:
        while time.time() < deadline and proc.poll() is None and not ckpt.exists():
            time.sleep(0.1)
        time.sleep(0.3)
    finally:
        proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-3000:]
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert "Traceback" not in err and len(lines) == 1, err[-3000:]
    assert lines[0].startswith("interrupted:") and str(out) in lines[0], lines
    saved = _meta(out)["step"]
    assert saved >= 50 and saved % 50 == 0 and not _meta(out)["done"]
    rerun = _train_agent(out, saved + 30)
    assert f"resuming from step {saved} of {saved + 30}" in rerun.stderr


# ----------------------------------------------- damaged inputs: one line naming the file (item 4)


@pytest.fixture(scope="module")
def damaged(tmp_path_factory) -> Path:
    """A folder of broken inputs, each as a crash or a careless copy leaves it."""
    root = tmp_path_factory.mktemp("damaged")
    (root / "empty.hdf5").write_bytes(b"")
    (root / "notes.hdf5").write_text("observations,actions\n1,2\n")  # not HDF5 at all
    half = shutil.copytree(DATASET, root / "half-copied")
    main = half / "data" / "main_data.hdf5"
    main.write_bytes(main.read_bytes()[: main.stat().st_size // 2])
    cut_meta = shutil.copytree(DATASET, root / "cut-meta")
    meta = cut_meta / "data" / "metadata.json"
    meta.write_text(meta.read_text()[:300])
    evals = root / "runs" / "cut-eval" / "eval"
    evals.mkdir(parents=True)
    (evals / "eval.json").write_text('{"dataset": "mpcdwm/hopper-medium-v0", "seed": 0, "plan')
    run_dir = root / "runs" / "cut-config"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(f"dataset: {DATASET}\nagent:\n  kind: td3bc\n  st")
    (root / "words.yaml").write_text('steps: "three hundred"\n')
    (root / "planners.yaml").write_text(f"dataset: {DATASET}\neval:\n  planners: none\n")
    return root


DAMAGED = {
    # case: (command line, the line must match)
    "empty .hdf5": (
        ["train-agent", "--dataset", "empty.hdf5", "--out", "o"],
        r"dataset empty\.hdf5 is damaged or not in the expected format .*signature",
    ),
    "not HDF5 but named .hdf5": (
        ["train-world-model", "--dataset", "notes.hdf5", "--out", "o"],
        r"dataset notes\.hdf5 is damaged or not in the expected format",
    ),
    "Minari main_data.hdf5 cut in half": (
        ["train-agent", "--dataset", "half-copied", "--out", "o"],
        r"half-copied/data/main_data\.hdf5 is damaged .*truncated file",
    ),
    "cut metadata.json": (
        ["train-world-model", "--dataset", "cut-meta", "--out", "o"],
        r"cut-meta/data/metadata\.json is damaged or cut short",
    ),
    "cut eval.json": (
        ["report", "runs/cut-eval", "--out", "rep"],
        r"cut-eval/eval/eval\.json is damaged or cut short .*re-run `mpcdwm evaluate`",
    ),
    "cut config.yaml of a run": (
        ["run", "--dataset", str(DATASET), "--out", "runs/cut-config"],
        r"run config runs/cut-config/config\.yaml is damaged or cut short .*delete it",
    ),
    "a word where a number belongs": (
        ["train-agent", "--config", "words.yaml", "--dataset", str(DATASET)],
        r"config file words\.yaml: steps must be an integer, got 'three hundred'",
    ),
    "a string where a list belongs": (
        ["run", "--config", "planners.yaml", "--out", "runs/planners"],
        r"planners\.yaml: eval\.planners must be a list .*got 'none'; write \[none\]",
    ),
    "missing dataset file": (
        ["train-agent", "--dataset", "nowhere.hdf5", "--out", "o"],
        r"nowhere\.hdf5 does not exist",
    ),
}


@pytest.mark.parametrize("case", list(DAMAGED))
def test_damaged_input_is_one_line_naming_it(damaged, case):
    args, pattern = DAMAGED[case]
    line = _one_line_error(_cli(*args, cwd=damaged))
    assert re.search(pattern, line), line
    assert not (damaged / "runs" / "planners" / "agent").exists()  # no training started


def test_debug_shows_the_traceback(damaged):
    proc = _cli("--debug", "train-agent", "--dataset", "empty.hdf5", "--out", "o", cwd=damaged)
    assert proc.returncode != 0 and "Traceback" in proc.stderr
    env = {"MPCDWM_DEBUG": "1"}
    proc = _cli("train-agent", "--dataset", "empty.hdf5", "--out", "o", cwd=damaged, env=env)
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_missing_optional_dependency_says_what_to_install(tmp_path):
    spec = tmp_path / "sweep.yaml"
    spec.write_text(yaml.safe_dump({"out": "runs", "datasets": [str(DATASET)]}))
    script = (
        "import sys; sys.modules['ray'] = None  # as if Ray were not installed\n"
        "from mpcdwm.cli import main; sys.exit(main(['sweep', '--config', 'sweep.yaml']))"
    )
    line = _one_line_error(_run(["-c", script], cwd=tmp_path))
    assert 'pip install "mpcdwm[ray]"' in line


def test_full_disk_names_the_file_that_could_not_be_written(tmp_path):
    """ENOSPC while train-agent writes its checkpoint (os.fsync patched to fail as on a full
    disk; the rest of the run is real): one line naming checkpoint.ckpt and the full disk,
    no temporary left behind."""
    script = textwrap.dedent(
        """
        import errno, os, sys

        def full(fd):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        os.fsync = full
        from mpcdwm.cli import main

        sys.exit(main(sys.argv[1:]))
        """
    )
    out = tmp_path / "agent"
    proc = _run(["-c", script, *TRAIN_AGENT, "--out", str(out), "--steps", "50"], cwd=tmp_path)
    line = _one_line_error(proc)
    assert f"{out / 'checkpoint.ckpt'}: no space left on the device (the disk is full)" in line
    assert not list(out.glob(".checkpoint.ckpt.*"))


# ----------------------------------------------------- unwritable outputs, before any work (item 3)


@pytest.fixture(scope="module")
def blocked(tmp_path_factory, finished_run) -> Path:
    """A folder where ``taken`` is a file: every command's output location points at it."""
    root = tmp_path_factory.mktemp("blocked")
    (root / "taken").write_text("a file of the user's\n")
    (root / "sweep.yaml").write_text(
        yaml.safe_dump({"out": "taken", "datasets": [str(DATASET)], "base": {"progress": False}})
    )
    shutil.copytree(finished_run, root / "agent")
    (root / "runs" / "eval").mkdir(parents=True)
    return root


OUTPUTS = {
    # command: (command line, the flag the line must name)
    "collect --out": (["collect", "--recipe", "random", "--out", "taken/data"], "--out"),
    "collect --agent-dir": (["collect", "--out", "new", "--agent-dir", "taken"], "--agent-dir"),
    "train-agent": (["train-agent", "--dataset", str(DATASET), "--out", "taken"], "--out"),
    "train-world-model": (
        ["train-world-model", "--dataset", str(DATASET), "--out", "taken"],
        "--out",
    ),
    "evaluate": (["evaluate", "--agent", "agent", "--planner", "none", "--out", "taken"], "--out"),
    "run": (["run", "--dataset", str(DATASET), "--out", "taken"], "--out"),
    "report": (["report", "runs", "--out", "taken"], "--out"),
    "sweep": (["sweep", "--config", "sweep.yaml"], "the sweep's out (sweep.yaml)"),
    "demo": (["demo", "--out", "taken"], "--out"),
}


@pytest.mark.parametrize("command", list(OUTPUTS))
def test_unwritable_output_fails_before_any_work(blocked, command):
    # evaluate used to play every episode and then fail on its --out.
    args, flag = OUTPUTS[command]
    line = _one_line_error(_cli(*args, cwd=blocked))
    assert f"error: {flag} taken" in line and "is a file, not a folder" in line, line
    assert (blocked / "taken").read_text() == "a file of the user's\n"


@pytest.mark.skipif(not Path("/sys/kernel").is_dir(), reason="needs a Linux /sys")
def test_output_without_write_permission_is_named(tmp_path):
    # The tests run as root, for whom a chmod'ed folder stays writable; no one may create
    # folders in sysfs, so an --out there is refused as for a user without permission.
    out = "/sys/mpcdwm-test/agent"
    line = _one_line_error(
        _cli("train-agent", "--dataset", str(DATASET), "--out", out, cwd=tmp_path)
    )
    assert f"--out {out}: cannot write there:" in line
    assert re.search("permission denied|read-only", line), line


# ------------------------------------------------------ bad settings, before any work (item 5)


BAD_SETTINGS = {
    "train-agent --batch-size 0": (
        ["train-agent", "--batch-size", "0"],
        "--batch-size must be >= 1",
    ),
    "train-agent --batch-size -5": (
        ["train-agent", "--batch-size", "-5"],
        "--batch-size must be >= 1",
    ),
    "train-agent --hidden-dims 0": (
        ["train-agent", "--hidden-dims", "0"],
        "--hidden-dims must be >= 1, got [0]",
    ),
    "train-agent --gamma 1.0": (["train-agent", "--gamma", "1.0"], "--gamma must be in [0, 1)"),
    "train-agent --gamma -0.5": (["train-agent", "--gamma", "-0.5"], "--gamma must be in [0, 1)"),
    "train-agent --agent-set tau=0": (
        ["train-agent", "--agent-set", "tau=0"],
        "agent setting tau (--agent-set tau=...) must be in (0, 1], got 0.0",
    ),
    "train-agent --checkpoint-minutes -1": (
        ["train-agent", "--checkpoint-minutes", "-1"],
        "--checkpoint-minutes must be >= 0",
    ),
    "train-world-model --lr 0": (["train-world-model", "--lr", "0"], "--lr must be > 0"),
    "train-world-model --val-fraction 1": (
        ["train-world-model", "--val-fraction", "1"],
        "--val-fraction must be in [0, 1)",
    ),
    "evaluate --episodes 0": (
        ["evaluate", "--agent", "x", "--planner", "none", "--episodes", "0"],
        "--episodes must be >= 1",
    ),
    "collect --medium-fraction 0": (
        ["collect", "--medium-fraction", "0"],
        "--medium-fraction must be in (0, 1]",
    ),
    "collect --eval-every 0": (["collect", "--eval-every", "0"], "--eval-every must be >= 1"),
    "run --agent.batch-size 0": (
        ["run", "--agent.batch-size", "0"],
        "--agent.batch-size must be >= 1",
    ),
    "run --eval.episodes 0": (["run", "--eval.episodes", "0"], "--eval.episodes must be >= 1"),
    "run --world-model.denoise-steps 0": (
        ["run", "--world-model.denoise-steps", "0"],
        "--world-model.denoise-steps must be >= 1",
    ),
}


@pytest.mark.parametrize("case", list(BAD_SETTINGS))
def test_bad_setting_fails_before_any_work_naming_flag_and_range(tmp_path, case):
    """batch size 0 used to train a whole run on NaN, hidden size 0 gave a JAX traceback,
    gamma 1.0 divided by zero in evaluation, `run --eval.episodes 0` failed after training."""
    args, expected = BAD_SETTINGS[case]
    command, *flags = args
    data = [] if command in ("evaluate", "collect") else ["--dataset", str(DATASET)]
    line = _one_line_error(_cli(command, *data, "--out", "out", *flags, cwd=tmp_path))
    assert expected in line, line
    assert not (tmp_path / "out" / "checkpoint.ckpt").exists()
    assert not (tmp_path / "out" / "agent").exists()


# ------------------------------------------------------------- --overwrite (item 2)


def test_overwrite_deletes_only_datasets_mpcdwm_wrote(tmp_path):
    mine = tmp_path / "my-results"
    mine.mkdir()
    (mine / "thesis.tex").write_text("months of work\n")
    tampered = shutil.copytree(DATASET, tmp_path / "tampered")
    (tampered / "notes.txt").write_text("mine\n")
    root = tmp_path / "minari"
    (root / "mpcdwm" / "mine-v0").mkdir(parents=True)
    (root / "mpcdwm" / "mine-v0" / "keep.txt").write_text("mine\n")
    quick = ["collect", "--recipe", "random", "--steps", "100", "--max-episode-steps", "20"]
    quick += ["--no-progress", "--overwrite"]
    env = {"MINARI_DATASETS_PATH": str(root)}
    for target in (
        ["--out", str(mine)],
        ["--out", str(tampered)],
        ["--dataset-id", "mpcdwm/mine-v0"],
    ):
        line = _one_line_error(_cli(*quick, *target, cwd=tmp_path, env=env))
        assert "--overwrite refuses to delete" in line and target[1] in line, line
    assert (mine / "thesis.tex").is_file() and (tampered / "notes.txt").is_file()
    assert (root / "mpcdwm" / "mine-v0" / "keep.txt").is_file()
    # A dataset mpcdwm wrote is replaced.
    ours = shutil.copytree(DATASET, tmp_path / "ours")
    proc = _cli(*quick, "--out", str(ours), cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    meta = json.loads((ours / "data" / "metadata.json").read_text())
    assert meta["total_steps"] == 100 and meta["mpcdwm_recipe"] == "random"


# ------------------------------------------------ the same dataset, relative then absolute (item 6)


def test_run_accepts_the_same_dataset_as_relative_then_absolute_path(tmp_path):
    shutil.copytree(DATASET, tmp_path / "data" / "hopper")
    tiny = ["--agent.kind", "td3bc", "--agent.steps", "50", "--agent.batch-size", "64"]
    tiny += ["--agent.set", "hidden_dims=32,32", "--eval.planners", "none"]
    tiny += ["--eval.episodes", "1", "--eval.max-steps", "5", "--no-progress"]
    first = _cli("run", "--dataset", "data/hopper", "--out", "run", *tiny, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    absolute = str(tmp_path / "data" / "hopper")
    second = _cli("run", "--dataset", absolute, "--out", "run", *tiny, cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]  # was: "already holds an agent..."
    assert second.stderr.count("done already") == 2  # agent and evaluation kept
    assert "differs in" not in second.stderr
    data = json.loads((tmp_path / "run" / "eval" / "eval.json").read_text())
    assert data["dataset_path"] == absolute  # reports tell datasets that share an id apart
