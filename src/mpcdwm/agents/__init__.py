"""Offline base agents: ReBRAC (the paper's base), IQL and TD3+BC (ReBRAC's module with
TD3+BC's config), and everything between a dataset and a trained policy/critic.

Re-exports only; the parts live in:

* :mod:`~mpcdwm.agents.rebrac`, :mod:`~mpcdwm.agents.iql`: the agents' pure
  ``init``/``update``/``act``/``critic``;
* :mod:`~mpcdwm.agents.presets`: published hyperparameters and overrides;
* :mod:`~mpcdwm.agents.transform`: the data conventions (:func:`prepare_data`);
* :mod:`~mpcdwm.agents.training`: ``mpcdwm train-agent`` (:func:`train_agent`);
* :mod:`~mpcdwm.agents.trained`: :func:`load_agent` -> :class:`TrainedAgent`, whose
  ``act`` and ``critic`` are pure functions of parameters and RAW observations/actions.
"""

from mpcdwm.agents import iql, rebrac
from mpcdwm.agents.presets import (
    AgentConfig,
    AgentName,
    agent_config,
    agent_module,
    config_from_dict,
)
from mpcdwm.agents.trained import TrainedAgent, load_agent, make_trained_agent
from mpcdwm.agents.training import TrainAgentConfig, train_agent
from mpcdwm.agents.transform import DataTransform, prepare_data

__all__ = [
    "AgentConfig",
    "AgentName",
    "DataTransform",
    "TrainAgentConfig",
    "TrainedAgent",
    "agent_config",
    "agent_module",
    "config_from_dict",
    "iql",
    "load_agent",
    "make_trained_agent",
    "prepare_data",
    "rebrac",
    "train_agent",
]
