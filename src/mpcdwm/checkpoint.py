"""Checkpoints: one atomic, checksummed file per trained thing.

Every trained artefact (offline agents, the online collector agent, world
models) is saved here and only here. A checkpoint holds

* ``state``: any pytree of arrays (parameters, optimizer state, RNG key, step),
* ``meta``: a JSON-able dict (config, env id, observation/action sizes,
  normalisation statistics, the kind of artefact).

The file is written to a temporary name in the same folder, fsynced and renamed,
so a killed process leaves either the old checkpoint or the new one, never half
of one. A SHA-256 over the payload catches truncated or corrupted files. A kill
during the write leaves its temporary (``.NAME.XXXXXXXX.tmp``) behind; the next
save of the same checkpoint removes such leftovers (see
:func:`remove_stale_temporaries`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import serialization

from mpcdwm.files import writing

MAGIC = b"MPCDWM-CKPT-1\n"
_DIGEST = 32
# tempfile.mkstemp names: prefix, 8 characters of this alphabet, suffix (CPython's
# _RandomNameSequence). Only files of exactly this shape are ever deleted.
TMP_RANDOM = r"[a-z0-9_]{8}"


def _process_start() -> float:
    """Wall-clock time this process started (a temporary older than that is not ours)."""
    try:
        import psutil  # optional; the start time the OS recorded

        return psutil.Process().create_time()
    except Exception:
        # Without psutil: the import time of this module, a moment after the start.
        return time.time()


PROCESS_START = _process_start()
"""When this process started: a temporary older than that was left by another (killed) one."""


class CheckpointError(RuntimeError):
    """A checkpoint is missing, damaged, or does not fit what it is loaded into."""


def save_checkpoint(path: str | os.PathLike, state: Any, meta: dict[str, Any]) -> Path:
    """Atomically write ``state`` (a pytree) and ``meta`` (JSON-able) to ``path``.

    Also removes temporaries of earlier, killed writes of ``path`` (see
    :func:`remove_stale_temporaries`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    state = jax.tree_util.tree_map(_key_to_data, state)
    state_dict = serialization.to_state_dict(jax.device_get(state))
    payload = serialization.msgpack_serialize(
        {"meta": json.dumps(meta, sort_keys=True, default=_json_default), "state": state_dict}
    )
    blob = MAGIC + hashlib.sha256(payload).digest() + payload
    with writing(path):  # a full disk names this checkpoint, not just "No space left"
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(blob)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    _fsync_dir(path.parent)
    return path


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Delete leftovers of killed writes of checkpoint ``path``; returns what was deleted.

    Only files named like :func:`save_checkpoint`'s temporaries for this very
    checkpoint name (``.NAME.XXXXXXXX.tmp`` in its folder) and last modified
    before this process started are touched: a write in progress elsewhere
    (started after us) or any other file is never removed.
    """
    path = Path(path)
    pattern = re.compile(rf"\.{re.escape(path.name)}\.{TMP_RANDOM}\.tmp")
    removed = []
    try:
        candidates = list(path.parent.iterdir())
    except FileNotFoundError:
        return removed
    for p in candidates:
        if not pattern.fullmatch(p.name):
            continue
        try:
            if p.is_file() and not p.is_symlink() and p.stat().st_mtime < PROCESS_START:
                p.unlink()
                removed.append(p)
        except FileNotFoundError:  # removed meanwhile by someone else: fine
            continue
    return removed


CHECKPOINT_FILE = "checkpoint.ckpt"
"""The checkpoint's file name inside a run folder (what ``train.fit`` writes)."""


def checkpoint_file(run_dir_or_ckpt: str | os.PathLike) -> Path:
    """The checkpoint of a run folder, or the path itself when it names a file."""
    path = Path(run_dir_or_ckpt)
    return path / CHECKPOINT_FILE if path.is_dir() else path


def checkpoint_digest(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a checkpoint's payload (parameters and meta), read from its header:
    two checkpoints with the same digest hold the same trained thing."""
    path = Path(path)
    with path.open("rb") as f:
        head = f.read(len(MAGIC) + _DIGEST)
    if not head.startswith(MAGIC) or len(head) < len(MAGIC) + _DIGEST:
        raise CheckpointError(f"{path} is not an mpcdwm checkpoint (bad header).")
    return head[len(MAGIC) :].hex()


def load_checkpoint(
    path: str | os.PathLike,
    target: Any | None = None,
    expect: dict[str, Any] | None = None,
) -> tuple[Any, dict[str, Any]]:
    """Read a checkpoint; returns ``(state, meta)``.

    ``target``: a pytree of the same structure (e.g. a freshly initialised
    state) to restore into; without it the raw nested dict is returned.
    ``expect``: meta entries that must match (``env_id``, ``obs_dim``, ``kind``
    ...); a mismatch raises :class:`CheckpointError` naming both values.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"No checkpoint at {path}. Train one first (e.g. `mpcdwm train-agent ... --out DIR`) "
            "or pass the folder that holds it."
        )
    blob = path.read_bytes()
    if not blob.startswith(MAGIC):
        raise CheckpointError(f"{path} is not an mpcdwm checkpoint (bad header).")
    digest, payload = blob[len(MAGIC) : len(MAGIC) + _DIGEST], blob[len(MAGIC) + _DIGEST :]
    if hashlib.sha256(payload).digest() != digest:
        raise CheckpointError(
            f"{path} is truncated or corrupted (checksum mismatch). Delete it and retrain, "
            "or resume from an earlier checkpoint."
        )
    raw = serialization.msgpack_restore(payload)
    meta = json.loads(raw["meta"])
    for key, want in (expect or {}).items():
        have = meta.get(key)
        if have != want:
            raise CheckpointError(
                f"{path} was made for {key}={have!r}, but {key}={want!r} is needed here. "
                "Use a checkpoint trained on the same environment/dataset, or retrain."
            )
    state = raw["state"]
    if target is not None:
        try:
            plain_target = jax.tree_util.tree_map(_key_to_data, target)
            state = serialization.from_state_dict(plain_target, state)
        except (ValueError, KeyError, TypeError) as err:
            raise CheckpointError(
                f"{path} does not match the expected structure ({err}). It was probably made "
                "with a different config (network sizes, agent type); retrain or fix the config."
            ) from err
        _check_shapes(path, plain_target, state)
        state = jax.tree_util.tree_map(_restore_key, target, state)
    return state, meta


class _Missing:
    """The value of a setting one config has and the other lacks (distinct from None)."""

    def __repr__(self) -> str:
        return "(missing)"


MISSING = _Missing()


def config_differences(saved: Any, now: Any, prefix: str = "") -> dict[str, tuple[Any, Any]]:
    """The settings in which a checkpoint's stored config differs from this run's, as
    ``{"dotted.key": (saved, now)}``; mappings are compared key by key (a key one side lacks
    is :data:`MISSING` there, which differs from None), anything else with ``==``. Empty
    exactly when the two are equal."""
    if not (isinstance(saved, Mapping) and isinstance(now, Mapping)):
        return {} if saved == now else {prefix or "config": (saved, now)}
    diff: dict[str, tuple[Any, Any]] = {}
    for key in sorted(set(saved) | set(now), key=str):
        name = f"{prefix}.{key}" if prefix else str(key)
        diff.update(config_differences(saved.get(key, MISSING), now.get(key, MISSING), name))
    return diff


def describe_differences(diff: dict[str, tuple[Any, Any]], limit: int = 6) -> str:
    """``config_differences`` as one line: ``lr 3e-4 -> 1e-3, network 'flax' -> 'torch'``
    (saved -> now), at most ``limit`` settings, then how many more."""
    parts = [f"{k} {old!r} -> {new!r}" for k, (old, new) in list(diff.items())[:limit]]
    if len(diff) > limit:
        parts.append(f"and {len(diff) - limit} more")
    return ", ".join(parts)


def training_progress(meta: dict[str, Any], target: int | None = None) -> str:
    """How far a training run's checkpoint got: "step 550000 of 1000000". The target is the
    one the checkpoint recorded, else ``target`` (what the caller knows of it, for checkpoints
    written before targets were recorded), else left out ("step 550000")."""
    step, target = meta.get("step"), meta.get("target_steps", target)
    return f"step {step}" if target is None else f"step {step} of {target}"


def _fsync_dir(folder: Path) -> None:
    # Make the rename itself durable (a power cut right after could otherwise undo it).
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open folders; the rename is still atomic there
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _is_key(x: Any) -> bool:
    return isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _key_to_data(x: Any) -> Any:
    # Typed PRNG keys cannot become NumPy arrays; store their raw key data.
    return jax.random.key_data(x) if _is_key(x) else x


def _restore_key(template: Any, value: Any) -> Any:
    return jax.random.wrap_key_data(value) if _is_key(template) else value


def _check_shapes(path: Path, target: Any, state: Any) -> None:
    want = jax.tree_util.tree_leaves_with_path(target)
    have = jax.tree_util.tree_leaves(state)
    for (key_path, w), h in zip(want, have, strict=True):
        if np.shape(w) != np.shape(h):
            name = jax.tree_util.keystr(key_path)
            raise CheckpointError(
                f"{path}: parameter {name} has shape {np.shape(h)}, expected {np.shape(w)}. "
                "The checkpoint comes from another environment or network size."
            )


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray | jax.Array):
        return np.asarray(obj).tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot store {type(obj).__name__} in checkpoint meta")
