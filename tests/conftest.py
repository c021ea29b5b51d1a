"""Shared test helpers: small synthetic clips written with the real ffmpeg, fast TV-L1 settings."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from flowprep.dataset.decode import ffmpeg_exe
from flowprep.dataset.demo import Motion, render, write_lossless

SHARED_MANIFESTS = Path(os.environ.get("FLOWPREP_SHARED_MANIFESTS", Path(__file__).resolve().parents[2] / "shared" / "manifests"))

# Few iterations: tests check plumbing and conventions on easy motion, not TV-L1's accuracy.
FAST_FLOW = {"nscales": 3, "warps": 2, "outer_iterations": 4, "inner_iterations": 15}


def make_clip(path: Path, motion: Motion = Motion(dx=2, dy=1), n: int = 6, h: int = 64, w: int = 80, fps: float = 25, seed: int = 0) -> np.ndarray:
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


def ffmpeg(*args: str) -> None:
    subprocess.run([ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *args], check=True)


@pytest.fixture
def clip(tmp_path: Path) -> Path:
    p = tmp_path / "clip.mkv"
    make_clip(p)
    return p
