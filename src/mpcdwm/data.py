"""Offline datasets: one in-memory form, loaders for Minari and D4RL HDF5 files.

Everything downstream (agents, world models, evaluation) consumes a
:class:`Dataset` of flat transitions::

    observations       (N, obs_dim) float32
    actions            (N, act_dim) float32
    rewards            (N,)         float32
    next_observations  (N, obs_dim) float32
    terminals          (N,)         bool   true environment termination
    timeouts           (N,)         bool   episode cut by a time limit / data end

plus ``next_actions`` (the dataset's action at the next step, zeros after an
episode end; ReBRAC's critic penalty uses it), ``env_id`` and reference
returns for normalised scores.

A dataset *name* is a Minari dataset id (``mpcdwm/hopper-medium-v0``); a path to
a folder is a Minari dataset folder; a path ending in ``.hdf5``/``.h5`` is a
legacy D4RL file.
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

# D4RL reference returns (random policy, expert policy) per environment family,
# as published with D4RL. Minari metadata overrides these when present.
D4RL_REF_SCORES: dict[str, tuple[float, float]] = {
    "hopper": (-20.272305, 3234.3),
    "halfcheetah": (-280.178953, 12135.0),
    "walker2d": (1.629008, 4592.3),
    "ant": (-325.6, 3879.7),
    "antmaze": (0.0, 1.0),
}

# Gymnasium ids used when a D4RL file names only its family.
D4RL_ENV_IDS: dict[str, str] = {
    "hopper": "Hopper-v5",
    "halfcheetah": "HalfCheetah-v5",
    "walker2d": "Walker2d-v5",
    "ant": "Ant-v5",
    # D4RL AntMaze is evaluated from one fixed start to one fixed goal per maze: the
    # package's evaluation tasks (mpcdwm.maze.make_eval_antmaze; Gymnasium-Robotics' own
    # ids reset to random cells).
    "antmaze-umaze": "mpcdwm/AntMaze_UMaze_Eval-v5",
    "antmaze-medium": "mpcdwm/AntMaze_Medium_Eval-v5",
    "antmaze-large": "mpcdwm/AntMaze_Large_Eval-v5",
}

D4RL_EVAL_CELLS: dict[str, tuple[tuple[int, int], tuple[int, int]]] = {
    "UMaze": ((1, 1), (3, 1)),
    "Medium": ((1, 1), (6, 6)),
    "Large": ((1, 1), (7, 9)),
}
"""D4RL's AntMaze evaluation task per maze: one start cell and one goal cell (its ``*_TEST``
maps: the ant starts in a corner and must reach the far end), in Gymnasium-Robotics' (row,
column) cells of the same maze (:func:`mpcdwm.maze.make_eval_antmaze` builds the env)."""


def antmaze_eval_size(env_id: str) -> str | None:
    """The D4RL maze (a key of :data:`D4RL_EVAL_CELLS`) ``env_id`` runs in, or None."""
    return next((size for size in D4RL_EVAL_CELLS if f"AntMaze_{size}" in env_id), None)


def antmaze_eval_id(env_id: str) -> str:
    """The evaluation task (:func:`mpcdwm.maze.make_eval_antmaze`) of the maze ``env_id`` runs
    in, e.g. ``AntMaze_Large_Diverse_GR-v5`` -> ``mpcdwm/AntMaze_Large_Eval-v5``."""
    size = antmaze_eval_size(env_id)
    if size is None:
        raise ValueError(f"{env_id!r} is not an AntMaze UMaze/Medium/Large id.")
    return f"mpcdwm/AntMaze_{size}_Eval-v5"


# Fixed order in which dict observations (goal-conditioned maze tasks) are
# flattened: position, body state, goal. Any other keys follow, sorted.
DICT_OBS_ORDER: tuple[str, ...] = ("achieved_goal", "observation", "desired_goal")

FIELDS = ("observations", "actions", "rewards", "next_observations", "terminals", "timeouts")


class DatasetError(ValueError):
    """A dataset is missing, malformed, or does not fit its environment."""


@dataclasses.dataclass(frozen=True)
class NormStats:
    """Statistics computed once from a dataset and stored with what is trained on it."""

    obs_mean: np.ndarray  # (obs_dim,)
    obs_std: np.ndarray  # (obs_dim,)
    reward_scale: float  # multiply rewards by this (1.0 = unchanged)

    def to_dict(self) -> dict[str, Any]:
        return {
            "obs_mean": np.asarray(self.obs_mean).tolist(),
            "obs_std": np.asarray(self.obs_std).tolist(),
            "reward_scale": float(self.reward_scale),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> NormStats:
        return cls(
            np.asarray(d["obs_mean"], np.float32),
            np.asarray(d["obs_std"], np.float32),
            float(d["reward_scale"]),
        )

    @classmethod
    def identity(cls, obs_dim: int) -> NormStats:
        return cls(np.zeros(obs_dim, np.float32), np.ones(obs_dim, np.float32), 1.0)


@dataclasses.dataclass(frozen=True)
class Dataset:
    """Flat offline transitions; see the module docstring for shapes."""

    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    next_observations: np.ndarray
    terminals: np.ndarray
    timeouts: np.ndarray
    next_actions: np.ndarray
    name: str
    env_id: str
    ref_min_score: float | None
    """Return of a random policy (D4RL's 0 point); None when unknown."""
    ref_max_score: float | None
    """Return of an expert (D4RL's 100 point); None when unknown."""
    dropped_rows: int = 0
    metadata: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.observations.shape[0])

    @property
    def obs_dim(self) -> int:
        return int(self.observations.shape[1])

    @property
    def act_dim(self) -> int:
        return int(self.actions.shape[1])

    @property
    def episode_ends(self) -> np.ndarray:
        """(N,) bool: the transition is the last of its episode in the data."""
        ends = self.terminals | self.timeouts
        ends = ends.copy()
        ends[-1] = True
        return ends

    def episode_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """``(starts, ends)``: the first and last row index of every episode, in data order."""
        ends = np.flatnonzero(self.episode_ends)
        return np.r_[0, ends[:-1] + 1], ends

    def episode_returns(self) -> np.ndarray:
        """Undiscounted return of every episode, in data order."""
        starts, _ = self.episode_bounds()
        sums = np.add.reduceat(self.rewards.astype(np.float64), starts)
        return sums.astype(np.float64)

    def normalized_score(self, returns: Any) -> np.ndarray:
        """D4RL normalised score ``100 * (R - ref_min) / (ref_max - ref_min)``; NaN for a
        dataset without reference returns (no score is better than a made-up one)."""
        returns = np.asarray(returns, np.float64)
        if self.ref_min_score is None or self.ref_max_score is None:
            return np.full(returns.shape, np.nan)
        return 100.0 * (returns - self.ref_min_score) / (self.ref_max_score - self.ref_min_score)

    def norm_stats(self, normalize_obs: bool = True, reward_scale: float = 1.0) -> NormStats:
        """Observation mean/std (std floored at 1e-3) and a reward scale."""
        if not normalize_obs:
            return dataclasses.replace(NormStats.identity(self.obs_dim), reward_scale=reward_scale)
        mean = self.observations.mean(0).astype(np.float32)
        std = (self.observations.std(0) + 1e-3).astype(np.float32)
        return NormStats(mean, std, float(reward_scale))

    def split(self, val_fraction: float, seed: int = 0) -> tuple[Dataset, Dataset]:
        """Split by whole episodes into (train, validation)."""
        starts, ends = self.episode_bounds()
        order = np.random.default_rng(seed).permutation(len(starts))
        n_val = max(1, int(round(val_fraction * len(starts)))) if val_fraction > 0 else 0
        if n_val >= len(starts):
            raise DatasetError(
                f"dataset {self.name!r} has {len(starts)} episode(s); cannot hold out "
                f"{val_fraction:.0%} of them for validation. Collect more episodes."
            )
        val_eps = np.zeros(len(starts), bool)
        val_eps[order[:n_val]] = True
        lengths = ends - starts + 1
        row_is_val = np.repeat(val_eps, lengths)
        return self.select(~row_is_val), self.select(row_is_val)

    def segments(self, count: int, length: int, seed: int = 0) -> np.ndarray:
        """``(count, length, obs_dim)`` runs of consecutive observations, each inside one
        episode: episodes drawn uniformly among those at least ``length`` long, then a
        uniform start within the episode."""
        starts, ends = self.episode_bounds()
        long_enough = np.flatnonzero(ends - starts + 1 >= length)
        if length < 1 or count < 1 or len(long_enough) == 0:
            raise DatasetError(
                f"dataset {self.name!r}: no {count} segment(s) of {length} consecutive states "
                f"(its longest episode has {int((ends - starts + 1).max())} steps); ask for "
                "shorter segments."
            )
        rng = np.random.default_rng(seed)
        episodes = rng.choice(long_enough, size=count)
        first = starts[episodes] + rng.integers(0, ends[episodes] - starts[episodes] - length + 2)
        return self.observations[first[:, None] + np.arange(length)]

    def select(self, mask: np.ndarray) -> Dataset:
        """Rows where ``mask`` is true (keeps every field aligned)."""
        arrays = {f: getattr(self, f)[mask] for f in (*FIELDS, "next_actions")}
        return dataclasses.replace(self, **arrays)


