"""Command line: ``flowprep <command>``.  Each command is a small function registered in COMMANDS.

Exit status: 0 success, 1 some rows failed (see the ledger), 2 bad usage or configuration.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

from flowprep.cluster_cli import (
    _add_finalize,
    _add_slurm,
    _add_status,
    cmd_finalize,
    cmd_slurm,
    cmd_status,
)

PIPELINES_DIRS = (Path.cwd() / "pipelines", Path(__file__).resolve().parent.parent / "pipelines")
ALIASES = {"kinetics": "kinetics400"}


def find_recipe(name_or_path: str) -> Path:
    """A recipe file, or a dataset name looked up in pipelines/ (``kinetics`` = ``kinetics400``)."""
    p = Path(name_or_path)
    if p.suffix == ".toml" or p.exists():
        if not p.is_file():
            raise SystemExit(_usage_error(f"recipe {p} not found"))
        return p
    name = ALIASES.get(name_or_path, name_or_path)
    known: set[str] = set(ALIASES)
    for d in PIPELINES_DIRS:
        if (d / f"{name}.toml").is_file():
            return d / f"{name}.toml"
        known |= {f.stem for f in d.glob("*.toml")}
    raise SystemExit(_usage_error(f"unknown dataset {name_or_path!r}; known: {', '.join(sorted(known))}"))


def _usage_error(msg: str) -> int:
    print(f"flowprep: error: {msg}", file=sys.stderr)
    return 2


def cmd_run(args: argparse.Namespace) -> int:
    from flowprep.manifest import ManifestError
    from flowprep.pipeline import run
    from flowprep.recipe import RecipeError, load_recipe
    from flowprep.store import StoreError, run_dir

    recipe = find_recipe(args.recipe)
    try:
        cfg = load_recipe(
            recipe, out=args.out, cache_dir=args.cache_dir, jobs=args.jobs, overwrite=args.overwrite,
            limit=args.limit, backend=args.backend, device=args.device, progress=not args.no_progress,
            retry_failed=args.retry_failed, fetch=_fetch_overrides(args), **_cluster_overrides(args),
        )
        if not cfg.manifest.exists():
            from flowprep.manifests import missing_manifest_hint

            hint = missing_manifest_hint(cfg.manifest)
            return _usage_error(f"manifest {cfg.manifest} not found" + (f": {hint}" if hint else ""))
        _record_run(recipe, cfg)
        summary = run(cfg)
    except (RecipeError, ManifestError, StoreError, ValueError, OSError) as e:
        return _usage_error(str(e))
    fps = summary.frames / summary.seconds if summary.seconds > 0 else 0.0
    print(
        f"{cfg.dataset}: {summary.rows} rows: {summary.done} done, {summary.failed} failed, "
        f"{summary.skipped} skipped (already complete) in {summary.seconds:.1f} s "
        f"({summary.frames} frames, {fps:.1f} frames/s, flow backend {summary.backend})"
    )
    if summary.failed:
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(summary.failed_by_reason.items()))
        index = run_dir(cfg.out) / ("index.json" if cfg.num_tasks == 1 else f"index/{cfg.task}.json")
        print(f"failed by reason: {reasons}; details: {index}")
    print(f"store: {cfg.out}   inspect it: flowprep inspect {cfg.out}")
    return 0 if summary.ok else 1


def cmd_inspect(args: argparse.Namespace) -> int:
    import numpy as np

    from flowprep import open_store
    from flowprep.store import StoreError, run_dir

    try:
        store = open_store(args.store)
    except StoreError as e:
        return _usage_error(str(e))
    from flowprep.distribute import read_index

    index = read_index(run_dir(args.store)) or {"videos": []}  # index.json + cluster tasks' parts
    ids = [args.video] if args.video else store.video_ids
    if args.video and args.video not in store:
        return _usage_error(f"video {args.video!r} is not in {args.store}; videos: {', '.join(store.video_ids[:20])}")
    print(f"{args.store}: {len(store)} complete video(s); dataset {store.meta.get('dataset')}, format v{store.meta['format_version']}")
    header = f"{'video':<28} {'label':<14} {'frames':>6} {'size':>9} {'|flow| mean':>11} {'p95':>6} {'max':>6} {'clipped':>7}"
    print(header)
    print("-" * len(header))
    motion: dict[str, float] = {}
    for vid in ids:
        info = store.info(vid)
        bound = float(info["flow"]["bound_px"])
        mags, clipped, n = [], 0, 0
        for start in range(0, info["n_flow"], 64):
            q = store.read_flow_int8(vid, start, start + 64)
            px = q.astype(np.float32) * (bound / 127)
            m = np.hypot(px[..., 0], px[..., 1])
            mags.append(np.percentile(m, [50, 95]).tolist() + [float(m.mean()), float(m.max())])
            clipped += int((np.abs(q) == 127).any(-1).sum())
            n += m.size
        a = np.array(mags)
        motion[vid] = float(a[:, 2].mean())
        print(
            f"{vid:<28} {str(info.get('label'))[:14]:<14} {info['n_frames']:>6} "
            f"{info['height']:>4}x{info['width']:<4} {a[:, 2].mean():>9.2f}px {a[:, 1].max():>6.2f} "
            f"{a[:, 3].max():>6.2f} {100 * clipped / max(n, 1):>6.2f}%"
        )
        src = str(info.get("source") or "")
        if src.startswith("synthetic:"):
            print(f"{'':<28} known motion: end-point error {_synthetic_epe(store, vid, src):.3f} px (interior, all pairs)")
    failed = [v for v in index["videos"] if v["status"] != "done"]
    for v in failed:
        print(f"{v['status']:<8} {v.get('id') or 'line ' + str(v['line'])}: {v.get('reason', '')}")
    if args.preview:
        from flowprep.viz import save_preview

        # without --video, show the video with the most motion: the most telling picture
        vid = args.video or (max(motion, key=motion.__getitem__) if motion else None)
        if vid is None:
            return _usage_error("no complete video to preview")
        print(f"preview of {vid}: {save_preview(store, vid, args.preview)}")
    return 0


def _synthetic_epe(store, vid: str, source: str) -> float:
    """Mean end-point error against the generated clip's true flow (stored, i.e. quantized, flow)."""
    import numpy as np

    from flowprep.demo import SYNTHETIC, true_flow

    info = store.info(vid)
    truth = true_flow(SYNTHETIC[source.split(":", 1)[1]], info["height"], info["width"])
    flow = store.read_flow(vid) * float(info["flow"]["bound_px"])
    m = 16  # borders: the texture enters and leaves the frame there
    err = np.hypot(*(flow - truth)[:, m:-m, m:-m].transpose(3, 0, 1, 2))
    return float(err.mean())


