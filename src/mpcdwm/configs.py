"""Config files: YAML/TOML mappings into the typed config dataclasses.

Owns reading a mapping file (:func:`read_mapping_file`, for ``--config FILE`` and sweep
files), building a config from a nested mapping (:func:`config_from_mapping`) and dotted
keys into nested mappings (:func:`set_dotted`, sweep grids).
"""

from __future__ import annotations

import dataclasses
import tomllib
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml


def read_mapping_file(
    path: str | Path, what: str = "config file", holds: str = "a mapping"
) -> dict[str, Any]:
    """Parse a TOML (``.toml``) or YAML (any other suffix) file holding a mapping.

    ``what`` names the file in errors ("config file", "sweep file"); an empty YAML file
    is an empty mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    text = path.read_text()
    if path.suffix == ".toml":
        values = tomllib.loads(text)
    else:
        values = yaml.safe_load(text) or {}
    if not isinstance(values, Mapping):
        raise ValueError(f"{what} {path} must hold {holds}")
    return dict(values)


def set_dotted(target: dict[str, Any], key: str, value: Any) -> None:
    """``target["a"]["b"] = value`` for ``key = "a.b"`` (creating inner mappings)."""
    parts = key.split(".")
    for part in parts[:-1]:
        target = target.setdefault(part, {})
    target[parts[-1]] = value


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
    values = read_mapping_file(path, "config file", "a mapping of config keys")
    return config_from_mapping(cls, values)
