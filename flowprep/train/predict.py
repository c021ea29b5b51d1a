"""Classify one video with I3D, RGB alone or two-stream: decode (25 fps, short side 256), centre crop 224.

    flowprep predict bikes.mp4                          # DeepMind's Kinetics-400 RGB I3D
    flowprep predict bikes.mp4 --two-stream             # + TV-L1 flow of the window, flow I3D, fused
    flowprep predict clip.mp4 --weights runs/rgb/checkpoint.pt [--flow-weights runs/flow/checkpoint.pt]

Uses up to ``--frames`` frames from ``--start`` seconds (only that stretch is decoded), as one
clip: I3D is convolutional in time, so the logits are the mean over the whole stretch.

``--two-stream`` does what DeepMind's ``evaluate_sample.py`` does with ``--eval_type joint``:
the flow stream gets the TV-L1 flow of the same window (computed here on the decoded frames, the
torch backend on the GPU when there is one; truncated to 20 px, scaled to [-1, 1] and quantized
exactly as ``flowprep run`` stores it, so a model trained on flowprep stores sees what it was
trained on), the fused logits are the sum of the two streams' logits and the fused
probabilities their softmax.  Defaults then are DeepMind's (``imagenet_pretrained=True``):
``kinetics400-rgb-imagenet`` and ``kinetics400-flow-imagenet``, imported with ``flowprep weights
import``.  Each stream prints its top classes with probability and logit, as evaluate_sample does.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

import numpy as np
import torch

from flowprep.console import usage_error
from flowprep.dataset.decode import DecodeConfig, decode_video
from flowprep.flow.api import compute_flow, pick_backend, quantize_flow, rgb_to_gray
from flowprep.models.cache import weights_cache_dir
from flowprep.models.i3d import I3DConfig
from flowprep.models.kinetics_i3d import read_labels
from flowprep.models.weights import CONVERTED_FILES, FIRST_CONV, pretrained_labels, pretrained_state_dict
from flowprep.train.classifier import Classifier, classifier_from_checkpoint, load_checkpoint
from flowprep.train.data import CHANNELS, centre_crop, flow_thw2_to_cthw, rgb_thwc_to_cthw

DEFAULT_WEIGHTS = {"rgb": "kinetics400-rgb", "two-stream-rgb": "kinetics400-rgb-imagenet", "flow": "kinetics400-flow-imagenet"}
LABELS_HINT = (
    "give --labels FILE: DeepMind's data/label_map_600.txt, or a Kinetics-600 annotation CSV "
    "(`flowprep manifests fetch kinetics600`)"
)


def load_stream_model(
    weights: str, stream: str, cache_dir: Path | None = None, labels_file: Path | None = None
) -> tuple[Classifier, list[str], int]:
    """(model, class names, crop) for a pretrained name (``CONVERTED_FILES``) or a checkpoint of
    ``flowprep train``; ``stream`` (``rgb`` or ``flow``) must be what the weights are for."""
    if weights in CONVERTED_FILES:
        state = pretrained_state_dict(weights, cache_dir)
        channels, n_classes = state[FIRST_CONV].shape[1], state["logits.conv.bias"].shape[0]
        if channels != CHANNELS[stream]:
            kind = {3: "an RGB", 2: "a flow"}.get(channels, f"a {channels}-channel")
            raise ValueError(f"{weights} is {kind} model; it cannot run the {stream} stream")
        model = Classifier(I3DConfig(num_classes=n_classes, in_channels=channels))
        model.load_state_dict(state)
        labels = read_labels(labels_file, n_classes) if labels_file else pretrained_labels(weights, cache_dir)
        if labels is None:
            raise ValueError(f"{weights} was imported without its class names: {LABELS_HINT}")
        return model.eval(), labels, 224
    blob = load_checkpoint(weights)
    if blob["stream"] != stream:
        raise ValueError(f"{weights} is a {blob['stream']} checkpoint; it cannot run the {stream} stream")
    return classifier_from_checkpoint(blob), list(blob["classes"]), int(blob["clip"]["crop"])


def load_rgb_model(weights: str, cache_dir: Path | None = None) -> tuple[Classifier, list[str], int]:
    """(model, class names, crop) of an RGB stream: a pretrained name or an RGB training checkpoint."""
    return load_stream_model(weights, "rgb", cache_dir)


@torch.inference_mode()
def predict(model: Classifier, frames_thwc: np.ndarray, crop: int, device: torch.device) -> torch.Tensor:
    """Class probabilities (N,) for uint8 frames (T, H, W, 3), centre-cropped to ``crop``."""
    return stream_logits(model, rgb_clip(frames_thwc, crop), device).softmax(0)


def rgb_clip(frames_thwc: np.ndarray, crop: int) -> torch.Tensor:
    """uint8 frames (T, H, W, 3) -> (1, 3, T, crop, crop) in [-1, 1], centre crop."""
    _, h, w, _ = frames_thwc.shape
    if min(h, w) < crop:
        raise ValueError(f"frames are {h}x{w}, smaller than the {crop} px crop")
    y, x = centre_crop(h, w, crop)
    return rgb_thwc_to_cthw(frames_thwc, y, x, crop, flip=False)[None]


def window_flow_int8(frames_thwc: np.ndarray, backend: str = "auto", device: str | None = None, **params) -> np.ndarray:
    """TV-L1 flow of consecutive frames, quantized as stores keep it: int8 (T-1, H, W, 2)."""
    backend = pick_backend(backend, device)
    flow_px = compute_flow(rgb_to_gray(frames_thwc), backend=backend, device=device if backend == "torch" else None, **params)
    return quantize_flow(flow_px)


def flow_clip(flow_thw2: np.ndarray, crop: int) -> torch.Tensor:
    """int8 flow (T, H, W, 2) -> (1, 2, T, crop, crop) in [-1, 1], centre crop."""
    _, h, w, _ = flow_thw2.shape
    y, x = centre_crop(h, w, crop)
    return flow_thw2_to_cthw(flow_thw2, y, x, crop, flip=False)[None]


@torch.inference_mode()
def stream_logits(model: Classifier, clip_bcthw: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Logits (N,) of one clip, in float32 on the CPU."""
    return model.to(device)(clip_bcthw.to(device))[0].float().cpu()


