"""Optical flow: TV-L1 between consecutive grayscale frames, and its 8-bit storage mapping.

Pure functions over arrays; no I/O.  Conventions (I3D, Carreira & Zisserman 2017):

* ``flow[t]`` moves frame ``t`` to frame ``t + 1``: ``frame[t+1][y + v, x + u] ~ frame[t][y, x]``,
  so a video of T frames has T - 1 flow fields;
* channel 0 is u (positive to the right), channel 1 is v (positive downward), in pixels;
* for storage, flow is truncated to ``[-bound, bound]`` pixels (bound 20), rescaled to [-1, 1] and
  quantized to int8 as ``q = round(f / bound * 127)``, so 0 px is exactly 0, the step is
  ``bound / 127`` (0.157 px) and -128 is never used.  ``dequantize_flow`` gives ``q / 127``.

Backends are picked by name from ``BACKENDS``; ``opencv`` (``cv2.optflow.DualTVL1OpticalFlow``,
CPU) is the reference; ``torch`` (``flowprep.flow.tvl1_torch``, batched, CPU or CUDA) follows it step
for step, with three engines (option ``engine``: "numba", ``flowprep.flow.tvl1_numba``, the CPU
default; "cpu", torch's eager kernels; "device", ``flowprep.flow.tvl1_device``, the CUDA default).  Options that only one backend understands (``BACKEND_OPTIONS``) pass through
``compute_flow`` like TV-L1 parameters and are errors for the other backends.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import numpy as np

from flowprep.flow.params import DEFAULT_TVL1_PARAMS

FLOW_BOUND = 20.0
QUANT_LEVELS = 127
RGB_SCALE = 1 / 127.5  # uint8 RGB x -> x * RGB_SCALE - 1 in [-1, 1] (I3D's input range)

# DEFAULT_TVL1_PARAMS (the one table of TV-L1 defaults) lives in flowprep.flow.params, which the
# solvers import without importing this module (no cycle); it is re-exported here.

_PARAM_CHECKS: Mapping[str, tuple[type, Callable[[Any], bool], str]] = {
    "tau": (float, lambda x: 0 < x <= 0.25, "in (0, 0.25]"),
    "lambda_": (float, lambda x: x > 0, "> 0"),
    "theta": (float, lambda x: x > 0, "> 0"),
    "nscales": (int, lambda x: 1 <= x <= 16, "an integer in [1, 16]"),
    "scale_step": (float, lambda x: 0 < x < 1, "in (0, 1)"),
    "warps": (int, lambda x: x >= 1, "an integer >= 1"),
    "epsilon": (float, lambda x: x > 0, "> 0"),
    "inner_iterations": (int, lambda x: x >= 1, "an integer >= 1"),
    "outer_iterations": (int, lambda x: x >= 1, "an integer >= 1"),
    "gamma": (float, lambda x: x >= 0, ">= 0"),
    "median_filtering": (int, lambda x: x in (1, 3, 5), "1 (off), 3 or 5"),
}


def resolve_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """Defaults overlaid with ``params``, each checked; ValueError names the field and what is allowed."""
    unknown = sorted(set(params) - set(DEFAULT_TVL1_PARAMS))
    if unknown:
        raise ValueError(f"unknown TV-L1 parameter(s) {unknown}; allowed: {sorted(DEFAULT_TVL1_PARAMS)}")
    out = dict(DEFAULT_TVL1_PARAMS)
    for name, value in params.items():
        kind, ok, allowed = _PARAM_CHECKS[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"TV-L1 parameter {name}={value!r}: must be {allowed}")
        if kind is int and value != int(value):
            raise ValueError(f"TV-L1 parameter {name}={value!r}: must be {allowed}")
        value = kind(value)
        if not ok(value):
            raise ValueError(f"TV-L1 parameter {name}={value!r}: must be {allowed}")
        out[name] = value
    return out


# Backend-only options: name -> (check, what is allowed, default).  Checked in compute_flow.
BACKEND_OPTIONS: Mapping[str, Mapping[str, tuple[Callable[[Any], bool], str, Any]]] = {
    "torch": {
        # frame pairs per call; None = as many as fit in a share of the free memory
        "batch_size": (
            lambda x: x is None or (isinstance(x, int) and not isinstance(x, bool) and x >= 1),
            "None (automatic) or an integer >= 1",
            None,
        ),
        # torch.compile the solver's kernels (falls back to eager if compiling fails); None = the
        # engine's default: off for the "cpu" engine (its blocked eager kernels are as fast on the
        # CPU, without a minute of compiling), on for the "device" engine on CUDA; the "numba"
        # engine is always compiled (by numba) and ignores it
        "compile": (lambda x: x is None or isinstance(x, bool), "None (engine's default), True or False", None),
        # how the solver iterates: "numba" = a fused compiled CPU kernel, a warp per call
        # (tvl1_numba; the CPU default); "cpu" = torch's blocked in-place kernels, one host check
        # per iteration (tvl1_torch); "device" = masked fused iterations, one host check per block
        # (tvl1_device; the CUDA default); None = by device
        "engine": (
            lambda x: x in (None, "numba", "cpu", "device"),
            "None (by device), 'numba', 'cpu' or 'device'",
            None,
        ),
    },
}


def _split_backend_options(backend: str, params: Mapping[str, Any]) -> tuple[dict, dict]:
    """(TV-L1 params, checked options of ``backend`` with defaults filled in)."""
    mine = BACKEND_OPTIONS.get(backend, {})
    options = {name: default for name, (_, _, default) in mine.items()}
    rest = {}
    for name, value in params.items():
        if name in mine:
            ok, allowed, _ = mine[name]
            if not ok(value):
                raise ValueError(f"flow option {name}={value!r}: must be {allowed}")
            options[name] = value
        elif name not in DEFAULT_TVL1_PARAMS and any(name in o for o in BACKEND_OPTIONS.values()):
            owners = sorted(b for b, o in BACKEND_OPTIONS.items() if name in o)
            raise ValueError(f"flow option {name!r} is only accepted by backend(s) {owners}, not {backend!r}")
        else:
            rest[name] = value
    return rest, options


def _opencv_tvl1(gray_thw: np.ndarray, device: str | None, params: Mapping[str, Any]) -> np.ndarray:
    import cv2

    if device not in (None, "cpu"):
        raise ValueError(f"backend 'opencv' runs on the CPU only, got device={device!r}")
    p = params
    tvl1 = cv2.optflow.DualTVL1OpticalFlow_create(  # type: ignore[attr-defined]  # opencv-contrib, not in cv2's stubs
        tau=p["tau"],
        lambda_=p["lambda_"],
        theta=p["theta"],
        nscales=p["nscales"],
        warps=p["warps"],
        epsilon=p["epsilon"],
        innnerIterations=p["inner_iterations"],  # sic: OpenCV's spelling
        outerIterations=p["outer_iterations"],
        scaleStep=p["scale_step"],
        gamma=p["gamma"],
        medianFiltering=p["median_filtering"],
    )
    t, h, w = gray_thw.shape
    out = np.empty((t - 1, h, w, 2), np.float32)
    for i in range(t - 1):
        out[i] = tvl1.calc(gray_thw[i], gray_thw[i + 1], None)
    return out


def _torch_tvl1(gray_thw: np.ndarray, device: str | None, params: Mapping[str, Any]) -> np.ndarray:
    import flowprep.flow.tvl1_device as tvl1_device
    import flowprep.flow.tvl1_torch as tvl1_torch

    p = dict(params)
    batch_size, compile_mode, engine = p.pop("batch_size"), p.pop("compile"), p.pop("engine")
    solver = tvl1_device.engine_solver(engine, tvl1_torch.resolve_device(device))
    return tvl1_torch.flow_video(
        gray_thw, device=device, batch_size=batch_size, compile=compile_mode, solver=solver, **p
    )


def warm_up(backend: str = "auto", device: str | None = None, **params: Any) -> None:
    """Compile (or load from numba's on-disk cache) the kernels ``compute_flow`` with these
    arguments runs, in this process.  A parent calls it once before starting workers: on a
    machine's first run they then load the compiled code instead of each compiling it."""
    backend = pick_backend(backend, device)
    if backend != "torch":
        return
    import flowprep.flow.tvl1_device as tvl1_device
    import flowprep.flow.tvl1_torch as tvl1_torch

    tvl1_params, options = _split_backend_options(backend, params)
    median = resolve_params(tvl1_params)["median_filtering"]
    if tvl1_device.resolve_engine(options["engine"], tvl1_torch.resolve_device(device)) == "numba":
        from flowprep.flow import tvl1_numba

        tvl1_numba.warm_cache(median)


# name -> fn(gray_thw uint8 (T,H,W), device, resolved params and backend options)
#      -> float32 (T-1,H,W,2) pixels
BACKENDS: dict[str, Callable[[np.ndarray, str | None, Mapping[str, Any]], np.ndarray]] = {
    "opencv": _opencv_tvl1,
    "torch": _torch_tvl1,
}


def compute_flow(gray_thw: np.ndarray, backend: str = "auto", device: str | None = None, **params: Any) -> np.ndarray:
    """TV-L1 flow between consecutive frames of ``gray_thw`` (uint8 (T, H, W), values 0-255, T >= 2).

    Returns float32 (T-1, H, W, 2) in pixels, before clipping: ``[..., 0]`` = u (right),
    ``[..., 1]`` = v (down), ``flow[t]`` maps frame t to frame t+1.  ``backend``: ``"auto"``
    (default, as in the CLI and the recipes: ``pick_backend``), ``"opencv"`` or ``"torch"``;
    ``device`` (torch): None = CUDA when available, ``"cpu"``, ``"cuda[:N]"``.  ``params`` are
    TV-L1 parameters (``DEFAULT_TVL1_PARAMS``) and options of the chosen backend
    (``BACKEND_OPTIONS``).
    """
    backend = pick_backend(backend, device)
    if backend not in BACKENDS:
        raise ValueError(f"unknown flow backend {backend!r}; allowed: {sorted(BACKENDS)}")
    tvl1_params, options = _split_backend_options(backend, params)
    resolved = {**resolve_params(tvl1_params), **options}
    gray_thw = np.asarray(gray_thw)
    if gray_thw.ndim != 3 or gray_thw.dtype != np.uint8:
        raise ValueError(f"gray_thw must be uint8 of shape (T, H, W), got {gray_thw.dtype} {gray_thw.shape}")
    if gray_thw.shape[0] < 2:
        raise ValueError(f"need at least 2 frames for flow, got {gray_thw.shape[0]}")
    return BACKENDS[backend](np.ascontiguousarray(gray_thw), device, resolved)


def rgb_to_gray(frames_thwc: np.ndarray) -> np.ndarray:
    """ITU-R BT.601 luma of uint8 RGB frames (as OpenCV's COLOR_RGB2GRAY), uint8 (T, H, W)."""
    f = frames_thwc.astype(np.float32)
    gray = 0.299 * f[..., 0] + 0.587 * f[..., 1] + 0.114 * f[..., 2]
    return np.clip(np.rint(gray), 0, 255).astype(np.uint8)


def gray_blocks(blocks_thwc: Iterable[np.ndarray]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(rgb_block, gray)`` for consecutive uint8 RGB blocks, where ``gray`` (uint8 (n, H, W))
    starts with the previous block's last frame: the first block gives ``n - 1`` flow fields,
    every later one ``n`` (its first field maps the previous block's last frame to its first).
    The one rule for flow across decode blocks, shared by the pipeline and ``video_flow``."""
    prev: np.ndarray | None = None
    for block in blocks_thwc:
        gray = rgb_to_gray(block)
        if prev is not None:
            gray = np.concatenate([prev[None], gray])
        yield block, gray
        prev = gray[-1]


def quantize_flow(flow_px: np.ndarray, bound: float = FLOW_BOUND) -> np.ndarray:
    """Pixels -> int8: clip to [-bound, bound], rescale to [-1, 1], ``round(x * 127)``."""
    scaled = np.clip(np.asarray(flow_px, np.float32), -bound, bound) * (QUANT_LEVELS / bound)
    return np.rint(scaled).astype(np.int8)


def block_flow_int8(
    gray_thw: np.ndarray,
    *,
    backend: str,
    device: str | None,
    bound: float = FLOW_BOUND,
    batch: int | None = None,
    progress: Callable[[int], None] | None = None,
    **params: Any,
) -> np.ndarray:
    """int8 flow (n - 1, H, W, 2) of one ``gray_blocks`` block (uint8 (n, H, W)), as a store holds
    it: none for fewer than 2 frames, else TV-L1 then ``quantize_flow``.  ``batch``: pairs per
    solver call (all at once when None); ``progress(pairs)`` after each call.  The one rule for a
    block's flow, shared by the pipeline and ``video_flow``."""
    if len(gray_thw) < 2:
        return np.zeros((0, *gray_thw.shape[1:3], 2), np.int8)
    step = batch or len(gray_thw) - 1
    parts = []
    for i in range(0, len(gray_thw) - 1, step):
        flow_px = compute_flow(gray_thw[i : i + step + 1], backend=backend, device=device, **params)
        parts.append(quantize_flow(flow_px, bound))
        if progress:
            progress(len(flow_px))
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def dequantize_flow(q: np.ndarray) -> np.ndarray:
    """int8 -> float32 in [-1, 1] (multiply by the bound for pixels)."""
    return q.astype(np.float32) * np.float32(1.0 / QUANT_LEVELS)


def dequantize_rgb_(x: Any) -> Any:
    """RGB values 0..255 held in a float32 array or tensor -> [-1, 1] in place (``x / 127.5 - 1``,
    I3D's input range); returns ``x``.  In place so a training batch is scaled without a copy."""
    x *= RGB_SCALE
    x -= 1.0
    return x


def dequantize_rgb(rgb_u8: np.ndarray) -> np.ndarray:
    """uint8 RGB -> float32 in [-1, 1] (``dequantize_rgb_`` of a float32 copy)."""
    return dequantize_rgb_(rgb_u8.astype(np.float32))


def pick_backend(backend: str, device: str | None = None) -> str:
    """Resolve ``"auto"``: the fastest backend available here.

    The torch backend (when installed in BACKENDS) is faster than OpenCV's on CPU and on CUDA
    (``make bench-flow`` measures both side by side); OpenCV is the reference otherwise.
    """
    if backend != "auto":
        if backend not in BACKENDS:
            raise ValueError(f"unknown flow backend {backend!r}; allowed: auto, {', '.join(sorted(BACKENDS))}")
        return backend
    import importlib.util

    return "torch" if "torch" in BACKENDS and importlib.util.find_spec("torch") is not None else "opencv"
