"""Classify one video with I3D, RGB alone or two-stream: decode, (TV-L1 flow,) centre crop.

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

The input is made as for the stores a checkpoint was trained on (``store_settings``, recorded by
``flowprep train``): decode rate and short side, flow preset, TV-L1 parameters and bound; the
options ``--fps``, ``--short-side``, ``--preset``, ``--flow-param`` override them.  DeepMind's
models get 25 fps, short side 256, centre crop 224 and flowprep's default TV-L1.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from flowprep.console import usage_error
from flowprep.dataset.decode import DecodeConfig, decode_blocks
from flowprep.flow.api import FLOW_BOUND, block_flow_int8, pick_backend, rgb_to_gray
from flowprep.flow.presets import PRESETS, get_preset, parse_flow_params
from flowprep.models.cache import weights_cache_dir
from flowprep.models.i3d import I3DConfig
from flowprep.models.kinetics_i3d import read_labels
from flowprep.models.weights import CONVERTED_FILES, FIRST_CONV, pretrained_labels, pretrained_state_dict
from flowprep.train.classifier import Classifier, classifier_from_checkpoint, load_checkpoint
from flowprep.train.data import CHANNELS, centre_crop, flow_thw2_to_cthw, rgb_thwc_to_cthw

DEFAULT_WEIGHTS = {
    "rgb": "kinetics400-rgb",
    "two-stream-rgb": "kinetics400-rgb-imagenet",
    "flow": "kinetics400-flow-imagenet",
}
LABELS_HINT = (
    "give --labels FILE: DeepMind's data/label_map_600.txt, or a Kinetics-600 annotation CSV "
    "(`flowprep manifests fetch kinetics600`)"
)


class StreamModel(NamedTuple):
    model: Classifier
    labels: list[str]
    crop: int
    settings: dict[str, Any] | None  # content settings of the stores it was trained on; None: pretrained / unknown


def load_stream(
    weights: str, stream: str, cache_dir: Path | None = None, labels_file: Path | None = None
) -> StreamModel:
    """A pretrained name (``CONVERTED_FILES``) or a checkpoint of ``flowprep train``, with what it
    was trained on; ``stream`` (``rgb`` or ``flow``) must be what the weights are for."""
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
        return StreamModel(model.eval(), labels, 224, None)
    blob = load_checkpoint(weights)
    if blob["stream"] != stream:
        raise ValueError(f"{weights} is a {blob['stream']} checkpoint; it cannot run the {stream} stream")
    return StreamModel(
        classifier_from_checkpoint(blob), list(blob["classes"]), int(blob["clip"]["crop"]), blob.get("store_settings")
    )


def load_stream_model(
    weights: str, stream: str, cache_dir: Path | None = None, labels_file: Path | None = None
) -> tuple[Classifier, list[str], int]:
    """(model, class names, crop): ``load_stream`` without the settings."""
    return tuple(load_stream(weights, stream, cache_dir, labels_file)[:3])  # type: ignore[return-value]


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


def window_flow_int8(
    frames_thwc: np.ndarray,
    backend: str = "auto",
    device: str | None = None,
    *,
    bound: float = FLOW_BOUND,
    progress: bool = False,
    **params,
) -> np.ndarray:
    """TV-L1 flow of consecutive frames, quantized as stores keep it (``bound`` px): int8 (T-1, H, W, 2).

    Pairs go to the solver in batches of 16 so a bar can count them (pairs are independent:
    batching does not change the result)."""
    from tqdm import tqdm

    backend = pick_backend(backend, device)
    gray = rgb_to_gray(frames_thwc)
    with tqdm(total=len(gray) - 1, unit="pair", desc="flow", disable=not progress, leave=False) as bar:
        return block_flow_int8(
            gray,
            backend=backend,
            device=device if backend == "torch" else None,
            bound=bound,
            batch=16,
            progress=bar.update,
            **params,
        )


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
    rgb_model: Classifier,
    flow_model: Classifier,
    frames_thwc: np.ndarray,
    labels: list[str],
    *,
    crop: int = 224,
    device: torch.device = torch.device("cpu"),
    flow_backend: str = "auto",
    bound: float = FLOW_BOUND,
    progress: bool = False,
    **flow_params,
) -> Prediction:
    """RGB, flow and fused logits of ``frames_thwc`` (T >= 2 frames -> T - 1 time steps each).

    Time step t is RGB frame t and the flow from frame t to t + 1, as ``flowprep train`` pairs them.
    """
    if len(frames_thwc) < 2:
        raise ValueError(f"two-stream needs at least 2 frames for flow, got {len(frames_thwc)}")
    flow_dev = str(device) if device.type == "cuda" else None
    flow = window_flow_int8(frames_thwc, flow_backend, flow_dev, bound=bound, progress=progress, **flow_params)
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


@dataclasses.dataclass(frozen=True, kw_only=True)
class InputSettings:
    """How ``predict`` makes a model's input: what ``flowprep run`` did for the training stores."""

    fps: float = 25.0
    short_side: int = 256
    preset: str | None = None
    flow_params: dict[str, Any] = dataclasses.field(
        default_factory=dict
    )  # TV-L1 parameters (all of them, or overrides)
    bound: float = FLOW_BOUND
    source: str = "defaults"  # where they came from, for the console


