"""`mpcdwm report` on hand-written eval.json files in the layout `mpcdwm evaluate` writes.

No training here: every file is written by :func:`write_eval` with the fields of
``mpcdwm.evaluate.evaluate`` (and ``_planner_config``), so the tests run in seconds.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pytest
import scipy.stats

from mpcdwm.files import UserFileError
from mpcdwm.mpc import MPCConfig
from mpcdwm.report import (
    Estimate,
    ReportConfig,
    aggregate_estimate,
    build_tables,
    chosen_per_episode,
    find_eval_files,
    load_results,
    mean_estimate,
    paired_differences,
    paired_gain,
    report,
    summarize,
    to_html,
    to_markdown,
)
from mpcdwm.report import _trace_result as trace_result

HOPPER_REF = (-20.272305, 3234.3)


def base_returns(seed: int, episodes: int) -> list[float]:
    """Bimodal Hopper-like returns that depend only on (seed, episode index), as the base
    policy's do (episode i of seed s resets the env with seed s + i)."""
    rng = np.random.default_rng(1000 + seed)
    return list(np.where(rng.random(episodes) < 0.5, 1400.0, 2600.0) + rng.normal(0, 50, episodes))


def write_eval(
    out: Path,
    *,
    planners: dict[str, list[float]],
    seed: int = 0,
    dataset: str = "mpcdwm/hopper-medium-v0",
    env_id: str = "Hopper-v5",
    ref_scores: tuple[float, float] | None = HOPPER_REF,
    mpc: MPCConfig | None = None,
    world_model: str = "diffusion",
    denoise_steps: int = 5,
    agent_dir: str | None = None,
    max_steps: int | None = None,
    agent: dict | None = None,
    dataset_path: str | None = None,
    chosen_by: dict[str, str] | None = None,
) -> Path:
    """``out/eval.json`` exactly as ``mpcdwm evaluate`` lays it out; ``planners``: name ->
    per-episode returns (``none`` is the base policy). ``agent``: the ``agent`` block
    (kind, steps, seed, config) that evaluate records once it does; None: an older file."""
    mpc = mpc or MPCConfig()
    episodes = len(next(iter(planners.values())))
    wm_info = {"kind": world_model, "denoise_steps": denoise_steps, "flow_steps": 2}
    results = {}
    for name, returns in planners.items():
        rets = np.asarray(returns, float)
        if ref_scores is None:
            scores = [None] * len(rets)
            summary = {"mean": None, "std": None}
        else:
            lo, hi = ref_scores
            s = 100.0 * (rets - lo) / (hi - lo)
            scores = [float(x) for x in s]
            summary = {"mean": float(s.mean()), "std": float(s.std())}
        if name == "none":
            planner_config = {"world_model": None, "denoise_steps": None}
        else:
            keys = ["adapt_steps", "num_rollouts", "horizon", "gamma", "lr", "optimizer"]
            planner_config = {k: getattr(mpc, k) for k in keys}
            planner_config.update(gamma=0.99, world_model=world_model, denoise_steps=denoise_steps)
        steps = 25
        imagined = [] if name == "none" else list(np.linspace(6.0, 10.0, steps))
        results[name] = {
            "returns": [float(r) for r in rets],
            "lengths": [1000] * len(rets),
            "normalized_scores": scores,
            "normalized_score": summary,
            "latency_ms": {"median": 0.2 if name == "none" else 15.0, "p95": 30.0},
            "compile_s": 1.0,
            "fallbacks": 0,
            "diagnostics": {"action_change": 0.0 if name == "none" else 0.05},
            "config": planner_config,
            "trace": {
                "real_return": list(np.linspace(0.0, 100.0, steps)),
                "imagined_return_before": [0.0] * steps if name == "none" else imagined,
                "imagined_return_after": [0.0] * steps if name == "none" else imagined[::-1],
            },
        }
    run = out.parent
    data = {
        "dataset": dataset,
        "env_id": env_id,
        "seed": seed,
        "ref_scores": list(ref_scores) if ref_scores is not None else None,
        "config": {
            "agent": agent_dir or str(run / "agent"),
            "world_model": str(run / "world_model"),
            "planner": list(planners),
            "episodes": episodes,
            "seed": seed,
            "out": str(out),
            "mpc": dataclasses.asdict(mpc),
            "max_steps": max_steps,
            "progress": False,
        },
        "world_model": wm_info,
        "planners": results,
    }
    if agent is not None:
        data["agent"] = agent
    if dataset_path is not None:
        data["dataset_path"] = dataset_path
    if chosen_by is not None:
        data["chosen_by"] = chosen_by
    out.mkdir(parents=True, exist_ok=True)
    path = out / "eval.json"
    path.write_text(json.dumps(data, indent=1))
    return path


