"""Train one stream (RGB or flow) of a two-stream model on samples from flowprep stores.

    flowprep train --store out/ucf101.zarr --stream flow --out runs/ucf101-flow
    torchrun --nproc-per-node 8 -m flowprep train --store ... --stream rgb --out ...
    flowprep train ... --model mymodels:tsn_resnet50 --sampling tsn

The model is flowprep's I3D (``--model i3d``, dense clips) or any ``factory(num_classes,
in_channels)`` (``flowprep.train.plugins``) fed by the sampler ``--sampling`` names
(``flowprep.train.sampling``); a sample's views are averaged before the loss.

One script for one CPU, one GPU and many (torchrun sets WORLD_SIZE; DistributedDataParallel
and a distributed sampler only start when it is > 1).  Training counts steps, not epochs;
``train_steps`` runs the steps up to the next checkpoint.  Writes into ``--out``:
``checkpoint.pt`` (atomic; model, optimizer, scheduler, RNG, step, config, class list, the
stores' content settings),
``log.jsonl`` (one line per step) and ``curves.png``.  ``--resume`` continues exactly.

Defaults are for fine-tuning Kinetics weights on a small data set: SGD, momentum 0.9, weight
decay 1e-7 and dropout 0.5 as DeepMind trained, but lr 0.01 (their 0.1 was for training from
scratch with large batches) divided by 10 at 60% and 90% of the steps, and BatchNorm momentum
0.01 (theirs, 0.001, takes thousands of steps to move the running statistics).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader

from flowprep.atomic import default_mode, write_atomic, write_text
from flowprep.console import usage_error
from flowprep.models.cache import weights_cache_dir
from flowprep.models.i3d import I3DConfig
from flowprep.train.classifier import Classifier, initialise, load_checkpoint, save_checkpoint
from flowprep.train.data import TrainSampler, VideoClips, clips_to_model, collate_clips
from flowprep.train.plugins import I3D, build_model, to_device
from flowprep.train.sampling import SAMPLINGS, ClipSampler, consensus, to_memory_format, train_sampler


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flowprep train", description=__doc__.splitlines()[0], add_help=add_help)
    add_arguments(parser)
    return parser


# --- distributed and device ------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device_arg: str) -> tuple[Dist, torch.device]:
    """torchrun's environment -> process group (only when WORLD_SIZE > 1) and this rank's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    d = Dist(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))
    if device_arg == "auto":
        device_arg = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device_arg)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", d.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1:
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return d, device


def _auto(flag: str, device: torch.device) -> bool:
    return device.type == "cuda" if flag == "auto" else flag == "on"


# --- one step, one stretch of steps ----------------------------------------------------------


