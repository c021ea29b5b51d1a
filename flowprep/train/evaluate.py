"""Evaluate trained streams on videos: per stream and fused (sum of logits), as DeepMind did.

    flowprep evaluate --store out/ucf101.zarr --rgb runs/rgb/checkpoint.pt --flow runs/flow/checkpoint.pt

Each stream is sampled by the evaluation side of the sampler it was trained with (its
checkpoint's ``sampling``): dense clips on the whole video (``--clip-len 0``, the default: I3D is
fully convolutional in time) or the mean over consecutive windows of ``--clip-len`` steps; TSN's
25 segments, two-stream's 25 samples, SlowFast's 10 clips (``--views`` changes the count), each
video's logits the mean over its views.  Streams with the same sampler share their reads (same
centre crop).  Fused logits are the sum of the streams' video logits.  Writes ``report.json`` (top-1, top-k with k = min(5, classes), per-class accuracy, confusion
matrix, per-video predictions) and ``confusion.png``; prints a summary.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from flowprep.atomic import default_mode, write_atomic, write_json
from flowprep.console import usage_error
from flowprep.train.classifier import load_checkpoint
from flowprep.train.data import VideoClips, clips_to_model, collate_clips
from flowprep.train.plugins import model_from_checkpoint, to_device
from flowprep.train.sampling import ClipSampler, DenseEval, consensus, eval_sampler, to_memory_format


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flowprep evaluate", description=__doc__.splitlines()[0], add_help=add_help)
    add_arguments(parser)
    return parser


@torch.inference_mode()
def evaluate(
    models: dict[str, torch.nn.Module],
    loader: DataLoader,
    n_videos: int,
    n_classes: int,
    *,
    device: torch.device,
    amp: bool,
    channels_last: bool = False,
    progress: bool = False,
) -> dict[str, torch.Tensor]:
    """Video logits per stream: (n_videos, n_classes), the mean over each video's samples, each
    sample's logits the mean over its views (the loader's ``VideoClips`` sampler shapes the input)."""
    from tqdm import tqdm

    sampler: ClipSampler = getattr(loader.dataset, "sampler", DenseEval())
    sums = {s: torch.zeros(n_videos, n_classes, dtype=torch.float64) for s in models}
    counts = torch.zeros(n_videos, dtype=torch.float64)
    whole = loader.batch_size == 1  # whole videos (or one many-view sample): one per batch
    bar = tqdm(
        loader,
        total=len(loader),
        unit="video" if whole else "batch",
        desc=f"{'+'.join(models)} {'videos' if whole else 'clips'}",
        disable=not progress,
        leave=False,
    )
    for batch in bar:
        for stream, model in models.items():
            x = to_memory_format(
                sampler.model_input(clips_to_model(batch, stream, device)), channels_last
            )  # uint8/int8 until here
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
                logits = consensus(model(x).float(), batch[stream].shape[1]).cpu().double()
            sums[stream].index_add_(0, batch["video"], logits)
        counts.index_add_(0, batch["video"], torch.ones(len(batch["video"]), dtype=torch.float64))
    return {s: v / counts.clamp(min=1)[:, None] for s, v in sums.items()}


def metrics(logits: torch.Tensor, labels: torch.Tensor, classes: list[str]) -> dict[str, Any]:
    """Top-1, top-k (k = min(5, classes)), per-class accuracy and the confusion matrix (rows: truth)."""
    k = min(5, len(classes))
    top = logits.topk(k, dim=1).indices
    pred = top[:, 0]
    n = len(classes)
    confusion = torch.zeros(n, n, dtype=torch.int64)
    confusion.index_put_((labels, pred), torch.ones_like(labels), accumulate=True)
    per_class = {
        c: (confusion[i, i].item() / confusion[i].sum().item() if confusion[i].sum() else None)
        for i, c in enumerate(classes)
    }
    return {
        "top1": (pred == labels).double().mean().item(),
        f"top{k}": (top == labels[:, None]).any(1).double().mean().item(),
        "per_class": per_class,
        "confusion": confusion.tolist(),
    }


def format_per_class(streams: dict[str, dict[str, Any]], classes: list[str], confusion_of: str, limit: int = 60) -> str:
    """Per-class accuracy of every stream (and the videos per class), one row per class; above
    ``limit`` classes only the ``limit`` worst of ``confusion_of`` (report.json has them all)."""
    counts = [sum(row) for row in streams[confusion_of]["confusion"]]
    order = list(range(len(classes)))
    title = "per-class accuracy"
    if len(classes) > limit:
        acc = streams[confusion_of]["per_class"]
        order = sorted(
            order, key=lambda i: (acc[classes[i]] is None, acc[classes[i]] if acc[classes[i]] is not None else 0)
        )[:limit]
        title += f" (the {limit} worst of {len(classes)} by {confusion_of}; all in report.json)"
    width = max(12, min(40, max(len(classes[i]) for i in order)))
    lines = [title + ":", f"  {'class':<{width}} {'videos':>6} " + " ".join(f"{s:>7}" for s in streams)]
    for i in order:
        accs = [streams[s]["per_class"][classes[i]] for s in streams]
        cells = " ".join(f"{'-':>7}" if a is None else f"{a:>7.3f}" for a in accs)
        lines.append(f"  {classes[i][:width]:<{width}} {counts[i]:>6} {cells}")
    return "\n".join(lines)


def plot_confusion(confusion: list[list[int]], classes: list[str], title: str, path: Path) -> None:
    """Row-normalised confusion matrix (rows: true class), PNG, written atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    m = torch.tensor(confusion, dtype=torch.float64)
    m = m / m.sum(1, keepdim=True).clamp(min=1)
    n = len(classes)
    side = min(4 + 0.25 * n, 30)
    fig = Figure(figsize=(side + 1.5, side), dpi=90)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(m.numpy(), vmin=0, vmax=1, cmap="Blues")
    fig.colorbar(im, ax=ax, fraction=0.046)
    if n <= 60:
        ax.set_xticks(range(n), classes, rotation=90, fontsize=7)
        ax.set_yticks(range(n), classes, fontsize=7)
        if n <= 20:
            for i in range(n):
                for j in range(n):
                    if confusion[i][j]:
                        ax.text(
                            j,
                            i,
                            str(confusion[i][j]),
                            ha="center",
                            va="center",
                            fontsize=7,
                            color="white" if m[i, j] > 0.5 else "black",
                        )
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    write_atomic(path, lambda f: fig.savefig(f, format="png"), mode=default_mode())