def run_eval(root: Path, name: str, seed: int = 0, episodes: int = 10, shift: float = 0.0, **kw):
    """A run folder ``root/name`` whose eval holds the base and mpc (base + ``shift``)."""
    base = base_returns(seed, episodes)
    planners = {"none": base, "mpc": [r + shift for r in base]}
    return write_eval(root / name / "eval", planners=planners, seed=seed, **kw)


def entries_by_label(summary):
    return {(d, summary.labels[m]): e for (d, m), e in summary.entries.items()}


def summarize_files(*paths: Path):
    return summarize([r for p in paths for r in load_results(p)])


# --------------------------------------------------------------------------- what is a method


def test_world_model_kind_splits_rows(tmp_path):
    a = run_eval(tmp_path, "diff", world_model="diffusion", denoise_steps=5)
    b = run_eval(tmp_path, "flow", world_model="flow", shift=30.0, agent_dir=str(tmp_path / "ag"))
    rows = entries_by_label(summarize_files(a, b))
    d = "mpcdwm/hopper-medium-v0"
    assert set(rows) == {
        (d, "base"),
        (d, "mpc (world_model=diffusion/5)"),
        (d, "mpc (world_model=flow/2)"),
    }
    for label in ("mpc (world_model=diffusion/5)", "mpc (world_model=flow/2)"):
        assert rows[(d, label)].ret.n_seeds == 1 and rows[(d, label)].ret.episodes == (10,)
    # The same seed's base appears in both files with the same returns: one measurement.
    assert rows[(d, "base")].ret.episodes == (10,)
    flow = rows[(d, "mpc (world_model=flow/2)")]
    assert flow.gain.value == pytest.approx(100 * 30.0 / (HOPPER_REF[1] - HOPPER_REF[0]))


def test_lr_splits_rows_and_labels_show_only_what_differs(tmp_path):
    a = run_eval(tmp_path, "lr_small", mpc=MPCConfig(lr=3e-5))
    b = run_eval(tmp_path, "lr_big", mpc=MPCConfig(lr=3e-4), shift=-20.0)
    summary = summarize_files(a, b)
    assert set(summary.labels.values()) == {"base", "mpc (lr=3e-05)", "mpc (lr=0.0003)"}
    rows = entries_by_label(summary)
    d = "mpcdwm/hopper-medium-v0"
    assert rows[(d, "mpc (lr=0.0003)")].ret.value == pytest.approx(
        np.mean(base_returns(0, 10)) - 20.0
    )
    assert rows[(d, "mpc (lr=3e-05)")].ret.value == pytest.approx(np.mean(base_returns(0, 10)))


def test_budget_knobs_use_the_papers_letters(tmp_path):
    a = run_eval(tmp_path, "h3", mpc=MPCConfig(horizon=3, num_rollouts=8))
    b = run_eval(tmp_path, "h5", mpc=MPCConfig(horizon=5, num_rollouts=8))
    assert sorted(summarize_files(a, b).labels.values()) == ["base", "mpc (H=3)", "mpc (H=5)"]


def test_a_value_chosen_by_a_rule_pools_seeds_under_the_rule(tmp_path):
    """A weight computed per seed (each seed its own value) is one method, named by its rule,
    apart from a weight given by hand."""
    rule = {"ensemble_penalty": "balanced"}
    a = run_eval(tmp_path, "s0", seed=0, mpc=MPCConfig(ensemble_penalty=100.0), chosen_by=rule)
    b = run_eval(tmp_path, "s1", seed=1, mpc=MPCConfig(ensemble_penalty=300.0), chosen_by=rule)
    c = run_eval(tmp_path, "fixed", seed=0, mpc=MPCConfig(ensemble_penalty=100.0), shift=5.0)
    rows = entries_by_label(summarize_files(a, b, c))
    d = "mpcdwm/hopper-medium-v0"
    chosen = rows[(d, "mpc (ensemble_penalty=chosen: balanced)")]
    assert (chosen.score.n_seeds, chosen.score.n_episodes) == (2, 20)
    assert rows[(d, "mpc (ensemble_penalty=100.0)")].score.n_seeds == 1


