"""Real-format TensorFlow checkpoints for tests: DeepMind's folder layout, random tensors.

``write_synthetic`` writes one of the five checkpoints as a tensor bundle (``tf_bundle.write_bundle``,
whose index output is byte-identical to TensorFlow's on DeepMind's files) with random values of
the right names, shapes and layouts: (T, H, W, Cin, Cout) kernels, (1, 1, 1, 1, C) BatchNorm
vectors, ``Momentum`` slots beside the weights for Kinetics-600, as DeepMind's files have.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from flowprep.models import kinetics_i3d as K
from flowprep.models import tf_bundle
from flowprep.models.i3d import I3D, I3DConfig

SHARED_CHECKPOINTS = Path(
    os.environ.get("FLOWPREP_SHARED_CHECKPOINTS", Path(__file__).resolve().parents[2] / "shared" / "i3d_checkpoints")
)


def shared_index(folder: str) -> Path:
    return SHARED_CHECKPOINTS / folder / "model.ckpt"


def synthetic_variables(name: str, seed: int = 0) -> tuple[dict[str, np.ndarray], dict[str, torch.Tensor]]:
    """(TensorFlow variables, the state dict they must convert to) for checkpoint ``name``."""
    ckpt = K.CHECKPOINTS[name]
    torch.manual_seed(seed)
    model = I3D(I3DConfig(num_classes=ckpt.num_classes, in_channels=ckpt.in_channels))
    with torch.no_grad():
        for key, t in model.state_dict().items():
            if key.endswith("running_var"):
                t.uniform_(0.5, 2.0)
            elif key.endswith(("running_mean", "bn.bias", "conv.bias")):
                t.normal_(0, 0.1)
    state = model.state_dict()
    tf: dict[str, np.ndarray] = {}
    for key, value in state.items():
        var = K.tf_variable(key)
        if var is None:
            continue
        a = value.numpy()
        if key.endswith("conv.weight"):
            a = a.transpose(2, 3, 4, 1, 0)
        elif key.startswith("blocks."):
            a = a.reshape(1, 1, 1, 1, -1)  # DeepMind's BatchNorm vectors
        tf[ckpt.scope + var] = np.ascontiguousarray(a, np.float32)
        if ckpt.num_classes == 600:  # rgb_scratch_kin600 keeps the optimizer's slots
            tf[ckpt.scope + var + "/Momentum"] = np.zeros_like(tf[ckpt.scope + var])
    return tf, state


def write_synthetic(root: Path, name: str, seed: int = 0) -> tuple[Path, dict[str, torch.Tensor]]:
    """``root/data/checkpoints/<DeepMind's folder>/model.ckpt.*``; returns (folder, expected state dict)."""
    ckpt = K.CHECKPOINTS[name]
    folder = root / "data" / "checkpoints" / ckpt.folder
    tf, state = synthetic_variables(name, seed)
    tf_bundle.write_bundle(folder / "model.ckpt", tf)
    return folder, state
