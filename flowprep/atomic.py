"""Atomic file writes: a temporary file beside the target, flushed and fsynced, then one rename.

A reader (or a killed writer's rerun) sees the old file or the new one, never a torn one.  The
only module that renames a file onto another (tests/test_layout.py keeps it so).  A leaf: it
touches only the file it is asked to write.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def umask() -> int:
    """The process's umask, read without changing it where Linux allows (``os.umask`` sets it, and
    another thread creating a file meanwhile would get the wrong mode)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def default_mode() -> int:
    """The mode ``open(path, "w")`` would give a new file: 0666 less the umask (0644 usually)."""
    return 0o666 & ~umask()


def write_atomic(path: Path, write: Callable[[IO[bytes]], object], *, mode: int | None = None) -> None:
    """``write(f)`` into a temporary file in ``path``'s folder, then ``os.replace`` it onto ``path``.

    ``mode``: the file's permission bits (None keeps mkstemp's 0600).  On any error the
    temporary file is removed and the error raised; ``path`` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        if mode is not None:
            os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bytes(path: Path, data: bytes, *, mode: int | None = None) -> None:
    """``data`` to ``path`` atomically; ``mode`` None: as ``open()`` would (``default_mode()``)."""
    write_atomic(path, lambda f: f.write(data), mode=default_mode() if mode is None else mode)


def write_text(path: Path, text: str, *, mode: int | None = None) -> None:
    """``text`` (UTF-8) to ``path`` atomically; ``mode`` as in ``write_bytes``."""
    write_bytes(path, text.encode("utf-8"), mode=mode)


def write_json(path: Path, data: Any, *, mode: int | None = None, **dump: Any) -> None:
    """``json.dumps(data, **dump)`` to ``path`` atomically; ``mode`` as in ``write_bytes``."""
    write_text(path, json.dumps(data, **dump), mode=mode)


def publish_file(src: Path, path: Path) -> None:
    """Move a finished file (written by someone else, e.g. a downloader, into a folder on the same
    file system) onto ``path`` in one rename, after fsyncing it so the rename never exposes a
    file whose data is not on disk yet."""
    with open(src, "rb") as f:
        os.fsync(f.fileno())
    os.replace(src, path)