def test_a_gradient_method_is_paired_with_its_placebo(tmp_path):
    """Gain over the placebo: the same planner and settings with a random update, on the same
    episodes; a method without a placebo run gets none, and the table says so."""
    plc = MPCConfig(lr=5e-6, update="placebo")
    agent = str(tmp_path / "agent")  # one agent checkpoint: its runs pair
    a = run_eval(tmp_path, "g", mpc=MPCConfig(lr=5e-6), shift=30.0, agent_dir=agent)
    b = run_eval(tmp_path, "p", mpc=plc, shift=-10.0, agent_dir=agent)
    c = run_eval(tmp_path, "other", mpc=MPCConfig(lr=5e-5), shift=5.0, agent_dir=agent)
    summary = summarize_files(a, b, c)
    rows = entries_by_label(summary)
    d = "mpcdwm/hopper-medium-v0"
    gradient = rows[(d, "mpc (lr=5e-06, update=gradient)")]
    # Returns differ by 40 on every episode; in score units of Hopper's reference range.
    assert gradient.over_placebo.value == pytest.approx(
        100 * 40.0 / (HOPPER_REF[1] - HOPPER_REF[0])
    )
    assert gradient.over_placebo.episodes == (10,)
    assert rows[(d, "mpc (lr=5e-05, update=gradient)")].over_placebo is None
    assert rows[(d, "mpc (lr=5e-06, update=placebo)")].over_placebo is None
    (table,) = [t for t in build_tables(summary) if t.title == "Paired gain over the placebo"]
    assert [r[0] for r in table.rows] == ["mpc (lr=5e-06, update=gradient)"]


def test_gain_over_the_placebo_is_averaged_over_datasets(tmp_path):
    """The issue's target compares the mean gain over datasets with the placebo's: the report
    gives the mean over datasets of the paired gain over the placebo, with its CI."""
    walker = {"dataset": "mpcdwm/walker2d-medium-v0", "env_id": "Walker2d-v5"}
    runs = []
    for name, extra, gap in (("hopper", {}, 40.0), ("walker", walker, -20.0)):
        agent = str(tmp_path / name / "agent")
        runs.append(
            run_eval(
                tmp_path / name, "g", mpc=MPCConfig(lr=5e-6), shift=gap, agent_dir=agent, **extra
            )
        )
        plc = MPCConfig(lr=5e-6, update="placebo")
        runs.append(run_eval(tmp_path / name, "p", mpc=plc, agent_dir=agent, **extra))
    summary = summarize_files(*runs)
    (agg,) = [a for a in summary.aggregates if summary.labels[a.method] == "mpc (update=gradient)"]
    unit = 100 / (HOPPER_REF[1] - HOPPER_REF[0])  # the test files carry Hopper's reference range
    assert agg.over_placebo_mean.value == pytest.approx((40.0 - 20.0) * unit / 2)
    assert agg.over_placebo_mean.n_datasets == 2
    (table,) = [t for t in build_tables(summary) if t.title == "Paired gain over the placebo"]
    assert table.header[-1] == "mean over datasets (score)"
    assert table.rows[0][-1] == agg.over_placebo_mean.text(signed=True)
    (placebo,) = [a for a in summary.aggregates if a.method.planner != "none" and a is not agg]
    assert placebo.over_placebo_mean is None  # a placebo has no placebo


def test_cross_fitting_picks_on_one_half_and_scores_on_the_other():
    """Candidate 0 gains 10 on even episodes and loses 6 on odd ones (mean +2), candidate 1
    gains 1 everywhere: in-sample the first wins (+2); cross-fitted the choice made on the even
    episodes (0) is scored on the odd ones and the reverse."""
    gains = np.array([[10.0, -6.0] * 3, [1.0] * 6])
    fold = np.arange(6) % 2
    ones = np.ones((1, 6))
    assert chosen_per_episode(gains, fold, ones, cross_fit=False).tolist() == [[0] * 6]
    assert chosen_per_episode(gains, fold, ones, cross_fit=True).tolist() == [[1, 0] * 3]
    # weights re-weight the choice: drawing the odd episodes twice as often flips it
    weights = np.array([[1.0, 2.0] * 3])
    assert chosen_per_episode(gains, fold, weights, cross_fit=False).tolist() == [[1] * 6]


