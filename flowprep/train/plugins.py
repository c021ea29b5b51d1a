"""Models by name: ``i3d`` (flowprep's own) or ``package.module:factory`` (a user's).

A factory is any callable ``factory(num_classes, in_channels) -> nn.Module`` (torchvision's
``r2plus1d_18`` behind a two-line wrapper, a SlowFast of one's own, ...); the trainer gives it
the class count and the channels the sampler feeds (``ClipSampler.in_channels``).  Checkpoints
record the spec and those two numbers, so ``evaluate`` rebuilds the model from the file (the
module must be importable there too).  Every failure to load or call a factory is one
``ValueError`` line; the commands turn it into exit 2.  This room imports the user's module
and touches nothing else.
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
import sys
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

I3D = "i3d"
_SPEC = re.compile(r"^(?P<module>[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*):(?P<attr>[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*)$")


def _import(module: str, spec: str) -> Any:
    # Like uvicorn and gunicorn: the current folder is importable, so a model file beside the
    # data works without a package (the console script's own folder is on sys.path, not cwd).
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.append(cwd)
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name and (module == e.name or module.startswith(e.name + ".")):
            raise ValueError(
                f"--model {spec}: no module named {e.name!r} (install it, or run from the folder that holds it)"
            ) from None
        raise ValueError(f"--model {spec}: importing {module} failed: {e}") from None
    except Exception as e:  # the user's module raised while importing: say what, in one line
        first = (str(e).strip().splitlines() or [""])[0]
        raise ValueError(f"--model {spec}: importing {module} raised {type(e).__name__}: {first[:200]}") from None


def load_factory(spec: str) -> Callable[..., nn.Module]:
    """The callable named by ``package.module:factory``, checked to take (num_classes, in_channels)."""
    m = _SPEC.match(spec)
    if not m:
        raise ValueError(
            f"--model {spec!r}: give {I3D} or package.module:factory (factory(num_classes, in_channels) -> nn.Module)"
        )
    obj: Any = _import(m["module"], spec)
    for part in m["attr"].split("."):
        if not hasattr(obj, part):
            raise ValueError(f"--model {spec}: {m['module']} has no attribute {m['attr']!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"--model {spec}: {m['attr']} is a {type(obj).__name__}, not a callable factory")
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return obj  # a builtin without a signature: its call will tell
    try:
        sig.bind(1, 1)
    except TypeError:
        raise ValueError(
            f"--model {spec}: factory{sig} cannot be called as factory(num_classes, in_channels)"
        ) from None
    return obj


def build_model(spec: str, num_classes: int, in_channels: int) -> nn.Module:
    """``factory(num_classes, in_channels)``, checked to be an ``nn.Module``."""
    factory = load_factory(spec)
    try:
        model = factory(num_classes, in_channels)
    except Exception as e:
        first = (str(e).strip().splitlines() or [""])[0]
        raise ValueError(
            f"--model {spec}: factory({num_classes}, {in_channels}) raised {type(e).__name__}: {first[:200]}"
        ) from None
    if not isinstance(model, nn.Module):
        raise ValueError(f"--model {spec}: factory returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def model_from_checkpoint(blob: Mapping[str, Any]) -> nn.Module:
    """The trained model of a checkpoint, in eval mode: flowprep's I3D or the factory it names."""
    spec = blob.get("model_factory", I3D)
    if spec == I3D:
        from flowprep.train.classifier import classifier_from_checkpoint

        return classifier_from_checkpoint(blob)
    cfg = blob["model_config"]
    model = build_model(spec, int(cfg["num_classes"]), int(cfg["in_channels"]))
    model.load_state_dict(blob["model"])
    return model.eval()


def to_device(model: nn.Module, device: torch.device, channels_last: bool) -> None:
    """Move ``model`` to ``device``; with ``channels_last``, each 4D / 5D weight in channels-last
    memory of its own rank (``Module.to(memory_format=)`` takes one format and refuses mixed 2D/3D models)."""
    model.to(device)
    if channels_last:
        for t in (*model.parameters(), *model.buffers()):
            if t.ndim in (4, 5):
                t.data = t.data.contiguous(memory_format=torch.channels_last if t.ndim == 4 else torch.channels_last_3d)