def ref_scores_for(env_id: str) -> tuple[float, float] | None:
    """D4RL reference (min, max) returns for a Gymnasium id or D4RL name."""
    key = env_id.lower().replace("_", "").replace("-", "")
    for family in sorted(D4RL_REF_SCORES, key=len, reverse=True):
        if key.startswith(family):
            return D4RL_REF_SCORES[family]
    return None


def flatten_observation(obs: Any) -> np.ndarray:
    """Flatten a dict observation in :data:`DICT_OBS_ORDER`; arrays pass through.

    Works on one observation or on stacked ones (leading batch axis).
    """
    if not isinstance(obs, Mapping):
        return np.asarray(obs, np.float32)
    keys = [k for k in DICT_OBS_ORDER if k in obs] + sorted(
        k for k in obs if k not in DICT_OBS_ORDER
    )
    parts = [np.asarray(obs[k], np.float32) for k in keys]
    parts = [
        p[..., None] if p.ndim == 0 or (p.ndim == 1 and parts[0].ndim > 1) else p for p in parts
    ]
    return np.concatenate(parts, axis=-1)


def next_actions_from(actions: np.ndarray, episode_ends: np.ndarray) -> np.ndarray:
    """The action taken at the following step, zero where an episode ends."""
    nxt = np.zeros_like(actions)
    nxt[:-1] = actions[1:]
    nxt[episode_ends] = 0.0
    return nxt