def test_a_planner_chosen_per_dataset_on_real_returns(tmp_path):
    """The paper chose its step per dataset on real returns. With a lucky candidate (+10 on even
    episodes, -6 on odd, mean +2) beside a steady one (+1), the in-sample choice reports the
    lucky one's +2; the cross-fitted choice scores it on the episodes it was not chosen on and
    reports (-6 + 1) / 2. A dataset where one candidate is plainly best picks it both ways."""
    walker = {"dataset": "mpcdwm/walker2d-medium-v0", "env_id": "Walker2d-v5"}
    unit = 100 / (HOPPER_REF[1] - HOPPER_REF[0])
    lucky = np.array([10.0, -6.0] * 5) / unit  # return units giving these score gains
    runs = []
    for name, extra, shifts in (
        ("hopper", {}, {5e-5: lucky, 5e-6: np.full(10, 1.0 / unit)}),
        ("walker", walker, {5e-5: np.full(10, 4.0 / unit), 5e-6: np.full(10, -3.0 / unit)}),
    ):
        agent = str(tmp_path / name / "agent")
        base = base_returns(0, 10)
        runs.append(
            write_eval(
                tmp_path / name / "b" / "eval", planners={"none": base}, agent_dir=agent, **extra
            )
        )
        for lr, shift in shifts.items():
            runs.append(
                write_eval(
                    tmp_path / name / f"m{lr}" / "eval",
                    planners={"mpc": list(np.asarray(base) + shift)},
                    mpc=MPCConfig(lr=lr),
                    agent_dir=agent,
                    **extra,
                )
            )
            plc = MPCConfig(lr=lr, update="placebo")
            runs.append(
                write_eval(
                    tmp_path / name / f"p{lr}" / "eval",
                    planners={"mpc": base},
                    mpc=plc,
                    agent_dir=agent,
                    **extra,
                )
            )
    summary = summarize_files(*runs)
    in_sample, cross = summary.choices
    hopper, walker_d = "mpcdwm/hopper-medium-v0", "mpcdwm/walker2d-medium-v0"
    assert in_sample.per_dataset[hopper].value == pytest.approx(2.0)
    assert cross.per_dataset[hopper].value == pytest.approx((-6.0 + 1.0) / 2)
    assert [m.knob_dict()["mpc.lr"] for m in in_sample.chosen[hopper]] == [5e-5]
    assert [m.knob_dict()["mpc.lr"] for m in cross.chosen[hopper]] == [5e-5, 5e-6]
    assert (
        in_sample.per_dataset[walker_d].value
        == cross.per_dataset[walker_d].value
        == pytest.approx(4.0)
    )
    assert in_sample.gain_mean.value == pytest.approx((2.0 + 4.0) / 2)
    assert cross.gain_mean.value == pytest.approx((-2.5 + 4.0) / 2)
    assert cross.gain_mean.ci_low <= cross.gain_mean.value <= cross.gain_mean.ci_high
    # the placebos did not move the return: the gain over them is the gain over the base
    assert cross.over_placebo_mean.value == pytest.approx(cross.gain_mean.value)
    (table,) = [t for t in build_tables(summary) if t.title.startswith("A planner chosen")]
    assert table.rows[1][-2] == cross.gain_mean.text(signed=True)
    report(ReportConfig(runs=(tmp_path,), out=tmp_path / "report"))
    saved = json.loads((tmp_path / "report" / "summary.json").read_text())["choices"]
    assert [c["rule"] for c in saved] == ["in-sample", "cross-fitted"]
    assert saved[1]["gain_mean"]["mean"] == pytest.approx(cross.gain_mean.value)


def test_no_choice_without_two_candidates(tmp_path):
    walker = {"dataset": "mpcdwm/walker2d-medium-v0", "env_id": "Walker2d-v5"}
    runs = [run_eval(tmp_path, "h", shift=5.0), run_eval(tmp_path, "w", shift=5.0, **walker)]
    assert summarize_files(*runs).choices == ()


def test_seeds_of_one_method_group_into_one_row(tmp_path):
    a = run_eval(tmp_path, "s0", seed=0)
    b = run_eval(tmp_path, "s1", seed=1)
    summary = summarize_files(a, b)
    rows = entries_by_label(summary)
    d = "mpcdwm/hopper-medium-v0"
    assert set(rows) == {(d, "base"), (d, "mpc")}
    mpc = rows[(d, "mpc")]
    assert (mpc.score.n_seeds, mpc.score.n_episodes) == (2, 20)
    pooled = np.r_[base_returns(0, 10), base_returns(1, 10)]
    assert mpc.ret.value == pytest.approx(pooled.mean())
    assert "(n=2x10)" in mpc.score.text()