def input_settings(args: argparse.Namespace, trained: dict[str, Any] | None, where: str) -> InputSettings:
    """The checkpoint's store settings (``trained``), with the command line's options on top."""
    dec, flow = (trained or {}).get("decode") or {}, (trained or {}).get("flow") or {}
    params = dict(flow.get("params") or {})
    preset = flow.get("preset")
    if args.preset is not None:  # a named preset replaces the trained parameters
        preset, params = args.preset, dict(get_preset(args.preset).params)
    params.update(parse_flow_params(args.flow_param or []))
    side = args.short_side or int(dec.get("short_side") or 256)
    given = [
        o
        for o, v in (
            ("--short-side", args.short_side),
            ("--fps", args.fps),
            ("--preset", args.preset),
            ("--flow-param", args.flow_param),
        )
        if v
    ]
    source = (f"the stores {where} was trained on" if trained else "defaults") + (
        f", {', '.join(given)} given" if given else ""
    )
    return InputSettings(
        fps=float(args.fps or dec.get("fps") or 25.0),
        short_side=side,
        preset=preset,
        flow_params=params,
        bound=float(flow.get("bound_px") or FLOW_BOUND),
        source=source,
    )


def describe_flow(st: InputSettings) -> str:
    """``preset preview with nscales=1, warps=1, bound 20 px``: the preset and what differs from it."""
    from flowprep.flow.api import resolve_params
    from flowprep.flow.presets import preset_params

    base = resolve_params(preset_params(st.preset))
    mine = resolve_params(st.flow_params)
    extra = ", ".join(f"{k}={mine[k]:g}" for k in mine if mine[k] != base[k])
    return f"preset {st.preset or 'i3d (default)'}" + (f" with {extra}" if extra else "") + f", bound {st.bound:g} px"


def _decode(path: str, cfg: DecodeConfig, start: float, want: int, progress: bool) -> np.ndarray:
    """Up to ``want`` frames from ``start`` s, with a bar (only that stretch is decoded)."""
    from tqdm import tqdm

    from flowprep.dataset.probe import file_seconds

    end = start + (want + 2) / cfg.fps  # a little more than needed (frame timing)
    seconds = file_seconds(Path(path))  # the header's duration: a bar total that a short video reaches
    total = want if seconds is None else max(1, min(want, round((seconds - start) * cfg.fps)))
    blocks, n = [], 0
    with tqdm(total=total, unit="frame", desc="decode", disable=not progress, leave=False) as bar:
        for block in decode_blocks(path, cfg, start, end):
            blocks.append(block[: want - n])
            bar.update(len(blocks[-1]))
            n += len(blocks[-1])
            if n >= want:
                break
    return np.concatenate(blocks)


def main(args: argparse.Namespace) -> int:
    _check_args(args)
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    progress = not args.no_progress
    rgb_weights = args.weights or DEFAULT_WEIGHTS["two-stream-rgb" if args.two_stream else "rgb"]
    flow_weights = args.flow_weights or DEFAULT_WEIGHTS["flow"]
    rgb, flow = _load_streams(args, rgb_weights, flow_weights)
    st = _stream_input(args, rgb, rgb_weights, flow, flow_weights)
    cfg = DecodeConfig(fps=st.fps, short_side=st.short_side)
    want = args.frames + (1 if args.two_stream else 0)  # flow needs one frame past the window
    frames = _decode(str(Path(args.video).resolve()), cfg, args.start, want, progress)
    crop = rgb.crop
    print(
        f"input as {st.source}: {st.fps:g} fps, short side {st.short_side}"
        + (f"; flow: {describe_flow(st)}" if flow is not None else "")
    )
    where = f"{args.video}: {{n}} frames from {args.start:g} s at {st.fps:g} fps, {frames.shape[1]}x{frames.shape[2]} (HxW), centre crop {crop}"
    if flow is None:
        logits = stream_logits(rgb.model, rgb_clip(frames, crop), device)
        print(where.format(n=len(frames)))
        print_top(f"rgb ({rgb_weights})", logits, rgb.labels, args.top)
        return 0
    result = two_stream(
        rgb.model,
        flow.model,
        frames,
        rgb.labels,
        crop=crop,
        device=device,
        flow_backend=args.flow_backend,
        bound=st.bound,
        progress=progress,
        **st.flow_params,
    )
    print(
        where.format(n=result.frames)
        + f"; TV-L1 flow ({pick_backend(args.flow_backend)} backend) of {result.frames} frame pairs"
    )
    for stream, name in (("rgb", rgb_weights), ("flow", flow_weights), ("fused", "sum of logits")):
        print_top(f"{stream} ({name})", result.logits[stream], rgb.labels, args.top)
    return 0


