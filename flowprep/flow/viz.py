"""Pictures for people: colour-coded flow and store previews (PNG).  No effect on stored data."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def middlebury_wheel() -> np.ndarray:
    """The 55 colours of the Middlebury flow colour code, float (55, 3) in [0, 255].

    Baker et al., "A Database and Evaluation Methodology for Optical Flow" (IJCV 2011), after
    the Middlebury ``colorcode.cpp``: hue segments red-yellow 15, yellow-green 6, green-cyan 4,
    cyan-blue 11, blue-magenta 13, magenta-red 6, sampled so perceptually close hues get about
    as many colours as far ones.
    """
    segments = (
        (15, (255, 0, 0), (255, 255, 0)),
        (6, (255, 255, 0), (0, 255, 0)),
        (4, (0, 255, 0), (0, 255, 255)),
        (11, (0, 255, 255), (0, 0, 255)),
        (13, (0, 0, 255), (255, 0, 255)),
        (6, (255, 0, 255), (255, 0, 0)),
    )
    rows = []
    for n, a, b in segments:
        i = np.arange(n, dtype=np.float64)[:, None]
        # colorcode.cpp steps each channel by floor(255 * i / n)
        rows.append(np.array(a, np.float64) + np.floor(255 * i / n) * np.sign(np.array(b, np.float64) - np.array(a)))
    return np.concatenate(rows)


_WHEEL = middlebury_wheel()


def flow_to_color(flow_hw2: np.ndarray, max_magnitude: float | None = None) -> np.ndarray:
    """Flow (H, W, 2) in px (u right, v down) -> uint8 RGB (H, W, 3), Middlebury colour code.

    The code of optical-flow papers (Baker et al. 2011; torchvision's ``flow_to_image``):
    white = still, hue = direction (right = red, down = yellow, left = cyan-blue, up = violet;
    ``color_wheel`` draws the key),
    saturation = magnitude relative to ``max_magnitude`` (default: the largest magnitude of
    this field, as torchvision does; ``save_preview`` passes one shared scale).  Magnitudes
    above ``max_magnitude`` are darkened to 75 %, as in colorcode.cpp.
    """
    u = np.asarray(flow_hw2[..., 0], np.float64)
    v = np.asarray(flow_hw2[..., 1], np.float64)
    mag = np.hypot(u, v)
    if max_magnitude is None:
        max_magnitude = float(mag.max()) if mag.size else 1.0
    max_magnitude = max(float(max_magnitude), 1e-6)
    rad = mag / max_magnitude
    ncols = len(_WHEEL)
    a = np.arctan2(-v, -u) / np.pi  # in [-1, 1]
    fk = (a + 1) / 2 * (ncols - 1)
    k0 = np.floor(fk).astype(int)
    k1 = (k0 + 1) % ncols
    f = (fk - k0)[..., None]
    col = ((1 - f) * _WHEEL[k0] + f * _WHEEL[k1]) / 255.0
    inside = (rad <= 1)[..., None]
    col = np.where(inside, 1 - np.minimum(rad, 1)[..., None] * (1 - col), col * 0.75)
    return np.clip(np.floor(255 * col), 0, 255).astype(np.uint8)


def color_wheel(size: int = 64) -> np.ndarray:
    """The legend for flow_to_color: the colour of each direction, white at the centre, saturated at the rim."""
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
    # one scale for all rows (99th percentile, so a few outliers do not wash the picture out)
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
    fig.suptitle(
        f"{video_id} ({info.get('label') or 'no label'}): {info['n_frames']} frames "
        f"{info['height']}x{info['width']} @ {info['fps']:g} fps, {info['flow']['backend']} TV-L1",
        fontsize=10,
    )
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