def test_recorded_agents_split_rows_and_pair_each_planner_with_its_own_base(tmp_path):
    def agent(steps: int) -> dict:
        return {"kind": "rebrac", "steps": steps, "seed": 0, "config": {"actor_bc_coef": 0.1}}

    short = base_returns(0, 10)
    long = base_returns(5, 10)  # another checkpoint: other returns on the same episodes
    a = write_eval(
        tmp_path / "a", planners={"none": short, "mpc": [r + 10 for r in short]}, agent=agent(10)
    )
    b = write_eval(
        tmp_path / "b", planners={"none": long, "mpc": [r + 40 for r in long]}, agent=agent(20)
    )
    summary = summarize_files(a, b)
    rows = entries_by_label(summary)
    d = "mpcdwm/hopper-medium-v0"
    assert set(rows) == {
        (d, "base (agent_steps=10)"),
        (d, "base (agent_steps=20)"),
        (d, "mpc (agent_steps=10)"),
        (d, "mpc (agent_steps=20)"),
    }
    per_return = 100.0 / (HOPPER_REF[1] - HOPPER_REF[0])
    assert rows[(d, "mpc (agent_steps=10)")].gain.value == pytest.approx(10 * per_return)
    assert rows[(d, "mpc (agent_steps=20)")].gain.value == pytest.approx(40 * per_return)
    assert summary.notes == ()  # every file records its agent


def test_agents_of_different_kinds_are_labelled_by_kind_not_by_every_hyperparameter(tmp_path):
    def agent(kind: str, bc: float) -> dict:
        config = {"actor_bc_coef": bc, "network": "corl" if kind == "rebrac" else "flax"}
        return {"kind": kind, "steps": 100, "seed": 0, "config": config}

    evals = [
        write_eval(tmp_path / n, planners={"none": base_returns(i, 10)}, agent=agent(k, bc))
        for i, (n, k, bc) in enumerate(
            [("r1", "rebrac", 0.01), ("r2", "rebrac", 0.1), ("t", "td3bc", 0.4)]
        )
    ]
    labels = {label for _, label in entries_by_label(summarize_files(*evals))}
    # hopper-medium's published ReBRAC has actor_bc_coef 0.01: r1 is ReBRAC as published.
    assert labels == {
        "base (agent=rebrac, agent.actor_bc_coef=preset)",
        "base (agent=rebrac, agent.actor_bc_coef=0.1)",
        "base (agent=td3bc)",
    }


def test_repeated_seed_with_other_returns_is_an_error_naming_both_files(tmp_path):
    a = run_eval(tmp_path, "first", seed=0)
    b = run_eval(tmp_path, "again", seed=0, shift=5.0)
    with pytest.raises(ValueError, match="seed 0") as err:
        summarize_files(a, b)
    assert str(a) in str(err.value) and str(b) in str(err.value)


def test_missing_fields_of_older_files_take_their_defaults(tmp_path):
    """A file written before an MPCConfig field existed ran at its default: same method."""
    a = run_eval(tmp_path, "old", seed=0)
    data = json.loads(a.read_text())
    del data["config"]["mpc"]["terminal_action"]
    a.write_text(json.dumps(data))
    b = run_eval(tmp_path, "new", seed=1)
    assert sorted(summarize_files(a, b).labels.values()) == ["base", "mpc"]


def test_reward_ensemble_of_older_files_and_diagnostics_only_fields(tmp_path):
    """Files from before --mpc.reward-ensemble imagined with the ensemble mean: another method
    than today's default; --mpc.diagnostics changes no action, so it splits nothing."""
    old = run_eval(tmp_path, "old", seed=0)
    data = json.loads(old.read_text())
    del data["config"]["mpc"]["reward_ensemble"]
    old.write_text(json.dumps(data))
    new = run_eval(tmp_path, "new", seed=1)
    labels = summarize_files(old, new).labels
    assert sorted(labels.values()) == [
        "base",
        "mpc (reward_ensemble=False)",
        "mpc (reward_ensemble=True)",
    ]
    a = run_eval(tmp_path, "a", seed=0, mpc=MPCConfig(diagnostics=True))
    b = run_eval(tmp_path, "b", seed=1, mpc=MPCConfig(diagnostics=False))
    assert sorted(summarize_files(a, b).labels.values()) == ["base", "mpc"]


def test_diagnostics_table_averages_what_the_planner_did(tmp_path):
    path = run_eval(tmp_path, "a", seed=0)
    data = json.loads(path.read_text())
    data["planners"]["mpc"]["diagnostics"].update(accepted=0.75)
    data["planners"]["mpc"]["imagined_real_corr"] = [0.2, None, 0.6]
    path.write_text(json.dumps(data))
    (table,) = [t for t in build_tables(summarize_files(path)) if t.kind == "diagnostics"]
    assert table.rows == (("mpc", "Δa 0.050 · adapted 0.75 · corr +0.40 (2 ep.)"),)


