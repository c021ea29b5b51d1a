"""flowprep: action-recognition videos to zarr stores of RGB and TV-L1 flow, for two-stream I3D.

The Python API in one import (each name is loaded on first use, so ``import flowprep`` stays
light and never imports torch)::

    rgb, flow = flowprep.video_flow("clip.mp4")   # float32 (T,H,W,3) and (T-1,H,W,2) in [-1, 1]
    flow_px = flowprep.compute_flow(gray_thw)     # uint8 (T,H,W) -> float32 (T-1,H,W,2) pixels
    store = flowprep.open_store("out/demo.zarr")  # flowprep.Store: read_rgb, read_flow, info
    clips = flowprep.VideoClips(...)              # torch Dataset of samples from stores
    flowprep.TSNTrain(segments=3)                 # its samplers: Dense, TSN, Stacked, SlowFast x Train / Eval
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY = {
    "video_flow": "flowprep.flow.video",
    "iter_video_flow": "flowprep.flow.video",
    "compute_flow": "flowprep.flow.api",
    "rgb_to_gray": "flowprep.flow.api",
    "quantize_flow": "flowprep.flow.api",
    "dequantize_flow": "flowprep.flow.api",
    "flow_to_color": "flowprep.flow.viz",
    "Store": "flowprep.store.zarr_store",
    "StoreError": "flowprep.store.zarr_store",
    "VideoClips": "flowprep.train.data",
    **{
        name: "flowprep.train.sampling"
        for name in (
            "DenseTrain",
            "DenseEval",
            "TSNTrain",
            "TSNEval",
            "StackedTrain",
            "StackedEval",
            "SlowFastTrain",
            "SlowFastEval",
        )
    },
    "load_recipe": "flowprep.run.recipe",
}

__all__ = ["__version__", "open_store", *_LAZY]


def open_store(path):
    """Open a flowprep zarr store for reading (a ``flowprep.Store``: ``video_ids``, ``info(vid)``,
    ``read_rgb`` float32 (T, H, W, 3) in [-1, 1], ``read_flow`` float32 (T-1, H, W, 2) in [-1, 1])."""
    from flowprep.store import open_store as _open

    return _open(path)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later lookups skip __getattr__
        return value
    raise AttributeError(f"module 'flowprep' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
