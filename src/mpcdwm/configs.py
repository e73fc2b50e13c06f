"""Config files and config values: YAML/TOML mappings into the typed config dataclasses.

Owns reading a mapping file (:func:`read_mapping_file`, for ``--config FILE`` and sweep
files), building a config from a nested mapping (:func:`config_from_mapping`: every value
is checked against the field's type hint first, so ``steps: "three hundred"`` or
``planners: none`` fail at once, naming the key), dotted keys into nested mappings
(:func:`set_dotted`, sweep grids) and the valid ranges of numeric settings
(:data:`FIELD_RULES`, :func:`check_config`: every command checks its config before any
work starts).
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml

from mpcdwm.files import reading, same_dataset


class ConfigError(ValueError):
    """A config value has the wrong type or lies outside its valid range; the message names
    the flag or config key, the value and what is valid."""


def read_mapping_file(
    path: str | Path,
    what: str = "config file",
    holds: str = "a mapping",
    fix: str = "fix its syntax or write it again",
) -> dict[str, Any]:
    """Parse a TOML (``.toml``) or YAML (any other suffix) file holding a mapping.

    ``what`` names the file in errors ("config file", "sweep file"), ``fix`` says what to do
    about a damaged one; an empty YAML file is an empty mapping. A file that cannot be read
    or parsed raises :class:`~mpcdwm.files.UserFileError` naming it.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    with reading(path, what, fix):
        text = path.read_text()
        if path.suffix == ".toml":
            try:
                values = tomllib.loads(text)
            except tomllib.TOMLDecodeError as err:
                # Same message shape as a YAML error (reading() maps those).
                raise yaml.YAMLError(str(err)) from err
        else:
            values = yaml.safe_load(text) or {}
    if not isinstance(values, Mapping):
        raise ConfigError(f"{what} {path} must hold {holds}, not {type(values).__name__}; {fix}")
    return dict(values)


def same_setting(key: str, a: Any, b: Any) -> bool:
    """Whether two values of config key ``key`` mean the same: equal, or for a ``dataset``
    key, a relative and an absolute path to the same data
    (:func:`~mpcdwm.files.same_dataset`)."""
    if a == b:
        return True
    is_dataset = key == "dataset" or key.endswith(".dataset")
    return is_dataset and isinstance(a, str) and isinstance(b, str) and same_dataset(a, b)


def set_dotted(target: dict[str, Any], key: str, value: Any) -> None:
    """``target["a"]["b"] = value`` for ``key = "a.b"`` (creating inner mappings)."""
    parts = key.split(".")
    for part in parts[:-1]:
        target = target.setdefault(part, {})
    target[parts[-1]] = value


def config_from_mapping(cls: type, values: Mapping[str, Any], where: str = "") -> Any:
    """Build config dataclass ``cls`` from a (nested) mapping, e.g. a parsed YAML/TOML file.

    Unknown keys are an error naming the key and the valid ones; every value is checked
    against its field's type hint (:func:`coerce_value`) before the config is built.
    """
    fields = {f.name for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls, include_extras=True)
    kwargs = {}
    for key, value in values.items():
        name = key.replace("-", "_")
        if name not in fields:
            raise ConfigError(
                f"unknown config key {where}{key!r} for {cls.__name__}; "
                f"valid keys: {sorted(fields)}"
            )
        kwargs[name] = coerce_value(value, hints[name], f"{where}{key}")
    return cls(**kwargs)


def _type_text(hint: Any) -> str:
    """A type hint in words for error messages (``an integer``, ``a list of integers``)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Annotated:
        return _type_text(args[0])
    if origin in (Union, types.UnionType):
        parts = [_type_text(a) for a in args if a is not type(None)]
        return " or ".join(parts) + (" or null" if type(None) in args else "")
    if origin is Literal:
        return "one of " + ", ".join(str(a) for a in args)
    if origin is tuple:
        item = args[0] if args else Any
        return f"a list of ({_type_text(item)})"
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
    if hint in names:
        return names[hint]
    if hint is Path:
        return "a path"
    if dataclasses.is_dataclass(hint):
        return f"a mapping of {hint.__name__} keys"
    return getattr(hint, "__name__", str(hint))


def _number(value: Any) -> float | None:
    """``value`` as a float if it is a number (YAML reads ``1e-3`` as a string), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.replace("_", ""))
        except ValueError:
            return None
    return None