def train_step(
    model: nn.Module,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor | list[torch.Tensor],
    y: torch.Tensor,
    *,
    amp: bool,
    views: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One SGD step on a batch of B samples of ``views`` views each (``x``: B*views inputs, or
    SlowFast's two pathways); the loss is on the views' mean logits.  Returns (loss, number correct), detached."""
    with torch.autocast(device_type=y.device.type, dtype=torch.bfloat16, enabled=amp):
        logits = consensus(model(x), views)  # (B*N, K) -> (B, K)
    loss = criterion(logits.float(), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach(), (logits.argmax(1) == y).sum()


def train_steps(
    model: nn.Module,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    batches: Iterator[dict[str, Any]],
    *,
    stream: str,
    sampler: ClipSampler,
    device: torch.device,
    step: int,
    stop: int,
    amp: bool,
    channels_last: bool,
    d: Dist,
    log_file: Path | None,
    total_steps: int,
) -> int:
    """Steps ``step+1 .. stop``; logs each to stdout and ``log_file`` (rank 0).  Returns ``stop``."""
    model.train()
    t_last = time.perf_counter()
    while step < stop:
        batch = next(batches)
        x = sampler.model_input(clips_to_model(batch, stream, device))  # uint8/int8 until clips_to_model
        y = batch["label"].to(device, non_blocking=True)
        lr = optimizer.param_groups[0]["lr"]
        views = batch[stream].shape[1]
        loss, correct = train_step(
            model, criterion, optimizer, to_memory_format(x, channels_last), y, amp=amp, views=views
        )
        scheduler.step()
        step += 1
        stats = torch.stack([loss.float() * len(y), correct.float(), torch.tensor(float(len(y)), device=device)])
        if d.world_size > 1:
            dist.all_reduce(stats)
        now = time.perf_counter()
        n = stats[2].item()
        rec = {
            "step": step,
            "loss": round(stats[0].item() / n, 6),
            "acc": round(stats[1].item() / n, 6),
            "lr": lr,
            "clips": int(n),
            "clips_per_s": round(n / (now - t_last), 3),
            "time": round(time.time(), 3),
        }
        t_last = now
        if not math.isfinite(rec["loss"]):
            raise FloatingPointError(f"step {step}: loss is {rec['loss']}; lower --lr")
        if d.main:
            _report_step(rec, total_steps, log_file)
    return step


def _report_step(rec: dict[str, Any], total_steps: int, log_file: Path | None) -> None:
    """One step's line on stdout and in ``log_file``."""
    print(
        f"step {rec['step']:>6}/{total_steps}  loss {rec['loss']:.4f}  acc {rec['acc']:.3f}  "
        f"lr {rec['lr']:.2e}  {rec['clips_per_s']:.1f} clips/s",
        flush=True,
    )
    if log_file is not None:
        with open(log_file, "a", encoding="utf-8") as f:
            f.write(json.dumps(rec) + "\n")


# --- logs and pictures -------------------------------------------------------------------------


def read_log(path: Path, up_to_step: int | None = None) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    recs = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [r for r in recs if up_to_step is None or r["step"] <= up_to_step]


def rewrite_log(path: Path, recs: list[dict[str, Any]]) -> None:
    """Keep only the records up to the resumed step, so the log reads as one uninterrupted run."""
    write_text(path, "".join(json.dumps(r) + "\n" for r in recs))


def plot_curves(recs: list[dict[str, Any]], path: Path) -> None:
    """Loss and accuracy per step (thin) with a moving average (thick), PNG, written atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not recs:
        return
    steps = [r["step"] for r in recs]
    fig = Figure(figsize=(9, 3.5), dpi=90)
    FigureCanvasAgg(fig)
    k = max(1, len(recs) // 20)
    for i, key in enumerate(("loss", "acc")):
        ax = fig.add_subplot(1, 2, i + 1)
        vals = [r[key] for r in recs]
        smooth = [sum(vals[max(0, j - k + 1) : j + 1]) / len(vals[max(0, j - k + 1) : j + 1]) for j in range(len(vals))]
        ax.plot(steps, vals, lw=0.6, alpha=0.5)
        ax.plot(steps, smooth, lw=1.8)
        ax.set_xlabel("step")
        ax.set_ylabel("training " + ("loss" if key == "loss" else "accuracy (batch)"))
        ax.grid(alpha=0.3)
    fig.tight_layout()
    write_atomic(path, lambda f: fig.savefig(f, format="png"), mode=default_mode())


# --- main ----------------------------------------------------------------------------------------


def _cache_dir(args: argparse.Namespace) -> Path | None:
    return weights_cache_dir(args.cache_dir, os.environ)


def store_settings(paths: list[str]) -> dict[str, Any] | None:
    """The content settings (decode, flow parameters and preset, bound: flowprep.store.fingerprint)
    of the stores trained on, for ``predict`` to make the same input; None when they differ."""
    from flowprep.store import fingerprint

    found = [fingerprint.recorded(p) for p in paths]
    first = found[0]
    if first is None:
        return None
    same = all(f is not None and not fingerprint.differences(first, f) for f in found)
    return fingerprint.normal(first) if same else None


def _model(
    args: argparse.Namespace, blob: dict[str, Any] | None, num_classes: int, in_channels: int
) -> tuple[nn.Module, dict[str, Any], str, str]:
    """(model, its config for the checkpoint, how it was initialised, what it is) for ``--model``."""
    if args.model != I3D:
        model = build_model(args.model, num_classes, in_channels)
        return (
            model,
            {"num_classes": num_classes, "in_channels": in_channels},
            "its factory's initialisation",
            args.model,
        )
    if blob:
        config = I3DConfig(**blob["model_config"])
    else:
        config = I3DConfig(
            num_classes=num_classes,
            in_channels=in_channels,
            dropout=args.dropout,
            final_endpoint=args.endpoint,
            bn_momentum=args.bn_momentum,
        )
    model = Classifier(config)
    how = "" if blob else initialise(model, args.init or "kinetics400-rgb", _cache_dir(args))
    return model, dataclasses.asdict(config), how, f"I3D to {config.final_endpoint}"


def _check_resume(blob: dict[str, Any], args: argparse.Namespace, sampler: ClipSampler, resume: str) -> None:
    if blob["stream"] != args.stream:
        raise ValueError(f"--resume {resume} trained the {blob['stream']} stream, not {args.stream}")
    if blob.get("model_factory", I3D) != args.model:
        raise ValueError(f"--resume {resume} trained --model {blob.get('model_factory', I3D)}, not {args.model}")
    trained = blob.get("sampling", {"name": "dense"})
    if trained["name"] != sampler.name:
        raise ValueError(f"--resume {resume} trained with --sampling {trained['name']}, not {sampler.name}")


def main(args: argparse.Namespace) -> int:
    out = Path(args.out)
    ckpt_path = out / "checkpoint.pt"
    # bare --resume: continue <out>/checkpoint.pt when there is one, else start (a requeued job reruns one command)
    resume = (str(ckpt_path) if ckpt_path.exists() else None) if args.resume == "auto" else args.resume
    if resume is None and ckpt_path.exists() and args.resume != "auto":
        print(
            f"flowprep train: error: {ckpt_path} exists; continue it with --resume, or choose another --out",
            file=sys.stderr,
        )
        return 2
    d, device = init_distributed(args.device)
    try:
        return _train(args, out, ckpt_path, resume, d, device)
    finally:
        if d.world_size > 1:
            dist.destroy_process_group()


def _train(
    args: argparse.Namespace, out: Path, ckpt_path: Path, resume: str | None, d: Dist, device: torch.device
) -> int:
    torch.manual_seed(args.seed + d.rank)
    blob = load_checkpoint(resume) if resume else None
    dataset, sampling = _dataset(args, blob)
    if blob and resume:  # blob is only loaded from resume
        _check_resume(blob, args, sampling, resume)
    model, model_config, how, what = _model(args, blob, len(dataset.classes), sampling.in_channels(args.stream))
    if blob:
        model.load_state_dict(blob["model"])
        how = f"resumed from {resume} at step {blob['step']}"
    amp = _auto(args.amp, device)
    channels_last = _auto(args.channels_last, device)
    ddp_model = _place(model, device, channels_last, d)
    optimizer, scheduler, step = _optimizer(args, model, blob)
    criterion = nn.CrossEntropyLoss()
    batches = iter(_loader(args, dataset, step, d, device))
    if blob:  # after everything that draws random numbers, so dropout continues where it stopped
        _restore_rng(blob["rng"], device, d)
    log_file = out / "log.jsonl"
    if d.main:
        out.mkdir(parents=True, exist_ok=True)
        rewrite_log(log_file, read_log(log_file, up_to_step=step))
        n_params = sum(p.numel() for p in model.parameters())
        model_line = f"{what} ({n_params / 1e6:.1f} M parameters), {how}"
        _announce(args, dataset, sampling, model_line, d, device, amp=amp, channels_last=channels_last)
    end = min(args.steps, step + args.stop_after) if args.stop_after else args.steps
    training = _run_record(args, dataset, sampling, model_config)
    while step < end:
        stop = min(end, (step // args.save_every + 1) * args.save_every)
        step = train_steps(
            ddp_model,
            criterion,
            optimizer,
            scheduler,
            batches,
            stream=args.stream,
            sampler=sampling,
            device=device,
            step=step,
            stop=stop,
            amp=amp,
            channels_last=channels_last,
            d=d,
            log_file=log_file if d.main else None,
            total_steps=args.steps,
        )
        if d.main:
            save_checkpoint(ckpt_path, _checkpoint(model, optimizer, scheduler, step, training, device))
            plot_curves(read_log(log_file), out / "curves.png")
            print(f"checkpoint: {ckpt_path} (step {step})", flush=True)
    del batches
    return 0


def _announce(
    args: argparse.Namespace,
    dataset: VideoClips,
    sampling: ClipSampler,
    model_line: str,
    d: Dist,
    device: torch.device,
    *,
    amp: bool,
    channels_last: bool,
) -> None:
    """The run's one-line summary before the first step."""
    print(
        f"train {args.stream}: {len(dataset.videos)} videos, {len(dataset.classes)} classes, "
        f"{sampling.name} sampling: {sampling.describe(args.stream)}, crop {sampling.crop}, "
        f"batch {args.batch_size} x {d.world_size} process(es), {model_line}; "
        f"device {device}, bf16 {'on' if amp else 'off'}, channels-last {'on' if channels_last else 'off'}",
        flush=True,
    )


def _place(model: nn.Module, device: torch.device, channels_last: bool, d: Dist) -> nn.Module:
    """``model`` moved to ``device``; what to train: it, or its DistributedDataParallel wrapper."""
    to_device(model, device, channels_last)
    if d.world_size > 1:
        return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    return model


def _run_record(
    args: argparse.Namespace, dataset: VideoClips, sampling: ClipSampler, model_config: Any
) -> dict[str, Any]:
    """What a checkpoint records of the run besides its state (``evaluate`` and ``predict`` read it)."""
    cfg = {k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in vars(args).items() if k != "handler"}
    return {
        "stream": args.stream,
        "classes": list(dataset.classes),
        "model_factory": args.model,
        "model_config": model_config,
        "sampling": sampling.to_dict(),
        "clip": {"crop": sampling.crop, "clip_len": sampling.steps(args.stream)},  # read by predict
        "args": cfg,
        "store_settings": store_settings(args.store),  # how the input was made: predict makes it the same way
    }


def _checkpoint(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    step: int,
    training: dict[str, Any],
    device: torch.device,
) -> dict[str, Any]:
    """What checkpoint.pt holds: the state to continue from and ``training``, what the run was."""
    rng = {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if device.type == "cuda" else None,
    }
    return {
        "model": {k: v.cpu() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "step": step,
        **training,
        "rng": rng,
    }


def _restore_rng(rng: dict[str, Any], device: torch.device, d: Dist) -> None:
    torch.set_rng_state(rng["torch"])
    if device.type == "cuda" and rng.get("cuda") is not None:
        torch.cuda.set_rng_state(rng["cuda"][d.local_rank % len(rng["cuda"])])


def _dataset(args: argparse.Namespace, blob: dict[str, Any] | None) -> tuple[VideoClips, ClipSampler]:
    """The training videos (the checkpoint's class list on resume, else --classes or the store's)
    and the --sampling sampler that cuts them."""
    classes = blob["classes"] if blob else (Path(args.classes).read_text().split("\n") if args.classes else None)
    if classes is not None:
        classes = [c for c in classes if c.strip()]
    sampling = train_sampler(
        args.sampling,
        crop=args.crop,
        flip=False if args.no_flip else None,
        clip_len=args.clip_len,
        segments=args.segments,
        stride=args.stride,
        alpha=args.alpha,
    )
    dataset = VideoClips(args.store, streams=(args.stream,), sampler=sampling, split=args.split, classes=classes)
    return dataset, sampling


def _optimizer(
    args: argparse.Namespace, model: nn.Module, blob: dict[str, Any] | None
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler, int]:
    """SGD, its step schedule and the first step (the checkpoint's on resume)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)
    milestones = sorted({max(1, round(f * args.steps)) for f in args.lr_drops})
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=args.lr_gamma)
    step = 0
    if blob:
        optimizer.load_state_dict(blob["optimizer"])
        scheduler.load_state_dict(blob["scheduler"])
        step = int(blob["step"])
    return optimizer, scheduler, step


def _loader(args: argparse.Namespace, dataset: VideoClips, step: int, d: Dist, device: torch.device) -> DataLoader:
    """Batches from ``step`` on: this rank's share of a fresh permutation per epoch."""
    sampler = TrainSampler(
        len(dataset.videos),
        batch_size=args.batch_size,
        seed=args.seed,
        start_step=step,
        rank=d.rank,
        world_size=d.world_size,
    )
    return DataLoader(
        dataset,
        batch_size=args.batch_size,
        sampler=sampler,
        num_workers=args.workers,
        collate_fn=collate_clips,
        pin_memory=device.type == "cuda",
        generator=torch.Generator().manual_seed(args.seed),
        persistent_workers=False,
        prefetch_factor=4 if args.workers else None,
    )


# --- command line (registered in flowprep.cli.main) -----------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    """``flowprep train`` (also ``python -m flowprep.train.train``); see flowprep/train.py for the defaults' reasons."""
    p.add_argument(
        "--store", action="append", required=True, help="a store built by `flowprep run` (repeat for several)"
    )
    p.add_argument("--stream", choices=("rgb", "flow"), required=True, help="which stream to train")
    p.add_argument("--out", required=True, help="run folder: checkpoint.pt, log.jsonl, curves.png")
    p.add_argument("--split", default="train", help="videos of this split (default: train; 'all' for every video)")
    p.add_argument(
        "--model",
        default=I3D,
        metavar="i3d|package.module:factory",
        help="i3d (default: flowprep's two-stream I3D), or factory(num_classes, in_channels) -> nn.Module "
        "(e.g. a wrapper of torchvision's r2plus1d_18); the current folder is importable",
    )
    p.add_argument(
        "--sampling",
        choices=tuple(SAMPLINGS),
        default="dense",
        help="what a sample holds: dense clips (default; I3D, C3D, R(2+1)D), tsn segments, stacked two-stream "
        "snippets, slowfast pathways (README: one section per family)",
    )
    p.add_argument(
        "--init",
        help="--model i3d only: kinetics400-rgb (default; flow: first conv averaged over RGB), kinetics400-rgb-imagenet, "
        "kinetics400-flow[-imagenet], kinetics600-rgb (after `flowprep weights import`), none, or a .pt file",
    )
    p.add_argument("--classes", help="file with one class name per line, in logit order (default: sorted labels)")
    p.add_argument(
        "--resume",
        nargs="?",
        const="auto",
        help="continue from a checkpoint; bare --resume: <out>/checkpoint.pt if it exists, else start",
    )
    p.add_argument(
        "--clip-len",
        type=int,
        help="time steps per view: dense clip (default 64), flow fields per snippet "
        "(tsn 5, stacked 10; RGB snippets are one frame), slowfast fast frames (32)",
    )
    p.add_argument("--segments", type=int, help="tsn: segments per video (default 3)")
    p.add_argument("--stride", type=int, help="dense, slowfast: steps between a clip's frames (default 1; slowfast 2)")
    p.add_argument("--alpha", type=int, help="slowfast: the slow pathway takes every alpha-th fast frame (default 8)")
    p.add_argument("--crop", type=int, default=224, help="random square crop, px (default: 224)")
    p.add_argument("--no-flip", action="store_true", help="no random horizontal flip (for direction-labelled classes)")
    p.add_argument(
        "--endpoint",
        default="Mixed_5c",
        help="--model i3d: last I3D block before the logits (default: Mixed_5c, the whole I3D)",
    )
    p.add_argument("--steps", type=int, default=5000, help="optimizer steps (default: 5000)")
    p.add_argument(
        "--stop-after",
        type=int,
        help="end this run after N steps (checkpoint written); the schedule still follows --steps",
    )
    p.add_argument("--batch-size", type=int, default=8, help="clips per step per process (default: 8)")
    p.add_argument(
        "--lr", type=float, default=0.01, help="initial learning rate (default: 0.01; DeepMind: 0.1 from scratch)"
    )
    p.add_argument(
        "--lr-drops",
        type=float,
        nargs="*",
        default=[0.6, 0.9],
        help="fractions of --steps where lr is multiplied by --lr-gamma",
    )
    p.add_argument("--lr-gamma", type=float, default=0.1, help="step decay factor (default: 0.1)")
    p.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (default: 0.9)")
    p.add_argument("--weight-decay", type=float, default=1e-7, help="default: 1e-7 (DeepMind)")
    p.add_argument("--dropout", type=float, default=0.5, help="before the logits (default: 0.5)")
    p.add_argument(
        "--bn-momentum", type=float, default=0.01, help="BatchNorm running-statistics momentum (default: 0.01)"
    )
    p.add_argument(
        "--workers",
        type=int,
        default=min(8, os.cpu_count() or 1),
        help="DataLoader processes reading the stores, per training process (default: min(8, CPUs) = %(default)s; 0 = read in the main process)",
    )
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:N")
    p.add_argument("--amp", choices=("auto", "on", "off"), default="auto", help="bf16 autocast (auto: on CUDA)")
    p.add_argument(
        "--channels-last", choices=("auto", "on", "off"), default="auto", help="channels-last 3D memory (auto: on CUDA)"
    )
    p.add_argument(
        "--save-every",
        type=int,
        default=500,
        help="write checkpoint.pt and curves.png every N steps and at the end (default: 500)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of clip sampling, crops, flips and dropout (default: 0)")
    p.add_argument(
        "--cache-dir", help="pretrained weights cache (default: $FLOWPREP_CACHE/weights or ~/.cache/flowprep/weights)"
    )


def command(args: argparse.Namespace) -> int:
    for name in ("steps", "batch_size", "save_every", "clip_len", "crop", "segments", "stride", "alpha"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            return usage_error(f"--{name.replace('_', '-')}={getattr(args, name)}: must be >= 1")
    if args.split == "all":
        args.split = None
    from flowprep.models.weights import WeightsError
    from flowprep.store.zarr_store import StoreError
    from flowprep.train.classifier import TRUNK_ENDPOINTS

    if args.model == I3D and args.sampling != "dense":
        return usage_error(
            f"--model i3d takes dense clips; --sampling {args.sampling} needs a 2D or two-pathway model: --model package.module:factory"
        )
    if args.model != I3D and args.init is not None:
        return usage_error(f"--init is for --model i3d; {args.model} initialises itself in its factory")
    if args.endpoint not in TRUNK_ENDPOINTS:
        return usage_error(f"--endpoint={args.endpoint!r}: choose from {', '.join(TRUNK_ENDPOINTS)}")
    try:
        return main(args)
    except (StoreError, ValueError, OSError, WeightsError) as e:
        return usage_error(str(e))


if __name__ == "__main__":  # python -m flowprep.train.train ... (the same as flowprep train ...)
    sys.exit(command(get_args_parser().parse_args()))
