"""The network the trainer trains: an I3D trunk with a logits head that fits any clip size.

Also the trainer's checkpoint file: written atomically, read with ``weights_only=True``, and
self-describing (model config, class list, clip config, step), so ``evaluate`` and ``predict``
rebuild the model from the file alone.  This room touches the checkpoint files it is given and
the weights cache (through ``flowprep.models``).

Why a head of its own: DeepMind's head average-pools 2x7x7, which needs a 224x224 crop and
at least 9 frames.  ``ClampedLogits`` clamps that pool to the feature map it gets, so it is
DeepMind's head exactly at 224 (and any 2x7x7-or-larger map) and still works on the small
crops and short clips used on CPU and in tests.  Its parameters keep the ``logits.conv.*``
names, so a ``Classifier`` state dict is an ``I3D`` state dict (``load_i3d(FILE)`` reads it).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from flowprep.atomic import default_mode, write_atomic
from flowprep.models.i3d import ENDPOINTS, I3D, I3DConfig, LogitsHead
from flowprep.models.weights import (
    CONVERTED_FILES,
    FIRST_CONV,
    flow_state_dict_from_rgb,
    pretrained_state_dict,
    read_state_dict_file,
)

CHECKPOINT_FORMAT = "flowprep-i3d-checkpoint"
CHECKPOINT_VERSION = 1
INITS = (*CONVERTED_FILES, "none")  # DeepMind's models (flowprep weights import for all but kinetics400-rgb)


class ClampedLogits(LogitsHead):
    """Average pool (at most 2x7x7, VALID, stride 1), dropout, 1x1x1 conv, mean over what is left.

    A ``LogitsHead`` (same ``dropout`` and ``conv`` parts, so ``I3D``'s head code and state dict
    names apply) whose pool fits the map instead of needing 1x1 logits."""

    def __init__(self, in_channels: int, num_classes: int, *, dropout: float) -> None:
        super().__init__(in_channels, num_classes, dropout=dropout, spatial_squeeze=False)

    def forward(self, x_bcthw: torch.Tensor) -> torch.Tensor:
        t, h, w = x_bcthw.shape[2:]
        x_bcthw = F.avg_pool3d(x_bcthw, kernel_size=(min(2, t), min(7, h), min(7, w)), stride=1)
        return self.conv(self.dropout(x_bcthw)).mean(dim=(2, 3, 4))


class Classifier(I3D):
    """I3D blocks up to ``config.final_endpoint`` (``"Logits"`` = all of them) + ``ClampedLogits``.

    A smaller ``final_endpoint`` (e.g. ``"Mixed_3c"``) gives a shallow I3D for tests and CPU.
    """

    logits: ClampedLogits  # always present here (I3D's is None below the Logits endpoint)

    def __init__(self, config: I3DConfig) -> None:
        trunk_end = "Mixed_5c" if config.final_endpoint == "Logits" else config.final_endpoint
        super().__init__(dataclasses.replace(config, final_endpoint=trunk_end))
        self.config = config
        self.logits = ClampedLogits(self.out_channels, config.num_classes, dropout=config.dropout)

    def forward(self, x_bcthw: torch.Tensor) -> torch.Tensor:
        if x_bcthw.ndim != 5 or x_bcthw.shape[1] != self.config.in_channels:
            raise ValueError(f"expected (B, {self.config.in_channels}, T, H, W) input, got {tuple(x_bcthw.shape)}")
        for block in self.blocks.values():
            x_bcthw = block(x_bcthw)
        return self.logits(x_bcthw)


TRUNK_ENDPOINTS = tuple(e for e in ENDPOINTS if e != "Logits")


def initialise(model: Classifier, init: str, cache_dir: Path | None = None) -> str:
    """Load ``init`` (one of ``INITS`` or a file) into ``model``; returns what it did.

    RGB weights become a flow stream's by averaging the first conv over R, G, B; the blocks a
    shallow model lacks are ignored, and the logits are kept only when their shape fits (same
    number of classes), else they stay freshly initialised.
    """
    if init == "none":
        return "random initialisation"
    if init in CONVERTED_FILES:
        state = pretrained_state_dict(init, cache_dir)
    elif Path(init).is_file():
        state = read_state_dict_file(Path(init))
    else:
        raise ValueError(f"--init {init!r}: must be one of {list(INITS)} or an existing file")
    own = model.state_dict()
    channels = state[FIRST_CONV].shape[1] if FIRST_CONV in state else None
    if channels is not None and channels != model.config.in_channels:
        if channels != 3:
            raise ValueError(
                f"{init} has {channels} input channels; only RGB weights can start a {model.config.in_channels}-channel stream"
            )
        state = flow_state_dict_from_rgb(state, model.config.in_channels)
    take = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    missing = sorted(k for k in own if k not in take and not k.startswith("logits."))
    if missing:
        raise ValueError(
            f"{init} does not fit this model: missing or mis-shaped {missing[:8]}{' ...' if len(missing) > 8 else ''}"
        )
    model.load_state_dict(take, strict=False)
    new_head = not all(k in take for k in own if k.startswith("logits."))
    return f"initialised from {init}" + (f"; new logits for {model.config.num_classes} classes" if new_head else "")


# --- checkpoints --------------------------------------------------------------------------------


def save_checkpoint(path: Path, blob: Mapping[str, Any]) -> None:
    """``torch.save`` to a temporary file beside ``path``, fsync, then ``os.replace``.

    The file gets the mode of any other output (0666 less the umask: 0644 usually), not
    mkstemp's 0600, so lab-mates who can read the run folder can load the checkpoint.
    """
    payload = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **blob}
    write_atomic(path, lambda f: torch.save(payload, f), mode=default_mode())


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint of ``flowprep train``; a missing, truncated or foreign file is a ValueError
    with a one-line message (never torch's traceback): the commands turn it into exit 2."""
    if not Path(path).is_file():
        raise ValueError(f"checkpoint {path} not found (or not a file)")
    try:
        blob = torch.load(Path(path), map_location="cpu", weights_only=True)
    except Exception as e:  # zip reader, unpickler, EOF: torch raises many kinds for a bad file
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{path} is not a readable checkpoint ({type(e).__name__}: {first[:200]})") from None
    if not isinstance(blob, dict) or blob.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a flowprep training checkpoint (written by `flowprep train`)")
    if blob.get("version") != CHECKPOINT_VERSION:
        raise ValueError(
            f"{path}: checkpoint version {blob.get('version')!r}; this flowprep reads {CHECKPOINT_VERSION}"
        )
    return blob


def classifier_from_checkpoint(blob: Mapping[str, Any]) -> Classifier:
    if blob.get("model_factory", "i3d") != "i3d":  # flowprep.train.plugins.model_from_checkpoint builds those
        raise ValueError(f"this checkpoint is of --model {blob['model_factory']}, not flowprep's I3D")
    model = Classifier(I3DConfig(**blob["model_config"]))
    model.load_state_dict(blob["model"])
    return model.eval()