def _add_run(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", help="recipe file (pipelines/demo.toml) or dataset name (demo, kinetics, ucf101, ...)")
    p.add_argument("--out", help="store path (default: out/<dataset>.zarr)")
    p.add_argument("--jobs", type=int, default=1, help="videos processed in parallel (default: 1)")
    p.add_argument("--overwrite", action="store_true", help="redo videos that are already complete")
    p.add_argument("--limit", type=int, help="process only the first K manifest rows")
    p.add_argument("--backend", help="flow backend: auto (fastest here), opencv, torch")
    p.add_argument("--device", help="device for the torch backend: cpu, cuda, cuda:N (default: cuda if available)")
    p.add_argument("--cache-dir", help="downloads and generated clips (default: <out folder>/cache)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument(
        "--retry-failed", action="store_true",
        help="redo failed rows only if their failure may pass (rate_limited, network, other); keep removed/private/... "
        "as failed.  Without it a rerun redoes every row that is not complete",
    )
    f = p.add_argument_group("fetch (rows with a youtube_id; these override the recipe's [fetch] and turn it on)")
    f.add_argument("--url-template", help="download URL, {youtube_id} substituted (a mirror; default YouTube)")
    f.add_argument("--cookies", help="Netscape cookies.txt for sign-in/age-gated videos")
    f.add_argument("--proxy", help="proxy URL for downloads, e.g. socks5://127.0.0.1:1080")
    f.add_argument("--rate-limit", help="bytes/s per download, e.g. 2M")
    g = p.add_argument_group("cluster", "split the manifest over tasks (see `flowprep slurm submit`), or run on dask")
    g.add_argument("--num-tasks", type=int, help="the manifest is split into N shards (default: $SLURM_ARRAY_TASK_COUNT, else 1)")
    g.add_argument("--task-index", type=int, help="do shard I: rows i with i %% N == I (default: $SLURM_ARRAY_TASK_ID, else 0)")
    g.add_argument("--ids-from", metavar="FILE", help="do only the video ids listed in FILE, one per line (a retry's list)")
    g.add_argument("--executor", choices=("local", "dask"), default="local",
                   help="where videos run in parallel: local processes (default) or a dask cluster (joblib's dask backend)")
    g.add_argument("--scheduler", metavar="ADDRESS", help="dask scheduler address for --executor dask, e.g. tcp://head:8786")


def _fetch_overrides(args: argparse.Namespace) -> dict[str, str | None]:
    return {"url_template": args.url_template, "cookies": args.cookies, "proxy": args.proxy, "rate_limit": args.rate_limit}


def cmd_manifests(args: argparse.Namespace) -> int:
    from flowprep import manifests as m
    from flowprep.manifest import ManifestError

    root = Path(args.dir) if args.dir else m.DATA_MANIFESTS
    try:
        if args.action == "list":
            for ds in m.DATASETS.values():
                have = "present" if (root / ds.name / "SHA256SUMS").is_file() else "not fetched"
                print(f"{ds.name:<18} {have:<12} {ds.url}")
            return 0
        if args.dataset is None:
            return _usage_error(f"manifests {args.action} needs a dataset; known: {', '.join(sorted(m.DATASETS))}")
        ds = m.dataset(args.dataset)
        if args.action == "fetch":
            print(m.fetch_official(ds.name, root, Path(args.source) if args.source else None, force=args.force))
            return 0
        # build: split lists + the folder of unpacked videos -> path,label,split manifest
        if ds.name not in ("ucf101", "hmdb51"):
            return _usage_error(f"manifests build is for ucf101 and hmdb51; {ds.name} rows name YouTube clips (use [fetch] local_root)")
        if not args.root:
            return _usage_error("manifests build needs --root DIR (where the videos were unpacked)")
        entries = (m.ucf101_entries if ds.name == "ucf101" else m.hmdb51_entries)(root / ds.name, args.split)
        out = Path(args.out) if args.out else root / ds.name / f"{ds.name}_split{args.split}.csv"
        n, missing = m.write_local_manifest(entries, Path(args.root), out)
        print(f"{out}: {n} rows (split {args.split}, train + test); {missing} file(s) not found under {args.root}")
        return 0
    except (KeyError, ValueError, ManifestError, m.FetchManifestError) as e:
        print(f"flowprep manifests: error: {e.args[0] if isinstance(e, KeyError) else e}", file=sys.stderr)
        return 1


def _add_manifests(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=("fetch", "build", "list"),
                   help="fetch: official annotation files into data_manifests/ (checked); build: UCF-101/HMDB-51 manifest"
                   " from split lists + your video folder; list: datasets and what is present")
    p.add_argument("dataset", nargs="?", help="kinetics400 (kinetics), kinetics600, kinetics700, kinetics700-2020, ucf101, hmdb51")
    p.add_argument("--from", dest="source", metavar="PATH", help="fetch: a hand-downloaded archive or a folder of the files, not the network")
    p.add_argument("--force", action="store_true", help="fetch again although the files are present and pass their checks")
    p.add_argument("--dir", help="manifest folder (default: the project's data_manifests/)")
    p.add_argument("--root", help="build: folder holding the unpacked videos ({class}/{name}.avi)")
    p.add_argument("--split", type=int, default=1, choices=(1, 2, 3), help="build: official split number (default 1)")
    p.add_argument("--out", help="build: manifest CSV to write (default data_manifests/<dataset>/<dataset>_split<N>.csv)")


def _add_inspect(p: argparse.ArgumentParser) -> None:
    p.add_argument("store", help="a store built by `flowprep run`, e.g. out/demo.zarr")
    p.add_argument("--video", help="only this video")
    p.add_argument("--preview", metavar="PNG", help="write a picture of frames and colour-coded flow")


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    """``flowprep train`` (also ``python -m flowprep.train``); see flowprep/train.py for the defaults' reasons."""
    p.add_argument("--store", action="append", required=True, help="a store built by `flowprep run` (repeat for several)")
    p.add_argument("--stream", choices=("rgb", "flow"), required=True, help="which stream to train")
    p.add_argument("--out", required=True, help="run folder: checkpoint.pt, log.jsonl, curves.png")
    p.add_argument("--split", default="train", help="videos of this split (default: train; 'all' for every video)")
    p.add_argument("--init", default="kinetics400-rgb", help="kinetics400-rgb (default; flow: first conv averaged over RGB), none, or a .pt file")
    p.add_argument("--classes", help="file with one class name per line, in logit order (default: sorted labels)")
    p.add_argument("--resume", nargs="?", const="auto", help="continue from a checkpoint; bare --resume: <out>/checkpoint.pt if it exists, else start")
    p.add_argument("--clip-len", type=int, default=64, help="time steps per training clip (default: 64)")
    p.add_argument("--crop", type=int, default=224, help="random square crop, px (default: 224)")
    p.add_argument("--no-flip", action="store_true", help="no random horizontal flip (for direction-labelled classes)")
    p.add_argument("--endpoint", default="Mixed_5c", help="last I3D block before the logits (default: Mixed_5c, the whole I3D)")
    p.add_argument("--steps", type=int, default=5000, help="optimizer steps (default: 5000)")
    p.add_argument("--stop-after", type=int, help="end this run after N steps (checkpoint written); the schedule still follows --steps")
    p.add_argument("--batch-size", type=int, default=8, help="clips per step per process (default: 8)")
    p.add_argument("--lr", type=float, default=0.01, help="initial learning rate (default: 0.01; DeepMind: 0.1 from scratch)")
    p.add_argument("--lr-drops", type=float, nargs="*", default=[0.6, 0.9], help="fractions of --steps where lr is multiplied by --lr-gamma")
    p.add_argument("--lr-gamma", type=float, default=0.1, help="step decay factor (default: 0.1)")
    p.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (default: 0.9)")
    p.add_argument("--weight-decay", type=float, default=1e-7, help="default: 1e-7 (DeepMind)")
    p.add_argument("--dropout", type=float, default=0.5, help="before the logits (default: 0.5)")
    p.add_argument("--bn-momentum", type=float, default=0.01, help="BatchNorm running-statistics momentum (default: 0.01)")
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="DataLoader workers per process")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:N")
    p.add_argument("--amp", choices=("auto", "on", "off"), default="auto", help="bf16 autocast (auto: on CUDA)")
    p.add_argument("--channels-last", choices=("auto", "on", "off"), default="auto", help="channels-last 3D memory (auto: on CUDA)")
    p.add_argument("--save-every", type=int, default=500, help="checkpoint every N steps (and at the end)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache-dir", help="pretrained weights cache (default: $FLOWPREP_CACHE/weights or ~/.cache/flowprep/weights)")


