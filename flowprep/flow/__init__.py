"""Flow layer: TV-L1 between consecutive grayscale frames and its int8 storage mapping.

``api`` (backends by name, quantization), ``tvl1_torch`` (the batched PyTorch solver and its
skeleton), ``tvl1_numba`` (its fused CPU kernel), ``tvl1_device`` (its GPU schedule),
``evaluation`` (real and synthetic test frames, EPE) and ``viz`` (flow pictures).  Pure
functions over arrays, except ``evaluation`` (reads a sample video) and ``viz`` (writes a PNG).
"""

from flowprep.flow.api import (
    BACKEND_OPTIONS,
    BACKENDS,
    FLOW_BOUND,
    QUANT_LEVELS,
    compute_flow,
    dequantize_flow,
    pick_backend,
    quantize_flow,
    resolve_params,
    rgb_to_gray,
)

__all__ = [
    "BACKENDS",
    "BACKEND_OPTIONS",
    "FLOW_BOUND",
    "QUANT_LEVELS",
    "compute_flow",
    "dequantize_flow",
    "pick_backend",
    "quantize_flow",
    "resolve_params",
    "rgb_to_gray",
]
