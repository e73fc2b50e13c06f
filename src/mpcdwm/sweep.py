"""Sweeps: datasets x seeds x configs as Ray tasks, gathered into one report.

A sweep file (YAML or TOML)::

    out: runs/sweep                 # every trial is an ordinary run directory below this
    datasets: [mpcdwm/hopper-medium-v0, mpcdwm/walker2d-medium-v0]
    seeds: [0, 1, 2]
    base:                           # RunConfig fields shared by all trials (as in --config)
      agent: {steps: 100000}
      eval: {episodes: 10}
    grid:                           # RunConfig fields to vary; dotted keys reach nested configs
      mpc.horizon: [3, 5]
      world_model.kind: [diffusion, flow]
    retries: 1                      # re-runs of a trial whose worker died (killed, out of memory)
    cpus_per_trial: 1

``mpcdwm sweep --config FILE`` starts a local Ray instance (or joins
``--address``), runs every trial (a trial resumes if its folder already holds
finished stages), reports each failure with its error, and writes the report of
all successful trials to ``OUT/report``.

A trial that raises an error fails at once: the same config would raise again, so it is
not retried (fix it and rerun the sweep; finished trials are kept). ``retries`` covers
workers that died. Ray runs its workers at nice 15: on a machine busy with other jobs the
trials get the CPU last, so give a sweep the machine, or expect it to take longer.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import traceback
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from mpcdwm.configs import (
    ConfigError,
    check_config,
    config_from_mapping,
    read_mapping_file,
    set_dotted,
)
from mpcdwm.files import ensure_writable_dir
from mpcdwm.mpc import validate_config
from mpcdwm.pipeline import RunConfig, run
from mpcdwm.report import ReportConfig, report


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    """Run a grid of `mpcdwm run` trials on Ray."""

    config: Path
    """Sweep file (YAML/TOML), see the module docs."""
    address: str | None = None
    """Ray cluster address (e.g. ray://head:10001 or auto); None starts a local Ray."""
    num_cpus: int | None = None
    """CPUs for a local Ray instance (None: all)."""


@dataclasses.dataclass(frozen=True)
class Trial:
    name: str
    run_config: dict[str, Any]


def _tag_key(key: str) -> str:
    """How a grid key names trial folders: ``mpc.horizon`` -> ``horizon``; a stage field
    keeps its stage (``world_model.kind``, ``agent.steps``)."""
    return key.removeprefix("mpc.")


def expand_trials(spec: dict[str, Any]) -> list[Trial]:
    """The trials of a sweep spec: datasets x seeds x the grid's cartesian product."""
    unknown = set(spec) - {"out", "datasets", "seeds", "base", "grid", "retries", "cpus_per_trial"}
    if unknown:
        raise ValueError(f"unknown sweep keys {sorted(unknown)}")
    if not spec.get("datasets"):
        raise ValueError("a sweep needs at least one entry under `datasets`")
    out = Path(spec.get("out", "runs/sweep"))
    grid = spec.get("grid") or {}
    keys = sorted(grid)
    trials = []
    for dataset, seed, values in itertools.product(
        spec["datasets"], spec.get("seeds", [0]), itertools.product(*(grid[k] for k in keys))
    ):
        cfg: dict[str, Any] = json.loads(json.dumps(spec.get("base") or {}))
        for key, value in zip(keys, values, strict=True):
            set_dotted(cfg, key, value)
        tag = "_".join(f"{_tag_key(k)}={v}" for k, v in zip(keys, values, strict=True))
        name = f"{Path(str(dataset)).name.replace('/', '-')}/seed{seed}" + (
            f"/{tag}" if tag else ""
        )
        cfg.update(dataset=str(dataset), seed=int(seed), out=str(out / name), progress=False)
        trials.append(Trial(name, cfg))
    return trials


def run_trial(run_config: dict[str, Any]) -> str:
    """Run one trial in this process (what each Ray task executes); returns its run dir."""
    return str(run(config_from_mapping(RunConfig, run_config)))


def check_trials(trials: list[Trial], source: Path) -> None:
    """Build and check every trial's RunConfig (types, ranges, planner settings) before Ray
    starts: a typo in the sweep file fails now, naming the trial, not after hours."""
    for trial in trials:
        try:
            run_cfg = config_from_mapping(RunConfig, trial.run_config)
            check_config(run_cfg, skip=("mpc",))
            validate_config(run_cfg.mpc)
        except (ConfigError, ValueError, TypeError) as err:
            raise ConfigError(f"sweep file {source}, trial {trial.name}: {err}") from err


def sweep(cfg: SweepConfig) -> Path:
    """Run every trial of the sweep file on Ray; returns the report path."""
    try:
        import ray  # the optional `ray` extra
    except ImportError as err:
        raise RuntimeError('mpcdwm sweep needs Ray: pip install "mpcdwm[ray]"') from err

    console = Console(stderr=True, soft_wrap=True)
    spec = read_mapping_file(cfg.config, "sweep file")
    try:
        trials = expand_trials(spec)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"sweep file {cfg.config}: {err}") from err
    out = Path(spec.get("out", "runs/sweep"))
    check_trials(trials, cfg.config)
    ensure_writable_dir(out, f"the sweep's out ({cfg.config})")
    retries = int(spec.get("retries", 1))
    cpus = float(spec.get("cpus_per_trial", 1))
    console.print(f"sweep: {len(trials)} trial(s) -> {out}")

    ray.init(
        address=cfg.address,
        num_cpus=cfg.num_cpus,
        include_dashboard=False,
        ignore_reinit_error=True,
        log_to_driver=False,
    )
    try:
        task = ray.remote(num_cpus=cpus, max_retries=retries, retry_exceptions=False)(_remote_trial)
        refs = {t.name: task.remote(t.run_config) for t in trials}
        results: dict[str, tuple[bool, str]] = {}
        pending = dict(refs)
        while pending:
            done, _ = ray.wait(list(pending.values()), num_returns=1)
            name = next(n for n, r in pending.items() if r == done[0])
            del pending[name]
            try:
                results[name] = (True, ray.get(done[0]))
                console.print(f"[green]ok[/] {name}")
            except Exception as err:  # a failed trial is reported, the sweep goes on
                cause = getattr(err, "cause", err)
                results[name] = (False, f"{type(cause).__name__}: {cause}")
                console.print(f"[red]failed[/] {name}: {results[name][1]}")
    finally:
        ray.shutdown()

    table = Table(title="sweep trials")
    table.add_column("trial")
    table.add_column("status")
    table.add_column("run dir / error")
    for name, (ok, detail) in sorted(results.items()):
        table.add_row(name, "ok" if ok else "FAILED", detail)
    console.print(table)
    out.mkdir(parents=True, exist_ok=True)
    (out / "trials.json").write_text(
        json.dumps({n: {"ok": ok, "detail": d} for n, (ok, d) in results.items()}, indent=1)
    )
    good = tuple(Path(d) for ok, d in results.values() if ok)
    if not good:
        raise RuntimeError(f"every trial failed; see {out / 'trials.json'}")
    return report(ReportConfig(runs=good, out=out / "report"))


def _remote_trial(run_config: dict[str, Any]) -> str:
    try:
        return run_trial(run_config)
    except Exception as err:
        # Ray pickles exceptions; keep the message and the traceback text in one error.
        raise RuntimeError(f"{err}\n{traceback.format_exc(limit=3)}") from None
