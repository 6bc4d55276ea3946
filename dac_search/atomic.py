"""All-or-nothing file writes: a reader, a crash or a power cut never leaves half a file.

The data is fsynced before the rename and the directory after it: without that, a power cut can leave
``run.json`` empty and a resume then fails. Files get the mode the user's umask gives (0644 under the
usual 022), not a fixed one. A write the disk refuses (full, read-only) is one line naming the file.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from dac_search.errors import ConfigError, DacSearchError


def _umask() -> int:
    """The process's umask, read once at import (reading it means setting it: not from threads)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_umask()  # mkstemp makes 0600; results are meant for others too, as the umask allows


class WriteFailed(DacSearchError):
    """The disk refused a write (full, read-only, gone): an environment failure, exit code 1."""


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary path beside ``path``; renamed over it on success, removed on failure."""
    target = Path(path)
    if target.is_dir():
        raise ConfigError(f"output {target} is a directory")
    if not target.parent.is_dir():
        raise ConfigError(f"cannot write {target}: directory {target.parent} does not exist")
    try:
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=target.suffix)
    except OSError as exc:
        raise ConfigError(f"cannot write {target}: {exc.strerror or exc}") from None
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, FILE_MODE)
        _fsync(tmp, os.O_RDONLY)
        os.replace(tmp, target)
        _fsync(target.parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError as exc:
        raise WriteFailed(f"cannot write {target}: {exc.strerror or exc}") from None
    finally:
        Path(tmp).unlink(missing_ok=True)


def _fsync(path: str | os.PathLike[str], flags: int) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write UTF-8 text atomically, creating the parent directory."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return target