def _check_args(args: argparse.Namespace) -> None:
    if args.frames < 1 or args.top < 1:
        raise ValueError("--frames and --top must be >= 1")
    if not Path(args.video).is_file():
        raise ValueError(f"{args.video}: no such file")
    if args.flow_weights and not args.two_stream:
        raise ValueError("--flow-weights is for --two-stream")
    if (args.preset or args.flow_param) and not args.two_stream:
        raise ValueError("--preset and --flow-param set the flow of --two-stream")


def _load_streams(
    args: argparse.Namespace, rgb_weights: str, flow_weights: str
) -> tuple[StreamModel, StreamModel | None]:
    """The RGB model and, with --two-stream, the flow model (checked to share classes and crop)."""
    cache_dir = weights_cache_dir(args.cache_dir, os.environ)
    labels_file = Path(args.labels) if args.labels else None
    rgb = load_stream(rgb_weights, "rgb", cache_dir, labels_file)
    flow = load_stream(flow_weights, "flow", cache_dir, labels_file) if args.two_stream else None
    if flow is not None and flow.labels != rgb.labels:
        raise ValueError(f"{rgb_weights} and {flow_weights} have different class lists: their logits cannot be fused")
    if flow is not None and flow.crop != rgb.crop:
        raise ValueError(
            f"{rgb_weights} was trained on {rgb.crop} px crops and {flow_weights} on {flow.crop}: give models of one crop"
        )
    return rgb, flow


def _stream_input(
    args: argparse.Namespace, rgb: StreamModel, rgb_weights: str, flow: StreamModel | None, flow_weights: str
) -> InputSettings:
    """How to decode (and make flow): as the flow stream's stores were made, else the RGB stream's."""
    # the flow stream's stores say how its flow was made; both streams see the same decoded frames
    trained, where = (
        (flow.settings, flow_weights) if flow is not None and flow.settings else (rgb.settings, rgb_weights)
    )
    st = input_settings(args, trained, where)
    if flow is not None and rgb.settings and flow.settings:
        from flowprep.store.fingerprint import differences

        diff = [d for d in differences(rgb.settings.get("decode") or {}, flow.settings.get("decode") or {})]
        if diff and not (args.short_side or args.fps):
            print(
                f"note: the streams were trained on stores decoded differently ({'; '.join(diff)}); using the flow stream's"
            )
    return st


# --- command line (registered in flowprep.cli.main) -----------------------------------------


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flowprep predict", description=__doc__.splitlines()[0], add_help=add_help)
    add_arguments(parser)
    return parser


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("video", help="a video file (any format ffmpeg reads)")
    p.add_argument(
        "--weights",
        help="RGB stream: kinetics400-rgb (default), kinetics400-rgb-imagenet (default with "
        "--two-stream), kinetics600-rgb, or an RGB checkpoint of flowprep train",
    )
    p.add_argument(
        "--two-stream", action="store_true", help="also compute the window's TV-L1 flow, run the flow stream, fuse"
    )
    p.add_argument(
        "--flow-weights",
        help="flow stream: kinetics400-flow-imagenet (default), kinetics400-flow, or a flow checkpoint",
    )
    p.add_argument("--flow-backend", default="auto", help="TV-L1 backend: auto (torch), torch, opencv")
    p.add_argument(
        "--preset",
        choices=tuple(PRESETS),
        metavar="NAME",
        help=f"flow preset, one of {', '.join(PRESETS)} (default: the one the flow checkpoint's stores used)",
    )
    p.add_argument(
        "--flow-param",
        action="append",
        metavar="KEY=VALUE",
        help="a TV-L1 parameter over the checkpoint's (repeat), e.g. warps=5 (default: the parameters of the stores "
        "a checkpoint was trained on, recorded in it; DeepMind's models: flowprep's defaults)",
    )
    p.add_argument(
        "--short-side", type=int, help="decode the smallest side to N px (default: the checkpoint's stores', else 256)"
    )
    p.add_argument("--fps", type=float, help="decode frame rate (default: the checkpoint's stores', else 25)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (decode frames, flow pairs)")
    p.add_argument(
        "--labels",
        help="class names for a model imported without them (kinetics600-rgb): label_map_600.txt "
        "or a Kinetics annotation CSV",
    )
    p.add_argument("--frames", type=int, default=250, help="use up to N frames from --start (default: 250)")
    p.add_argument("--start", type=float, default=0.0, help="seconds into the video (default: 0)")
    p.add_argument("--top", type=int, default=5, help="classes to print per stream (default: 5)")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:N (also for the flow)")
    p.add_argument(
        "--cache-dir", help="pretrained weights cache (default: $FLOWPREP_CACHE/weights or ~/.cache/flowprep/weights)"
    )


def command(args: argparse.Namespace) -> int:
    from flowprep.dataset.decode import DecodeError
    from flowprep.models.weights import WeightsError

    try:
        return main(args)
    except (DecodeError, ValueError, OSError, WeightsError) as e:
        return usage_error(str(e))


if __name__ == "__main__":  # python -m flowprep.train.predict ... (the same as flowprep predict ...)
    sys.exit(command(get_args_parser().parse_args()))
