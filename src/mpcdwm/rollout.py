"""Episodes in the real environment: the one loop that runs a *decider* and times it.

A decider maps a real observation to an action (and optional per-decision
diagnostics). Agents call :func:`run_episodes` for periodic evaluation during
training, ``collect`` for its online agent, and ``mpcdwm evaluate`` for the base
policy and every planner.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from mpcdwm.envs import goal_rule, make_env

Decider = Callable[[np.ndarray], tuple[np.ndarray, dict[str, float]]]


@dataclasses.dataclass
class EpisodeStats:
    """What :func:`run_episodes` measured. Latencies are per env step, in ms.
    ``goal_distances``: per episode, how far from its goal the last observation is (goal
    envs only, :func:`mpcdwm.envs.goal_rule`; empty otherwise): a sparse success rate of 0
    says nothing of how close a policy came, this does."""

    returns: list[float]
    lengths: list[int]
    latencies_ms: list[float]
    diagnostics: list[dict[str, float]]
    goal_distances: list[float] = dataclasses.field(default_factory=list)

    def latency_summary(self) -> dict[str, float]:
        lat = np.asarray(self.latencies_ms) if self.latencies_ms else np.zeros(1)
        return {"median": float(np.median(lat)), "p95": float(np.percentile(lat, 95))}


def run_episodes(
    env_id: str,
    decide: Decider,
    *,
    episodes: int,
    seed: int,
    on_episode_start: Callable[[int], None] | None = None,
    progress: Callable[[int, float], None] | None = None,
    max_steps: int | None = None,
    on_step: Callable[[float], None] | None = None,
) -> EpisodeStats:
    """Run ``episodes`` episodes of ``decide`` in a fresh ``env_id``.

    Episode ``i`` resets with seed ``seed + i``, so results are reproducible and
    every method sees the same start states. ``on_episode_start(i)`` lets a
    planner reset its carry; ``progress(i, return)`` is called after each episode;
    ``on_step(reward)`` after every env step.
    Actions are checked: a non-finite or out-of-range action is an error here
    (planners must guarantee valid actions themselves).
    """
    env = make_env(env_id)
    low, high = env.action_space.low, env.action_space.high
    rule = goal_rule(env)
    stats = EpisodeStats([], [], [], [])
    try:
        for i in range(episodes):
            if on_episode_start is not None:
                on_episode_start(i)
            obs, _ = env.reset(seed=seed + i)
            total, length, done = 0.0, 0, False
            while not done:
                t0 = time.perf_counter()
                action, diag = decide(np.asarray(obs, np.float32))
                stats.latencies_ms.append(1e3 * (time.perf_counter() - t0))
                action = np.asarray(action, np.float64)
                if (
                    not np.all(np.isfinite(action))
                    or np.any(action < low - 1e-6)
                    or np.any(action > high + 1e-6)
                ):
                    raise ValueError(
                        f"decider returned an invalid action {action} at step {length}"
                    )
                if diag:
                    stats.diagnostics.append(diag)
                obs, reward, terminated, truncated, _ = env.step(action)
                total += float(reward)
                if on_step is not None:
                    on_step(float(reward))
                length += 1
                done = terminated or truncated or (max_steps is not None and length >= max_steps)
            stats.returns.append(total)
            stats.lengths.append(length)
            if rule is not None:
                stats.goal_distances.append(float(rule.distance(obs)))
            if progress is not None:
                progress(i, total)
    finally:
        env.close()
    return stats


def policy_decider(act: Callable[[Any, Any], Any], params: Any) -> Decider:
    """Decider for a plain policy ``act(params, obs) -> action`` (jitted once here)."""
    act_jit = jax.jit(act)

    def decide(obs: np.ndarray) -> tuple[np.ndarray, dict[str, float]]:
        return np.asarray(act_jit(params, obs)), {}

    return decide