# --------------------------------------------------------------------------- statistics


def test_ci_contains_the_true_mean_of_a_large_sample():
    rng = np.random.default_rng(3)
    values = rng.normal(5.0, 2.0, 2000)
    est = mean_estimate({0: values[:1000], 1: values[1000:]})
    assert est.ci_low < 5.0 < est.ci_high
    # Percentile bootstrap of a mean ~ normal interval: 2 * 1.96 * sd / sqrt(n).
    expected = 2 * 1.96 * values.std() / np.sqrt(values.size)
    assert est.ci_high - est.ci_low == pytest.approx(expected, rel=0.1)
    assert est.value == pytest.approx(values.mean()) and est.episodes == (1000, 1000)


def test_ci_is_deterministic():
    values = {0: np.random.default_rng(0).normal(size=30)}
    assert mean_estimate(values) == mean_estimate(values)


def test_paired_gain_of_a_constant_shift_is_that_shift_with_no_width():
    base = {s: np.array(base_returns(s, 10)) for s in (0, 1, 2)}
    method = {s: v + 3.0 for s, v in base.items()}
    gain = paired_gain(method, base)
    assert gain.value == pytest.approx(3.0)
    assert gain.ci_high - gain.ci_low == pytest.approx(0.0, abs=1e-9)
    assert gain.ci_low == pytest.approx(3.0)
    # Unpaired, the bimodal returns would make this difference of means very uncertain.
    unpaired = mean_estimate(method).ci_high - mean_estimate(method).ci_low
    assert unpaired > 100.0


def test_unpaired_layouts_raise():
    base = {0: np.zeros(10), 1: np.zeros(10)}
    with pytest.raises(ValueError, match="unpaired seeds"):
        paired_differences({0: np.ones(10), 2: np.ones(10)}, base)
    with pytest.raises(ValueError, match="same episodes"):
        paired_differences({0: np.ones(10), 1: np.ones(9)}, base)


def test_aggregates_mean_of_means_and_iqm():
    rng = np.random.default_rng(1)
    a = {0: rng.normal(50, 10, 20), 1: rng.normal(50, 10, 20)}
    b = {0: rng.normal(90, 5, 40)}
    mean = aggregate_estimate([a, b], "mean")
    assert mean.value == pytest.approx((np.r_[a[0], a[1]].mean() + b[0].mean()) / 2)
    assert mean.ci_low < mean.value < mean.ci_high and mean.n_datasets == 2
    iqm = aggregate_estimate([a, b], "iqm")
    assert iqm.value == pytest.approx(scipy.stats.trim_mean(np.r_[a[0], a[1], b[0]], 0.25))
    assert iqm.ci_low < iqm.value < iqm.ci_high
    assert mean.n_episodes == iqm.n_episodes == 80


def test_estimate_text():
    est = Estimate(47.26, 44.12, 50.24, (10, 10, 10))
    assert est.text() == "47.3 [44.1, 50.2] (n=3x10)"
    gain = Estimate(3.1, 0.44, 5.94, (10, 10, 10))
    assert gain.text(signed=True) == "+3.1 [+0.4, +5.9] (n=3x10)"
    assert Estimate(-1e-12, -1e-12, 1e-12, (5,)).text(signed=True) == "+0.0 [+0.0, +0.0] (n=1x5)"
    assert Estimate(2.0, float("nan"), float("nan"), (1,)).text() == "2.0 (n=1x1)"


# --------------------------------------------------------------------------- pairing


def test_gain_pairs_with_a_base_in_another_file_of_the_same_agent(tmp_path):
    """bench_planner_options: the first variant's file holds the base, the others do not."""
    agent = str(tmp_path / "run" / "agent")
    base = base_returns(0, 10)
    first = write_eval(tmp_path / "v0", planners={"none": base, "mpc": base}, agent_dir=agent)
    shifted = [r + 100.0 for r in base]
    second = write_eval(
        tmp_path / "v1", planners={"mpc": shifted}, agent_dir=agent, mpc=MPCConfig(lr=1e-4)
    )
    other_agent = write_eval(
        tmp_path / "v2", planners={"mpc": shifted}, agent_dir="elsewhere", mpc=MPCConfig(lr=1e-3)
    )
    rows = entries_by_label(summarize_files(first, second, other_agent))
    d = "mpcdwm/hopper-medium-v0"
    gain = rows[(d, "mpc (lr=0.0001)")].gain
    assert gain.value == pytest.approx(100 * 100.0 / (HOPPER_REF[1] - HOPPER_REF[0]))
    assert rows[(d, "mpc (lr=3e-05)")].gain.value == pytest.approx(0.0)
    assert rows[(d, "mpc (lr=0.001)")].gain is None  # no base run of that agent


