"""Writing transitions as a Minari dataset (what ``collect`` and the PointMaze recorder make).

Owns :func:`write_minari`: episodes cut from flat transitions, written to a staging folder
and moved into place, so a killed write never leaves half a dataset under the final name.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from mpcdwm.envs import limit_kwargs, make_env

Transitions = dict[str, np.ndarray]
"""Flat host-side transitions: observations ``(N, obs_dim)``, actions ``(N, act_dim)`` (env
units), rewards ``(N,)``, next_observations ``(N, obs_dim)``, terminals ``(N,)`` bool,
truncations ``(N,)`` bool (episode cut by a time limit or by the end of the data)."""


def _episode_buffers(data: Transitions) -> Iterator[Any]:
    """Minari ``EpisodeBuffer`` per episode: T+1 observations, T actions/rewards/flags."""
    from minari.data_collector import EpisodeBuffer

    ends = data["terminals"] | data["truncations"]
    ends[-1] = True
    stops = np.flatnonzero(ends) + 1
    start = 0
    for episode, stop in enumerate(stops):
        sl = slice(start, stop)
        obs = np.concatenate([data["observations"][sl], data["next_observations"][stop - 1][None]])
        trunc = data["truncations"][sl].copy()
        trunc[-1] |= not data["terminals"][stop - 1]
        yield EpisodeBuffer(
            id=episode,
            observations=obs,
            actions=data["actions"][sl],
            rewards=data["rewards"][sl],
            terminations=data["terminals"][sl],
            truncations=trunc,
            infos={},
        )
        start = stop


@contextmanager
def _minari_root(path: Path) -> Iterator[None]:
    """Point Minari at another datasets root for the duration (Minari reads the env var)."""
    old = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(path)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("MINARI_DATASETS_PATH", None)
        else:
            os.environ["MINARI_DATASETS_PATH"] = old


def write_minari(
    data: Transitions,
    *,
    dataset_id: str,
    env_id: str,
    max_episode_steps: int | None,
    ref_min_score: float,
    ref_max_score: float,
    extra_metadata: dict[str, Any],
    out: Path | None = None,
    overwrite: bool = False,
) -> str:
    """Write ``data`` as Minari dataset ``dataset_id``; returns the id, or the absolute ``out``.

    The dataset is built in a staging folder and moved into place, so a killed
    write never leaves half a dataset under the final name.
    """
    import minari
    from minari.storage import get_dataset_path

    # Absolute: Minari resolves a relative folder against its own root (MINARI_DATASETS_PATH).
    target = Path(out).resolve() if out is not None else get_dataset_path(dataset_id)
    if target.exists():
        if not overwrite:
            raise FileExistsError(
                f"dataset {dataset_id!r} already exists at {target}; pass --overwrite to replace "
                "it, or choose another --dataset-id / --out."
            )
    target.parent.mkdir(parents=True, exist_ok=True)
    env = make_env(env_id, **limit_kwargs(max_episode_steps))
    stage = Path(tempfile.mkdtemp(prefix=".collect-", dir=target.parent))
    try:
        with _minari_root(stage), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # Minari nags about optional fields
            ds = minari.create_dataset_from_buffers(
                dataset_id=dataset_id,
                buffer=list(_episode_buffers(data)),
                env=env,
                algorithm_name=f"mpcdwm collect ({extra_metadata.get('mpcdwm_recipe', '?')})",
                author="mpcdwm",
                author_email="n/a",
                code_permalink="https://github.com/ (mpcdwm.collect)",
                ref_min_score=float(ref_min_score),
                ref_max_score=float(ref_max_score),
                description=f"D4RL-style dataset made by `{extra_metadata.get('mpcdwm_command')}`",
            )
            ds.storage.update_metadata(extra_metadata)
        if target.exists():
            shutil.rmtree(target)
        os.replace(stage / dataset_id, target)
    finally:
        env.close()
        shutil.rmtree(stage, ignore_errors=True)
    return str(target) if out is not None else dataset_id
