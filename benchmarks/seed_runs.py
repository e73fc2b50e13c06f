"""The trained runs the issue-13 benchmarks share: per dataset and seed, a base agent
(``benchmarks/train_agents.py``) and a diffusion world model (``mpcdwm train-world-model``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mpcdwm.agents import load_agent
from mpcdwm.world import load_world_model

CACHE = Path.home() / ".cache" / "mpcdwm" / "runs"


def load_seed_runs(
    dataset: Path, agent_kind: str, seed: int, agents: Path, world_models: Path
) -> tuple[str, Any, Any, Path]:
    """``(dataset name, agent, world model, world-model run folder)`` of one seed, from
    ``AGENTS/<name>/<agent_kind>/seed<k>`` and ``WORLD_MODELS/<name>/diffusion/seed<k>``."""
    name = Path(dataset).name.removesuffix("-v0")
    agent = load_agent(agents / name / agent_kind / f"seed{seed}")
    wm_run = world_models / name / "diffusion" / f"seed{seed}"
    return name, agent, load_world_model(wm_run, env_id=agent.env_id), wm_run