def return_to_go(
    rewards: np.ndarray, gamma: float, episode_ends: np.ndarray | None = None
) -> np.ndarray:
    """Discounted return-to-go ``G_t = r_t + gamma * G_{t+1}`` of every row of ``rewards (N,)``,
    float64; the sum restarts after each row where ``episode_ends (N,)`` is true (terminal or
    timeout), and is cut at the last row (one episode when ``episode_ends`` is None)."""
    rewards = np.asarray(rewards, np.float64)
    ends = np.zeros(len(rewards), bool) if episode_ends is None else np.asarray(episode_ends)
    out = np.zeros_like(rewards)
    acc = 0.0
    for t in range(len(rewards) - 1, -1, -1):
        acc = rewards[t] + gamma * (0.0 if ends[t] else acc)
        out[t] = acc
    return out


def make_dataset(
    arrays: Mapping[str, np.ndarray],
    *,
    name: str,
    env_id: str,
    ref_min_score: float | None = None,
    ref_max_score: float | None = None,
    drop_invalid: bool = False,
    metadata: Mapping[str, Any] | None = None,
) -> Dataset:
    """Validate raw arrays and build a :class:`Dataset`.

    Raises :class:`DatasetError` naming the dataset, the field and the fix for
    missing fields, length mismatches, wrong ranks and non-finite values. With
    ``drop_invalid=True`` rows holding NaN/inf are removed instead and counted
    in ``Dataset.dropped_rows``.
    """
    missing = [f for f in FIELDS if f not in arrays]
    if missing:
        raise DatasetError(
            f"dataset {name!r} lacks field(s) {missing}. A dataset needs {list(FIELDS)}; "
            "D4RL files need at least observations, actions, rewards, terminals, timeouts."
        )
    obs = np.asarray(arrays["observations"], np.float32)
    data = {
        "observations": obs,
        "actions": np.asarray(arrays["actions"], np.float32),
        "rewards": np.asarray(arrays["rewards"], np.float32).reshape(-1),
        "next_observations": np.asarray(arrays["next_observations"], np.float32),
        "terminals": np.asarray(arrays["terminals"]).reshape(-1).astype(bool),
        "timeouts": np.asarray(arrays["timeouts"]).reshape(-1).astype(bool),
    }
    n = len(data["observations"])
    if n == 0:
        raise DatasetError(f"dataset {name!r} is empty. Collect data first with `mpcdwm collect`.")
    for field, arr in data.items():
        if len(arr) != n:
            raise DatasetError(
                f"dataset {name!r}: field {field!r} has {len(arr)} rows but observations has {n}. "
                "All fields must have one row per transition; regenerate or repair the file."
            )
    for field in ("observations", "actions", "next_observations"):
        if data[field].ndim != 2:
            raise DatasetError(
                f"dataset {name!r}: field {field!r} must be 2-D (rows, dim), got shape "
                f"{data[field].shape}. Flatten observations before saving."
            )
    if data["next_observations"].shape[1] != obs.shape[1]:
        raise DatasetError(
            f"dataset {name!r}: next_observations has {data['next_observations'].shape[1]} "
            f"columns, observations has {obs.shape[1]}; they must match."
        )
    bad = np.zeros(n, bool)
    for field in ("observations", "actions", "rewards", "next_observations"):
        arr = data[field]
        row_bad = ~np.isfinite(arr.reshape(n, -1)).all(axis=1)
        if row_bad.any() and not drop_invalid:
            first = int(np.flatnonzero(row_bad)[0])
            raise DatasetError(
                f"dataset {name!r}: field {field!r} has NaN/inf in {int(row_bad.sum())} row(s) "
                f"(first at row {first}). Fix the data, or load with drop_invalid=True "
                "(CLI: --drop-invalid) to drop those rows; the count is reported."
            )
        bad |= row_bad
    ends = data["terminals"] | data["timeouts"]
    ends[-1] = True
    next_actions = next_actions_from(data["actions"], ends)
    if "next_actions" in arrays:
        next_actions = np.asarray(arrays["next_actions"], np.float32)
    dropped = int(bad.sum())
    if dropped:
        keep = ~bad
        # A dropped row ends the episode before it, so bootstrapping never
        # crosses the gap.
        gap_before = np.zeros(n, bool)
        gap_before[:-1] = bad[1:]
        data["timeouts"] = data["timeouts"] | (gap_before & ~data["terminals"])
        data = {k: v[keep] for k, v in data.items()}
        next_actions = next_actions[keep]
    if ref_min_score is None or ref_max_score is None:
        # No reference returns: no normalized score (NaN), never a made-up (0, 1) range.
        refs = ref_scores_for(env_id) or ref_scores_for(name) or (None, None)
        ref_min_score, ref_max_score = refs
    if ref_min_score is not None and not ref_max_score > ref_min_score:
        raise DatasetError(
            f"dataset {name!r}: ref_max_score ({ref_max_score}) must exceed ref_min_score "
            f"({ref_min_score}); fix the dataset metadata."
        )
    return Dataset(
        **data,
        next_actions=next_actions,
        name=name,
        env_id=env_id,
        ref_min_score=None if ref_min_score is None else float(ref_min_score),
        ref_max_score=None if ref_max_score is None else float(ref_max_score),
        dropped_rows=dropped,
        metadata=dict(metadata or {}),
    )


