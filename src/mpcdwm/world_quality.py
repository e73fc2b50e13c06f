"""World-model quality on held-out data: one-step, open-loop, reward and termination errors.

Owns :func:`world_model_quality` (what ``quality.json`` beside a world-model checkpoint
holds) and its two renderings, a terminal table (:func:`print_quality`) and Markdown
(:func:`quality_markdown`), both from the one row list :data:`QUALITY_ROWS`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
from rich.console import Console
from rich.table import Table

from mpcdwm.data import Dataset

if TYPE_CHECKING:
    from mpcdwm.world import WorldModel


def world_model_quality(
    wm: WorldModel,
    dataset: Dataset,
    key: jax.Array,
    *,
    horizons: Sequence[int] = (1, 5, 10),
    max_transitions: int = 10_000,
    num_windows: int = 256,
) -> dict[str, Any]:
    """Held-out quality of ``wm`` on ``dataset`` (use the validation split).

    * ``one_step_mse`` / ``one_step_mse_per_dim``: MSE of one sampled ``s'`` in
      units of the observation std, and ``no_change_mse`` for predicting
      ``s' = s`` (``one_step_ratio`` = model / no-change; lower is better).
    * ``open_loop_mse[H]``: the same error after ``H`` steps of rolling the model
      along held-out trajectories with their recorded actions (no-change baseline
      beside it); windows stay inside one episode.
    * ``reward_mse``, ``reward_mae`` (raw units), ``reward_nmse`` (/ reward var).
    * ``termination_accuracy``, ``termination_balanced_accuracy`` (P > 0.5 vs the
      recorded terminals), ``terminals``.
    """
    if dataset.obs_dim != wm.obs_dim or dataset.act_dim != wm.act_dim:
        raise ValueError(
            f"dataset {dataset.name!r} has obs/act sizes ({dataset.obs_dim}, {dataset.act_dim}) "
            f"but the world model ({wm.env_id}) expects ({wm.obs_dim}, {wm.act_dim}). "
            "Evaluate on data from the environment the model was trained on."
        )
    rng = np.random.default_rng(int(jax.random.randint(key, (), 0, 2**31 - 1)))
    k_one, k_roll = jax.random.split(key)
    n = len(dataset)
    idx = np.sort(rng.choice(n, min(n, max_transitions), replace=False))
    s, a = dataset.observations[idx], dataset.actions[idx]
    s1, r, done = dataset.next_observations[idx], dataset.rewards[idx], dataset.terminals[idx]
    std = np.asarray(wm.consts["obs_std"], np.float32)

    pred_s1, pred_r, p_done = _one_step(wm, wm.params, s, a, s1, wm.sample_noise(k_one, (len(s),)))
    pred_s1, pred_r, p_done = map(np.asarray, (pred_s1, pred_r, p_done))
    per_dim = (((pred_s1 - s1) / std) ** 2).mean(0)
    no_change = (((s - s1) / std) ** 2).mean(0)
    out: dict[str, Any] = {
        "model": wm.kind,
        "transitions": int(len(idx)),
        "one_step_mse": float(per_dim.mean()),
        "one_step_mse_per_dim": per_dim.tolist(),
        "no_change_mse": float(no_change.mean()),
        "one_step_ratio": float(per_dim.mean() / max(no_change.mean(), 1e-12)),
        "reward_mse": float(((pred_r - r) ** 2).mean()),
        "reward_mae": float(np.abs(pred_r - r).mean()),
        "reward_nmse": float(((pred_r - r) ** 2).mean() / max(r.var(), 1e-12)),
    }
    pred_done = p_done > 0.5
    out["terminals"] = int(done.sum())
    out["termination_accuracy"] = float((pred_done == done).mean())
    if done.any() and (~done).any():
        tpr, tnr = pred_done[done].mean(), (~pred_done[~done]).mean()
        out["termination_balanced_accuracy"] = float(0.5 * (tpr + tnr))
    else:
        out["termination_balanced_accuracy"] = None

    out["open_loop_mse"], out["open_loop_no_change_mse"], out["open_loop_windows"] = {}, {}, 0
    horizons = sorted({int(h) for h in horizons})
    if horizons:
        starts = _window_starts(dataset, max(horizons))
        if len(starts):
            starts = np.sort(rng.choice(starts, min(len(starts), num_windows), replace=False))
            hmax = max(horizons)
            steps = starts[:, None] + np.arange(hmax)  # (W, H)
            actions = dataset.actions[steps]
            truth = dataset.next_observations[steps]  # (W, H, obs_dim)
            noise = wm.sample_noise(k_roll, (hmax, len(starts)))
            preds = np.asarray(
                _open_loop(wm, wm.params, dataset.observations[starts], actions, noise)
            )
            s0 = dataset.observations[starts]
            for h in horizons:
                err = (((preds[:, h - 1] - truth[:, h - 1]) / std) ** 2).mean()
                base = (((s0 - truth[:, h - 1]) / std) ** 2).mean()
                out["open_loop_mse"][str(h)] = _finite(err)
                out["open_loop_no_change_mse"][str(h)] = _finite(base)
            out["open_loop_windows"] = int(len(starts))
    return out


def _finite(x: Any) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None  # diverged rollouts: null in JSON


def _window_starts(dataset: Dataset, horizon: int) -> np.ndarray:
    """Rows ``t`` such that rows ``t .. t+horizon-1`` are consecutive steps of one episode."""
    ends = dataset.episode_ends
    episode = np.r_[0, np.cumsum(ends)[:-1]]
    last = len(dataset) - horizon
    if last < 0:
        return np.zeros(0, np.int64)
    t = np.arange(last + 1)
    return t[episode[t] == episode[t + horizon - 1]]


@functools.partial(jax.jit, static_argnums=0)
def _one_step(wm: WorldModel, params, s, a, s1, noise):
    step = jax.vmap(
        lambda s, a, s1, z: (
            wm.next_state(params, s, a, z),
            wm.reward(params, s, a),
            wm.done_prob(params, s, a, s1),
        )
    )
    return step(s, a, s1, noise)


@functools.partial(jax.jit, static_argnums=0)
def _open_loop(wm: WorldModel, params, s0, actions, noise):
    """Roll ``(W, obs)`` states along ``(W, H, act)`` actions; returns ``(W, H, obs)``."""
    step_all = jax.vmap(lambda s, a, z: wm.next_state(params, s, a, z))

    def step(s, inp):
        a, z = inp
        s = step_all(s, a, z)
        return s, s

    _, states = jax.lax.scan(step, s0, (jnp.swapaxes(actions, 0, 1), noise))
    return jnp.swapaxes(states, 0, 1)


QUALITY_ROWS: list[tuple[str, str, str]] = [
    ("one-step MSE (obs std units)", "one_step_mse", ".4g"),
    ("  no-change MSE", "no_change_mse", ".4g"),
    ("  ratio model / no-change", "one_step_ratio", ".4g"),
    ("open-loop MSE H={h}", "open_loop_mse.{h}", ".4g"),
    ("  no-change H={h}", "open_loop_no_change_mse.{h}", ".4g"),
    ("reward MSE (raw)", "reward_mse", ".4g"),
    ("reward NMSE", "reward_nmse", ".4g"),
    ("termination accuracy", "termination_accuracy", ".4g"),
    ("termination balanced acc.", "termination_balanced_accuracy", ".4g"),
]
"""(row title, key in a quality report, format) of every rendered row; ``{h}`` rows repeat
for each open-loop horizon, and a dotted key reaches into a nested mapping."""


def _table_rows(results: dict[str, dict[str, Any]]) -> list[tuple[str, list[str]]]:
    """(title, one cell per model) of every row of :data:`QUALITY_ROWS`."""
    horizons = list(next(iter(results.values())).get("open_loop_mse", {}))
    # Consecutive ``{h}`` rows form a block repeated per horizon (model, baseline, next H).
    blocks: list[list[tuple[str, str, str]]] = []
    for row in QUALITY_ROWS:
        if "{h}" in row[1] and blocks and "{h}" in blocks[-1][0][1]:
            blocks[-1].append(row)
        else:
            blocks.append([row])
    rows = []
    for block in blocks:
        for h in horizons if "{h}" in block[0][1] else [None]:
            for title, key, fmt in block:
                cells = []
                for q in results.values():
                    value: Any = q
                    for part in key.format(h=h).split("."):
                        value = value.get(part) if isinstance(value, dict) else None
                    cells.append("-" if value is None else format(value, fmt))
                rows.append((title.format(h=h), cells))
    return rows


def print_quality(
    results: dict[str, dict[str, Any]], console: Console | None = None, title: str = "quality"
) -> Table:
    """A rich table of quality reports, one column per model."""
    console = console or Console(stderr=True, soft_wrap=True)
    table = Table(title=title)
    table.add_column("metric")
    for name in results:
        table.add_column(name, justify="right")
    for label, cells in _table_rows(results):
        table.add_row(label, *cells)
    console.print(table)
    return table


def quality_markdown(results: dict[str, dict[str, Any]]) -> str:
    """The same comparison as a Markdown table (for BENCHMARKS.md)."""
    names = list(results)
    lines = ["| metric | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for label, cells in _table_rows(results):
        lines.append(f"| {label.strip()} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
