"""Reports: score tables with bootstrap CIs, paired gains and a few plots from run directories.

``mpcdwm report RUN_DIR... --out DIR`` reads every ``eval.json`` below the given folders
(one per ``mpcdwm evaluate`` or ``mpcdwm run``) and writes

* ``report.md`` and ``report.html`` (the same tables, built once): per dataset and method the
  normalised score, the raw return, and the paired gain over the base agent, each as
  ``mean [95% CI] (n=seeds x episodes)``; across datasets the mean and the IQM;
* ``summary.json``: the same numbers (mean, ci_low, ci_high, n_seeds, n_episodes, gain);
* ``scores.png``: score per method and dataset with CI bars;
* ``score_vs_latency.png``: what thinking longer buys, with CI bars;
* ``trace.png``: imagined vs real return along one episode of the adapting planner.

What is one method. A row is one *method*: the planner, its whole :class:`MPCConfig`, the world
model kind and its sampler steps, the base agent (kind, training budget and config, when the
eval.json records it) and the episode cut ``max_steps``. Rows are grouped by that full identity
(:class:`Method`); the displayed label is the planner plus only the knobs that differ between
the reported methods of that planner. ``n`` counts distinct seeds: the same (dataset, method,
seed) in two eval.json files is an error naming both, unless both hold the identical
per-episode returns (a sweep re-evaluates the same base agent in every trial): then it is the
same measurement and counts once.

Statistics (following rliable, Agarwal et al. 2021, and CORL's reporting):

* a method's value on a dataset is the mean over its seeds x episodes; its 95% CI is a
  percentile bootstrap (``scipy.stats.bootstrap``, 10,000 resamples, fixed seed, so a report is
  deterministic) that resamples *episodes from the pooled seeds x episodes set*. With the 1-5
  seeds a run has, resampling seeds first would resample too few units to mean much; the
  pooled CI is therefore conditional on the trained agents and world models (it measures
  evaluation noise, not training noise), and says so beside every number with ``n=SxE``;
* a gain is paired: planner minus base on the same episode (same seed, same episode index:
  ``evaluate`` resets episode ``i`` of seed ``s`` with env seed ``10000*s + i`` for every
  planner), against the base run of the same agent checkpoint; mean and CI as above over the
  per-episode differences;
* across datasets, over the datasets that have normalised scores: the mean of the per-dataset
  means (D4RL's average; each dataset weighs the same) and the IQM (interquartile mean) of all
  per-episode scores pooled over datasets (rliable's IQM over runs x tasks, with an episode as
  the run); CIs by a stratified bootstrap (episodes resampled within each dataset);
* a method chosen per dataset on real returns (the paper chose its step size per dataset on
  the evaluation returns): given several planners per dataset, the report also gives the mean
  gain of the best one on each dataset, once chosen on all episodes (in-sample, optimistic)
  and once *cross-fitted* (chosen on the even episodes and scored on the odd ones, and the
  reverse), so the choice's optimism is visible; the bootstrap repeats the choice in every
  resample.

Datasets without reference returns get no normalised score (``-``, with a footnote): their
raw returns are reported instead.
"""

from __future__ import annotations

import dataclasses
import html
import json
import math
import textwrap
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import tyro

from mpcdwm.agents.presets import changes_from_preset
from mpcdwm.files import UserFileError, ensure_writable_dir, reading, write_text_atomic

CONFIDENCE = 0.95
N_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
BASE = "none"  # planner name of the base policy
# Knob names shown in labels (the paper's letters for the budget).
SHORT_KNOBS = {"mpc.adapt_steps": "E", "mpc.num_rollouts": "M", "mpc.horizon": "H"}


@dataclasses.dataclass(frozen=True)
class ReportConfig:
    """Build a report from run directories."""

    runs: tyro.conf.Positional[tuple[Path, ...]]
    """Run directories (or eval.json files) to gather."""
    out: Path = Path("report")
    """Folder for report.md, report.html, summary.json and the PNG plots."""
    quiet: bool = False
    """Write the files without printing the tables (e.g. a script printing its own summary)."""


# --------------------------------------------------------------------------- statistics


@dataclasses.dataclass(frozen=True)
class Estimate:
    """A statistic of per-episode values with its bootstrap CI.

    ``episodes``: episodes (or episode pairs, for a gain) per seed, one entry per seed; for an
    aggregate across datasets one entry per (dataset, seed). ``n_datasets``: datasets pooled.
    ``ci_low``/``ci_high`` are NaN when there are fewer than two values to resample.
    """

    value: float
    ci_low: float
    ci_high: float
    episodes: tuple[int, ...]
    n_datasets: int = 1

    @property
    def n_seeds(self) -> int:
        return len(self.episodes)

    @property
    def n_episodes(self) -> int:
        return int(sum(self.episodes))

    def n_text(self) -> str:
        """``3x10`` (seeds x episodes) when every seed has as many episodes, else totals."""
        if self.n_datasets > 1:
            return f"{self.n_datasets} datasets, {self.n_episodes} ep"
        if len(set(self.episodes)) == 1:
            return f"{self.n_seeds}x{self.episodes[0]}"
        return f"{self.n_seeds} seeds, {self.n_episodes} ep"

    def text(self, signed: bool = False) -> str:
        """``47.3 [44.1, 50.2] (n=3x10)``; signed: ``+3.1 [+0.4, +5.9] (n=3x10)``."""
        sign = "+" if signed else ""

        def fmt_(x: float) -> str:
            return f"{round(x, 1) + 0.0:{sign}.1f}"  # + 0.0: no "-0.0" for a zero gain

        ci = ""
        if math.isfinite(self.ci_low):
            ci = f" [{fmt_(self.ci_low)}, {fmt_(self.ci_high)}]"
        return f"{fmt_(self.value)}{ci} (n={self.n_text()})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "mean": self.value,
            "ci_low": _finite_or_none(self.ci_low),
            "ci_high": _finite_or_none(self.ci_high),
            "n_seeds": self.n_seeds,
            "n_episodes": self.n_episodes,
            "n_datasets": self.n_datasets,
        }


