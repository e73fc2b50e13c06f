"""`mpcdwm run`, `report` and `sweep` end to end on a tiny real dataset with tiny budgets."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import yaml

from mpcdwm.collect import CollectConfig, collect
from mpcdwm.configs import config_from_mapping
from mpcdwm.mpc import MPCConfig
from mpcdwm.pipeline import AgentStage, EvalStage, RunConfig, WorldModelStage, run
from mpcdwm.report import ReportConfig, report

TINY_MPC = MPCConfig(adapt_steps=2, num_rollouts=4, horizon=3)


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory) -> str:
    """2000 random Hopper-v5 steps written as a Minari dataset folder."""
    out = tmp_path_factory.mktemp("data") / "hopper-random"
    return collect(
        CollectConfig(env="Hopper-v5", recipe="random", steps=2000, seed=0, out=out, progress=False)
    )


def _tiny_run(dataset: str, out: Path, seed: int = 0) -> RunConfig:
    return RunConfig(
        dataset=dataset,
        out=out,
        seed=seed,
        agent=AgentStage(steps=300),
        world_model=WorldModelStage(steps=300),
        eval=EvalStage(planners=("none", "mpc"), episodes=2, max_steps=25),
        mpc=TINY_MPC,
        progress=False,
    )


@pytest.fixture(scope="module")
def finished_run(tiny_dataset, tmp_path_factory) -> Path:
    return run(_tiny_run(tiny_dataset, tmp_path_factory.mktemp("runs") / "a"))


def test_run_writes_every_stage(finished_run):
    for stage in (
        "agent/checkpoint.ckpt",
        "world_model/checkpoint.ckpt",
        "eval/eval.json",
        "report/report.md",
        "report/report.html",
        "config.yaml",
    ):
        assert (finished_run / stage).is_file(), stage
    result = json.loads((finished_run / "eval" / "eval.json").read_text())
    for planner in ("none", "mpc"):
        entry = result["planners"][planner]
        assert len(entry["returns"]) == 2
        assert {"mean", "std"} <= set(entry["normalized_score"])
    saved = yaml.safe_load((finished_run / "config.yaml").read_text())
    assert saved["agent"]["steps"] == 300 and saved["mpc"]["horizon"] == 3
    assert saved["agent"]["set"] == [] and saved["eval"]["planners"] == ["none", "mpc"]


def test_rerun_skips_finished_stages_and_redoes_missing_ones(finished_run, tiny_dataset, capfd):
    agent_ckpt = finished_run / "agent" / "checkpoint.ckpt"
    before = agent_ckpt.stat().st_mtime_ns
    (finished_run / "eval" / "eval.json").unlink()
    run(_tiny_run(tiny_dataset, finished_run))
    err = capfd.readouterr().err
    assert err.count("skipped") == 2  # agent and world model
    assert agent_ckpt.stat().st_mtime_ns == before
    eval_json = finished_run / "eval" / "eval.json"
    assert eval_json.is_file()

    # An eval.json written before a config field existed (here the planner's terminal_action,
    # at its default) and a changed display option still count as done ...
    data = json.loads(eval_json.read_text())
    del data["config"]["mpc"]["terminal_action"]
    eval_json.write_text(json.dumps(data))
    cfg = _tiny_run(tiny_dataset, finished_run)
    run(dataclasses.replace(cfg, progress=not cfg.progress))
    assert capfd.readouterr().err.count("skipped") == 3
    # ... but a real change of the evaluation re-runs it.
    run(dataclasses.replace(cfg, mpc=dataclasses.replace(cfg.mpc, terminal_action="pretrained")))
    assert capfd.readouterr().err.count("skipped") == 2
    assert json.loads(eval_json.read_text())["config"]["mpc"]["terminal_action"] == "pretrained"
    # A damaged eval.json (a write cut short by another tool) is redone, not an error.
    eval_json.write_text('{"config": {"episodes": 2')
    run(cfg)
    assert capfd.readouterr().err.count("skipped") == 2
    assert len(json.loads(eval_json.read_text())["planners"]["mpc"]["returns"]) == 2


def test_training_a_stage_further_makes_its_evaluation_stale(tiny_dataset, tmp_path, capfd):
    """eval.json records which checkpoints it evaluated (step, digest); more agent steps on a
    finished run train on and re-evaluate instead of keeping the old eval.json."""
    cfg = dataclasses.replace(
        _tiny_run(tiny_dataset, tmp_path / "run"),
        eval=EvalStage(planners=("none",), episodes=1, max_steps=10),
    )
    run(cfg)
    eval_json = tmp_path / "run" / "eval" / "eval.json"
    first = json.loads(eval_json.read_text())["agent"]
    assert (first["steps"], first["done"], first["kind"]) == (300, True, "rebrac")
    capfd.readouterr()
    run(dataclasses.replace(cfg, agent=dataclasses.replace(cfg.agent, steps=400)))
    assert capfd.readouterr().err.count("skipped") == 1  # the world model only (not needed)
    second = json.loads(eval_json.read_text())["agent"]
    assert second["steps"] == 400 and second["digest"] != first["digest"]
    # Unchanged now: the evaluation is done.
    run(dataclasses.replace(cfg, agent=dataclasses.replace(cfg.agent, steps=400)))
    assert capfd.readouterr().err.count("skipped") == 3


def test_changed_stage_identity_is_refused(finished_run, tiny_dataset):
    """An agent override (or kind) other than the one trained in the run dir is refused
    before anything runs, also against a config.yaml written before stages were nested."""
    cfg = _tiny_run(tiny_dataset, finished_run)
    config = finished_run / "config.yaml"
    saved = config.read_text()
    override = dataclasses.replace(cfg.agent, set=("actor_bc_coef=0.1",))
    with pytest.raises(ValueError, match=r"agent\.set=\['actor_bc_coef=0\.1'\].*new --out"):
        run(dataclasses.replace(cfg, agent=override))
    assert config.read_text() == saved
    flat = {"dataset": tiny_dataset, "seed": 0, "agent": "iql", "agent_steps": 300}
    try:
        config.write_text(yaml.safe_dump(flat))
        with pytest.raises(ValueError, match="agent.kind='iql'"):
            run(cfg)
    finally:
        config.write_text(saved)


def test_run_flags_are_grouped_by_stage():
    import tyro

    cfg = tyro.cli(
        RunConfig,
        args=[
            "--dataset",
            "d",
            "--agent.kind",
            "td3bc",
            "--agent.set",
            "actor_bc_coef=0.1",
            "--world-model.denoise-steps",
            "3",
            "--eval.planners",
            "none",
            "--mpc.horizon",
            "4",
        ],
    )
    assert cfg.agent == AgentStage(kind="td3bc", set=("actor_bc_coef=0.1",))
    assert cfg.world_model == WorldModelStage(denoise_steps=3)
    assert cfg.eval.planners == ("none",) and cfg.mpc.horizon == 4


def test_killed_run_resumes(tiny_dataset, tmp_path):
    """Kill `mpcdwm run` while the agent trains; the second run resumes from its checkpoint."""
    out = tmp_path / "killed"
    args = [
        sys.executable,
        "-m",
        "mpcdwm.cli",
        "run",
        "--dataset",
        tiny_dataset,
        "--out",
        str(out),
        "--agent.steps",
        "200000",
        "--checkpoint-every",
        "300",
        "--no-progress",
    ]
    proc = subprocess.Popen(
        args,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    ckpt = out / "agent" / "checkpoint.ckpt"
    deadline = time.time() + 240
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert ckpt.exists(), proc.stdout.read().decode()[-2000:]
    from mpcdwm.checkpoint import load_checkpoint

    _, meta = load_checkpoint(ckpt)
    assert 0 < meta["step"] < 200_000 and not meta["done"]
    # Resume with the same config but a budget that ends soon after the saved step.
    from mpcdwm.agents import TrainAgentConfig, train_agent

    resumed = train_agent(
        TrainAgentConfig(
            dataset=tiny_dataset, steps=meta["step"] + 300, out=out / "agent", progress=False
        )
    )
    _, meta2 = load_checkpoint(Path(resumed) / "checkpoint.ckpt")
    assert meta2["done"] and meta2["step"] == meta["step"] + 300


def test_report_table_matches_eval_json_and_plots_are_real(finished_run, tiny_dataset, tmp_path):
    # The second seed evaluates the planner settings finished_run's eval.json holds now (an
    # earlier test may have re-evaluated it with others): one method, two seeds.
    stored = json.loads((finished_run / "eval" / "eval.json").read_text())["config"]["mpc"]
    cfg = _tiny_run(tiny_dataset, tmp_path / "seed1", seed=1)
    second = run(dataclasses.replace(cfg, mpc=config_from_mapping(MPCConfig, stored)))
    out = report(ReportConfig(runs=(finished_run, second), out=tmp_path / "report"))
    summary = json.loads((out.parent / "summary.json").read_text())
    seed_means = {}
    for run_dir in (finished_run, second):
        result = json.loads((run_dir / "eval" / "eval.json").read_text())
        for planner, entry in result["planners"].items():
            seed_means.setdefault(planner, []).append(entry["normalized_score"]["mean"])
    by_method = {row["method"].split(" ")[0]: row for row in summary["methods"]}
    for planner, key in (("none", "base"), ("mpc", "mpc")):
        row = by_method[key]
        assert row["n_seeds"] == 2 and row["n_episodes"] == 4
        # Episodes pooled over seeds with as many per seed: the mean of the seed means.
        np.testing.assert_allclose(row["mean"], np.mean(seed_means[planner]), rtol=1e-9)
        assert row["ci_low"] <= row["mean"] <= row["ci_high"]
    text = out.read_text()
    assert f"{by_method['base']['mean']:.1f}" in text
    for png in ("scores.png", "score_vs_latency.png"):
        image = matplotlib.image.imread(out.parent / png)
        assert image.shape[0] > 100 and image.shape[1] > 100
        assert image[..., :3].std() > 0.05  # not a blank canvas


def test_sweep_on_local_ray_reports_failures_and_gathers_the_rest(
    finished_run, tiny_dataset, tmp_path
):
    from mpcdwm.sweep import SweepConfig, expand_trials, sweep

    spec = {
        "out": str(tmp_path / "sweep"),
        "datasets": [tiny_dataset, str(tmp_path / "no-such-dataset")],
        "seeds": [0],
        "base": {
            "agent": {"steps": 200},
            "world_model": {"steps": 200},
            "eval": {"episodes": 1, "max_steps": 10},
            "mpc": {"adapt_steps": 1, "num_rollouts": 2, "horizon": 2},
        },
        "grid": {"mpc.horizon": [2, 3]},
        "retries": 1,
    }
    # The good trials start from the trained stages of `finished_run` (same dataset, seed,
    # agent and model; a trial resumes what its folder holds), so Ray runs their evaluation.
    for trial in expand_trials(spec):
        if trial.run_config["dataset"] == tiny_dataset:
            for stage in ("agent", "world_model"):
                shutil.copytree(finished_run / stage, Path(trial.run_config["out"]) / stage)
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    report_md = sweep(SweepConfig(config=path, num_cpus=2))
    trials = json.loads((tmp_path / "sweep" / "trials.json").read_text())
    assert len(trials) == 4
    failed = {n: t for n, t in trials.items() if not t["ok"]}
    assert len(failed) == 2 and all("no-such-dataset" in n for n in failed)
    assert all("no-such-dataset" in t["detail"] for t in failed.values())
    summary = json.loads((report_md.parent / "summary.json").read_text())
    labels = {row["method"] for row in summary["methods"]}
    assert any("H=2" in label for label in labels) and any("H=3" in label for label in labels)
