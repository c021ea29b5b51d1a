"""Shared test helpers: small synthetic clips written with the real ffmpeg, fast TV-L1 settings."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest

from flowprep.dataset.decode import ffmpeg_exe
from flowprep.dataset.demo import Motion, render, write_lossless

SHARED_MANIFESTS = Path(
    os.environ.get("FLOWPREP_SHARED_MANIFESTS", Path(__file__).resolve().parents[2] / "shared" / "manifests")
)

# Few iterations: tests check plumbing and conventions on easy motion, not TV-L1's accuracy.
FAST_FLOW = {"nscales": 3, "warps": 2, "outer_iterations": 4, "inner_iterations": 15}


def make_clip(
    path: Path,
    motion: Motion = Motion(dx=2, dy=1),
    n: int = 6,
    h: int = 64,
    w: int = 80,
    fps: float = 25,
    seed: int = 0,
) -> np.ndarray:
    frames = render(motion, n, h, w, seed=seed)
    write_lossless(frames, path, fps=fps)
    return frames


def write_recipe(folder: Path, manifest: Path, short_side: int = 64, extra: str = "") -> Path:
    recipe = folder / "test.toml"
    params = ", ".join(f"{k} = {v}" for k, v in FAST_FLOW.items())
    recipe.write_text(
        f'dataset = "t"\nmanifest = "{manifest}"\n[decode]\nshort_side = {short_side}\n'
        f'[flow]\nbackend = "opencv"\nparams = {{ {params} }}\n{extra}'
    )
    return recipe


class Clip(NamedTuple):
    """One synthetic clip of a test manifest, written to ``<folder>/<clips>/<name>.mkv``."""

    name: str
    motion: Motion = Motion(dx=2, dy=1)
    frames: int = 6
    label: str = "move0"
    split: str = "train"
    seed: int = 0
    h: int = 64
    w: int = 80


def manifest_lines(folder: Path, rows: Iterable[Clip | str], *, clips: str = "vids", ids: bool = False) -> list[str]:
    """The "N synthetic clips -> manifest" step of the pipeline tests: writes the clips, returns the
    manifest's lines (header first).

    ``rows`` in manifest order: a ``Clip`` is written (real ffmpeg, lossless) and gets the row
    ``<clips>/<name>.mkv,<label>,<split>``; a string is a raw row (a missing file, a malformed
    line), kept where it stands because the shard rule goes by position.  ``ids``: an ``id``
    column holding each clip's name (raw rows then give their own id).
    """
    lines = ["id,path,label,split" if ids else "path,label,split"]
    for row in rows:
        if isinstance(row, str):
            lines.append(row)
            continue
        make_clip(folder / clips / f"{row.name}.mkv", row.motion, n=row.frames, h=row.h, w=row.w, seed=row.seed)
        lines.append(f"{row.name + ',' if ids else ''}{clips}/{row.name}.mkv,{row.label},{row.split}")
    return lines


def write_dataset(
    folder: Path, rows: Iterable[Clip | str], *, manifest: str = "m.csv", clips: str = "vids", ids: bool = False
) -> Path:
    """``manifest_lines`` written to ``<folder>/<manifest>``; returns the manifest's path."""
    path = folder / manifest
    path.write_text("\n".join(manifest_lines(folder, rows, clips=clips, ids=ids)) + "\n")
    return path


def ffmpeg(*args: str) -> None:
    subprocess.run([ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *args], check=True)


@pytest.fixture
def clip(tmp_path: Path) -> Path:
    p = tmp_path / "clip.mkv"
    make_clip(p)
    return p