def _finite_or_none(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def bootstrap_ci(
    samples: Sequence[np.ndarray],
    statistic: Callable[..., np.ndarray],
    *,
    confidence: float = CONFIDENCE,
    n_resamples: int = N_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> tuple[float, float]:
    """Percentile-bootstrap CI of ``statistic(*samples, axis=-1)``.

    ``samples``: 1-D arrays; each is resampled with replacement on its own (a stratified
    bootstrap, as rliable's over tasks). ``statistic`` must accept ``axis`` and reduce it
    (``scipy.stats.bootstrap``'s vectorised form). Returns (nan, nan) when no sample has two
    values (nothing to resample). Deterministic for a given ``seed``.
    """
    import scipy.stats

    arrays = [np.asarray(s, np.float64).reshape(-1) for s in samples]
    if all(a.size < 2 for a in arrays):
        return math.nan, math.nan
    res = scipy.stats.bootstrap(
        arrays,
        statistic,
        n_resamples=n_resamples,
        vectorized=True,
        paired=False,
        axis=-1,
        confidence_level=confidence,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def iqm(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Interquartile mean: the mean of the middle 50% of values along ``axis`` (rliable)."""
    import scipy.stats

    return scipy.stats.trim_mean(x, 0.25, axis=axis)


def _mean_stat(x: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(x, axis=axis)


def _mean_of_means(*xs: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(np.stack([np.mean(x, axis=axis) for x in xs]), axis=0)


def _pooled_iqm(*xs: np.ndarray, axis: int = -1) -> np.ndarray:
    return iqm(np.concatenate(xs, axis=axis), axis=axis)


def _pool(per_seed: Mapping[int, Sequence[float]]) -> np.ndarray:
    """seed -> (episodes,) values  ->  (seeds x episodes,) in seed order."""
    if not per_seed:
        raise ValueError("no values to estimate from")
    return np.concatenate([np.asarray(per_seed[s], np.float64) for s in sorted(per_seed)])


def mean_estimate(per_seed: Mapping[int, Sequence[float]]) -> Estimate:
    """Mean over the pooled seeds x episodes values, with a bootstrap CI that resamples
    episodes from that pooled set. ``per_seed``: seed -> (episodes,) values."""
    pooled = _pool(per_seed)
    lo, hi = bootstrap_ci([pooled], _mean_stat)
    episodes = tuple(len(per_seed[s]) for s in sorted(per_seed))
    return Estimate(float(pooled.mean()), lo, hi, episodes)


def paired_differences(
    method: Mapping[int, Sequence[float]], base: Mapping[int, Sequence[float]]
) -> dict[int, np.ndarray]:
    """Per-episode ``method - base``, paired by (seed, episode index).

    ``method``, ``base``: seed -> (episodes,) values of the two on the same episode seeds.
    Raises ValueError when the seeds or the episode counts differ: a difference of unpaired
    episodes is not a paired gain.
    """
    if set(method) != set(base):
        raise ValueError(
            f"unpaired seeds: method has {sorted(method)}, base has {sorted(base)}; "
            "a paired gain needs the base on every seed of the method"
        )
    diffs = {}
    for seed in sorted(method):
        m, b = np.asarray(method[seed], np.float64), np.asarray(base[seed], np.float64)
        if m.shape != b.shape or m.ndim != 1:
            raise ValueError(
                f"seed {seed}: method has {m.shape} episodes, base has {b.shape}; "
                "a paired gain needs the same episodes"
            )
        diffs[seed] = m - b
    return diffs


def paired_gain(
    method: Mapping[int, Sequence[float]], base: Mapping[int, Sequence[float]]
) -> Estimate:
    """Mean paired gain ``method - base`` over seeds x episodes with its bootstrap CI
    (see :func:`paired_differences` for the pairing, :func:`mean_estimate` for the CI)."""
    return mean_estimate(paired_differences(method, base))


def aggregate_estimate(
    per_dataset: Sequence[Mapping[int, Sequence[float]]], statistic: Literal["mean", "iqm"]
) -> Estimate:
    """A statistic across datasets with a stratified bootstrap CI.

    ``per_dataset``: one seed -> (episodes,) mapping per dataset (values on a common scale,
    i.e. normalised scores or gains in them). ``"mean"``: the mean of the per-dataset means
    (each dataset weighs the same, D4RL's average). ``"iqm"``: the interquartile mean of all
    per-episode values pooled over datasets. The CI resamples episodes within each dataset.
    """
    pooled = [_pool(d) for d in per_dataset]
    stat = {"mean": _mean_of_means, "iqm": _pooled_iqm}[statistic]
    lo, hi = bootstrap_ci(pooled, stat)
    episodes = tuple(len(d[s]) for d in per_dataset for s in sorted(d))
    return Estimate(float(stat(*pooled)), lo, hi, episodes, n_datasets=len(per_dataset))


# --------------------------------------------------------------------------- eval.json -> results


@dataclasses.dataclass(frozen=True)
class Method:
    """Identity of one method: everything that changes what it does (the grouping key).

    ``knobs``: sorted ``(name, JSON value)`` pairs: ``agent``, ``agent_steps``, ``agent.<field>``
    (when recorded), ``max_steps``, and for planners ``world_model`` (kind/sampler steps) and
    ``mpc.<field>`` for every :class:`~mpcdwm.mpc.MPCConfig` field.
    """

    planner: str
    knobs: tuple[tuple[str, str], ...]

    @property
    def name(self) -> str:
        return "base" if self.planner == BASE else self.planner

    def knob_dict(self) -> dict[str, Any]:
        return {k: json.loads(v) for k, v in self.knobs}


@dataclasses.dataclass(frozen=True)
class Result:
    """One planner of one eval.json: one method on one dataset with one seed.

    ``returns``/``scores``: (episodes,) per-episode return / normalised score (``scores`` is
    None without reference returns, ``no_score_reason`` says why). ``pairing``: what a base run
    must share to be paired with this one (dataset, seed, max_steps, agent checkpoint).
    """

    dataset: str
    seed: int
    method: Method
    pairing: str
    returns: tuple[float, ...]
    scores: tuple[float, ...] | None
    no_score_reason: str | None
    latency_median_ms: float
    source: Path
    agent_recorded: bool
    trace: Mapping[str, Any] | None = dataclasses.field(default=None, compare=False, repr=False)
    dataset_path: str | None = None
    """The dataset's folder or file (eval.json ``dataset_path``; None in older files): two
    different datasets may share an id, see :func:`distinguish_datasets`."""
    diagnostics: Mapping[str, Any] = dataclasses.field(default_factory=dict, compare=False)
    """Per-decision diagnostics averaged over the run (eval.json ``diagnostics``)."""
    imagined_real_corr: tuple[float, ...] = dataclasses.field(default=(), compare=False)
    """Per episode: correlation of the imagined and the real return (NaN when undefined)."""


def find_eval_files(paths: Iterable[Path]) -> list[Path]:
    """Every eval.json at or below ``paths`` (sorted, unique)."""
    paths = tuple(paths)
    found: set[Path] = set()
    for path in paths:
        if path.is_file():
            found.add(path.resolve())
        elif path.is_dir():
            found.update(p.resolve() for p in path.rglob("eval.json"))
        else:
            raise FileNotFoundError(f"{path} does not exist")
    if not found:
        raise FileNotFoundError(
            f"no eval.json under {[str(p) for p in paths]}; "
            "run `mpcdwm evaluate` or `mpcdwm run` first"
        )
    return sorted(found)


def recorded_mpc(data: Mapping[str, Any]) -> dict[str, Any]:
    """Every MPCConfig setting (resolved) that the planners of an eval.json ran with.

    ``data["mpc"]`` (the settings in effect, a preset applied) in current files;
    ``data["config"]["mpc"]`` in older ones. A field a file lacks (written before the field
    existed) or records as None (an unresolved config) ran as it did then: the whole reward
    ensemble's mean as the imagined reward, and the earlier default budget, which is the
    ``reference`` preset since 2026-11-26 (Adam, E=5, no warm start, M=16, lr=3e-5).
    """
    from mpcdwm.mpc import PRESETS, MPCConfig, resolve

    legacy = {"reward_ensemble": True, **PRESETS["reference"]}
    recorded = data.get("mpc") or (data.get("config") or {}).get("mpc") or {}
    recorded = {k: v for k, v in recorded.items() if v is not None or k not in legacy}
    return {**dataclasses.asdict(resolve(MPCConfig())), **legacy, **recorded}


NOT_METHOD = ("diagnostics", "unroll")
"""MPCConfig fields that do not change what a planner does (extra diagnostics rollouts, how
XLA compiles the horizon loop), so not part of a method's identity."""


def _world_model_text(info: Mapping[str, Any] | None) -> str | None:
    """``diffusion/5``, ``flow/2``, ``mlp``: the kind and the sampler steps it uses."""
    if not info:
        return None
    kind = info.get("kind") or info.get("world_model")
    steps = {
        "diffusion": info.get("denoise_steps"),
        "flow": info.get("flow_steps"),
        "meanflow": info.get("flow_steps"),
    }.get(kind)
    return f"{kind}/{steps}" if steps is not None else str(kind)


def _scores(
    data: Mapping[str, Any], res: Mapping[str, Any], returns: np.ndarray
) -> tuple[tuple[float, ...] | None, str | None]:
    """Normalised scores of one planner entry, or None and the reason there are none."""
    ref = data.get("ref_scores")
    if ref is None:
        return None, "no reference returns recorded (`ref_scores` is null)"
    if tuple(ref) == (0.0, 1.0) and np.any(np.abs(returns) > 1.0):
        # Files written while load_dataset filled missing references with (0, 1): a real
        # (0, 1) reference (maze success) never sees a return outside [0, 1].
        return None, "reference returns (0, 1) with returns outside [0, 1]: a placeholder"
    scores = res.get("normalized_scores")
    if scores is None or any(s is None for s in scores):
        return None, "no normalized scores in eval.json"
    if len(scores) != len(returns):
        raise ValueError(f"{len(scores)} normalized scores for {len(returns)} returns")
    return tuple(float(s) for s in scores), None


EVAL_FIX = "re-run `mpcdwm evaluate` (or `mpcdwm run`) to write it again, or leave it out"


def load_results(eval_file: Path) -> list[Result]:
    """The results of one eval.json (layout: :mod:`mpcdwm.evaluate`), one per planner.

    A file cut short, unreadable or not shaped like an eval.json raises
    :class:`~mpcdwm.files.UserFileError` naming it.
    """
    eval_file = Path(eval_file)
    with reading(eval_file, "eval.json", EVAL_FIX):
        data = json.loads(eval_file.read_text())
    if not isinstance(data, dict):
        raise UserFileError(f"{eval_file} is not an eval.json of `mpcdwm evaluate`; {EVAL_FIX}.")
    try:
        return _results_from(data, eval_file)
    except (KeyError, TypeError, AttributeError) as err:
        raise UserFileError(
            f"{eval_file} is not shaped like an eval.json of `mpcdwm evaluate` "
            f"({type(err).__name__}: {err}); {EVAL_FIX}."
        ) from err


def _results_from(data: dict[str, Any], eval_file: Path) -> list[Result]:
    planners = data.get("planners")
    if not isinstance(planners, dict) or "seed" not in data:
        raise ValueError(f"{eval_file} is not an eval.json of `mpcdwm evaluate` (no planners/seed)")
    config = data.get("config") or {}
    dataset = str(data.get("dataset") or eval_file.parent.name)
    seed = int(data["seed"])
    max_steps = config.get("max_steps")
    agent = data.get("agent")  # kind, steps, seed, config; absent in files of older versions
    if agent:
        # An agent is its kind, budget and what differs from its published preset for this
        # dataset (ReBRAC's per-dataset betas are one method: "ReBRAC as published").
        changes = agent.get("config") or {}
        try:
            changes = changes_from_preset(agent.get("kind"), dataset, changes)
        except ValueError:  # an agent kind this version does not know: every field counts
            pass
        agent_knobs = {
            "agent": agent.get("kind"),
            "agent_steps": agent.get("steps"),
            **{f"agent.{k}": v for k, v in sorted(changes.items())},
        }
        checkpoint = agent  # the recorded identity (its seed included) names the checkpoint
    else:
        agent_knobs = {"agent": "?"}  # not recorded
        checkpoint = {"path": config.get("agent")}  # one checkpoint folder = one agent
    dataset_path = data.get("dataset_path")
    pairing = json.dumps(
        {
            "dataset": dataset,
            "dataset_path": dataset_path,
            "seed": seed,
            "max_steps": max_steps,
            "agent": checkpoint,
        },
        sort_keys=True,
    )
    mpc = {k: v for k, v in recorded_mpc(data).items() if k not in NOT_METHOD}
    # A value chosen per run by a rule is the rule, so seeds with their own values pool.
    mpc |= {k: f"chosen: {rule}" for k, rule in (data.get("chosen_by") or {}).items()}
    results = []
    for name, res in planners.items():
        if not isinstance(res, dict) or "returns" not in res:
            continue
        knobs: dict[str, Any] = {**agent_knobs, "max_steps": max_steps}
        if name != BASE:
            knobs["world_model"] = _world_model_text(data.get("world_model") or res.get("config"))
            knobs.update({f"mpc.{k}": v for k, v in mpc.items()})
            if name == "mpc" and data.get("validation_world_model"):
                knobs["validated_by"] = "another world model"
            if data.get("ensemble_world_models"):
                knobs["ensemble_members"] = 1 + len(data["ensemble_world_models"])
        returns = np.asarray(res["returns"], np.float64)
        try:
            scores, reason = _scores(data, res, returns)
        except ValueError as err:
            raise ValueError(f"{eval_file}: {name}: {err}") from err
        latency = (res.get("latency_ms") or {}).get("median")
        results.append(
            Result(
                dataset=dataset,
                seed=seed,
                method=Method(name, tuple(sorted((k, json.dumps(v)) for k, v in knobs.items()))),
                pairing=pairing,
                returns=tuple(float(r) for r in returns),
                scores=scores,
                no_score_reason=reason,
                latency_median_ms=float(latency) if latency is not None else math.nan,
                source=eval_file,
                agent_recorded=bool(agent),
                trace=res.get("trace"),
                dataset_path=dataset_path,
                diagnostics=res.get("diagnostics") or {},
                imagined_real_corr=tuple(
                    math.nan if c is None else float(c) for c in res.get("imagined_real_corr", ())
                ),
            )
        )
    return results


def distinguish_datasets(results: Sequence[Result]) -> list[Result]:
    """Results whose dataset id is shared by different datasets (other folders or files,
    e.g. two ``collect --out`` runs with one ``--dataset-id``) relabelled ``id (folder)``,
    so the report never pools them; the folder is named by as many trailing path parts as
    it takes to tell them apart. Results without a recorded path keep the bare id."""
    paths: dict[str, set[str]] = {}
    for r in results:
        if r.dataset_path is not None:
            paths.setdefault(r.dataset, set()).add(r.dataset_path)
    labels: dict[tuple[str, str], str] = {}
    for dataset, shared in paths.items():
        if len(shared) < 2:
            continue
        parts = {p: Path(p).parts for p in shared}
        depth = 1
        while depth < max(len(v) for v in parts.values()) and len(
            {v[-depth:] for v in parts.values()}
        ) < len(parts):
            depth += 1
        for p, v in parts.items():
            labels[(dataset, p)] = f"{dataset} ({'/'.join(v[-depth:])})"
    if not labels:
        return list(results)
    return [
        dataclasses.replace(r, dataset=labels[(r.dataset, r.dataset_path)])
        if (r.dataset, r.dataset_path) in labels
        else r
        for r in results
    ]


def display_labels(methods: Iterable[Method]) -> dict[Method, str]:
    """Short label per method: the planner plus the knobs that differ among that planner's
    methods (``mpc (H=3, lr=0.0003)``); the base agent is ``base``."""
    methods = sorted(set(methods), key=lambda m: (m.planner != BASE, m.planner, m.knobs))
    labels = {}
    for planner in dict.fromkeys(m.planner for m in methods):
        same = [m for m in methods if m.planner == planner]
        dicts = [dict(m.knobs) for m in same]
        names = sorted({k for d in dicts for k in d})
        varying = [k for k in names if len({d.get(k) for d in dicts}) > 1]
        for m, d in zip(same, dicts, strict=True):
            # An agent's hyperparameters are shown only where they differ between agents of
            # the same kind: across kinds, the kind says it (``base (agent=iql)``).
            kin = [e for e in dicts if e.get("agent") == d.get("agent")]
            shown = [
                k for k in varying if not k.startswith("agent.") or len({e.get(k) for e in kin}) > 1
            ]
            parts = [
                f"{SHORT_KNOBS.get(k, k.removeprefix('mpc.'))}="
                + ("preset" if k.startswith("agent.") and k not in d else _knob_text(d.get(k)))
                for k in shown
            ]
            labels[m] = f"{m.name} ({', '.join(parts)})" if parts else m.name
    if len(set(labels.values())) != len(labels):  # cannot happen: distinct knobs show
        raise AssertionError(f"two methods share a label: {sorted(labels.values())}")
    return labels


def _knob_text(value: str | None) -> str:
    """A knob's value as shown (None: the knob does not apply to that method)."""
    return "-" if value is None else str(json.loads(value))


# --------------------------------------------------------------------------- summary


@dataclasses.dataclass(frozen=True)
class Entry:
    """One (dataset, method): its score (None without reference returns), its return, its
    paired gain over the base agent (in the dataset's unit; None without a paired base run)."""

    dataset: str
    method: Method
    score: Estimate | None
    ret: Estimate
    gain: Estimate | None
    gain_partial: bool  # the gain uses a subset of the method's seeds/episodes
    latency_ms: float
    sources: tuple[Path, ...]
    over_placebo: Estimate | None = None
    """Paired gain over the method's placebo (:func:`placebo_twin`) on the episodes both ran;
    None without one."""


@dataclasses.dataclass(frozen=True)
class Aggregate:
    """One method across the datasets that have normalised scores."""

    method: Method
    datasets: tuple[str, ...]
    mean: Estimate
    iqm: Estimate
    gain_mean: Estimate | None
    over_placebo_mean: Estimate | None = None
    """Mean over datasets of the paired gain over the placebo twin (None unless every dataset
    has the twin)."""


@dataclasses.dataclass(frozen=True)
class Choice:
    """The gain of a planner chosen per dataset by its real returns (:func:`choose_per_dataset`).

    ``rule``: ``in-sample`` (the best mean gain over all episodes, scored on the same episodes:
    optimistic) or ``cross-fitted`` (chosen on one half of the episodes, scored on the other).
    ``chosen``: dataset -> the method chosen (in-sample: one; cross-fitted: the choice on the
    even episodes, then on the odd ones).
    """

    rule: Literal["in-sample", "cross-fitted"]
    per_dataset: Mapping[str, Estimate]
    chosen: Mapping[str, tuple[Method, ...]]
    gain_mean: Estimate
    over_placebo_mean: Estimate | None


@dataclasses.dataclass(frozen=True)
class Summary:
    """Everything the tables, plots and summary.json show."""

    datasets: tuple[str, ...]
    unit: Mapping[str, Literal["score", "return"]]  # the unit gains are in, per dataset
    no_score: Mapping[str, str]  # dataset -> why it has no normalised score
    labels: Mapping[Method, str]
    entries: Mapping[tuple[str, Method], Entry]
    aggregates: tuple[Aggregate, ...]
    results: tuple[Result, ...]
    notes: tuple[str, ...]
    choices: tuple[Choice, ...] = ()


def group_by_seed(results: Iterable[Result]) -> dict[tuple[str, Method], dict[int, Result]]:
    """(dataset, method) -> seed -> result. A repeated seed is an error naming both files,
    unless the two hold the same per-episode returns (the same measurement, counted once)."""
    groups: dict[tuple[str, Method], dict[int, Result]] = {}
    for r in sorted(results, key=lambda r: str(r.source)):
        group = groups.setdefault((r.dataset, r.method), {})
        prev = group.get(r.seed)
        if prev is None:
            group[r.seed] = r
        elif prev.returns != r.returns:
            raise ValueError(
                f"{r.dataset}: {r.method.name} with the same configuration and seed {r.seed} "
                f"is in both {prev.source} and {r.source} with different returns; a repeated "
                "seed is not another sample. Report one of them, or evaluate another seed."
            )
    return groups


def _values(r: Result, unit: str) -> tuple[float, ...]:
    return r.scores if unit == "score" and r.scores is not None else r.returns


def summarize(results: Sequence[Result]) -> Summary:
    """Group results into methods per dataset and compute every estimate."""
    if not results:
        raise ValueError("no results to report")
    results = distinguish_datasets(results)
    groups = group_by_seed(results)
    datasets = tuple(sorted({r.dataset for r in results}))
    no_score = {}
    for d in datasets:
        reasons = {r.no_score_reason for r in results if r.dataset == d and r.scores is None}
        if reasons:
            no_score[d] = "; ".join(sorted(reasons))
    unit = {d: ("return" if d in no_score else "score") for d in datasets}
    bases: dict[str, Result] = {r.pairing: r for r in results if r.method.planner == BASE}
    entries = {}
    for (d, method), by_seed in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1].knobs)):
        gain, partial = None, False
        if method.planner != BASE:
            gain, partial = _gain(by_seed, bases, unit[d])
        runs = list(by_seed.values())
        over_placebo, twin = None, placebo_twin(method)
        if twin != method and (d, twin) in groups:
            over_placebo, _ = _gain(by_seed, _by_pairing(groups[(d, twin)]), unit[d])
        entries[(d, method)] = Entry(
            dataset=d,
            method=method,
            score=None
            if unit[d] == "return"
            else mean_estimate({s: r.scores for s, r in by_seed.items()}),
            ret=mean_estimate({s: r.returns for s, r in by_seed.items()}),
            gain=gain,
            gain_partial=partial,
            latency_ms=float(np.nanmedian([r.latency_median_ms for r in runs]))
            if any(math.isfinite(r.latency_median_ms) for r in runs)
            else math.nan,
            sources=tuple(sorted({r.source for r in runs})),
            over_placebo=over_placebo,
        )
    score_sets = tuple(d for d in datasets if unit[d] == "score")
    aggregates = []
    if len(score_sets) >= 2:
        for method in dict.fromkeys(m for _, m in entries):
            cells = [entries.get((d, method)) for d in score_sets]
            if any(c is None for c in cells):
                continue
            per_dataset = [
                {s: r.scores for s, r in groups[(d, method)].items()} for d in score_sets
            ]
            gain_mean = over_placebo_mean = None
            if method.planner != BASE and all(c.gain is not None for c in cells):
                gain_mean = _mean_gain([(groups[(d, method)], bases) for d in score_sets])
            twin = placebo_twin(method)
            if all(c.over_placebo is not None for c in cells) and twin != method:
                over_placebo_mean = _mean_gain(
                    [(groups[(d, method)], _by_pairing(groups[(d, twin)])) for d in score_sets]
                )
            aggregates.append(
                Aggregate(
                    method,
                    score_sets,
                    aggregate_estimate(per_dataset, "mean"),
                    aggregate_estimate(per_dataset, "iqm"),
                    gain_mean,
                    over_placebo_mean,
                )
            )
    notes = []
    if not all(r.agent_recorded for r in results):
        notes.append(
            "Some eval.json files do not record the base agent (kind, budget): methods are "
            "told apart by planner, world model and planner settings only (agent=?)."
        )
    return Summary(
        datasets=datasets,
        unit=unit,
        no_score=no_score,
        labels=display_labels(m for _, m in entries),
        entries=entries,
        aggregates=tuple(aggregates),
        results=tuple(results),
        notes=tuple(notes),
        choices=_choices(score_sets, entries, groups, bases),
    )


def _paired_values(
    by_seed: Mapping[int, Result], bases: Mapping[str, Result], unit: str
) -> tuple[tuple[dict[int, tuple[float, ...]], dict[int, tuple[float, ...]]], bool]:
    """(method, base) seed -> values over the episodes both ran, and whether that drops any of
    the method's seeds or episodes. A base pairs when it shares the pairing key (same dataset,
    seed, max_steps and agent checkpoint); episode ``i`` has env seed ``seed + i`` in both,
    whatever the episode count, so the first ``min`` episodes pair."""
    method_vals, base_vals, partial = {}, {}, False
    for seed, r in by_seed.items():
        b = bases.get(r.pairing)
        if b is None:
            partial = True
            continue
        k = min(len(r.returns), len(b.returns))
        partial |= k < len(r.returns)
        method_vals[seed] = _values(r, unit)[:k]
        base_vals[seed] = _values(b, unit)[:k]
    return (method_vals, base_vals), partial


def _by_pairing(by_seed: Mapping[int, Result]) -> dict[str, Result]:
    """Runs keyed by their pairing key: a placebo's runs pair like a base's (same agent
    checkpoint, seed and episodes)."""
    return {r.pairing: r for r in by_seed.values()}


def _mean_gain(pairs: Sequence[tuple[Mapping[int, Result], Mapping[str, Result]]]) -> Estimate:
    """Mean over datasets of the paired gain (score units) of a method's runs over their
    references (its base or placebo runs by pairing key), one ``(runs, references)`` per
    dataset, with the stratified bootstrap CI of :func:`aggregate_estimate`."""
    diffs = [_paired_values(runs, refs, "score")[0] for runs, refs in pairs]
    return aggregate_estimate([paired_differences(m, b) for m, b in diffs], "mean")


def placebo_twin(method: Method) -> Method:
    """The placebo of a method that adapts by gradient: the same knobs with
    ``mpc.update = placebo`` (the same planner moving the action as much along a random
    direction). A method that is no such planner is its own twin (and has no placebo)."""
    knobs = dict(method.knobs)
    if knobs.get("mpc.update") != json.dumps("gradient") or method.planner == BASE:
        return method
    knobs["mpc.update"] = json.dumps("placebo")
    return Method(method.planner, tuple(sorted(knobs.items())))


def _gain(
    by_seed: Mapping[int, Result], bases: Mapping[str, Result], unit: str
) -> tuple[Estimate | None, bool]:
    (method_vals, base_vals), partial = _paired_values(by_seed, bases, unit)
    if not method_vals:
        return None, False
    return paired_gain(method_vals, base_vals), partial


# ------------------------------------------------------------- a choice on real returns


def chosen_per_episode(
    gains: np.ndarray, fold: np.ndarray, weights: np.ndarray, cross_fit: bool
) -> np.ndarray:
    """Which candidate's gain counts for each episode when the candidate is chosen on returns.

    ``gains``: (candidates, episodes) paired gains on the same episodes; ``fold``: (episodes,)
    0 or 1; ``weights``: (resamples, episodes) how often each episode is drawn (a row of ones
    for the sample itself). In-sample: the candidate with the best weighted mean gain, for
    every episode. Cross-fitted: episodes of fold k get the candidate best on fold 1 - k, so no
    episode scores the choice it helped make. Returns (resamples, episodes) candidate indices.
    """
    if not cross_fit:
        best = np.argmax(weights @ gains.T, axis=1)  # weighted sums: same total weight per row
        return np.repeat(best[:, None], gains.shape[1], axis=1)
    choice = np.empty(weights.shape, dtype=np.int64)
    for k in (0, 1):
        on = fold == k
        choice[:, ~on] = np.argmax(weights[:, on] @ gains[:, on].T, axis=1)[:, None]
    return choice


def _mean_of_choice(values: np.ndarray, choice: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(resamples,) weighted mean over episodes of ``values[choice, episode]``."""
    picked = values[choice, np.arange(values.shape[1])[None, :]]
    return (weights * picked).sum(axis=1) / weights.sum(axis=1)


def choose_per_dataset(
    gains: Sequence[np.ndarray],
    folds: Sequence[np.ndarray],
    cross_fit: bool,
    over_placebo: Sequence[np.ndarray] | None = None,
    *,
    n_resamples: int = N_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> tuple[
    list[tuple[float, float, float]],
    tuple[float, float, float],
    tuple[float, float, float] | None,
    list[np.ndarray],
]:
    """Mean gain of a candidate chosen per dataset by its paired gains, with bootstrap CIs.

    ``gains[d]``: (candidates, episodes) paired gains over the base on dataset d (candidates
    may differ per dataset); ``folds[d]``: (episodes,) 0/1; ``over_placebo[d]``: the same
    candidates' gains over their placebos on the same episodes. The bootstrap resamples
    episodes within each dataset and *repeats the choice in every resample*, so the CI includes
    the choice's own noise. Returns per dataset (value, low, high), the mean over datasets
    (value, low, high), the same mean of the chosen candidates' gains over their placebos
    (None without ``over_placebo``), and per dataset the (episodes,) candidate indices the
    sample itself chose (:func:`chosen_per_episode`).
    """
    rng = np.random.default_rng(seed)
    alpha = 100 * (1 - CONFIDENCE) / 2

    def estimate(values: np.ndarray) -> tuple[float, float, float]:
        """(resamples + 1,) values, the sample's first -> (value, percentile CI)."""
        return float(values[0]), *map(float, np.percentile(values[1:], [alpha, 100 - alpha]))

    means, plc_means, sample_choices = [], [], []
    for d, g in enumerate(gains):
        n = g.shape[1]
        drawn = rng.multinomial(n, np.full(n, 1.0 / n), size=n_resamples).astype(np.float64)
        weights = np.concatenate([np.ones((1, n)), drawn])  # row 0: the sample itself
        choice = chosen_per_episode(g, folds[d], weights, cross_fit)
        sample_choices.append(choice[0])
        means.append(_mean_of_choice(g, choice, weights))
        if over_placebo is not None:
            plc_means.append(_mean_of_choice(over_placebo[d], choice, weights))
    plc = estimate(np.mean(plc_means, axis=0)) if over_placebo is not None else None
    return [estimate(m) for m in means], estimate(np.mean(means, axis=0)), plc, sample_choices


def _is_placebo(method: Method) -> bool:
    return dict(method.knobs).get("mpc.update") == json.dumps("placebo")


def _candidate_gains(
    runs: Sequence[Mapping[int, Result]],
    placebos: Sequence[Mapping[int, Result] | None],
    bases: Mapping[str, Result],
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, tuple[int, ...]] | None:
    """One dataset's candidates on the episodes all of them ran: (candidates, episodes) paired
    gains over the base, the same over their placebos (None unless every candidate has one),
    the episodes' folds (episode index parity within its seed) and episodes per seed. None
    when no episode is left for both folds."""
    diffs = [paired_differences(*_paired_values(r, bases, "score")[0]) for r in runs]
    gaps = [
        None if p is None else paired_differences(*_paired_values(r, _by_pairing(p), "score")[0])
        for r, p in zip(runs, placebos, strict=True)
    ]
    with_gap = all(g is not None for g in gaps)
    paired = diffs + (gaps if with_gap else [])
    seeds = sorted(set.intersection(*(set(x) for x in paired)))
    k = {s: min(len(x[s]) for x in paired) for s in seeds}
    if not any(k[s] >= 2 for s in seeds):
        return None

    def stack(per_seed: Sequence[Mapping[int, np.ndarray]]) -> np.ndarray:
        return np.stack([np.concatenate([x[s][: k[s]] for s in seeds]) for x in per_seed])

    fold = np.concatenate([np.arange(k[s]) % 2 for s in seeds])
    return stack(diffs), stack(gaps) if with_gap else None, fold, tuple(k[s] for s in seeds)


def _choices(
    score_sets: Sequence[str],
    entries: Mapping[tuple[str, Method], Entry],
    groups: Mapping[tuple[str, Method], Mapping[int, Result]],
    bases: Mapping[str, Result],
) -> tuple[Choice, ...]:
    """In-sample and cross-fitted choices over the planners (not placebos) with a paired gain;
    none unless >= 2 datasets have scores, each has a candidate and some has >= 2."""
    cands = {
        d: [
            m
            for (dd, m), e in entries.items()
            if dd == d and m.planner != BASE and not _is_placebo(m) and e.gain is not None
        ]
        for d in score_sets
    }
    if len(score_sets) < 2 or not all(cands.values()) or max(map(len, cands.values())) < 2:
        return ()
    per_dataset = []
    for d in score_sets:
        twins = [placebo_twin(m) for m in cands[d]]
        found = _candidate_gains(
            [groups[(d, m)] for m in cands[d]],
            [groups.get((d, t)) if t != m else None for m, t in zip(cands[d], twins, strict=True)],
            bases,
        )
        if found is None:
            return ()
        per_dataset.append(found)
    gains, gaps, folds, counts = (list(x) for x in zip(*per_dataset, strict=True))
    over_placebo = gaps if all(g is not None for g in gaps) else None
    episodes = tuple(e for c in counts for e in c)
    choices = []
    for rule in ("in-sample", "cross-fitted"):
        cross = rule == "cross-fitted"
        each, mean, plc, sample_choices = choose_per_dataset(gains, folds, cross, over_placebo)
        chosen = {}
        for d, idx, fold in zip(score_sets, sample_choices, folds, strict=True):
            # cross-fitted: the choice made on fold k is used on fold 1 - k
            picks = (idx[fold == 1][0], idx[fold == 0][0]) if cross else (idx[0],)
            chosen[d] = tuple(cands[d][i] for i in picks)
        choices.append(
            Choice(
                rule,
                {d: Estimate(*v, c) for d, v, c in zip(score_sets, each, counts, strict=True)},
                chosen,
                Estimate(*mean, episodes, n_datasets=len(score_sets)),
                Estimate(*plc, episodes, n_datasets=len(score_sets)) if plc else None,
            )
        )
    return tuple(choices)


# --------------------------------------------------------------------------- tables


@dataclasses.dataclass(frozen=True)
class Table:
    """One table, rendered to markdown and to HTML from this single source. ``kind``: score,
    return, gain or diagnostics."""

    kind: Literal["score", "return", "gain", "diagnostics"]
    title: str
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    notes: tuple[str, ...] = ()


def _method_order(summary: Summary) -> list[Method]:
    """Base first, then by planner and by knob values (numbers as numbers: 3e-05 < 0.0003)."""

    def sortable(value: str) -> tuple[int, float, str]:
        v = json.loads(value)
        if isinstance(v, int | float) and not isinstance(v, bool):
            return (0, float(v), "")
        return (1, 0.0, value)

    return sorted(
        {m for _, m in summary.entries},
        key=lambda m: (m.planner != BASE, m.planner, [(k, sortable(v)) for k, v in m.knobs]),
    )


def build_tables(summary: Summary) -> list[Table]:
    """Normalised score, return and paired-gain tables (rows: methods, columns: datasets)."""
    stats_note = (
        f"mean [{CONFIDENCE:.0%} CI] (n=seeds x episodes): percentile bootstrap over "
        "episodes pooled across seeds (10,000 resamples)."
    )
    marks = {
        d: f" ({i + 1})" for i, d in enumerate(d for d in summary.datasets if d in summary.no_score)
    }
    no_score_notes = tuple(
        f"({i + 1}) {d}: no normalized score: {summary.no_score[d]}. Its returns are in the "
        "return table."
        for i, d in enumerate(d for d in summary.datasets if d in summary.no_score)
    )
    methods = _method_order(summary)
    aggs = {a.method: a for a in summary.aggregates}
    with_aggs = bool(summary.aggregates)

    header = ["method", *(d + marks.get(d, "") for d in summary.datasets)]
    if with_aggs:
        header += ["mean over datasets", "IQM over datasets"]
    header.append("latency (ms)")
    rows = []
    for m in methods:
        cells = [summary.labels[m]]
        for d in summary.datasets:
            e = summary.entries.get((d, m))
            cells.append("-" if e is None or e.score is None else e.score.text())
        if with_aggs:
            a = aggs.get(m)
            cells += [a.mean.text(), a.iqm.text()] if a else ["-", "-"]
        lats = [e.latency_ms for (_, mm), e in summary.entries.items() if mm == m]
        lat = float(np.nanmedian(lats)) if any(math.isfinite(x) for x in lats) else math.nan
        cells.append(f"{lat:.2f}" if math.isfinite(lat) else "-")
        rows.append(tuple(cells))
    score_notes = [stats_note, *no_score_notes]
    if with_aggs:
        score_notes.append(
            "Across datasets (those with normalized scores): mean of per-dataset means; IQM of "
            "all episodes' scores; stratified bootstrap (episodes resampled within a dataset)."
        )
    tables = [
        Table(
            "score",
            "Normalized score (100 = reference expert, 0 = reference random)",
            tuple(header),
            tuple(rows),
            (*score_notes, *summary.notes),
        )
    ]

    header = ["method", *summary.datasets]
    rows = []
    for m in methods:
        cells = [summary.labels[m]]
        for d in summary.datasets:
            e = summary.entries.get((d, m))
            cells.append("-" if e is None else e.ret.text())
        rows.append(tuple(cells))
    tables.append(Table("return", "Return (undiscounted, per episode)", tuple(header), tuple(rows)))

    planners = [m for m in methods if m.planner != BASE]
    if planners:
        header = ["method", *(f"{d} ({summary.unit[d]})" for d in summary.datasets)]
        if with_aggs:
            header.append("mean over datasets (score)")
        rows, partial, unpaired = [], False, False
        for m in planners:
            cells = [summary.labels[m]]
            for d in summary.datasets:
                e = summary.entries.get((d, m))
                if e is None or e.gain is None:
                    cells.append("-")
                    unpaired |= e is not None
                else:
                    cells.append(e.gain.text(signed=True) + (" *" if e.gain_partial else ""))
                    partial |= e.gain_partial
            if with_aggs:
                a = aggs.get(m)
                cells.append(a.gain_mean.text(signed=True) if a and a.gain_mean else "-")
            rows.append(tuple(cells))
        notes = [
            "Planner minus the base agent on the same episodes (same agent checkpoint, seed and "
            "episode index), in the dataset's unit; " + stats_note,
        ]
        if unpaired:
            notes.append("-: no base run of the same agent, seed and max_steps to pair with.")
        if partial:
            notes.append("*: over the seeds/episodes that have a paired base run only.")
        tables.append(
            Table(
                "gain", "Paired gain over the base agent", tuple(header), tuple(rows), tuple(notes)
            )
        )
        with_twin = [
            m
            for m in planners
            if any(e.over_placebo for (_, mm), e in summary.entries.items() if mm == m)
        ]
        if with_twin:
            header = ["method", *(f"{d} ({summary.unit[d]})" for d in summary.datasets)]
            if with_aggs:
                header.append("mean over datasets (score)")
            rows = []
            for m in with_twin:
                cells = [summary.labels[m]]
                for d in summary.datasets:
                    e = summary.entries.get((d, m))
                    ok = e is not None and e.over_placebo is not None
                    cells.append(e.over_placebo.text(signed=True) if ok else "-")
                if with_aggs:
                    a = aggs.get(m)
                    ok = a is not None and a.over_placebo_mean is not None
                    cells.append(a.over_placebo_mean.text(signed=True) if ok else "-")
                rows.append(tuple(cells))
            note = (
                "The method minus its placebo (the same planner and settings, its update replaced "
                "by a random direction that moves the action as much) on the same episodes: a "
                "gain counts only beyond the placebo's; " + stats_note
            )
            tables.append(
                Table("gain", "Paired gain over the placebo", tuple(header), tuple(rows), (note,))
            )
        if summary.choices:
            tables.append(choice_table(summary))
        tables.append(diagnostics_table(summary, planners))
    return tables


def choice_table(summary: Summary) -> Table:
    """The gain of the planner chosen per dataset on real returns, in-sample and cross-fitted."""
    datasets = tuple(summary.choices[0].per_dataset)
    header = ["chosen per dataset", *datasets, "mean over datasets", "mean over the placebos"]
    names = {
        "in-sample": "best on all episodes (in-sample: optimistic)",
        "cross-fitted": "best on the other half of the episodes (cross-fitted)",
    }
    rows, notes = [], []
    for c in summary.choices:
        cells = [names[c.rule], *(c.per_dataset[d].text(signed=True) for d in datasets)]
        cells.append(c.gain_mean.text(signed=True))
        cells.append(c.over_placebo_mean.text(signed=True) if c.over_placebo_mean else "-")
        rows.append(tuple(cells))
        picks = "; ".join(
            f"{d}: " + " / ".join(summary.labels[m] for m in c.chosen[d]) for d in datasets
        )
        notes.append(
            f"{c.rule} choice"
            + (" (on even / odd episodes)" if len(c.chosen[datasets[0]]) > 1 else "")
            + f": {picks}."
        )
    notes.insert(
        0,
        "Per dataset, the planner (of those reported, placebos excluded) with the best paired gain "
        "over the base, as the paper chose its step size on evaluation returns. In-sample: chosen "
        "and scored on the same episodes (biased upward). Cross-fitted: chosen on the even "
        "episodes of each seed and scored on the odd ones, and the reverse. Gains in score; the "
        "bootstrap repeats the choice in each resample; over the placebos: the chosen planners' "
        "gains over their placebo twins on the same episodes (- when a candidate has none).",
    )
    return Table(
        "gain",
        "A planner chosen per dataset on real returns",
        tuple(header),
        tuple(rows),
        tuple(notes),
    )


def diagnostics_table(summary: Summary, planners: Sequence[Method]) -> Table:
    """What each planner did, per dataset (means over seeds' decisions): the action change
    from the base policy, the share of decisions that acted adapted, and the mean per-episode
    correlation of imagined and real return."""
    header = ["method", *summary.datasets]
    rows = []
    for m in planners:
        cells = [summary.labels[m]]
        for d in summary.datasets:
            runs = [r for r in summary.results if r.dataset == d and r.method == m]
            if not runs:
                cells.append("-")
                continue

            def mean(key: str, runs=runs) -> float:
                vals = [r.diagnostics.get(key) for r in runs]
                vals = [float(v) for v in vals if v is not None]
                return float(np.mean(vals)) if vals else math.nan

            corr = [c for r in runs for c in r.imagined_real_corr if math.isfinite(c)]
            corr_text = f"{np.mean(corr):+.2f} ({len(corr)} ep.)" if corr else "-"
            cells.append(
                f"Δa {mean('action_change'):.3f} · adapted {mean('accepted'):.2f} · "
                f"corr {corr_text}"
            )
        rows.append(tuple(cells))
    notes = (
        "Δa: mean norm of (action taken - base policy's action) per decision; adapted: share "
        "of decisions that acted with the adapted policy (the validated step rejects some); "
        "corr: mean over episodes of the Pearson correlation between the imagined return "
        "before planning and the real discounted return-to-go (how well imagination tracks "
        "reality along the episode).",
    )
    return Table("diagnostics", "What the planners did", tuple(header), tuple(rows), notes)


def to_markdown(table: Table) -> str:
    """``### title``, a pipe table, and its notes as a paragraph each."""
    esc = [[c.replace("|", "\\|") for c in row] for row in (table.header, *table.rows)]
    lines = [f"### {table.title}", "", "| " + " | ".join(esc[0]) + " |"]
    lines.append("|" + "---|" * len(table.header))
    lines += ["| " + " | ".join(r) + " |" for r in esc[1:]]
    lines += ["", *(f"{n}  " for n in table.notes)] if table.notes else []
    return "\n".join(lines).rstrip() + "\n"


def to_html(table: Table) -> str:
    """The same table as :func:`to_markdown`, as HTML."""
    th = "".join(f"<th>{html.escape(c)}</th>" for c in table.header)
    trs = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in table.rows
    )
    notes = "".join(f"<p class='note'>{html.escape(n)}</p>" for n in table.notes)
    return f"<h3>{html.escape(table.title)}</h3><table><tr>{th}</tr>{trs}</table>{notes}"


# --------------------------------------------------------------------------- summary.json


def summary_dict(summary: Summary) -> dict[str, Any]:
    """JSON-ready numbers: one entry per (dataset, method) with the main estimate at the top
    level (normalised score, or the return where there is none) and per method across
    datasets."""
    methods = []
    order = {m: i for i, m in enumerate(_method_order(summary))}
    for (d, m), e in sorted(summary.entries.items(), key=lambda kv: (kv[0][0], order[kv[0][1]])):
        main = e.score if e.score is not None else e.ret
        methods.append(
            {
                "dataset": d,
                "method": summary.labels[m],
                "planner": m.planner,
                "knobs": m.knob_dict(),
                "unit": summary.unit[d],
                **main.to_dict(),
                "score": e.score.to_dict() if e.score else None,
                "return": e.ret.to_dict(),
                "gain": e.gain.to_dict() if e.gain else None,
                "gain_partial": e.gain_partial,
                "over_placebo": e.over_placebo.to_dict() if e.over_placebo else None,
                "latency_ms": _finite_or_none(e.latency_ms),
                "no_score_reason": summary.no_score.get(d),
                "sources": [str(p) for p in e.sources],
            }
        )
    aggregates = [
        {
            "method": summary.labels[a.method],
            "datasets": list(a.datasets),
            "mean": a.mean.to_dict(),
            "iqm": a.iqm.to_dict(),
            "gain_mean": a.gain_mean.to_dict() if a.gain_mean else None,
            "over_placebo_mean": a.over_placebo_mean.to_dict() if a.over_placebo_mean else None,
        }
        for a in summary.aggregates
    ]
    choices = [
        {
            "rule": c.rule,
            "gain_mean": c.gain_mean.to_dict(),
            "over_placebo_mean": c.over_placebo_mean.to_dict() if c.over_placebo_mean else None,
            "per_dataset": {
                d: {"gain": e.to_dict(), "chosen": [summary.labels[m] for m in c.chosen[d]]}
                for d, e in c.per_dataset.items()
            },
        }
        for c in summary.choices
    ]
    return {
        "statistics": {
            "confidence": CONFIDENCE,
            "bootstrap": "percentile",
            "n_resamples": N_RESAMPLES,
            "seed": BOOTSTRAP_SEED,
            "resampled": "episodes pooled over seeds (stratified by dataset across datasets)",
            "gain": "planner minus base, paired by (seed, episode index)",
            "over_placebo": "planner minus its placebo twin, paired by (seed, episode index)",
        },
        "methods": methods,
        "aggregates": aggregates,
        "choices": choices,
        "notes": list(summary.notes),
    }


# --------------------------------------------------------------------------- plots


def _grid(n: int) -> tuple[int, int]:
    cols = min(3, n)
    return math.ceil(n / cols), cols


def _yerr(ests: Sequence[Estimate]) -> np.ndarray:
    """(2, n) distances from the value to the CI ends (0 where there is no CI)."""
    lo = [e.value - e.ci_low if math.isfinite(e.ci_low) else 0.0 for e in ests]
    hi = [e.ci_high - e.value if math.isfinite(e.ci_high) else 0.0 for e in ests]
    return np.array([lo, hi])


def _main(e: Entry) -> Estimate:
    return e.score if e.score is not None else e.ret


def _unit_label(summary: Summary, d: str) -> str:
    return "normalized score" if summary.unit[d] == "score" else "return (no reference)"


def _plots(out: Path, summary: Summary) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = _method_order(summary)
    colors = {m: plt.cm.tab10(i % 10) for i, m in enumerate(methods)}
    made = []

    # Scores: one panel per dataset (each in its own unit), a bar per method with its CI.
    rows, cols = _grid(len(summary.datasets))
    height = 1.0 + 0.45 * len(methods)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, height * rows), squeeze=False)
    for ax, d in zip(axes.flat, summary.datasets, strict=False):
        present = [m for m in methods if (d, m) in summary.entries]
        ests = [_main(summary.entries[(d, m)]) for m in present]
        ys = np.arange(len(present))[::-1]
        ax.barh(
            ys,
            [e.value for e in ests],
            xerr=_yerr(ests),
            capsize=3,
            color=[colors[m] for m in present],
        )
        ax.set_yticks(ys, [textwrap.fill(summary.labels[m], 28) for m in present], fontsize=7)
        ax.set_xlabel(_unit_label(summary, d), fontsize=8)
        ax.set_title(textwrap.fill(d, 40), fontsize=9)
    for ax in axes.flat[len(summary.datasets) :]:
        ax.set_visible(False)
    fig.suptitle(f"Mean with {CONFIDENCE:.0%} bootstrap CI (seeds x episodes)", fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "scores.png", dpi=120)
    plt.close(fig)
    made.append("scores.png")

    # Score vs latency: one panel per dataset, a point per method, CI bars, shared legend.
    fig, axes = plt.subplots(
        rows, cols, figsize=(4.6 * cols, 3.4 * rows + 0.3 * len(methods)), squeeze=False
    )
    for ax, d in zip(axes.flat, summary.datasets, strict=False):
        for m in methods:
            e = summary.entries.get((d, m))
            if e is None:
                continue
            est = _main(e)
            x = e.latency_ms if math.isfinite(e.latency_ms) and e.latency_ms > 0 else 1e-3
            ax.errorbar(
                [x],
                [est.value],
                yerr=_yerr([est]),
                fmt="o",
                capsize=3,
                color=colors[m],
                label=summary.labels[m],
            )
        ax.set_xscale("log")
        ax.set_xlabel("decision latency, median (ms)", fontsize=8)
        ax.set_ylabel(_unit_label(summary, d), fontsize=8)
        ax.set_title(textwrap.fill(d, 40), fontsize=9)
    for ax in axes.flat[len(summary.datasets) :]:
        ax.set_visible(False)
    handles = [plt.Line2D([], [], marker="o", ls="", color=colors[m]) for m in methods]
    fig.legend(
        handles,
        [summary.labels[m] for m in methods],
        loc="lower center",
        ncol=min(3, len(methods)),
        fontsize=7,
        frameon=False,
    )
    fig.suptitle(f"Score vs decision latency ({CONFIDENCE:.0%} bootstrap CI)", fontsize=10)
    fig.tight_layout(rect=(0, 0.04 + 0.035 * math.ceil(len(methods) / 3), 1, 1))
    fig.savefig(out / "score_vs_latency.png", dpi=120)
    plt.close(fig)
    made.append("score_vs_latency.png")

    traced = _trace_result(summary.results)
    if traced is not None:
        _trace_plot(out / "trace.png", traced, summary.labels[traced.method])
        made.append("trace.png")
    return made


