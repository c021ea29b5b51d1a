"""Classify one video with an RGB I3D: decode (25 fps, short side 256), centre crop 224, [-1, 1].

    flowprep predict bikes.mp4                          # DeepMind's Kinetics-400 RGB I3D
    flowprep predict clip.mp4 --weights runs/rgb/checkpoint.pt

Uses up to ``--frames`` frames from ``--start`` seconds (only that stretch is decoded), as one
clip: I3D is convolutional in time, so the logits are the mean over the whole stretch.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import torch

from flowprep.console import usage_error
from flowprep.dataset.decode import DecodeConfig, decode_video
from flowprep.models.i3d import I3DConfig
from flowprep.models.weights import fetch_kinetics400_rgb, kinetics400_labels
from flowprep.train.classifier import Classifier, classifier_from_checkpoint, load_checkpoint
from flowprep.train.data import centre_crop, rgb_thwc_to_cthw


def load_rgb_model(weights: str, cache_dir: Path | None = None) -> tuple[Classifier, list[str], int]:
    """(model, class names, crop) for ``kinetics400-rgb`` or an RGB checkpoint of ``flowprep train``."""
    if weights == "kinetics400-rgb":
        model = Classifier(I3DConfig())
        model.load_state_dict(fetch_kinetics400_rgb(cache_dir))
        return model.eval(), kinetics400_labels(), 224
    blob = load_checkpoint(weights)
    if blob["stream"] != "rgb":
        raise ValueError(f"{weights} is a {blob['stream']} checkpoint; predict runs the RGB stream")
    return classifier_from_checkpoint(blob), list(blob["classes"]), int(blob["clip"]["crop"])


@torch.inference_mode()
def predict(model: Classifier, frames_thwc: np.ndarray, crop: int, device: torch.device) -> torch.Tensor:
    """Class probabilities (N,) for uint8 frames (T, H, W, 3), centre-cropped to ``crop``."""
    _, h, w, _ = frames_thwc.shape
    if min(h, w) < crop:
        raise ValueError(f"frames are {h}x{w}, smaller than the {crop} px crop")
    y, x = centre_crop(h, w, crop)
    clip = rgb_thwc_to_cthw(frames_thwc, y, x, crop, flip=False)[None].to(device)
    return model.to(device)(clip)[0].float().softmax(0).cpu()


def main(args: argparse.Namespace) -> int:
    if args.frames < 1 or args.top < 1:
        raise ValueError("--frames and --top must be >= 1")
    if not Path(args.video).is_file():
        raise ValueError(f"{args.video}: no such file")
    cache_dir = Path(args.cache_dir) if args.cache_dir else (
        Path(os.environ["FLOWPREP_CACHE"]) / "weights" if os.environ.get("FLOWPREP_CACHE") else None
    )
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    model, labels, crop = load_rgb_model(args.weights, cache_dir)
    cfg = DecodeConfig(fps=25.0, short_side=256)
    # decode a little more than needed (frame timing), then keep exactly --frames
    end = args.start + (args.frames + 2) / cfg.fps
    frames = decode_video(str(Path(args.video).resolve()), cfg, args.start, end)[: args.frames]
    probs = predict(model, frames, crop, device)
    top = probs.topk(min(args.top, len(labels)))
    print(f"{args.video}: {len(frames)} frames from {args.start:g} s at 25 fps, {frames.shape[1]}x{frames.shape[2]}, centre crop {crop}")
    for p, i in zip(top.values.tolist(), top.indices.tolist(), strict=True):
        print(f"  {p:6.3f}  {labels[i]}")
    return 0


# --- command line (registered in flowprep.cli.main) -----------------------------------------


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flowprep predict", description=__doc__.splitlines()[0], add_help=add_help)
    add_arguments(parser)
    return parser


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("video", help="a video file (any format ffmpeg reads)")
    p.add_argument("--weights", default="kinetics400-rgb", help="kinetics400-rgb (default) or an RGB checkpoint of flowprep train")
    p.add_argument("--frames", type=int, default=250, help="use up to N frames (25 fps) from --start (default: 250)")
    p.add_argument("--start", type=float, default=0.0, help="seconds into the video (default: 0)")
    p.add_argument("--top", type=int, default=5, help="classes to print (default: 5)")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:N")
    p.add_argument("--cache-dir", help="pretrained weights cache (default: $FLOWPREP_CACHE/weights or ~/.cache/flowprep/weights)")


def command(args: argparse.Namespace) -> int:
    from flowprep.dataset.decode import DecodeError

    try:
        return main(args)
    except (DecodeError, ValueError, OSError) as e:
        return usage_error(str(e))


if __name__ == "__main__":  # python -m flowprep.train.predict ... (the same as flowprep predict ...)
    sys.exit(command(get_args_parser().parse_args()))