def _sampler(blob: dict[str, Any], crop: int, clip_len: int | None, views: int | None) -> ClipSampler:
    """The evaluation sampler of a checkpoint's training sampler (before issue 20: dense)."""
    trained = blob.get("sampling", {"name": "dense"})
    count = {"tsn": "segments", "stacked": "samples", "slowfast": "clips"}.get(trained["name"])
    if count is None and views is not None:
        raise ValueError("--views is for tsn, stacked and slowfast checkpoints; dense evaluation takes --clip-len")
    if count is not None and clip_len is not None:
        raise ValueError(
            f"--clip-len is for dense checkpoints; a {trained['name']} model takes the view length it was trained on"
        )
    return eval_sampler(
        trained, crop=crop, clip_len=clip_len if count is None else None, **({count: views} if count else {})
    )


def main(args: argparse.Namespace) -> int:
    ckpts, classes = _checkpoints(args)
    crop = args.crop or next(iter(ckpts.values()))["clip"]["crop"]
    clip_lens = {
        s: getattr(args, f"{s}_clip_len") if getattr(args, f"{s}_clip_len") is not None else args.clip_len
        for s in ckpts
    }
    samplers = {s: _sampler(blob, crop, clip_lens[s], args.views) for s, blob in ckpts.items()}
    logits, dataset = _stream_logits(args, ckpts, samplers, classes)
    if len(logits) == 2:
        logits["fused"] = logits["rgb"] + logits["flow"]
    labels = torch.tensor([v.label for v in dataset.videos])
    report: dict[str, Any] = {
        "stores": dataset.store_paths,
        "split": args.split,
        "videos": len(dataset.videos),
        "classes": classes,
        "chance": 1 / len(classes),
        "clip_len": {s: samplers[s].steps(s) for s in samplers},
        "crop": crop,
        "sampling": {s: sampler.to_dict() for s, sampler in samplers.items()},
        "checkpoints": {s: {"path": str(getattr(args, s)), "step": blob["step"]} for s, blob in ckpts.items()},
        "streams": {s: metrics(v, labels, classes) for s, v in logits.items()},
        "predictions": [
            {
                "video": v.video_id,
                "label": classes[v.label],
                **{s: classes[int(lg[i].argmax())] for s, lg in logits.items()},
            }
            for i, v in enumerate(dataset.videos)
        ],
    }
    out = Path(args.out) if args.out else Path(getattr(args, next(iter(ckpts)))).parent
    out.mkdir(parents=True, exist_ok=True)
    best = "fused" if "fused" in logits else next(iter(logits))
    plot_confusion(
        report["streams"][best]["confusion"],
        classes,
        f"{best}: top-1 {report['streams'][best]['top1']:.3f}",
        out / "confusion.png",
    )
    write_json(out / "report.json", report, indent=1)
    print(
        f"{len(dataset.videos)} videos, {len(classes)} classes (chance {1 / len(classes):.3f}); "
        + ", ".join(f"{s}: {samplers[s].name} {samplers[s].describe(s)}" for s in samplers)
        + f", centre crop {crop}"
    )
    _print_scores(report["streams"], classes, best)
    print(f"report: {out / 'report.json'}   confusion matrix ({best}): {out / 'confusion.png'}")
    return 0