def cmd_train(args: argparse.Namespace) -> int:
    for name in ("steps", "batch_size", "save_every", "clip_len", "crop"):
        if getattr(args, name) < 1:
            return _usage_error(f"--{name.replace('_', '-')}={getattr(args, name)}: must be >= 1")
    if args.split == "all":
        args.split = None
    from flowprep.classifier import TRUNK_ENDPOINTS
    from flowprep.models.weights import WeightsError
    from flowprep.store import StoreError
    from flowprep.train import main

    if args.endpoint not in TRUNK_ENDPOINTS:
        return _usage_error(f"--endpoint={args.endpoint!r}: choose from {', '.join(TRUNK_ENDPOINTS)}")
    try:
        return main(args)
    except (StoreError, ValueError, OSError, WeightsError) as e:
        return _usage_error(str(e))


def add_evaluate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", action="append", required=True, help="a store (repeat for several)")
    p.add_argument("--rgb", metavar="CKPT", help="checkpoint of the RGB stream (flowprep train --stream rgb)")
    p.add_argument("--flow", metavar="CKPT", help="checkpoint of the flow stream")
    p.add_argument("--split", default="val", help="videos of this split (default: val; 'all' for every video)")
    p.add_argument("--clip-len", type=int, default=0, help="0 (default): whole videos; N: average over consecutive N-step windows")
    p.add_argument("--rgb-clip-len", type=int, help="the RGB stream's clip length (default: --clip-len)")
    p.add_argument("--flow-clip-len", type=int, help="the flow stream's clip length (default: --clip-len)")
    p.add_argument("--crop", type=int, help="centre crop, px (default: the training crop of the checkpoint)")
    p.add_argument("--out", help="folder for report.json and confusion.png (default: beside the first checkpoint)")
    p.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1))
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:N")
    p.add_argument("--amp", choices=("auto", "on", "off"), default="auto", help="bf16 autocast (auto: on CUDA)")


