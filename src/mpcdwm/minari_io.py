"""Writing transitions as a Minari dataset (what ``collect`` and the PointMaze recorder make).

Owns :func:`write_minari`: episodes cut from flat transitions, written to a staging folder
and moved into place, so a killed write never leaves half a dataset under the final name;
and where a dataset goes (:func:`dataset_target`) and whether an existing folder there may
be replaced (:func:`check_target`: ``--overwrite`` deletes only a dataset this project
wrote, never a folder of the user's).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from mpcdwm.checkpoint import PROCESS_START, TMP_RANDOM
from mpcdwm.envs import limit_kwargs, make_env
from mpcdwm.files import UserFileError, ensure_writable_parent

Transitions = dict[str, np.ndarray]
"""Flat host-side transitions: observations ``(N, obs_dim)``, actions ``(N, act_dim)`` (env
units), rewards ``(N,)``, next_observations ``(N, obs_dim)``, terminals ``(N,)`` bool,
truncations ``(N,)`` bool (episode cut by a time limit or by the end of the data)."""
TRANSITION_FIELDS = (
    "observations",
    "actions",
    "rewards",
    "next_observations",
    "terminals",
    "truncations",
)
"""The arrays of :data:`Transitions`, in this order."""


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


def dataset_target(dataset_id: str, out: str | os.PathLike | None) -> Path:
    """The folder a dataset is written to: ``out`` made absolute, or the id's folder under
    the Minari root (``MINARI_DATASETS_PATH``, default ~/.minari/datasets)."""
    from minari.storage import get_dataset_path

    # Absolute: Minari resolves a relative folder against its own root (MINARI_DATASETS_PATH).
    return Path(out).resolve() if out is not None else Path(get_dataset_path(dataset_id))


def written_by_mpcdwm(folder: Path) -> str | None:
    """None if ``folder`` is a Minari dataset this project wrote (nothing but ``data/``, whose
    ``metadata.json`` holds the ``mpcdwm_*`` keys :func:`write_minari` records); otherwise
    why it is not."""
    if not folder.is_dir():
        return "it is a file, not a dataset folder"
    others = sorted(p.name for p in folder.iterdir() if p.name != "data")
    if others:
        shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
        return f"it holds files that are not part of a Minari dataset ({shown})"
    meta_file = folder / "data" / "metadata.json"
    if not meta_file.is_file():
        return "it has no data/metadata.json, so it is no Minari dataset"
    try:
        meta = json.loads(meta_file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return f"its {meta_file.name} cannot be read, so nothing says mpcdwm wrote it"
    if not isinstance(meta, dict) or not any(str(k).startswith("mpcdwm_") for k in meta):
        return "its metadata does not say mpcdwm wrote it (no mpcdwm_* keys)"
    return None


def check_target(target: Path, *, overwrite: bool, flag: str) -> None:
    """Raise unless a dataset may be written to ``target``: its parent folder is writable,
    and ``target`` does not exist, or ``overwrite`` is set and it is a dataset this project
    wrote (:func:`written_by_mpcdwm`). ``flag`` names the setting in messages (``--out
    DIR``). Run before any work: collecting can take hours."""
    ensure_writable_parent(target, flag.split()[0])
    if not target.exists():
        return
    if not overwrite:
        raise FileExistsError(
            f"{flag}: {target} already exists; pass --overwrite to replace it, or choose "
            "another --dataset-id / --out."
        )
    why_not = written_by_mpcdwm(target)
    if why_not is not None:
        raise UserFileError(
            f"{flag}: --overwrite refuses to delete {target}: {why_not}. Pass another "
            "--out / --dataset-id, or remove the folder yourself if it is really expendable."
        )


STAGING_PREFIX = ".collect-"


def remove_stale_staging(parent: Path) -> list[Path]:
    """Remove the staging folders that killed writes left in ``parent``: only folders named
    exactly as :func:`write_minari` makes them (``.collect-`` and mkdtemp's 8 characters) and
    older than this process; returns them."""
    pattern = re.compile(rf"{re.escape(STAGING_PREFIX)}{TMP_RANDOM}")
    removed = []
    try:
        candidates = list(Path(parent).iterdir())
    except FileNotFoundError:
        return removed
    for p in candidates:
        try:
            stale = p.stat().st_mtime < PROCESS_START
        except FileNotFoundError:
            continue
        if pattern.fullmatch(p.name) and p.is_dir() and not p.is_symlink() and stale:
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


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
    write never leaves half a dataset under the final name. An existing dataset is
    replaced only with ``overwrite`` and only if this project wrote it (:func:`check_target`).
    """
    import minari

    target = dataset_target(dataset_id, out)
    flag = f"--out {out}" if out is not None else f"--dataset-id {dataset_id}"
    check_target(target, overwrite=overwrite, flag=flag)
    env = make_env(env_id, **limit_kwargs(max_episode_steps))
    remove_stale_staging(target.parent)
    stage = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=target.parent))
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