@dataclasses.dataclass(frozen=True)
class Prediction:
    """Logits per stream (``rgb``, ``flow``, ``fused`` = their sum) and the class names."""

    logits: dict[str, torch.Tensor]
    labels: list[str]
    frames: int  # time steps of the clip

    def probabilities(self, stream: str) -> torch.Tensor:
        return self.logits[stream].softmax(0)


def two_stream(
    rgb_model: Classifier, flow_model: Classifier, frames_thwc: np.ndarray, labels: list[str], *,
    crop: int = 224, device: torch.device = torch.device("cpu"), flow_backend: str = "auto", **flow_params,
) -> Prediction:
    """RGB, flow and fused logits of ``frames_thwc`` (T >= 2 frames -> T - 1 time steps each).

    Time step t is RGB frame t and the flow from frame t to t + 1, as ``flowprep train`` pairs them.
    """
    if len(frames_thwc) < 2:
        raise ValueError(f"two-stream needs at least 2 frames for flow, got {len(frames_thwc)}")
    flow_dev = str(device) if device.type == "cuda" else None
    flow = window_flow_int8(frames_thwc, flow_backend, flow_dev, **flow_params)
    rgb = stream_logits(rgb_model, rgb_clip(frames_thwc[: len(flow)], crop), device)
    fl = stream_logits(flow_model, flow_clip(flow, crop), device)
    return Prediction({"rgb": rgb, "flow": fl, "fused": rgb + fl}, labels, len(flow))


def print_top(title: str, logits: torch.Tensor, labels: list[str], k: int) -> None:
    """One stream's top-k as DeepMind's evaluate_sample.py prints them: probability, logit, class."""
    probs = logits.softmax(0)
    top = probs.topk(min(k, len(labels)))
    print(f"{title}: norm of logits {float(logits.norm()):.6f}")
    print(f"  {'prob':>8} {'logit':>9}  class")
    for p, i in zip(top.values.tolist(), top.indices.tolist(), strict=True):
        print(f"  {p:8.5f} {float(logits[i]):9.4f}  {labels[i]}")


def parse_flow_params(items: list[str]) -> dict[str, int | float | bool]:
    """``["warps=2", "scale_step=0.5"]`` -> ``{"warps": 2, "scale_step": 0.5}`` (checked by compute_flow)."""
    out: dict[str, int | float | bool] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--flow-param {item!r}: expected KEY=VALUE, e.g. warps=5")
        v = value.strip()
        if v.lower() in ("true", "false"):
            out[key.strip()] = v.lower() == "true"
            continue
        try:
            out[key.strip()] = int(v)
        except ValueError:
            try:
                out[key.strip()] = float(v)
            except ValueError:
                raise ValueError(f"--flow-param {item!r}: {v!r} is not a number or true/false") from None
    return out