def test_gain_over_fewer_base_episodes_is_marked_partial(tmp_path):
    agent = str(tmp_path / "agent")
    base = base_returns(0, 5)
    a = write_eval(tmp_path / "b", planners={"none": base}, agent_dir=agent)
    longer = base_returns(0, 10)  # the same first 5 episodes: env seeds 0..4
    b = write_eval(tmp_path / "m", planners={"mpc": [r + 10 for r in longer]}, agent_dir=agent)
    rows = entries_by_label(summarize_files(a, b))
    e = rows[("mpcdwm/hopper-medium-v0", "mpc")]
    assert e.gain.episodes == (5,) and e.gain_partial and e.ret.episodes == (10,)


# --------------------------------------------------------------------------- report files


def test_dataset_without_reference_reports_returns_not_fake_scores(tmp_path):
    a = run_eval(
        tmp_path,
        "pend",
        dataset="test/pendulum-v0",
        env_id="Pendulum-v1",
        ref_scores=None,
        shift=2.0,
    )
    b = run_eval(tmp_path, "hop", shift=30.0)
    md = report(ReportConfig(runs=(tmp_path,), out=tmp_path / "report")).read_text()
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    rows = {(r["dataset"], r["method"]): r for r in summary["methods"]}
    pend = rows[("test/pendulum-v0", "mpc")]
    assert pend["unit"] == "return" and pend["score"] is None
    assert pend["mean"] == pytest.approx(np.mean(base_returns(0, 10)) + 2.0)
    assert pend["gain"]["mean"] == pytest.approx(2.0)
    assert "ref_scores" in pend["no_score_reason"]
    hop = rows[("mpcdwm/hopper-medium-v0", "mpc")]
    assert hop["unit"] == "score" and hop["score"] is not None
    # Score table: "-" under the pendulum column, whose header carries the footnote mark.
    score_table = md.split("### Return")[0]
    header = next(line for line in score_table.splitlines() if line.startswith("| method"))
    assert "test/pendulum-v0 (1)" in header
    base_row = next(line for line in score_table.splitlines() if line.startswith("| base |"))
    cells = [c.strip() for c in base_row.strip("|").split("|")]
    assert cells[header.strip("|").split("|").index(" test/pendulum-v0 (1) ")] == "-"
    assert "(1) test/pendulum-v0: no normalized score" in md
    # Its returns are in the return table.
    assert f"{np.mean(base_returns(0, 10)):.1f}" in md.split("### Return")[1]
    assert a in find_eval_files((tmp_path,)) and b in find_eval_files((tmp_path,))


def test_placeholder_reference_of_old_files_is_not_a_score(tmp_path):
    path = run_eval(tmp_path, "old", dataset="x/custom-v0", ref_scores=(0.0, 1.0))
    (result,) = [r for r in load_results(path) if r.method.planner == "mpc"]
    assert result.scores is None and "placeholder" in result.no_score_reason
    maze = run_eval(tmp_path, "maze", dataset="pointmaze-umaze", ref_scores=(0.0, 1.0))
    data = json.loads(maze.read_text())
    for res in data["planners"].values():  # success rates: a real (0, 1) reference
        res["returns"] = [float(i % 2) for i in range(10)]
        res["normalized_scores"] = [100.0 * r for r in res["returns"]]
    maze.write_text(json.dumps(data))
    assert all(r.scores is not None for r in load_results(maze))


