"""The ``mpcdwm`` command: one subcommand per stage, flags from typed configs (tyro).

Each subcommand's flags are the fields of a frozen config dataclass owned by
the module that does the work (``CollectConfig`` in :mod:`mpcdwm.collect`,
``TrainAgentConfig`` in :mod:`mpcdwm.agents`, ...). This module only maps names
to configs, dispatches, and turns known errors into one readable line.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Union

import tyro
from rich.console import Console


def _commands() -> dict[str, tuple[type, Callable[[Any], Any]]]:
    """Subcommand name -> (config class, function). Imported lazily: JAX loads slowly."""
    from mpcdwm import agents, collect, evaluate, pipeline, world

    return {
        "collect": (collect.CollectConfig, collect.collect),
        "train-agent": (agents.TrainAgentConfig, agents.train_agent),
        "train-world-model": (world.TrainWorldModelConfig, world.train_world_model),
        "evaluate": (evaluate.EvaluateConfig, evaluate.evaluate),
        **pipeline.COMMANDS,
    }


def config_from_mapping(cls: type, values: Mapping[str, Any], where: str = "") -> Any:
    """Build config dataclass ``cls`` from a (nested) mapping, e.g. a parsed YAML/TOML file.

    Unknown keys are an error naming the key and the valid ones.
    """
    fields = {f.name for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in values.items():
        name = key.replace("-", "_")
        if name not in fields:
            raise ValueError(
                f"unknown config key {where}{key!r} for {cls.__name__}; "
                f"valid keys: {sorted(fields)}"
            )
        hint = hints[name]
        if dataclasses.is_dataclass(hint) and isinstance(value, Mapping):
            value = config_from_mapping(hint, value, f"{where}{key}.")
        elif isinstance(value, list):
            value = tuple(value)
        elif isinstance(value, str) and hint in (Path, Path | None):
            value = Path(value)
        kwargs[name] = value
    return cls(**kwargs)


def load_config_file(path: str | Path, cls: type) -> Any:
    """Read a YAML (``.yaml``/``.yml``) or TOML (``.toml``) file into config class ``cls``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    text = path.read_text()
    if path.suffix == ".toml":
        import tomllib

        values = tomllib.loads(text)
    else:
        import yaml

        values = yaml.safe_load(text) or {}
    if not isinstance(values, Mapping):
        raise ValueError(f"config file {path} must hold a mapping of config keys")
    return config_from_mapping(cls, values)


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
    commands = _commands()
    by_type = {cls: fn for cls, fn in commands.values()}
    args = list(sys.argv[1:] if argv is None else argv)
    name = next((a for a in args if a in commands), None)
    config_file = None
    if name != "sweep":  # for `sweep`, --config is its own flag (the sweep file)
        args, config_file = _split_config_flag(args)
    defaults: dict[str, Any] = {}
    if config_file is not None:
        try:
            if name is None:
                raise ValueError("--config needs a subcommand, e.g. `mpcdwm run --config FILE`")
            defaults[name] = load_config_file(config_file, commands[name][0])
        except (ValueError, TypeError, FileNotFoundError) as err:
            console.print(f"[bold red]error:[/] {err}")
            return 2
    choices = tuple(
        Annotated[cls, tyro.conf.subcommand(name, default=defaults[name])]
        if name in defaults
        else Annotated[cls, tyro.conf.subcommand(name)]
        for name, (cls, _) in commands.items()
    )
    config = tyro.cli(
        Union[choices],  # type: ignore[valid-type]  # noqa: UP007 (tyro needs a runtime Union)
        args=args,
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