def main(args: argparse.Namespace) -> int:
    if args.frames < 1 or args.top < 1:
        raise ValueError("--frames and --top must be >= 1")
    if not Path(args.video).is_file():
        raise ValueError(f"{args.video}: no such file")
    if args.flow_weights and not args.two_stream:
        raise ValueError("--flow-weights is for --two-stream")
    cache_dir = weights_cache_dir(args.cache_dir, os.environ)
    labels_file = Path(args.labels) if args.labels else None
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    rgb_weights = args.weights or DEFAULT_WEIGHTS["two-stream-rgb" if args.two_stream else "rgb"]
    model, labels, crop = load_stream_model(rgb_weights, "rgb", cache_dir, labels_file)
    cfg = DecodeConfig(fps=25.0, short_side=256)
    # flow needs one frame past the window; decode a little more than needed (frame timing)
    want = args.frames + (1 if args.two_stream else 0)
    end = args.start + (want + 2) / cfg.fps
    frames = decode_video(str(Path(args.video).resolve()), cfg, args.start, end)[:want]
    where = f"{args.video}: {{n}} frames from {args.start:g} s at 25 fps, {frames.shape[1]}x{frames.shape[2]}, centre crop {crop}"
    if not args.two_stream:
        logits = stream_logits(model, rgb_clip(frames, crop), device)
        print(where.format(n=len(frames)))
        print_top(f"rgb ({rgb_weights})", logits, labels, args.top)
        return 0
    flow_weights = args.flow_weights or DEFAULT_WEIGHTS["flow"]
    flow_model, flow_labels, flow_crop = load_stream_model(flow_weights, "flow", cache_dir, labels_file)
    if flow_labels != labels:
        raise ValueError(f"{rgb_weights} and {flow_weights} have different class lists: their logits cannot be fused")
    if flow_crop != crop:
        raise ValueError(f"{rgb_weights} was trained on {crop} px crops and {flow_weights} on {flow_crop}: give models of one crop")
    params = parse_flow_params(args.flow_param or [])
    result = two_stream(model, flow_model, frames, labels, crop=crop, device=device, flow_backend=args.flow_backend, **params)
    print(where.format(n=result.frames) + f"; TV-L1 flow ({pick_backend(args.flow_backend)} backend) of {result.frames} frame pairs")
    for stream, name in (("rgb", rgb_weights), ("flow", flow_weights), ("fused", "sum of logits")):
        print_top(f"{stream} ({name})", result.logits[stream], labels, args.top)
    return 0


# --- command line (registered in flowprep.cli.main) -----------------------------------------


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flowprep predict", description=__doc__.splitlines()[0], add_help=add_help)
    add_arguments(parser)
    return parser


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("video", help="a video file (any format ffmpeg reads)")
    p.add_argument("--weights", help="RGB stream: kinetics400-rgb (default), kinetics400-rgb-imagenet (default with "
                   "--two-stream), kinetics600-rgb, or an RGB checkpoint of flowprep train")
    p.add_argument("--two-stream", action="store_true", help="also compute the window's TV-L1 flow, run the flow stream, fuse")
    p.add_argument("--flow-weights", help="flow stream: kinetics400-flow-imagenet (default), kinetics400-flow, or a flow checkpoint")
    p.add_argument("--flow-backend", default="auto", help="TV-L1 backend: auto (torch), torch, opencv")
    p.add_argument("--flow-param", action="append", metavar="KEY=VALUE",
                   help="a TV-L1 parameter (repeat; default: the stores' defaults, e.g. warps=5 scale_step=0.5): use the "
                   "[flow.params] of the recipe that built the stores a checkpoint was trained on")
    p.add_argument("--labels", help="class names for a model imported without them (kinetics600-rgb): label_map_600.txt "
                   "or a Kinetics annotation CSV")
    p.add_argument("--frames", type=int, default=250, help="use up to N frames (25 fps) from --start (default: 250)")
    p.add_argument("--start", type=float, default=0.0, help="seconds into the video (default: 0)")
    p.add_argument("--top", type=int, default=5, help="classes to print per stream (default: 5)")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:N (also for the flow)")
    p.add_argument("--cache-dir", help="pretrained weights cache (default: $FLOWPREP_CACHE/weights or ~/.cache/flowprep/weights)")


def command(args: argparse.Namespace) -> int:
    from flowprep.dataset.decode import DecodeError
    from flowprep.models.weights import WeightsError

    try:
        return main(args)
    except (DecodeError, ValueError, OSError, WeightsError) as e:
        return usage_error(str(e))


if __name__ == "__main__":  # python -m flowprep.train.predict ... (the same as flowprep predict ...)
    sys.exit(command(get_args_parser().parse_args()))
