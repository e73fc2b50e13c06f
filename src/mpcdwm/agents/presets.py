"""Agent hyperparameters: the published presets per dataset and command-line overrides.

Owns which module implements an agent (:func:`agent_module`), the config of an agent
for a dataset with a :class:`~mpcdwm.agents.training.TrainAgentConfig`'s overrides
(:func:`agent_config`), and rebuilding a config stored in a checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import types
from typing import TYPE_CHECKING, Any, Literal

from mpcdwm.agents import iql, rebrac

if TYPE_CHECKING:
    from mpcdwm.agents.training import TrainAgentConfig

AgentName = Literal["rebrac", "iql", "td3bc"]
AgentConfig = rebrac.ReBRACConfig | iql.IQLConfig


def agent_module(name: str) -> types.ModuleType:
    """The module (``init``/``update``/``act``/``critic``) implementing agent ``name``."""
    if name in ("rebrac", "td3bc"):
        return rebrac
    if name == "iql":
        return iql
    raise ValueError(f"unknown agent {name!r}; choose rebrac, iql or td3bc.")


def published_config(agent: str, dataset_name: str, alpha: float = 2.5) -> AgentConfig:
    """The published config of agent ``agent`` for ``dataset_name`` (no overrides)."""
    if agent == "rebrac":
        return rebrac.rebrac_preset(dataset_name)
    if agent == "td3bc":
        return rebrac.td3bc_config(alpha=alpha)
    if agent == "iql":
        return iql.iql_preset(dataset_name)
    agent_module(agent)  # raises the error naming the choices
    raise AssertionError("unreachable")


def changes_from_preset(agent: str, dataset_name: str, config: dict[str, Any]) -> dict[str, Any]:
    """The fields of a stored agent ``config`` (as in a checkpoint's meta) that differ from
    the published preset for ``dataset_name``: what makes a run more than "agent X as
    published". Fields the preset does not have are kept."""
    preset = json.loads(json.dumps(dataclasses.asdict(published_config(agent, dataset_name))))
    return {k: v for k, v in config.items() if k not in preset or preset[k] != v}


def agent_config(cfg: TrainAgentConfig, dataset_name: str) -> AgentConfig:
    """The published config of ``cfg.agent`` for ``dataset_name`` with ``cfg``'s overrides."""
    base = published_config(cfg.agent, dataset_name, alpha=cfg.alpha)
    names = {f.name for f in dataclasses.fields(base)}
    overrides: dict[str, Any] = {}
    for field in (
        "actor_bc_coef",
        "critic_bc_coef",
        "actor_lr",
        "critic_lr",
        "gamma",
        "hidden_dims",
        "expectile",
        "temperature",
        "batch_size",
    ):
        value = getattr(cfg, field)
        if value is None:
            continue
        if field not in names:
            raise ValueError(f"--{field.replace('_', '-')} does not apply to agent {cfg.agent!r}.")
        overrides[field] = tuple(value) if field == "hidden_dims" else value
    overrides.update(_parse_sets(base, cfg.agent_set))
    return dataclasses.replace(base, **overrides)


def _parse_sets(base: AgentConfig, items: tuple[str, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    fields = {f.name: f for f in dataclasses.fields(base)}
    for item in items:
        name, sep, text = item.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or name not in fields:
            raise ValueError(
                f"--agent-set {item!r}: expected FIELD=VALUE with FIELD one of {sorted(fields)}."
            )
        current = getattr(base, name)
        try:
            if isinstance(current, bool):
                if text.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(text)
                value: Any = text.lower() in ("true", "1")
            elif isinstance(current, tuple):
                value = tuple(int(v) for v in text.replace(",", " ").split())
            else:
                value = type(current)(text)
        except ValueError as err:
            raise ValueError(
                f"--agent-set {item!r}: {text!r} is not a valid {type(current).__name__}."
            ) from err
        out[name] = value
    return out


def config_from_dict(name: str, d: dict[str, Any]) -> AgentConfig:
    """Rebuild an agent config stored (as JSON) in a checkpoint's meta."""
    cls = iql.IQLConfig if name == "iql" else rebrac.ReBRACConfig
    d = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
    if cls is rebrac.ReBRACConfig:
        # Checkpoints written before ``network`` existed used the Flax-style networks.
        d.setdefault("network", "flax")
    return cls(**d)