def coerce_value(value: Any, hint: Any, key: str) -> Any:
    """``value`` (from a config file) checked against type ``hint`` and converted to it
    (lists to tuples, strings to paths, ``1e5`` to an int, ``3e-4`` written as a string to
    a float); raises :class:`ConfigError` naming ``key`` when it does not fit."""

    def bad() -> ConfigError:
        return ConfigError(f"{key} must be {_type_text(hint)}, got {value!r}")

    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Annotated:
        return coerce_value(value, args[0], key)
    if hint is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if value == "None" and type(None) in args and str not in options:
            return None  # the spelling of the command line (tyro)
        for option in options:
            try:
                return coerce_value(value, option, key)
            except ConfigError:
                continue
        raise bad()
    if origin is Literal:
        if value in args:
            return value
        raise bad()
    if origin is tuple:
        if not isinstance(value, list | tuple):
            item = args[0] if args else Any
            kinds = (
                f"values from: {', '.join(map(str, typing.get_args(item)))}"
                if typing.get_origin(item) is Literal
                else _type_text(item)
            )
            hint_fix = f"; write [{value}]" if isinstance(value, str | int | float) else ""
            raise ConfigError(f"{key} must be a list ({kinds}), got {value!r}{hint_fix}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(coerce_value(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if not args:
            return tuple(value)
        if len(args) != len(value):
            raise ConfigError(f"{key} must hold {len(args)} values, got {value!r}")
        pairs = enumerate(zip(args, value, strict=True))
        return tuple(coerce_value(v, a, f"{key}[{i}]") for i, (a, v) in pairs)
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        if isinstance(value, hint):
            return value
        if isinstance(value, Mapping):
            return config_from_mapping(hint, value, f"{key}.")
        raise bad()
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise bad()
    if hint is int:
        number = _number(value)
        if number is None or not math.isfinite(number) or number != int(number):
            raise bad()
        return int(number)
    if hint is float:
        number = _number(value)
        if number is None:
            raise bad()
        return number
    if hint is str:
        if isinstance(value, str):
            return value
        raise bad()
    if hint is Path:
        if isinstance(value, str | Path):
            return Path(value)
        raise bad()
    return value


# --------------------------------------------------------------------------- valid ranges


@dataclasses.dataclass(frozen=True)
class Rule:
    """A numeric setting's valid range: ``text`` says it (``>= 1``), ``ok`` tests a value.
    A list value (``hidden_dims``) must hold it for every item."""

    text: str
    ok: Callable[[float], bool]


def at_least(low: float) -> Rule:
    """``x >= low``."""
    return Rule(f">= {low:g}", lambda x: x >= low)


def above(low: float) -> Rule:
    """``x > low``."""
    return Rule(f"> {low:g}", lambda x: x > low)


def within(low: float, high: float, bounds: str = "[]") -> Rule:
    """``low <= x <= high``, ends open or closed as ``bounds`` says (``"[)"``: ``x < high``)."""
    lo_ok = (lambda x: x >= low) if bounds[0] == "[" else (lambda x: x > low)
    hi_ok = (lambda x: x <= high) if bounds[1] == "]" else (lambda x: x < high)
    return Rule(f"in {bounds[0]}{low:g}, {high:g}{bounds[1]}", lambda x: lo_ok(x) and hi_ok(x))


POSITIVE_INT = at_least(1)
NON_NEGATIVE = at_least(0)
LEARNING_RATE = above(0)
DISCOUNT = within(0, 1, "[)")
FRACTION = within(0, 1, "[)")

FIELD_RULES: dict[str, Rule] = {
    # Budgets and sizes (train-agent, train-world-model, collect, evaluate, run stages).
    "steps": POSITIVE_INT,
    "train_steps": POSITIVE_INT,
    "batch_size": POSITIVE_INT,
    "chunk": POSITIVE_INT,
    "checkpoint_every": POSITIVE_INT,
    "checkpoint_minutes": NON_NEGATIVE,
    "eval_every": NON_NEGATIVE,  # 0 = never (collect asks >= 1: its own rule)
    "eval_episodes": NON_NEGATIVE,  # 0 = no evaluation
    "episodes": POSITIVE_INT,
    "max_steps": POSITIVE_INT,
    "max_episode_steps": POSITIVE_INT,
    "start_steps": NON_NEGATIVE,
    # Networks.
    "hidden_dims": POSITIVE_INT,
    "reward_hidden_dims": POSITIVE_INT,
    "termination_hidden_dims": POSITIVE_INT,
    "time_embed_dim": POSITIVE_INT,
    "reward_ensemble": POSITIVE_INT,
    # Optimisation and RL constants (agent configs after presets too).
    "lr": LEARNING_RATE,
    "actor_lr": LEARNING_RATE,
    "critic_lr": LEARNING_RATE,
    "value_lr": LEARNING_RATE,
    "actor_lr_decay_steps": POSITIVE_INT,
    "gamma": DISCOUNT,
    "tau": within(0, 1, "(]"),
    "expectile": within(0, 1, "()"),
    "temperature": NON_NEGATIVE,
    "alpha": NON_NEGATIVE,
    "actor_bc_coef": NON_NEGATIVE,
    "critic_bc_coef": NON_NEGATIVE,
    "policy_noise": NON_NEGATIVE,
    "noise_clip": NON_NEGATIVE,
    "policy_freq": POSITIVE_INT,
    "expl_noise": NON_NEGATIVE,
    "rollout_noise": NON_NEGATIVE,
    "medium_fraction": within(0, 1, "(]"),
    # World models.
    "denoise_steps": POSITIVE_INT,
    "flow_steps": POSITIVE_INT,
    "clip_denoised": NON_NEGATIVE,
    "max_pos_weight": at_least(1),
    "val_fraction": FRACTION,
    "quality_transitions": POSITIVE_INT,
    "quality_windows": POSITIVE_INT,
    "quality_horizons": POSITIVE_INT,
}
"""Valid range of a numeric setting, by field name: the same name means the same thing in
every config (``batch_size``, ``gamma``, ``hidden_dims``). ``None`` (use the preset or the
default) is always valid; a command with stricter needs passes its own rules."""


def flag_name(path: str) -> str:
    """``agent.batch_size`` -> ``--agent.batch-size`` (the command-line flag)."""
    return "--" + path.replace("_", "-")


def check_config(
    cfg: Any,
    rules: Mapping[str, Rule] | None = None,
    *,
    name: Callable[[str], str] = flag_name,
    skip: tuple[str, ...] = (),
    where: str = "",
) -> None:
    """Check every numeric field of config dataclass ``cfg`` (and of nested configs, as
    ``agent.steps``) against ``rules`` (default :data:`FIELD_RULES`).

    Raises :class:`ConfigError` with one line naming each bad setting (``name(path)``,
    default its flag), its value and its valid range. ``skip``: nested configs checked by
    their own validator (``mpc``). Run before any work, so a bad value costs nothing.
    """
    rules = FIELD_RULES if rules is None else rules
    problems = _problems(cfg, rules, name, skip, where)
    if problems:
        raise ConfigError("; ".join(problems) + ".")


def _problems(
    cfg: Any, rules: Mapping[str, Rule], name: Callable[[str], str], skip: tuple, where: str
) -> list[str]:
    problems = []
    for f in dataclasses.fields(cfg):
        path = f"{where}{f.name}"
        value = getattr(cfg, f.name)
        if path in skip:
            continue
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            problems += _problems(value, rules, name, skip, f"{path}.")
            continue
        rule = rules.get(f.name)
        if rule is None or value is None:
            continue
        items = value if isinstance(value, tuple | list) else (value,)
        for item in items:
            number = None if isinstance(item, bool) else _number(item)
            if number is None or not isinstance(item, int | float):
                continue  # not a number: the type check's business
            if not (math.isfinite(number) and rule.ok(number)):
                shown = list(value) if isinstance(value, tuple | list) else value
                problems.append(f"{name(path)} must be {rule.text}, got {shown}")
                break
    return problems


def load_config_file(path: str | Path, cls: type) -> Any:
    """Read a YAML (``.yaml``/``.yml``) or TOML (``.toml``) file into config class ``cls``."""
    values = read_mapping_file(path, "config file", "a mapping of config keys")
    try:
        return config_from_mapping(cls, values)
    except ConfigError as err:
        raise ConfigError(f"config file {path}: {err}") from err
