"""Atomic file writes: a temporary file beside the target, flushed and fsynced, then one rename.

A reader (or a killed writer's rerun) sees the old file or the new one, never a torn one.  A
leaf module: it touches only the file it is asked to write.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO


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
