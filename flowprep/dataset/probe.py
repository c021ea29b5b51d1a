"""How many frames a manifest row will decode to, known before decoding: for progress totals.

An estimate (the header's duration, or the row's time range, times the decode rate), never used
for anything stored.  Reads only container headers (OpenCV), never downloads or generates clips.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from flowprep.dataset.manifest import ManifestRow


def file_seconds(path: Path) -> float | None:
    import cv2

    cap = cv2.VideoCapture(str(path))
    try:
        n, fps = cap.get(cv2.CAP_PROP_FRAME_COUNT), cap.get(cv2.CAP_PROP_FPS)
    finally:
        cap.release()
    return n / fps if n > 0 and fps > 0 else None


def expected_frames(row: ManifestRow, manifest_dir: Path, fps: float) -> int | None:
    """Frames ``row`` decodes to at ``fps``, or None when unknown without more work."""
    if row.time_start is not None and row.time_end is not None:
        seconds: float | None = row.time_end - row.time_start
    elif row.path is None:
        return None
    elif row.path.startswith("synthetic:"):
        from flowprep.dataset.demo import SYNTHETIC_FRAMES

        seconds = SYNTHETIC_FRAMES / 25.0  # written at 25 fps
    else:
        from flowprep.dataset.source import SourceError, package_file

        try:
            p = package_file(row.path[len("package:") :]) if row.path.startswith("package:") else Path(row.path)
        except SourceError:
            return None
        p = p if p.is_absolute() else manifest_dir / p
        seconds = file_seconds(p) if p.is_file() else None
    return max(1, round(seconds * fps)) if seconds else None


def expected_pairs(rows: Iterable[ManifestRow], manifest_dir: Path, fps: float, max_probes: int = 1000) -> int | None:
    """Flow pairs (frames - 1 per video) of all ``rows``, or None if any row is unknown or more
    than ``max_probes`` files would have to be opened (a slow start on a network file system)."""
    total = 0
    probes = 0
    for row in rows:
        if row.time_start is None and row.path is not None and not row.path.startswith("synthetic:"):
            probes += 1
            if probes > max_probes:
                return None
        n = expected_frames(row, manifest_dir, fps)
        if n is None:
            return None
        total += n - 1
    return total
