"""Files and folders the user names: checked before work starts, problems said in one line.

Owns :class:`UserFileError` (a file or folder the user named cannot be read or written;
its message names it, the problem and the fix), :func:`ensure_writable_dir` (every command
checks its output folders with it before any work, so a bad ``--out`` costs seconds, not a
training run), :func:`reading` and :func:`writing` (turn the errors of reading or writing
one file into messages that name it), :func:`write_text_atomic` / :func:`write_json_atomic`
(small result files a reader never sees half-written) and :func:`same_dataset` (a dataset
given as a relative or an absolute path is the same dataset).

The bottom layer of the package: it imports nothing of mpcdwm.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


class UserFileError(RuntimeError):
    """A file or folder named by the user cannot be read or written as needed; the message
    names it, says what is wrong and how to fix it."""


# What an errno means to a user, and what to do about it.
_PROBLEMS: dict[int, str] = {
    errno.ENOSPC: "no space left on the device (the disk is full)",
    errno.EDQUOT: "disk quota exceeded",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted (permission denied)",
    errno.EROFS: "read-only file system",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EISDIR: "is a folder, not a file",
    errno.ENOENT: "does not exist",
    errno.ENAMETOOLONG: "the name is too long",
}
_FIXES: dict[int, str] = {
    errno.ENOSPC: "free some space or use a folder on another disk",
    errno.EDQUOT: "free some space or use a folder on another disk",
    errno.EACCES: "use a folder you can write to, or fix its permissions",
    errno.EPERM: "use a folder you can write to, or fix its permissions",
    errno.EROFS: "use a folder on a writable disk",
}


def describe_os_error(err: OSError) -> str:
    """The problem of an ``OSError`` in words (``no space left on the device (the disk is
    full)``), with the usual fix where there is one."""
    problem = _PROBLEMS.get(err.errno or -1) or err.strerror or str(err)
    fix = _FIXES.get(err.errno or -1)
    return f"{problem}; {fix}" if fix else problem


def _first_existing_file_above(path: Path) -> Path | None:
    """The nearest ancestor of ``path`` (or itself) that exists as a non-folder, if any."""
    for p in (path, *path.parents):
        if p.exists():
            return None if p.is_dir() else p
    return None


def ensure_writable_dir(path: str | os.PathLike, flag: str) -> Path:
    """Create folder ``path`` if needed and check that files can be written in it.

    Creates and removes one temporary file there. Raises :class:`UserFileError` with one
    line naming ``flag`` (``--out``), the path and the problem (it is a file / a part of
    it is a file / permission denied / read-only file system / disk full). Returns the
    path. Run by every command on each of its output folders before any work starts.
    """
    path = Path(path)
    blocker = _first_existing_file_above(path)
    if blocker == path:
        raise UserFileError(
            f"{flag} {path}: exists and is a file, not a folder; pass another {flag} or "
            "remove the file."
        )
    if blocker is not None:
        raise UserFileError(
            f"{flag} {path}: {blocker} is a file, not a folder; pass another {flag}."
        )
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".mpcdwm-write-check.", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise UserFileError(
            f"{flag} {path}: cannot write there: {describe_os_error(err)}."
        ) from err
    return path


def ensure_writable_parent(path: str | os.PathLike, flag: str) -> Path:
    """Check that ``path`` (a file or folder a command creates later, as a whole) can be
    created: it is not below a file and its parent folder is writable (created if needed).
    Returns the path."""
    path = Path(path)
    blocker = _first_existing_file_above(path.parent)
    if blocker is not None:
        raise UserFileError(
            f"{flag} {path}: {blocker} is a file, not a folder; pass another {flag}."
        )
    ensure_writable_dir(path.absolute().parent, f"{flag} {path}: its parent folder")
    return path


@contextmanager
def reading(path: str | os.PathLike, what: str, fix: str = "") -> Iterator[None]:
    """Turn errors while reading ``path`` into :class:`UserFileError` naming it.

    ``what`` names the file for the user ("config file", "eval.json"); ``fix`` says what
    to do about damaged contents (default: regenerate or restore the file). Maps OSError
    (missing, unreadable, not HDF5: h5py raises OSError), JSON and YAML syntax errors and
    undecodable bytes; anything else passes through.
    """
    import yaml

    try:
        yield
    except UserFileError:
        raise
    except FileNotFoundError as err:
        raise UserFileError(f"{what} {path} does not exist; check the path.") from err
    except OSError as err:
        if err.errno is not None:
            raise UserFileError(f"cannot read {what} {path}: {describe_os_error(err)}.") from err
        # h5py and similar libraries: an OSError without errno is a damaged file.
        raise UserFileError(
            f"{what} {path} is damaged or not in the expected format ({err}); "
            f"{fix or 'regenerate it or restore it from a copy'}."
        ) from err
    except (json.JSONDecodeError, yaml.YAMLError, UnicodeDecodeError) as err:
        raise UserFileError(
            f"{what} {path} is damaged or cut short (cannot parse it: {_parse_error(err)}); "
            f"{fix or 'regenerate it or restore it from a copy'}."
        ) from err


def _parse_error(err: Exception) -> str:
    """A parse error in one short line (YAML's own span several, with the text quoted)."""
    problem, mark = getattr(err, "problem", None), getattr(err, "problem_mark", None)
    if problem and mark is not None:
        return f"{problem} at line {mark.line + 1}, column {mark.column + 1}"
    return " ".join(str(err).split())


@contextmanager
def reading_dataset(name_or_path: str | os.PathLike, fix: str) -> Iterator[None]:
    """:func:`reading` for a dataset argument: a Minari folder's damaged file is named
    (``data/metadata.json`` for a JSON error, ``data/main_data.hdf5`` for an HDF5 one)."""
    path = Path(name_or_path)
    try:
        with reading(path, "dataset", fix):
            yield
    except UserFileError as err:
        cause = err.__cause__
        if not path.is_dir() or cause is None:
            raise
        folder = path / "data" if (path / "data").is_dir() else path
        if isinstance(cause, json.JSONDecodeError | UnicodeDecodeError):
            inner = folder / "metadata.json"
        elif isinstance(cause, OSError) and cause.errno is None:
            inner = folder / "main_data.hdf5"
        else:
            raise
        raise UserFileError(
            f"dataset {path}: {str(err).replace(f'dataset {path}', str(inner), 1)}"
        ) from cause


@contextmanager
def writing(path: str | os.PathLike) -> Iterator[None]:
    """Attach ``path`` to an ``OSError`` raised while writing it without naming a file (a
    full disk: ``write`` and ``fsync`` say ENOSPC and nothing else), so the error shown to
    the user says which file could not be written. The error keeps its type and errno."""
    try:
        yield
    except OSError as err:
        if err.filename is not None or err.errno is None:
            raise
        raise type(err)(err.errno, err.strerror or os.strerror(err.errno), str(path)) from err


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file and a rename: a reader (or a run that
    resumes after a kill) sees the old file or the new one, never half of one."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    """:func:`write_text_atomic` of ``data`` as JSON (NaN and infinities refused)."""
    write_text_atomic(path, json.dumps(data, indent=1, allow_nan=False))


def _as_dataset_path(text: str) -> str:
    """A dataset given as a path (an ``.hdf5``/``.h5`` file or an existing folder, as
    :func:`mpcdwm.data.load_dataset` reads it) as its resolved absolute path; an id as is."""
    if text.endswith((".hdf5", ".h5")) or Path(text).is_dir():
        return str(Path(text).resolve())
    return text


def same_dataset(a: str, b: str) -> bool:
    """Whether two dataset arguments name the same data: equal ids, or paths (relative or
    absolute, with or without ``..``) that resolve to the same folder or file."""
    return a == b or _as_dataset_path(a) == _as_dataset_path(b)


def dataset_identity(text: str) -> str:
    """How a dataset argument is recorded for a resume check: a path resolved to an absolute
    one (so a relative and an absolute spelling match), an id unchanged."""
    return _as_dataset_path(text)
