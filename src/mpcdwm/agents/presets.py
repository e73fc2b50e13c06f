"""Agent hyperparameters: the published presets per dataset and command-line overrides.

Owns which module implements an agent (:func:`agent_module`), the config of an agent
for a dataset with a :class:`~mpcdwm.agents.training.TrainAgentConfig`'s overrides
(:func:`agent_config`), and rebuilding a config stored in a checkpoint.
"""

from __future__ import annotations

import dataclasses
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


def agent_config(cfg: TrainAgentConfig, dataset_name: str) -> AgentConfig:
    """The published config of ``cfg.agent`` for ``dataset_name`` with ``cfg``'s overrides."""
    if cfg.agent == "rebrac":
        base: AgentConfig = rebrac.rebrac_preset(dataset_name)
    elif cfg.agent == "td3bc":
        base = rebrac.td3bc_config(alpha=cfg.alpha)
    elif cfg.agent == "iql":
        base = iql.iql_preset(dataset_name)
    else:
        agent_module(cfg.agent)  # raises the error naming the choices
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