def check_against_env(dataset: Dataset, env: Any) -> None:
    """Raise if observation size or action range do not fit a Gymnasium ``env`` (one made
    by :func:`mpcdwm.envs.make_env`, as agents see it)."""
    from gymnasium import spaces

    obs_space = env.observation_space
    obs_dim = (
        sum(int(np.prod(s.shape)) for s in obs_space.spaces.values())
        if isinstance(obs_space, spaces.Dict)
        else int(np.prod(obs_space.shape))
    )
    if obs_dim != dataset.obs_dim:
        raise DatasetError(
            f"dataset {dataset.name!r}: observations have {dataset.obs_dim} columns but "
            f"{dataset.env_id} observations have {obs_dim}. The data was made for another "
            "environment or version; pass the right env_id."
        )
    low, high = env.action_space.low, env.action_space.high
    if dataset.act_dim != low.shape[0]:
        raise DatasetError(
            f"dataset {dataset.name!r}: actions have {dataset.act_dim} columns but "
            f"{dataset.env_id} takes {low.shape[0]}; pass the right env_id."
        )
    tol = 1e-4
    outside = (dataset.actions < low - tol) | (dataset.actions > high + tol)
    if outside.any():
        row = int(np.flatnonzero(outside.any(1))[0])
        raise DatasetError(
            f"dataset {dataset.name!r}: field 'actions' has {int(outside.any(1).sum())} row(s) "
            f"outside the action space [{low.min()}, {high.max()}] of {dataset.env_id} "
            f"(first at row {row}: {dataset.actions[row]}). Clip or rescale the actions."
        )


