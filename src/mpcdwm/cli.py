"""The ``mpcdwm`` command: one subcommand per stage, flags from typed configs (tyro).

Each subcommand's flags are the fields of a frozen config dataclass owned by
the module that does the work (``CollectConfig`` in :mod:`mpcdwm.collect`,
``TrainAgentConfig`` in :mod:`mpcdwm.agents`, ...); nested configs give dotted flags
(``--agent.steps``). This module owns the subcommand registry (:data:`COMMANDS`),
dispatches, and turns every failure into one line that names the file or flag, the problem
and the fix (exit status 2; Ctrl-C: 130, saying where the work resumes). ``--debug`` (or
``MPCDWM_DEBUG=1``) shows the traceback instead.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any, Union

import tyro
from rich.console import Console

from mpcdwm.agents import TrainAgentConfig, train_agent
from mpcdwm.checkpoint import CheckpointError
from mpcdwm.collect import CollectConfig, collect
from mpcdwm.configs import ConfigError, load_config_file
from mpcdwm.data import DatasetError
from mpcdwm.evaluate import EvaluateConfig, evaluate
from mpcdwm.files import UserFileError, describe_os_error
from mpcdwm.online_td3 import agent_dir_of
from mpcdwm.pipeline import DemoConfig, RunConfig, demo, run
from mpcdwm.report import ReportConfig, report
from mpcdwm.sweep import SweepConfig, sweep
from mpcdwm.train import RunLogError
from mpcdwm.world import TrainWorldModelConfig, train_world_model

COMMANDS: dict[str, tuple[type, Callable[[Any], Any]]] = {
    "collect": (CollectConfig, collect),
    "train-agent": (TrainAgentConfig, train_agent),
    "train-world-model": (TrainWorldModelConfig, train_world_model),
    "evaluate": (EvaluateConfig, evaluate),
    "run": (RunConfig, run),
    "report": (ReportConfig, report),
    "sweep": (SweepConfig, sweep),
    "demo": (DemoConfig, demo),
}
"""Subcommand name -> (config class, function)."""


def _split_config_flag(argv: list[str]) -> tuple[list[str], str | None]:
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            return argv[:i] + argv[i + 2 :], argv[i + 1]
        if arg.startswith("--config="):
            return argv[:i] + argv[i + 1 :], arg.split("=", 1)[1]
    return argv, None


# Errors raised with a message written for the user: shown as they are.
USER_ERRORS: tuple[type[BaseException], ...] = (
    UserFileError,
    ConfigError,
    DatasetError,
    CheckpointError,
    RunLogError,
    FileExistsError,
    FileNotFoundError,
    FloatingPointError,
    ValueError,
    RuntimeError,
)

# Optional dependencies: the module a command imports -> the extra that installs it.
EXTRAS = {
    "ray": 'pip install "mpcdwm[ray]"',
    "gymnasium_robotics": 'pip install "mpcdwm[maze]"',
    "wandb": "pip install wandb",
    "tensorboardX": "pip install tensorboardX",
}


def _split_debug_flag(argv: list[str]) -> tuple[list[str], bool]:
    """``--debug`` anywhere on the line: removed before tyro parses (no config has it)."""
    return [a for a in argv if a != "--debug"], "--debug" in argv


def _output_folder(config: Any) -> Path | None:
    """Where a command writes (for messages that cannot name a file)."""
    out = getattr(config, "out", None)
    return Path(out) if out is not None else None


def explain(err: BaseException, config: Any = None) -> str:
    """One line for ``err``: the file or flag, the problem and the fix where known; any
    other error as ``<type>: <message> (run with --debug for the traceback)``."""
    first = (str(err).strip().splitlines() or [""])[0]
    if isinstance(err, ModuleNotFoundError) and err.name:
        top = err.name.split(".")[0]
        fix = EXTRAS.get(top, f"pip install {top}")
        return f"missing optional dependency {top!r}: {fix}"
    if isinstance(err, FileNotFoundError) and err.filename is not None:
        return f"{err.filename} does not exist; check the path."
    if isinstance(err, OSError) and err.errno is not None and not isinstance(err, FileExistsError):
        where = err.filename
        if where is None:
            out = _output_folder(config)
            where = f"writing below {out}" if out is not None else "reading or writing a file"
        return f"{where}: {describe_os_error(err)}; then re-run the same command."
    if isinstance(err, USER_ERRORS):
        return first
    return f"{type(err).__name__}: {first} (run with --debug for the traceback)"


def resume_hint(config: Any) -> str:
    """What a Ctrl-C'd command left and how to go on: where its work resumes from."""
    if isinstance(config, TrainAgentConfig | TrainWorldModelConfig | RunConfig | DemoConfig):
        return (
            f"re-run the same command to resume from the last checkpoint in {config.out} "
            "(finished work is kept)"
        )
    if isinstance(config, CollectConfig):
        # Maze recipes drive a trained policy: there is no online run of theirs to resume.
        if config.recipe != "random" and "Maze" not in config.env:
            folder = agent_dir_of(config)
            return (
                f"re-run the same command to resume the online agent from its last "
                f"checkpoint in {folder}"
            )
        return "no dataset was written; re-run the same command"
    if isinstance(config, SweepConfig):
        return "re-run the same command: finished trials are kept and the others resume"
    return "nothing was written; re-run the same command"


def _say_error(console: Console, message: str) -> None:
    # No markup, no wrapping: paths may hold brackets and the message stays one line.
    console.print(f"error: {message}", markup=False, highlight=False, soft_wrap=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mpcdwm`` console script.

    ``--config FILE`` (YAML or TOML) sets a subcommand's defaults; flags given
    on the command line override the file.
    """
    console = Console(stderr=True, soft_wrap=True)
    by_type = {cls: fn for cls, fn in COMMANDS.values()}
    args, debug = _split_debug_flag(list(sys.argv[1:] if argv is None else argv))
    debug = debug or os.environ.get("MPCDWM_DEBUG", "") not in ("", "0")
    name = next((a for a in args if a in COMMANDS), None)
    config_file = None
    if name != "sweep":  # for `sweep`, --config is its own flag (the sweep file)
        args, config_file = _split_config_flag(args)
    defaults: dict[str, Any] = {}
    if config_file is not None:
        try:
            if name is None:
                raise ValueError("--config needs a subcommand, e.g. `mpcdwm run --config FILE`")
            defaults[name] = load_config_file(config_file, COMMANDS[name][0])
        except Exception as err:
            if debug:
                raise
            _say_error(console, explain(err))
            return 2
    choices = tuple(
        Annotated[cls, tyro.conf.subcommand(name, default=defaults[name])]
        if name in defaults
        else Annotated[cls, tyro.conf.subcommand(name)]
        for name, (cls, _) in COMMANDS.items()
    )
    config = tyro.cli(
        Union[choices],  # type: ignore[valid-type]  # noqa: UP007 (tyro needs a runtime Union)
        args=args,
        prog="mpcdwm",
        description="Model Predictive Control with Differentiable World Models for offline RL.",
    )
    try:
        by_type[type(config)](config)
    except KeyboardInterrupt:
        if debug:
            raise
        console.print(
            f"interrupted: {resume_hint(config)}.", markup=False, highlight=False, soft_wrap=True
        )
        return 130
    except Exception as err:
        if debug:
            raise
        _say_error(console, explain(err, config))
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
