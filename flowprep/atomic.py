"""Atomic file writes: a temporary file beside the target, flushed and fsynced, then one rename.

A reader (or a killed writer's rerun) sees the old file or the new one, never a torn one.  The
only module that renames a file onto another (tests/test_layout.py keeps it so).  Appends to a
log (``append_whole``) land whole or not at all.  A leaf: it touches only the file it is asked
to write.
"""

from __future__ import annotations

import errno
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


def append_whole(fd: int, data: bytes) -> None:
    """Append ``data`` to the file open at ``fd`` (``O_APPEND``, one writer) whole or not at all.

    A full disk can take part of a record (a short write, then ENOSPC): that part is cut off
    again before the error is raised, so the file never ends in a torn record that the next
    append would be glued onto.  Cutting a file shorter needs no space."""
    start = os.fstat(fd).st_size
    done = 0
    try:
        while done < len(data):
            n = os.write(fd, data[done:])
            if n == 0:  # no progress and no error: report it as the disk being full
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            done += n
    except BaseException:
        if done:
            os.ftruncate(fd, start)
        raise
