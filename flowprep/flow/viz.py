"""Pictures for people: colour-coded flow and store previews (PNG).  No effect on stored data."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def flow_to_color(flow_hw2: np.ndarray, max_magnitude: float | None = None) -> np.ndarray:
    """Flow (H, W, 2) -> uint8 RGB (H, W, 3): hue = direction, brightness = magnitude.

    The usual optical-flow colour code: right = red, down = yellow-green, left = cyan,
    up = blue/purple; black = still.  ``max_magnitude`` maps to full brightness (default: the
    99th percentile of this field, so a few outliers do not darken the picture).
    """
    import cv2

    u, v = flow_hw2[..., 0].astype(np.float32), flow_hw2[..., 1].astype(np.float32)
    mag, ang = cv2.cartToPolar(u, v, angleInDegrees=True)  # y down: angle grows clockwise on screen
    if max_magnitude is None:
        max_magnitude = float(np.percentile(mag, 99)) if mag.size else 1.0
    max_magnitude = max(max_magnitude, 1e-6)
    hsv = np.zeros((*u.shape, 3), np.uint8)
    hsv[..., 0] = (ang / 2).astype(np.uint8)  # OpenCV hue is 0..179
    hsv[..., 1] = 255
    hsv[..., 2] = np.clip(mag / max_magnitude * 255, 0, 255).astype(np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


def color_wheel(size: int = 64) -> np.ndarray:
    """The legend for flow_to_color: the colour of each direction, brighter outwards."""
    r = (size - 1) / 2
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    flow = np.stack([xs - r, ys - r], -1)
    img = flow_to_color(flow, r)
    img[np.hypot(xs - r, ys - r) > r] = 255
    return img


def save_preview(store, video_id: str, path: str | Path, n_times: int = 4) -> Path:
    """PNG with, for ``n_times`` moments of the video, the RGB frame and its colour-coded flow."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    info = store.info(video_id)
    n_flow = info["n_flow"]
    times = np.unique(np.linspace(0, n_flow - 1, n_times).round().astype(int))
    bound = float(info["flow"]["bound_px"])
    fig, axes = plt.subplots(len(times), 2, figsize=(8, 2.4 * len(times) + 0.6), squeeze=False)
    flows_px = [store.read_flow(video_id, t, t + 1)[0] * bound for t in times]
    scale = max(float(np.percentile(np.hypot(f[..., 0], f[..., 1]), 99)) for f in flows_px) or 1.0
    for row, (t, f) in enumerate(zip(times, flows_px, strict=True)):
        rgb = store.read_rgb_uint8(video_id, t, t + 1)[0]
        axes[row, 0].imshow(rgb)
        axes[row, 0].set_title(f"frame {t}", fontsize=9)
        axes[row, 1].imshow(flow_to_color(f, scale))
        mean_u, mean_v = float(f[..., 0].mean()), float(f[..., 1].mean())
        axes[row, 1].set_title(f"flow {t}->{t + 1}: mean u={mean_u:+.2f} v={mean_v:+.2f} px", fontsize=9)
        for ax in axes[row]:
            ax.axis("off")
    fig.suptitle(f"{video_id} ({info.get('label') or 'no label'}): {info['n_frames']} frames "
                 f"{info['height']}x{info['width']} @ {info['fps']:g} fps, {info['flow']['backend']} TV-L1", fontsize=10)
    fig.tight_layout(rect=(0, 0.06, 1, 0.97))
    legend = fig.add_axes((0.45, 0.0, 0.1, 0.055))
    legend.imshow(color_wheel())
    legend.set_title(f"colour key: full = {scale:.1f} px", fontsize=7)
    legend.axis("off")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