def load_dataset(
    name_or_path: str | os.PathLike,
    *,
    env_id: str | None = None,
    download: bool = False,
    drop_invalid: bool = False,
) -> Dataset:
    """Load a Minari dataset id/folder or a D4RL ``.hdf5`` file as a :class:`Dataset`.

    ``env_id`` overrides the environment recorded in (or guessed for) the data.
    ``download`` is passed to Minari for users with network access. The data are
    validated on their own here; :func:`mpcdwm.envs.check_dataset_against_env` checks
    them against their environment (observation size, action range).
    """
    text = os.fspath(name_or_path)
    if text.endswith((".hdf5", ".h5")):
        return _load_d4rl(Path(text), env_id, drop_invalid)
    return _load_minari(text, env_id, download, drop_invalid)


def _load_d4rl(path: Path, env_id: str | None, drop_invalid: bool) -> Dataset:
    import h5py

    if not path.is_file():
        raise DatasetError(f"D4RL file {path} does not exist. Check the path.")
    name = path.stem
    with h5py.File(path, "r") as f:
        required = ("observations", "actions", "rewards", "terminals", "timeouts")
        missing = [k for k in required if k not in f]
        if missing:
            raise DatasetError(
                f"dataset {name!r} ({path}) lacks key(s) {missing}; a D4RL file needs "
                f"{list(required)} (next_observations optional)."
            )
        raw = {k: f[k][()] for k in required}
        if "next_observations" in f:
            raw["next_observations"] = f["next_observations"][()]
        # D4RL AntMaze keeps the goal beside the flat observation; appended it
        # gives the DICT_OBS_ORDER layout (position, body state, goal) of make_env.
        goal = f["infos/goal"][()] if "infos/goal" in f else None
        attrs = dict(f.attrs)
    if goal is not None:
        raw["observations"] = _append_goal(name, raw["observations"], goal)
        if "next_observations" in raw:
            # The goal does not change within a transition.
            raw["next_observations"] = _append_goal(name, raw["next_observations"], goal)
    if env_id is None:
        env_id = str(attrs.get("env_id", "")) or _guess_env_id(name)
    n = len(raw["observations"])
    for k, v in raw.items():
        if len(v) != n:
            raise DatasetError(
                f"dataset {name!r}: field {k!r} has {len(v)} rows but observations has {n}. "
                "The file is inconsistent; regenerate it."
            )
    raw["terminals"] = raw["terminals"].astype(bool)
    raw["timeouts"] = raw["timeouts"].astype(bool)
    if "next_observations" not in raw:
        # d4rl.qlearning_dataset: the next row is the next observation, except at
        # a timeout (its true next observation was not recorded) and the last row.
        keep = ~raw["timeouts"]
        keep[-1] = False
        next_obs = np.zeros_like(raw["observations"])
        next_obs[:-1] = raw["observations"][1:]
        raw["next_observations"] = next_obs
        ends = raw["terminals"] | raw["timeouts"]
        next_act = np.zeros_like(raw["actions"])
        next_act[:-1] = raw["actions"][1:]
        next_act[ends] = 0.0
        raw = {k: v[keep] for k, v in raw.items()}
        raw["next_actions"] = next_act[keep]
        # After dropping timeout rows, the row before each one ends an episode.
        ends_after = np.zeros(n, bool)
        ends_after[:-1] = ~keep[1:]
        raw["timeouts"] = (ends_after[keep] & ~raw["terminals"]) | raw["timeouts"]
    refs = ref_scores_for(name) or ref_scores_for(env_id)
    return make_dataset(
        raw,
        name=name,
        env_id=env_id,
        ref_min_score=refs[0] if refs else None,
        ref_max_score=refs[1] if refs else None,
        drop_invalid=drop_invalid,
        metadata={"source": "d4rl", "path": str(path)},
    )


