"""``mpcdwm evaluate`` end to end on tiny real InvertedPendulum-v5 checkpoints."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from mpcdwm.data import return_to_go
from mpcdwm.evaluate import EvaluateConfig, evaluate, imagined_real_correlation
from mpcdwm.mpc import MPCConfig

SMALL = MPCConfig(
    diagnostics=True,
    adapt_steps=2,
    num_rollouts=4,
    horizon=3,
    lr=1e-3,
    mppi_samples=32,
    mppi_elites=8,
    mppi_policy_samples=4,
    mppi_iterations=2,
)


@pytest.fixture(scope="module")
def runs(pendulum_runs):
    """The shared tiny TD3+BC agent and diffusion world model (see conftest.py)."""
    return pendulum_runs


@pytest.fixture(scope="module")
def cfg(runs, tmp_path_factory):
    agent_dir, wm_dir = runs
    return EvaluateConfig(
        agent=agent_dir,
        world_model=wm_dir,
        planner=("none", "mpc", "action-grad", "mppi"),
        episodes=2,
        seed=7,
        out=tmp_path_factory.mktemp("eval"),
        mpc=SMALL,
        max_steps=30,
        progress=False,
    )


@pytest.fixture(scope="module")
def result(cfg):
    path = evaluate(cfg)
    return path, json.loads(path.read_text())


def test_eval_json_layout(cfg, result):
    path, data = result
    assert path == cfg.out / "eval.json" and not (cfg.out / "eval.json.tmp").exists()
    assert set(data) == {
        "dataset",
        "dataset_path",
        "env_id",
        "seed",
        "ref_scores",
        "config",
        "agent",
        "mpc",
        "chosen_by",
        "world_model",
        "validation_world_model",
        "ensemble_world_models",
        "planners",
    }
    assert data["validation_world_model"] is None and data["ensemble_world_models"] == []
    assert data["chosen_by"] == {}
    assert data["env_id"] == "InvertedPendulum-v5" and data["seed"] == 7
    assert data["dataset_path"].endswith("pendulum-noisy.hdf5")  # absolute: tells ids apart
    assert Path(data["dataset_path"]).is_absolute()
    assert data["config"]["planner"] == list(cfg.planner)
    assert data["config"]["agent"] == str(cfg.agent) and data["config"]["mpc"]["horizon"] == 3
    wm = data["world_model"]
    assert {k: wm[k] for k in ("kind", "denoise_steps", "flow_steps")} == {
        "kind": "diffusion",
        "denoise_steps": 3,
        "flow_steps": 2,
    }
    # What was evaluated: each checkpoint's path, step, whether its run finished, digest.
    agent = data["agent"]
    assert agent["kind"] == "td3bc" and agent["done"] and agent["steps"] > 0
    assert agent["path"] == str((cfg.agent / "checkpoint.ckpt").resolve())
    assert len(agent["digest"]) == 64 and len(wm["digest"]) == 64 and wm["done"]
    assert data["mpc"]["horizon"] == 3 and data["mpc"]["preset"] == "none"
    assert list(data["planners"]) == list(cfg.planner)
    for name, res in data["planners"].items():
        assert len(res["returns"]) == len(res["lengths"]) == len(res["normalized_scores"]) == 2
        assert all(1 <= n <= 30 for n in res["lengths"])
        assert set(res["normalized_score"]) == {"mean", "std"}
        assert 0 < res["latency_ms"]["median"] <= res["latency_ms"]["p95"]
        assert res["compile_s"] > 0 and res["fallbacks"] == 0
        # Compilation is reported apart: it must not leak into the decision latency.
        assert res["latency_ms"]["p95"] < 0.2 * 1e3 * res["compile_s"], res
        assert set(res["diagnostics"]) >= {
            "imagined_return_before",
            "imagined_return_after",
            "grad_norm",
            "action_change",
            "fallback",
        }
        trace = res["trace"]
        assert len(trace["real_return"]) == res["lengths"][0]
        assert trace["real_return"][0] == 0.0
        assert trace["real_return"][-1] == res["returns"][0] - 1.0  # pendulum: +1 per step
        assert len(trace["imagined_return_after"]) == res["lengths"][0]
        if name == "none":
            assert res["config"]["world_model"] is None
        else:
            assert res["config"]["horizon"] == 3 and res["config"]["world_model"] == "diffusion"
            assert res["config"]["denoise_steps"] == 3
        corr = res["imagined_real_corr"]
        assert len(corr) == 2
        if name == "none":
            assert corr == [None, None]
        else:  # a planner's imagined value is an estimate of the real return-to-go
            assert all(c is None or -1.0 <= c <= 1.0 for c in corr), corr
    assert data["planners"]["mpc"]["config"]["lr"] == 1e-3


def test_imagined_real_correlation_against_known_returns():
    rewards = np.asarray([1.0, 0.0, 2.0, 1.0, 0.5])
    gamma = 0.9
    to_go = [sum(gamma**k * r for k, r in enumerate(rewards[t:])) for t in range(5)]
    assert imagined_real_correlation(np.asarray(to_go), rewards, gamma) == pytest.approx(1.0)
    assert imagined_real_correlation(-np.asarray(to_go), rewards, gamma) == pytest.approx(-1.0)
    noisy = np.asarray(to_go) + np.asarray([0.3, -0.2, 0.1, 0.4, -0.5])
    assert imagined_real_correlation(noisy, rewards, gamma) == pytest.approx(
        np.corrcoef(noisy, to_go)[0, 1]
    )
    assert imagined_real_correlation(np.ones(5), rewards, gamma) is None  # constant
    assert imagined_real_correlation(np.asarray(to_go[:2]), rewards[:2], gamma) is None
    with pytest.raises(ValueError, match="equal 1-D shapes"):
        imagined_real_correlation(np.ones(4), rewards, gamma)


def test_return_to_go_restarts_after_episode_ends():
    rewards = np.asarray([1.0, 2.0, 3.0, 4.0, 5.0])
    ends = np.asarray([False, True, False, False, True])
    gamma = 0.5
    # Episodes [1, 2] and [3, 4, 5], each summed on its own.
    want = [1 + 0.5 * 2, 2, 3 + 0.5 * 4 + 0.25 * 5, 4 + 0.5 * 5, 5]
    np.testing.assert_allclose(return_to_go(rewards, gamma, ends), want)
    # Without ends the whole series is one episode.
    one = [sum(gamma**k * r for k, r in enumerate(rewards[t:])) for t in range(5)]
    np.testing.assert_allclose(return_to_go(rewards, gamma), one)


def test_deterministic_for_a_seed(cfg, result, tmp_path):
    _, first = result
    again = json.loads(evaluate(dataclasses.replace(cfg, out=tmp_path)).read_text())

    def strip(d):  # timings are the only things allowed to differ
        d = json.loads(json.dumps(d))
        d["config"].pop("out")
        for res in d["planners"].values():
            res.pop("latency_ms"), res.pop("compile_s")
        return d

    assert strip(again) == strip(first)


def test_error_cases(cfg, runs, tmp_path):
    with pytest.raises(ValueError, match="world model"):
        evaluate(dataclasses.replace(cfg, world_model=None, out=tmp_path))
    with pytest.raises(ValueError, match="unknown planner"):
        evaluate(dataclasses.replace(cfg, planner=("none", "cem"), out=tmp_path))
    with pytest.raises(ValueError, match="episodes"):
        evaluate(dataclasses.replace(cfg, episodes=0, out=tmp_path))
    with pytest.raises(ValueError, match="validate"):  # a judge without the validated step
        evaluate(dataclasses.replace(cfg, validation_world_model=runs[1], out=tmp_path))
    with pytest.raises(ValueError, match="ensemble-penalty > 0"):  # members without the penalty
        evaluate(dataclasses.replace(cfg, ensemble_world_models=(runs[1],), out=tmp_path))
    with pytest.raises(ValueError, match="--ensemble-world-models"):  # the penalty without them
        evaluate(dataclasses.replace(cfg, mpc=MPCConfig(ensemble_penalty=1.0), out=tmp_path))
    with pytest.raises(ValueError, match="--chosen-by 'penalty=balanced'.*FIELD=RULE"):
        evaluate(dataclasses.replace(cfg, chosen_by=("penalty=balanced",), out=tmp_path))
    assert not (tmp_path / "eval.json").exists()


def test_validation_and_ensemble_world_models_are_recorded_and_label_the_method(
    cfg, runs, tmp_path
):
    from mpcdwm.pipeline import evaluation_is_current
    from mpcdwm.report import load_results

    guarded = dataclasses.replace(
        cfg,
        planner=("mpc",),
        episodes=1,
        max_steps=5,
        mpc=dataclasses.replace(SMALL, validate=True, ensemble_penalty=1.0),
        validation_world_model=runs[1],
        ensemble_world_models=(runs[1],),
        chosen_by=("ensemble-penalty=balanced",),
        out=tmp_path,
    )
    data = json.loads(evaluate(guarded).read_text())
    assert data["chosen_by"] == {"ensemble_penalty": "balanced"}
    assert data["validation_world_model"]["path"].endswith("checkpoint.ckpt")
    (member,) = data["ensemble_world_models"]
    assert member["path"].endswith("checkpoint.ckpt") and member["digest"]
    assert len(data["planners"]["mpc"]["returns"]) == 1
    (res,) = load_results(tmp_path / "eval.json")
    knobs = res.method.knob_dict()
    assert knobs["validated_by"] == "another world model" and knobs["ensemble_members"] == 2
    assert knobs["mpc.ensemble_penalty"] == "chosen: balanced"
    # The ensemble is part of what an evaluation was made with.
    assert evaluation_is_current(tmp_path / "eval.json", guarded)
    fewer = dataclasses.replace(guarded, ensemble_world_models=())
    assert not evaluation_is_current(tmp_path / "eval.json", fewer)


def test_agent_and_world_model_for_different_envs(cfg, tmp_path):
    """A world model whose checkpoint is for another env is refused, naming both."""
    from mpcdwm.checkpoint import load_checkpoint, save_checkpoint

    state, meta = load_checkpoint(cfg.world_model / "checkpoint.ckpt")
    assert meta["env_id"] == "InvertedPendulum-v5"
    save_checkpoint(tmp_path / "wm" / "checkpoint.ckpt", state, {**meta, "env_id": "Hopper-v5"})
    with pytest.raises(ValueError, match="Hopper-v5.*same dataset"):
        evaluate(dataclasses.replace(cfg, world_model=tmp_path / "wm", out=tmp_path / "o"))


def test_unfinished_agent_is_evaluated_with_a_warning(runs, tmp_path, capfd, monkeypatch):
    """A run killed before its last step still evaluates, but says so and records it."""
    from mpcdwm.checkpoint import load_checkpoint, save_checkpoint

    # A narrow console: paths in log lines must still print whole (copyable), not wrapped.
    monkeypatch.setenv("COLUMNS", "40")
    agent_dir, _ = runs
    raw, meta = load_checkpoint(agent_dir / "checkpoint.ckpt")
    killed = tmp_path / "killed"
    save_checkpoint(killed / "checkpoint.ckpt", raw, {**meta, "done": False, "step": 100})
    path = evaluate(
        EvaluateConfig(
            agent=killed,
            planner=("none",),
            episodes=1,
            out=tmp_path / "eval",
            max_steps=5,
            progress=False,
        )
    )
    raw_err = capfd.readouterr().err
    err = " ".join(raw_err.split())
    assert "unfinished run (step 100 of" in err
    # Without progress bars the result table and the file still print (batch-job logs).
    # (At 40 columns the table's headers wrap; its bottom border and the planner's row remain.)
    assert f"wrote {path}\n" in raw_err and "┘" in raw_err and "│ none" in raw_err
    agent = json.loads(path.read_text())["agent"]
    assert (agent["done"], agent["steps"]) == (False, 100)


def test_health_rule_termination_on_an_env_without_one_falls_back_with_a_note(cfg, capfd):
    """InvertedPendulum has no healthy-range rule and no goal: --mpc.termination rule and
    --mpc.reward rule say so and use the learned termination and reward models."""
    out = evaluate(
        dataclasses.replace(
            cfg,
            planner=("mpc",),
            episodes=1,
            mpc=dataclasses.replace(SMALL, termination="rule", reward="rule"),
            out=cfg.out / "rule",
        )
    )
    err = " ".join(capfd.readouterr().err.split())
    assert "no known health rule" in err and "has no goal rule" in err
    recorded = json.loads(out.read_text())["mpc"]
    assert (recorded["termination"], recorded["reward"]) == ("rule", "rule")
