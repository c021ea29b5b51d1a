"""One video to RGB + TV-L1 flow in memory, in one call (``flowprep.video_flow``).

The same steps and numbers as ``flowprep run`` writes to a store (decode at ``fps`` with the
smallest side ``short_side``, BT.601 luma, TV-L1, clip to ``bound``, int8 quantization), so
the flow equals what a store of the video holds with ``flow_codec = "zstd"`` or ``"ffv1"`` (the default
``"zstd-near"`` stores it within one int8 step), and so do the frames of a store written with
``rgb_codec = "lossless"`` (the default JPEG q95 codec stores them within JPEG's error).  Touches only the
video file (one ffmpeg process); everything is kept in memory, so use a store for long videos.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from flowprep.flow.api import (
    FLOW_BOUND,
    block_flow_int8,
    dequantize_flow,
    dequantize_rgb,
    gray_blocks,
    pick_backend,
)


def iter_video_flow(
    path: str | Path,
    *,
    fps: float = 25.0,
    short_side: int = 256,
    start: float | None = None,
    end: float | None = None,
    backend: str = "auto",
    device: str | None = None,
    bound: float = FLOW_BOUND,
    block_frames: int = 64,
    **params: Any,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Blocks ``(rgb_uint8 (n, H, W, 3), flow_int8 (m, H, W, 2))`` as ``flowprep run`` writes them.

    The first block has ``m = n - 1`` flow fields, every later one ``m = n`` (its first field
    maps the previous block's last frame to its first frame).  ``params``: TV-L1 parameters and
    backend options as for ``compute_flow``; the recipes use ``scale_step=0.5`` (the default).
    Raises flowprep.dataset.decode.DecodeError when ffmpeg cannot read the file.
    """
    from flowprep.dataset.decode import DecodeConfig, decode_blocks

    backend = pick_backend(backend, device)
    cfg = DecodeConfig(fps=fps, short_side=short_side, block_frames=block_frames)
    for block, gray in gray_blocks(decode_blocks(str(path), cfg, start, end)):
        yield block, block_flow_int8(gray, backend=backend, device=device, bound=bound, **params)


def video_flow(
    path: str | Path,
    *,
    fps: float = 25.0,
    short_side: int = 256,
    start: float | None = None,
    end: float | None = None,
    backend: str = "auto",
    device: str | None = None,
    bound: float = FLOW_BOUND,
    raw: bool = False,
    **params: Any,
) -> tuple[np.ndarray, np.ndarray]:
    """RGB frames and TV-L1 flow of one video, with the store's conventions.

    Returns ``(rgb, flow)``:

    * ``rgb``: float32 (T, H, W, 3) in [-1, 1] (``uint8 / 127.5 - 1``), frames at ``fps`` with the
      smallest side ``short_side`` (bilinear, aspect kept), as decoded: ``Store.read_rgb`` of a
      lossless store (of a default store: the same frames after JPEG q95);
    * ``flow``: float32 (T-1, H, W, 2) in [-1, 1]: ``flow[t]`` maps frame t to t+1, channel 0 =
      u (right), 1 = v (down), pixels clipped to [-bound, bound] and divided by ``bound``,
      on the int8 grid of the store (multiples of 1/127), exactly as ``Store.read_flow``.

    ``raw=True`` returns the uint8 frames and int8 flow instead (``Store.read_rgb_uint8`` /
    ``read_flow_int8``; 4x less memory).  ``start`` / ``end``: seconds to cut.  ``backend``:
    "auto" (torch, else OpenCV), "torch" or "opencv"; ``device``: None (CUDA when available),
    "cpu", "cuda[:N]".  ``params``: TV-L1 parameters (flowprep.flow.api.DEFAULT_TVL1_PARAMS).
    Needs at least 2 frames (ValueError otherwise).
    """
    rgbs, flows = [], []
    for rgb_u8, flow_q in iter_video_flow(
        path,
        fps=fps,
        short_side=short_side,
        start=start,
        end=end,
        backend=backend,
        device=device,
        bound=bound,
        **params,
    ):
        rgbs.append(rgb_u8)
        flows.append(flow_q)
    rgb_u8 = np.concatenate(rgbs)
    if len(rgb_u8) < 2:
        raise ValueError(f"{path}: {len(rgb_u8)} frame(s) decoded, flow needs at least 2")
    flow_q = np.concatenate(flows)
    if raw:
        return rgb_u8, flow_q
    return dequantize_rgb(rgb_u8), dequantize_flow(flow_q)