def _append_goal(name: str, obs: np.ndarray, goal: np.ndarray) -> np.ndarray:
    """``(N, d)`` observations and ``(N, 2)`` goals -> ``(N, d + 2)`` (goal last)."""
    goal = np.asarray(goal)
    if goal.ndim != 2 or len(goal) != len(obs):
        raise DatasetError(
            f"dataset {name!r}: 'infos/goal' has shape {goal.shape} but there are {len(obs)} "
            "observations; it must hold one (x, y) goal per row. The file is damaged: "
            "download it again."
        )
    return np.concatenate([np.asarray(obs), goal.astype(np.asarray(obs).dtype)], axis=1)


def _guess_env_id(name: str) -> str:
    key = name.lower()
    for family in sorted(D4RL_ENV_IDS, key=len, reverse=True):
        if key.startswith(family):
            return D4RL_ENV_IDS[family]
    raise DatasetError(
        f"cannot tell which environment D4RL file {name!r} belongs to; pass env_id "
        "(CLI: --env-id), e.g. Hopper-v5."
    )


def minari_eval_env_id(
    eval_spec_json: str | None, env_id: str, env_spec: Any = None
) -> tuple[str, str | None]:
    """The env id to evaluate a Minari dataset on, and a warning when it is not the dataset's own.

    Minari datasets may name an evaluation env (``eval_env_spec``) besides the env that
    collected them: D4RL's AntMaze datasets are collected with random starts and goals and
    evaluated from one fixed start to one fixed goal. A spec that is the collection env is
    ``env_id``; an AntMaze maze whose single start (``r``) and goal (``g``) cells are D4RL's
    (:data:`D4RL_EVAL_CELLS`) is the package's evaluation task
    (``mpcdwm/AntMaze_<size>_Eval-v5``). Anything else cannot be rebuilt from an id: ``env_id``
    is kept and the returned note says so (pass ``env_id`` to choose).
    """
    if not eval_spec_json:
        return env_id, None
    try:
        spec = json.loads(eval_spec_json)
        eval_id, kwargs = str(spec["id"]), dict(spec.get("kwargs") or {})
    except (ValueError, KeyError, TypeError):
        return env_id, f"the dataset's eval_env_spec cannot be read; evaluating on {env_id}."
    collect_kwargs = dict(getattr(env_spec, "kwargs", None) or {})
    if eval_id == env_id and kwargs == json.loads(json.dumps(collect_kwargs, default=str)):
        return env_id, None
    grid = kwargs.get("maze_map")
    size = antmaze_eval_size(eval_id)
    if size is not None and isinstance(grid, list):
        marked = sorted(
            (v, (r, c)) for r, row in enumerate(grid) for c, v in enumerate(row) if v in ("r", "g")
        )
        start, goal = D4RL_EVAL_CELLS[size]
        if marked == [("g", goal), ("r", start)]:
            return antmaze_eval_id(eval_id), None
    return env_id, (
        f"the dataset's evaluation env ({eval_id} with its own settings: "
        f"{sorted(kwargs)}) is not one mpcdwm can rebuild by id; scores use the collection env "
        f"{env_id} instead. Pass env_id (CLI: --env-id) to choose the evaluation env."
    )


