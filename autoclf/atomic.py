"""Atomic file writes: write a temporary file beside the target, then ``os.replace`` it.

A process killed mid-write leaves the old file or no file, never half of a new one.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

# mkstemp creates files readable by their owner alone; written files should follow the umask,
# as a plain open() would. Read once: os.umask can only be read by setting it.
_UMASK = os.umask(0)
os.umask(_UMASK)


def target(given: str | os.PathLike | None, default: Path) -> Path:
    """Where a command writes its file: ``given``, the default's name inside ``given`` when
    that is a folder, else ``default``."""
    if not given:
        return default
    path = Path(given)
    return path / default.name if path.is_dir() else path


@contextmanager
def atomic_path(target: str | Path, *, suffix: str = "", private: bool = False) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success it replaces ``target``.
    ``private``: readable by its owner alone (a file that holds a password)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=suffix)
    os.fchmod(fd, 0o600 if private else 0o666 & ~_UMASK)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_text(target: str | Path, text: str, *, private: bool = False) -> None:
    with atomic_path(target, private=private) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(target: str | Path, obj: Any, *, private: bool = False) -> None:
    text = json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n"
    write_text(target, text, private=private)


def save_npy(target: str | Path, array: np.ndarray) -> None:
    # The temp name must end in .npy, or np.save appends the suffix and writes elsewhere.
    with atomic_path(target, suffix=".npy") as tmp:
        np.save(tmp, array)


def write_with(target: str | Path, writer: Callable[[Path], None], *, suffix: str = "") -> None:
    """Atomically create ``target`` with ``writer(tmp_path)`` (for writers that need a path)."""
    with atomic_path(target, suffix=suffix) as tmp:
        writer(tmp)


def link_or_copy(source: str | Path, target: str | Path) -> None:
    """Make ``target`` a hard link to ``source`` (no second copy on disk), or where the file
    system has none, a copy; either way it appears whole or not at all."""
    with atomic_path(target, suffix=Path(target).suffix) as tmp:
        tmp.unlink()
        try:
            os.link(source, tmp)
        except FileNotFoundError:
            raise
        except OSError:  # no hard links here (another file system, or none at all)
            shutil.copyfile(source, tmp)


class FileLock:
    """An exclusive flock on ``path`` (created if need be), held between ``acquire`` and
    ``release``, or over a ``with`` block. The kernel drops it if the holder dies, so a killed
    process never leaves it held."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def release(self) -> None:
        if self.fd is not None:
            fd, self.fd = self.fd, None
            os.close(fd)  # closing the descriptor drops the flock

    def __enter__(self) -> FileLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