def _trace_result(results: Iterable[Result]) -> Result | None:
    """The run whose trace to draw: the adapting planner (``mpc``) first, else another
    non-base planner (the base never plans: its imagined return is always 0)."""
    traced = [
        r
        for r in results
        if r.method.planner != BASE and r.trace and any(r.trace.get(k) for k in r.trace)
    ]
    if not traced:
        return None
    return min(traced, key=lambda r: (r.method.planner != "mpc", r.dataset, r.seed, r.source))


def _trace_plot(path: Path, r: Result, label: str) -> None:
    import matplotlib.pyplot as plt

    def series(key: str) -> np.ndarray:
        return np.array([np.nan if v is None else v for v in r.trace.get(key) or []], float)

    before, after = series("imagined_return_before"), series("imagined_return_after")
    real = series("real_return")
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(6.4, 5.2), sharex=True)
    top.plot(before, lw=1, label="imagined return before planning")
    top.plot(after, lw=1, label="imagined return after planning")
    top.set_ylabel("imagined return\n(H steps + terminal Q)", fontsize=8)
    top.legend(fontsize=7)
    bottom.plot(real, lw=1, color="k", label="real return so far")
    bottom.set_ylabel("real return so far", fontsize=8)
    bottom.set_xlabel("environment step (episode 0)", fontsize=8)
    title = f"{label} on {r.dataset}, seed {r.seed}: imagined vs real return"
    fig.suptitle(textwrap.fill(title, 60), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------- entry point


def report(cfg: ReportConfig) -> Path:
    """Write report.md, report.html, summary.json and PNG plots into ``cfg.out``; returns
    report.md's path."""
    from rich.console import Console
    from rich.markdown import Markdown

    ensure_writable_dir(cfg.out, "--out")  # before reading: a bad --out costs nothing
    files = find_eval_files(cfg.runs)
    results = [r for f in files for r in load_results(f)]
    if not results:
        raise ValueError(f"the eval.json files {[str(f) for f in files]} hold no results")
    summary = summarize(results)
    tables = build_tables(summary)
    cfg.out.mkdir(parents=True, exist_ok=True)
    plots = _plots(cfg.out, summary)
    md_tables = "\n".join(to_markdown(t) for t in tables)
    sources = "\n".join(f"- `{f}`" for f in files)
    md = (
        "# mpcdwm report\n\n"
        + md_tables
        + "\n"
        + "".join(f"![{p}]({p})\n\n" for p in plots)
        + f"Sources:\n{sources}\n"
    )
    write_text_atomic(cfg.out / "report.md", md)
    write_text_atomic(cfg.out / "report.html", _html_page(tables, plots, files))
    write_text_atomic(cfg.out / "summary.json", json.dumps(summary_dict(summary), indent=1))
    if not cfg.quiet:
        Console().print(Markdown(md_tables))
    return cfg.out / "report.md"


def _html_page(tables: Sequence[Table], plots: Sequence[str], files: Sequence[Path]) -> str:
    imgs = "".join(f'<p><img src="{p}" alt="{p}" style="max-width:100%"></p>' for p in plots)
    srcs = "".join(f"<li><code>{html.escape(str(f))}</code></li>" for f in files)
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>mpcdwm report</title>"
        "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:"
        "collapse}td,th{border:1px solid #ccc;padding:4px 8px}.note{font-size:90%;color:#444}"
        "</style></head><body><h1>mpcdwm report</h1>"
        + "".join(to_html(t) for t in tables)
        + f"{imgs}<ul>{srcs}</ul></body></html>"
    )