def _load_minari(
    name_or_path: str, env_id: str | None, download: bool, drop_invalid: bool
) -> Dataset:
    import minari

    path = Path(name_or_path)
    try:
        if path.is_dir():
            data_dir = path / "data" if (path / "data").is_dir() else path
            ds = minari.MinariDataset(data_dir)
        else:
            ds = minari.load_dataset(name_or_path, download=download)
    except FileNotFoundError as err:
        raise DatasetError(
            f"no Minari dataset {name_or_path!r} found locally ({err}). Make one with "
            "`mpcdwm collect --dataset-id NAME`, pass a dataset folder or a D4RL .hdf5 path, "
            "or pass download=True if you have network access."
        ) from err
    spec = ds.spec
    name = spec.dataset_id
    env_given = env_id
    if env_id is None:
        env_spec = getattr(spec, "env_spec", None)
        env_id = env_spec.id if env_spec is not None else ""
        if not env_id:
            raise DatasetError(f"dataset {name!r} records no environment; pass env_id.")
    parts: dict[str, list[np.ndarray]] = {f: [] for f in FIELDS}
    for ep in ds.iterate_episodes():
        obs = flatten_observation(ep.observations)
        t = len(ep.actions)
        if len(obs) != t + 1:
            raise DatasetError(
                f"dataset {name!r}: episode {ep.id} has {len(obs)} observations for {t} "
                "actions; Minari episodes need T+1 observations."
            )
        parts["observations"].append(obs[:-1])
        parts["next_observations"].append(obs[1:])
        parts["actions"].append(np.asarray(ep.actions, np.float32).reshape(t, -1))
        parts["rewards"].append(np.asarray(ep.rewards, np.float32))
        term = np.asarray(ep.terminations, bool)
        trunc = np.asarray(ep.truncations, bool).copy()
        # The last step of every episode ends it; if it neither terminated nor
        # was truncated (data cut short) treat it as a timeout.
        if t and not (term[-1] or trunc[-1]):
            trunc[-1] = True
        parts["terminals"].append(term)
        parts["timeouts"].append(trunc)
    if not parts["observations"]:
        raise DatasetError(f"dataset {name!r} has no episodes.")
    arrays = {k: np.concatenate(v) for k, v in parts.items()}
    stored = ds.storage.metadata
    metadata = {"source": "minari", "path": str(spec.data_path)}
    if env_given is None:
        env_id, note = minari_eval_env_id(stored.get("eval_env_spec"), env_id, spec.env_spec)
        if note is not None:
            warnings.warn(note, stacklevel=3)
            metadata["eval_env_note"] = note
    # What collect recorded about how the data was made (command, seed, medium point, ...).
    metadata.update({k: v for k, v in stored.items() if k.startswith("mpcdwm_")})
    meta_min, meta_max = stored.get("ref_min_score"), stored.get("ref_max_score")
    return make_dataset(
        arrays,
        name=name,
        env_id=env_id,
        ref_min_score=meta_min,
        ref_max_score=meta_max,
        drop_invalid=drop_invalid,
        metadata=metadata,
    )


def batches_to_device(dataset: Dataset, stats: NormStats | None = None) -> dict[str, Any]:
    """Dataset arrays as a dict of JAX arrays (for sampling inside jitted loops).

    With ``stats``, observations are normalised and rewards scaled.
    """
    import jax.numpy as jnp

    obs, next_obs, rewards = dataset.observations, dataset.next_observations, dataset.rewards
    if stats is not None:
        obs = (obs - stats.obs_mean) / stats.obs_std
        next_obs = (next_obs - stats.obs_mean) / stats.obs_std
        rewards = rewards * stats.reward_scale
    return {
        "observations": jnp.asarray(obs),
        "actions": jnp.asarray(dataset.actions),
        "rewards": jnp.asarray(rewards),
        "next_observations": jnp.asarray(next_obs),
        "next_actions": jnp.asarray(dataset.next_actions),
        "dones": jnp.asarray(dataset.terminals, jnp.float32),
    }
