"""Checkpoint files: written atomically, so a crash at any instant leaves the last good one.

A checkpoint is one pickle of plain data (dicts, lists, numbers, strings and numpy arrays):
the server's state at the end of a settled round, every worker's own state as of that
round, and the metrics and events so far (what goes in is the strategy's business). Pickle
keeps numpy arrays exact and needs no schema; like any pickle, load only checkpoints you
wrote yourself.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from fedcoop.errors import ConfigError

FILENAME = "checkpoint.pkl"
#: bumped when the layout changes, so an old file is refused rather than misread
VERSION = 1


def atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Call write(file) on a temporary file beside `path`, fsync it, rename it over `path`
    and fsync the directory (so the rename itself survives a power cut): a crash at any
    instant leaves either the old file or the new one, whole."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write(directory: Path, state: dict[str, Any]) -> Path:
    """Write `state` to directory/checkpoint.pkl atomically."""
    path = directory / FILENAME
    atomic_write(
        path,
        lambda f: pickle.dump({"version": VERSION, **state}, f, protocol=pickle.HIGHEST_PROTOCOL),
    )
    return path


def read(directory: str | Path) -> dict[str, Any]:
    """The checkpoint in a run directory, or a ConfigError saying why there is none."""
    path = Path(directory).expanduser() / FILENAME
    if not path.is_file():
        raise ConfigError("resume", str(directory), f"no {FILENAME} in that run directory")
    try:
        with path.open("rb") as f:
            state = pickle.load(f)
    except (OSError, pickle.UnpicklingError, EOFError) as exc:
        raise ConfigError("resume", str(path), f"unreadable checkpoint: {exc}") from None
    if not isinstance(state, dict) or state.get("version") != VERSION:
        raise ConfigError("resume", str(path), f"not a version-{VERSION} fedcoop checkpoint")
    return state
