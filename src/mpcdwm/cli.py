"""The ``mpcdwm`` command: one subcommand per stage, flags from typed configs (tyro).

Each subcommand's flags are the fields of a frozen config dataclass owned by
the module that does the work (``CollectConfig`` in :mod:`mpcdwm.collect`,
``TrainAgentConfig`` in :mod:`mpcdwm.agents`, ...). This module only maps names
to configs, dispatches, and turns known errors into one readable line.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from typing import Annotated, Any, Union

import tyro
from rich.console import Console


def _commands() -> dict[str, tuple[type, Callable[[Any], Any]]]:
    """Subcommand name -> (config class, function). Imported lazily: JAX loads slowly."""
    from mpcdwm import agents, collect, evaluate, world

    commands: dict[str, tuple[type, Callable[[Any], Any]]] = {
        "collect": (collect.CollectConfig, collect.collect),
        "train-agent": (agents.TrainAgentConfig, agents.train_agent),
        "train-world-model": (world.TrainWorldModelConfig, world.train_world_model),
        "evaluate": (evaluate.EvaluateConfig, evaluate.evaluate),
    }
    try:
        from mpcdwm import pipeline
    except ImportError:  # the run/demo/report stage is optional until it lands
        return commands
    commands.update(pipeline.COMMANDS)
    return commands


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mpcdwm`` console script."""
    console = Console(stderr=True)
    commands = _commands()
    by_type = {cls: fn for cls, fn in commands.values()}
    choices = tuple(
        Annotated[cls, tyro.conf.subcommand(name)] for name, (cls, _) in commands.items()
    )
    config = tyro.cli(
        Union[choices],  # type: ignore[valid-type]  # noqa: UP007 (tyro needs a runtime Union)
        args=argv,
        prog="mpcdwm",
        description="Model Predictive Control with Differentiable World Models for offline RL.",
    )
    from mpcdwm.checkpoint import CheckpointError
    from mpcdwm.data import DatasetError

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