def cmd_evaluate(args: argparse.Namespace) -> int:
    if not (args.rgb or args.flow):
        return _usage_error("give --rgb CKPT, --flow CKPT or both")
    if args.split == "all":
        args.split = None
    from flowprep.evaluate import main
    from flowprep.store import StoreError

    try:
        return main(args)
    except (StoreError, ValueError, OSError) as e:
        return _usage_error(str(e))


def add_predict_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("video", help="a video file (any format ffmpeg reads)")
    p.add_argument("--weights", default="kinetics400-rgb", help="kinetics400-rgb (default) or an RGB checkpoint of flowprep train")
    p.add_argument("--frames", type=int, default=250, help="use up to N frames (25 fps) from --start (default: 250)")
    p.add_argument("--start", type=float, default=0.0, help="seconds into the video (default: 0)")
    p.add_argument("--top", type=int, default=5, help="classes to print (default: 5)")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:N")
    p.add_argument("--cache-dir", help="pretrained weights cache (default: $FLOWPREP_CACHE/weights or ~/.cache/flowprep/weights)")


def cmd_predict(args: argparse.Namespace) -> int:
    from flowprep.decode import DecodeError
    from flowprep.predict import main

    try:
        return main(args)
    except (DecodeError, ValueError, OSError) as e:
        return _usage_error(str(e))


