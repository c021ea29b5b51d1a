"""Synthetic clips with known motion, for the demo dataset and for tests.

A clip is a smooth random texture (seeded, so every machine makes the same bytes) moved by a
known motion per frame, written losslessly (FFV1, RGB) so decoding gives back the exact frames.
``true_flow(name, h, w)`` is the flow that moves frame t to frame t+1 in the project's
convention (u right, v down, pixels), for checking what the flow stage computes.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from flowprep.atomic import publish_file


@dataclass(frozen=True)
class Motion:
    dx: float = 0.0  # px per frame, right
    dy: float = 0.0  # px per frame, down
    rot_deg: float = 0.0  # degrees per frame, clockwise on screen (y down), about the centre


# name -> (motion, frames); sizes are the demo's (short side 256, so decode does not resample)
SYNTHETIC: dict[str, Motion] = {
    "translate": Motion(dx=3.0, dy=2.0),
    "rotate": Motion(rot_deg=1.5),
    "still": Motion(),
}
SYNTHETIC_SIZE = (256, 320)  # (H, W)
SYNTHETIC_FRAMES = 25  # one second at 25 fps


def texture(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Smooth random RGB texture, uint8 (h, w, 3), features a few pixels wide (good for TV-L1)."""
    rng = np.random.default_rng(seed)
    out = np.zeros((h, w, 3), np.float32)
    for sigma, weight in ((1.5, 0.5), (4.0, 0.35), (12.0, 0.15)):
        noise = rng.standard_normal((h, w, 3)).astype(np.float32)
        blurred = cv2.GaussianBlur(noise, (0, 0), sigma)
        out += weight * blurred / (blurred.std() + 1e-6)
    out = (out - out.min()) / (out.max() - out.min())
    return np.clip(out * 255, 0, 255).astype(np.uint8)


def _affine(m: Motion, t: float, h: int, w: int) -> np.ndarray:
    """2x3 matrix mapping texture coordinates to frame-t coordinates."""
    cx, cy = (w - 1) / 2, (h - 1) / 2
    a = np.deg2rad(m.rot_deg * t)
    c, s = np.cos(a), np.sin(a)
    # rotate about the centre (positive = clockwise on screen, since y points down), then translate
    return np.array([[c, -s, cx - c * cx + s * cy + m.dx * t], [s, c, cy - s * cx - c * cy + m.dy * t]], np.float64)


def render(m: Motion, n_frames: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    """Frames uint8 (T, h, w, 3): the texture moved by ``t`` times the motion at frame t."""
    pad = int(np.ceil(abs(m.dx) * n_frames + abs(m.dy) * n_frames)) + max(h, w) // 2
    big = texture(h + 2 * pad, w + 2 * pad, seed)
    frames = []
    for t in range(n_frames):
        a = _affine(m, t, h, w).copy()
        a[:, 2] -= a[:, :2] @ np.array([pad, pad])  # texture pixel (pad, pad) is the frame origin at t=0
        frames.append(cv2.warpAffine(big, a, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT))
    return np.stack(frames)


def true_flow(m: Motion, h: int, w: int) -> np.ndarray:
    """Flow (h, w, 2) in px moving frame t to frame t+1 (the same for every t when the motion is
    a pure translation or a pure rotation, as every entry of SYNTHETIC is)."""
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    cx, cy = (w - 1) / 2, (h - 1) / 2
    a = np.deg2rad(m.rot_deg)
    c, s = np.cos(a), np.sin(a)
    x1 = c * (xs - cx) - s * (ys - cy) + cx + m.dx
    y1 = s * (xs - cx) + c * (ys - cy) + cy + m.dy
    return np.stack([x1 - xs, y1 - ys], -1).astype(np.float32)


def write_lossless(frames_thwc: np.ndarray, path: str | Path, fps: float = 25.0, ffmpeg: str | None = None) -> None:
    """Write uint8 RGB frames losslessly (FFV1 in Matroska), atomically."""
    from flowprep.dataset.decode import ffmpeg_exe

    t, h, w, _ = frames_thwc.shape
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.mkv")
    cmd = [
        ffmpeg or ffmpeg_exe(),
        "-nostdin",
        "-hide_banner",
        "-loglevel",
        "error",
        "-y",
        "-f",
        "rawvideo",
        "-pix_fmt",
        "rgb24",
        "-s",
        f"{w}x{h}",
        "-r",
        f"{fps}",
        "-i",
        "pipe:",
        "-c:v",
        "ffv1",
        "-pix_fmt",
        "bgr0",
        str(tmp),
    ]
    proc = subprocess.run(cmd, input=np.ascontiguousarray(frames_thwc).tobytes(), capture_output=True)
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"ffmpeg could not write {path}: {proc.stderr.decode(errors='replace')[-500:]}")
    publish_file(tmp, path)


def synthetic_clip(name: str, folder: str | Path) -> Path:
    """Path of the named synthetic clip in ``folder``, generating it if it is not there yet."""
    if name not in SYNTHETIC:
        raise KeyError(f"unknown synthetic clip {name!r}; known: {sorted(SYNTHETIC)}")
    path = Path(folder) / f"{name}.mkv"
    if not path.exists():
        h, w = SYNTHETIC_SIZE
        write_lossless(render(SYNTHETIC[name], SYNTHETIC_FRAMES, h, w, seed=sorted(SYNTHETIC).index(name)), path)
    return path
