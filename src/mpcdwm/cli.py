"""The ``mpcdwm`` command: one subcommand per stage, flags from typed configs (tyro).

Each subcommand's flags are the fields of a frozen config dataclass owned by
the module that does the work (``CollectConfig`` in :mod:`mpcdwm.collect`,
``TrainAgentConfig`` in :mod:`mpcdwm.agents`, ...); nested configs give dotted flags
(``--agent.steps``). This module owns the subcommand registry (:data:`COMMANDS`),
dispatches, and turns known errors into one readable line.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from typing import Annotated, Any, Union

import tyro
from rich.console import Console

from mpcdwm.agents import TrainAgentConfig, train_agent
from mpcdwm.checkpoint import CheckpointError
from mpcdwm.collect import CollectConfig, collect
from mpcdwm.configs import load_config_file
from mpcdwm.data import DatasetError
from mpcdwm.evaluate import EvaluateConfig, evaluate
from mpcdwm.pipeline import DemoConfig, RunConfig, demo, run
from mpcdwm.report import ReportConfig, report
from mpcdwm.sweep import SweepConfig, sweep
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


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mpcdwm`` console script.

    ``--config FILE`` (YAML or TOML) sets a subcommand's defaults; flags given
    on the command line override the file.
    """
    console = Console(stderr=True)
    by_type = {cls: fn for cls, fn in COMMANDS.values()}
    args = list(sys.argv[1:] if argv is None else argv)
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
        except (ValueError, TypeError, FileNotFoundError) as err:
            console.print(f"[bold red]error:[/] {err}")
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
    except (DatasetError, CheckpointError, FileNotFoundError, ValueError, RuntimeError) as err:
        if os.environ.get("MPCDWM_DEBUG"):
            raise
        console.print(f"[bold red]error:[/] {err}")
        console.print("(set MPCDWM_DEBUG=1 for the full traceback)")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