def _cluster_overrides(args: argparse.Namespace) -> dict:
    """load_recipe overrides for the cluster options; SLURM's array variables are read here only."""
    import os

    from flowprep.distribute import read_keys_file, task_from_env

    num_tasks, task_index = task_from_env(args.num_tasks, args.task_index, os.environ)
    if num_tasks is None and task_index is not None:
        raise ValueError("--task-index needs --num-tasks")
    return {
        "num_tasks": num_tasks, "task_index": task_index, "executor": args.executor, "scheduler": args.scheduler,
        "only_keys": read_keys_file(args.ids_from) if args.ids_from else None,
    }


def _record_run(recipe: Path, cfg) -> None:
    from flowprep.distribute import record_run
    from flowprep.store import run_dir

    record_run(run_dir(cfg.out), recipe, cfg)


# name -> (help, add arguments, handler)
COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {
    "run": ("build a store from a recipe: decode, TV-L1 flow, write (resumable)", _add_run, cmd_run),
    "inspect": ("summarize a store; --preview writes a flow picture", _add_inspect, cmd_inspect),
    "manifests": ("fetch and check official annotation files; build UCF-101/HMDB-51 manifests", _add_manifests, cmd_manifests),
    "status": ("done / failed / pending over all tasks, throughput, time left", _add_status, cmd_status),
    "finalize": ("write the store's index.json from all tasks' ledgers (after a cluster run)", _add_finalize, cmd_finalize),
    "slurm": ("run a recipe as a SLURM job array: `flowprep slurm submit RECIPE --tasks N`", _add_slurm, cmd_slurm),
    "train": ("train one I3D stream (rgb or flow) on stores; torchrun for several GPUs", add_train_arguments, cmd_train),
    "evaluate": ("per-stream and fused top-1/top-5 of trained streams on whole videos", add_evaluate_arguments, cmd_evaluate),
    "predict": ("top Kinetics-400 classes of a video with the RGB I3D", add_predict_arguments, cmd_predict),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flowprep",
        description="Action-recognition videos -> zarr stores of RGB and TV-L1 optical flow for two-stream I3D.",
        epilog="Start with: flowprep run demo && flowprep inspect out/demo.zarr --preview out/demo.png",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="more log output")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_, add, handler) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        add(p)
        p.set_defaults(handler=handler)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    return args.handler(args)