def _checkpoints(args: argparse.Namespace) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """The --rgb / --flow checkpoints by stream, checked to be of that stream and of one class list."""
    ckpts = {s: load_checkpoint(p) for s, p in (("rgb", args.rgb), ("flow", args.flow)) if p}
    for stream, blob in ckpts.items():
        if blob["stream"] != stream:
            raise ValueError(f"--{stream} {getattr(args, stream)} is a checkpoint of the {blob['stream']} stream")
    class_lists = {s: blob["classes"] for s, blob in ckpts.items()}
    classes = next(iter(class_lists.values()))
    if any(c != classes for c in class_lists.values()):
        raise ValueError("the RGB and flow checkpoints were trained on different class lists")
    return ckpts, classes


def _stream_logits(
    args: argparse.Namespace,
    ckpts: dict[str, dict[str, Any]],
    samplers: dict[str, ClipSampler],
    classes: list[str],
) -> tuple[dict[str, torch.Tensor], VideoClips]:
    """(video-level logits of each stream, in the checkpoints' order; the videos read)."""
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    amp = device.type == "cuda" if args.amp == "auto" else args.amp == "on"
    channels_last = device.type == "cuda"  # as the trainer's auto setting
    models = {s: model_from_checkpoint(blob) for s, blob in ckpts.items()}
    for model in models.values():
        to_device(model, device, channels_last)
    logits: dict[str, torch.Tensor] = {}
    for sampler in dict.fromkeys(samplers.values()):  # streams with the same sampler share their reads
        streams = tuple(s for s in ckpts if samplers[s] == sampler)
        dataset = VideoClips(args.store, streams=streams, sampler=sampler, split=args.split, classes=classes)
        # whole videos differ in length: one per batch; a sample of many views is a batch of its own
        loader = DataLoader(
            dataset,
            batch_size=1 if sampler.steps(streams[0]) == 0 or sampler.views > 1 else 4,
            num_workers=args.workers,
            pin_memory=device.type == "cuda",
            collate_fn=collate_clips,
        )
        logits |= evaluate(
            {s: models[s] for s in streams},
            loader,
            len(dataset.videos),
            len(classes),
            device=device,
            amp=amp,
            channels_last=channels_last,
            progress=not args.no_progress,
        )
    return {s: logits[s] for s in ckpts}, dataset


def _print_scores(streams: dict[str, dict[str, Any]], classes: list[str], best: str) -> None:
    k = min(5, len(classes))
    if k < 5:  # say why the column is not top-5
        print(f"top-{k}: top-5 capped at the number of classes ({len(classes)})")
    print(f"{'stream':<8} {'top-1':>7} {f'top-{k}':>7}")
    for s, m in streams.items():
        print(f"{s:<8} {m['top1']:>7.3f} {m[f'top{k}']:>7.3f}")
    print(format_per_class(streams, classes, confusion_of=best))


# --- command line (registered in flowprep.cli.main) -----------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", action="append", required=True, help="a store (repeat for several)")
    p.add_argument("--rgb", metavar="CKPT", help="checkpoint of the RGB stream (flowprep train --stream rgb)")
    p.add_argument("--flow", metavar="CKPT", help="checkpoint of the flow stream")
    p.add_argument("--split", default="val", help="videos of this split (default: val; 'all' for every video)")
    p.add_argument(
        "--clip-len",
        type=int,
        help="dense sampling: 0 (default) whole videos; N: average over consecutive N-step windows",
    )
    p.add_argument("--rgb-clip-len", type=int, help="the RGB stream's clip length (default: --clip-len)")
    p.add_argument("--flow-clip-len", type=int, help="the flow stream's clip length (default: --clip-len)")
    p.add_argument(
        "--views", type=int, help="tsn, stacked, slowfast: views averaged per video (default: the papers' 25, 25, 10)"
    )
    p.add_argument("--crop", type=int, help="centre crop, px (default: the training crop of the checkpoint)")
    p.add_argument("--out", help="folder for report.json and confusion.png (default: beside the first checkpoint)")
    p.add_argument(
        "--workers",
        type=int,
        default=min(4, os.cpu_count() or 1),
        help="DataLoader processes reading the stores (default: min(4, CPUs) = %(default)s; 0 = in this process)",
    )
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:N")
    p.add_argument("--amp", choices=("auto", "on", "off"), default="auto", help="bf16 autocast (auto: on CUDA)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def command(args: argparse.Namespace) -> int:
    if not (args.rgb or args.flow):
        return usage_error("give --rgb CKPT, --flow CKPT or both")
    if args.split == "all":
        args.split = None
    from flowprep.store.zarr_store import StoreError

    try:
        return main(args)
    except (StoreError, ValueError, OSError) as e:
        return usage_error(str(e))


if __name__ == "__main__":  # python -m flowprep.train.evaluate ... (the same as flowprep evaluate ...)
    sys.exit(command(get_args_parser().parse_args()))
