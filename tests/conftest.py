"""Expensive fixtures shared across test files (session-scoped: built once per test run).

* ``pendulum_data``: a D4RL-format HDF5 file of a noisy, often-random linear controller
  on the real InvertedPendulum-v5 (100 episodes, mean return about 35 of 1000).
* ``pendulum_runs``: a tiny TD3+BC agent and a tiny diffusion world model (3 denoising
  steps) trained on it: ``(agent_dir, world_model_dir)``; about 20 s on 2 cores.
"""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import h5py
import numpy as np
import pytest

PENDULUM = "InvertedPendulum-v5"


def collect_pendulum(path: Path, episodes: int = 100, seed: int = 0) -> Path:
    """Noisy, often-random linear controller on InvertedPendulum-v5, saved as D4RL HDF5."""
    env = gym.make(PENDULUM)
    rng = np.random.default_rng(seed)
    gain = np.array([1.0, 10.0, 1.0, 1.0])  # balances on its own (return 1000)
    names = ("observations", "actions", "rewards", "next_observations", "terminals", "timeouts")
    cols: dict[str, list] = {k: [] for k in names}
    for i in range(episodes):
        obs, _ = env.reset(seed=seed * 1000 + i)
        done = False
        while not done:
            a = gain @ obs + 0.5 * rng.normal()
            if rng.random() < 0.3:
                a = rng.uniform(-3.0, 3.0)
            a = np.clip([a], -3.0, 3.0).astype(np.float32)
            nxt, r, term, trunc, _ = env.step(a)
            for k, v in zip(cols, (obs, a, r, nxt, term, trunc), strict=True):
                cols[k].append(v)
            obs, done = nxt, term or trunc
    env.close()
    with h5py.File(path, "w") as f:
        for k, v in cols.items():
            f[k] = np.asarray(v, bool if k in ("terminals", "timeouts") else np.float32)
        f.attrs["env_id"] = PENDULUM
    return path


@pytest.fixture(scope="session")
def pendulum_data(tmp_path_factory) -> Path:
    return collect_pendulum(tmp_path_factory.mktemp("pendulum-data") / "pendulum-noisy.hdf5")


@pytest.fixture(scope="session")
def pendulum_runs(pendulum_data, tmp_path_factory) -> tuple[Path, Path]:
    from mpcdwm.agents import TrainAgentConfig, train_agent
    from mpcdwm.world import TrainWorldModelConfig, train_world_model

    root = tmp_path_factory.mktemp("pendulum-runs")
    agent_dir = train_agent(
        TrainAgentConfig(
            dataset=str(pendulum_data),
            agent="td3bc",
            steps=1000,
            out=root / "agent",
            chunk=500,
            eval_every=1000,
            eval_episodes=2,
            hidden_dims=(64, 64),
            progress=False,
        )
    )
    wm_dir = train_world_model(
        TrainWorldModelConfig(
            dataset=str(pendulum_data),
            model="diffusion",
            steps=1500,
            out=root / "wm",
            chunk=500,
            hidden_dims=(64, 64),
            reward_hidden_dims=(64, 64),
            reward_ensemble=2,
            termination_hidden_dims=(64, 64),
            lr=1e-3,
            denoise_steps=3,
            quality_transitions=500,
            quality_windows=16,
            quality_horizons=(1, 5),
            progress=False,
        )
    )
    return agent_dir, wm_dir
