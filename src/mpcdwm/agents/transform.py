"""The agents' data conventions, applied in exactly one place (:func:`prepare_data`).

State normalisation, reward scaling/shifting, and the mapping of env actions to the
agents' ``[-1, 1]`` (:class:`DataTransform`, stored in every agent checkpoint).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mpcdwm.agents.presets import AgentConfig
from mpcdwm.data import Dataset, NormStats, batches_to_device


@dataclasses.dataclass(frozen=True)
class DataTransform:
    """How raw env quantities map to what an agent trained on (and back).

    ``obs_n = (obs - obs_mean) / obs_std``; ``a_n = (a - act_mid) / act_half``
    (agents act in ``[-1, 1]``); ``r_n = r * reward_scale + reward_shift``.
    """

    stats: NormStats
    act_mid: np.ndarray
    act_half: np.ndarray
    reward_shift: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "norm_stats": self.stats.to_dict(),
            "act_mid": self.act_mid.tolist(),
            "act_half": self.act_half.tolist(),
            "reward_shift": self.reward_shift,
        }

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> DataTransform:
        return cls(
            NormStats.from_dict(meta["norm_stats"]),
            np.asarray(meta["act_mid"], np.float32),
            np.asarray(meta["act_half"], np.float32),
            float(meta["reward_shift"]),
        )


def prepare_data(
    config: AgentConfig, dataset: Dataset, action_low: np.ndarray, action_high: np.ndarray
) -> tuple[dict[str, jax.Array], DataTransform]:
    """Apply the agent's data conventions; returns device arrays for ``fit`` and the transform.

    The one place for: state normalisation (``normalize_obs``), IQL's MuJoCo reward
    scale ``1000 / (max - min episode return)`` (``normalize_reward``), the constant
    ``reward_scale`` (ReBRAC AntMaze: 100) and ``reward_shift`` (IQL AntMaze: -1), and
    mapping actions from ``[low, high]`` to ``[-1, 1]``.
    """
    scale = float(config.reward_scale)
    if config.normalize_reward:
        returns = dataset.episode_returns()
        spread = float(returns.max() - returns.min()) if len(returns) > 1 else 0.0
        if spread <= 1e-8:
            raise ValueError(
                f"dataset {dataset.name!r}: reward normalisation needs episodes with different "
                "returns (max - min return is 0); pass --agent-set normalize_reward=false."
            )
        scale *= 1000.0 / spread
    stats = dataset.norm_stats(normalize_obs=config.normalize_obs, reward_scale=scale)
    low = np.asarray(action_low, np.float32).reshape(-1)
    high = np.asarray(action_high, np.float32).reshape(-1)
    if low.shape[0] != dataset.act_dim or not np.all(np.isfinite(low) & np.isfinite(high)):
        raise ValueError(
            f"dataset {dataset.name!r}: actions have {dataset.act_dim} dims but the env's bounded "
            f"action space has {low.shape[0]}; check --env-id."
        )
    transform = DataTransform(stats, (high + low) / 2, (high - low) / 2, float(config.reward_shift))
    data = batches_to_device(dataset, stats)
    mid, half = jnp.asarray(transform.act_mid), jnp.asarray(transform.act_half)
    data["actions"] = (data["actions"] - mid) / half
    data["next_actions"] = (data["next_actions"] - mid) / half
    data["rewards"] = data["rewards"] + transform.reward_shift
    return data, transform