def test_report_files_agree_and_hold_cis(tmp_path):
    for seed in (0, 1, 2):
        run_eval(tmp_path / "hopper", f"s{seed}", seed=seed, shift=50.0)
        run_eval(
            tmp_path / "walker",
            f"s{seed}",
            seed=seed,
            shift=-20.0,
            dataset="mpcdwm/walker2d-medium-v0",
            env_id="Walker2d-v5",
        )
    out = tmp_path / "report"
    md = report(ReportConfig(runs=(tmp_path,), out=out)).read_text()
    page = (out / "report.html").read_text()
    summary = json.loads((out / "summary.json").read_text())
    # Every markdown cell is in the HTML (one table source).
    cells = {
        c.strip()
        for line in md.splitlines()
        if line.startswith("| ") and not line.startswith("|---")
        for c in line.strip("|").split("|")
    }
    for cell in cells:
        assert cell.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;") in page
    assert re.search(r"\| mpc \| [\d.]+ \[[\d.]+, [\d.]+\] \(n=3x10\)", md)
    gain = 100 * 50.0 / (HOPPER_REF[1] - HOPPER_REF[0])
    assert f"+{gain:.1f} [+{gain:.1f}, +{gain:.1f}] (n=3x10)" in md
    # Aggregates across the two datasets, in summary.json and in the table.
    (agg,) = [a for a in summary["aggregates"] if a["method"] == "mpc"]
    assert agg["datasets"] == ["mpcdwm/hopper-medium-v0", "mpcdwm/walker2d-medium-v0"]
    assert agg["gain_mean"]["mean"] == pytest.approx(
        (gain + 100 * -20.0 / (HOPPER_REF[1] - HOPPER_REF[0])) / 2
    )
    assert "IQM over datasets" in md and "(n=2 datasets, 60 ep)" in md
    row = next(r for r in summary["methods"] if r["method"] == "base")
    assert row["ci_low"] < row["mean"] < row["ci_high"]
    assert (row["n_seeds"], row["n_episodes"]) == (3, 30)
    for png in ("scores.png", "score_vs_latency.png", "trace.png"):
        assert (out / png).stat().st_size > 5000


def test_trace_draws_the_adapting_planner(tmp_path):
    path = write_eval(
        tmp_path / "e",
        planners={
            "none": base_returns(0, 3),
            "mppi": base_returns(0, 3),
            "mpc": base_returns(0, 3),
        },
    )
    results = load_results(path)
    assert results[0].method.planner == "none"  # the base comes first in the file
    assert trace_result(results).method.planner == "mpc"
    no_mpc = [r for r in results if r.method.planner != "mpc"]
    assert trace_result(no_mpc).method.planner == "mppi"
    assert trace_result([r for r in results if r.method.planner == "none"]) is None


def test_tables_render_the_same_cells(tmp_path):
    summary = summarize_files(run_eval(tmp_path, "a", shift=10.0))
    for table in build_tables(summary):
        md, page = to_markdown(table), to_html(table)
        for row in table.rows:
            for cell in row:
                assert f"| {cell} |" in md or f"| {cell}" in md
                assert f"<td>{cell}</td>" in page


def test_datasets_sharing_an_id_are_told_apart_by_their_folder(tmp_path):
    """Two different datasets written with one id (collect --out twice, --dataset-id the
    same) are reported apart, labelled id + folder; one folder seen twice is one dataset."""
    same_id = "mpcdwm/hopper-medium-v0"
    run_eval(tmp_path, "a0", seed=0, dataset=same_id, dataset_path="/data/seed0/hopper")
    run_eval(tmp_path, "a1", seed=1, dataset=same_id, dataset_path="/data/seed0/hopper")
    run_eval(tmp_path, "b0", seed=0, dataset=same_id, dataset_path="/data/seed1/hopper", shift=9)
    summary = summarize([r for f in find_eval_files((tmp_path,)) for r in load_results(f)])
    assert summary.datasets == (f"{same_id} (seed0/hopper)", f"{same_id} (seed1/hopper)")
    by_label = entries_by_label(summary)
    assert by_label[(f"{same_id} (seed0/hopper)", "mpc")].gain.n_seeds == 2
    assert by_label[(f"{same_id} (seed1/hopper)", "mpc")].gain.n_seeds == 1
    # Files without a recorded path (older ones) keep the bare id.
    old = tmp_path / "old"
    run_eval(old, "x", dataset=same_id)
    summary = summarize(load_results(old / "x" / "eval" / "eval.json"))
    assert summary.datasets == (same_id,)


def test_damaged_eval_json_is_named(tmp_path):
    path = run_eval(tmp_path, "cut")
    text = path.read_text()
    path.write_text(text[: len(text) // 2])  # a copy cut short
    with pytest.raises(UserFileError, match=r"eval\.json .*cut/eval/eval\.json is damaged or cut"):
        load_results(path)
    path.write_text(json.dumps({"seed": 0, "planners": {"none": {"returns": 3}}}))
    with pytest.raises(UserFileError, match="not shaped like an eval.json"):
        load_results(path)
