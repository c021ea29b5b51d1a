"""Command line: ``flowprep <command>``.  Each command is a small function registered in COMMANDS.

Exit status: 0 success, 1 some rows failed (see the ledger) or the run stopped (its bookkeeping
could not be written, a worker died: a rerun resumes), 2 bad usage or configuration.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from flowprep import __version__
from flowprep.console import usage_error
from flowprep.run.cpus import parse_jobs, quiet_openmp

if TYPE_CHECKING:
    from flowprep.run.pipeline import RunSummary
    from flowprep.run.recipe import RunConfig


# joblib.Parallel's warning when its generator is closed before the end (joblib 1.3 - 1.6)
JOBLIB_EARLY_EXIT = r"\d+ tasks (have been successfully executed|which were still being processed)"


def cmd_run(args: argparse.Namespace) -> int:
    from flowprep.cli.recipes import FolderSettings, prepare_target
    from flowprep.dataset.manifest import ManifestError
    from flowprep.run.lease import LeaseHeld
    from flowprep.run.orphan import WorkerDied
    from flowprep.run.pipeline import run
    from flowprep.run.recipe import RecipeError
    from flowprep.run.state import RESOURCE_ERRNOS
    from flowprep.store.zarr_store import StoreError

    try:
        jobs = parse_jobs(args.jobs)
        settings = FolderSettings.from_args(args)
    except ValueError as e:
        return usage_error(str(e))
    recipe, args.out = prepare_target(
        args.recipe, args.out, args.split, settings
    )  # a folder / video: a generated recipe
    fresh = _only_generated_input(args.out)
    started = False  # past the checks: what fails now is the run's, not the input's

    def on_start() -> None:
        nonlocal started
        started = True
        _record_run(recipe, cfg)

    try:
        cfg = _load_run_recipe(args, recipe, jobs)
        if not cfg.manifest.exists():
            from flowprep.dataset.manifests import missing_manifest_hint

            hint = missing_manifest_hint(cfg.manifest)
            return usage_error(f"manifest {cfg.manifest} not found" + (f": {hint}" if hint else ""))
        with warnings.catch_warnings():
            # a run stopped early (a full disk) closes joblib's generator, and joblib advises on
            # "tasks ... cancelled": noise under the one line that says what happened
            warnings.filterwarnings("ignore", JOBLIB_EARLY_EXIT, UserWarning, "joblib")
            summary = run(cfg, on_start=on_start)
    except OSError as e:  # state.BookkeepingError too: it names the file
        if started or e.errno in RESOURCE_ERRNOS:  # a full disk is never the user's typo
            return _run_error(e)
        return _refused(args.out, fresh, e)
    except (RecipeError, ManifestError, StoreError, LeaseHeld, ValueError) as e:
        return _refused(args.out, fresh, e)
    except WorkerDied as e:
        return _run_error(e)
    _print_run_summary(cfg, summary)
    return 0 if summary.ok else 1


def _refused(out: str | None, fresh: bool, e: Exception) -> int:
    """A run refused before it started (bad input, usage): one line, exit 2, nothing left behind."""
    if fresh and out is not None:  # not even the manifest `run DIR` generated
        _remove_generated(out)
    return usage_error(str(e))


def _run_error(e: Exception) -> int:
    """A run stopped by what happened while it ran (a full disk, a dead worker): one line, exit 1.
    What was committed stays; the message says a rerun resumes."""
    msg = str(e)
    if isinstance(e, OSError):  # WorkerDied says it already
        msg += "; the run stopped, videos committed so far are kept: run again to resume"
    print(f"flowprep: error: {' '.join(msg.split())}", file=sys.stderr)
    return 1


def _load_run_recipe(args: argparse.Namespace, recipe: Path, jobs: int) -> RunConfig:
    """The RunConfig of ``flowprep run``: the recipe with the command line's options over it."""
    from flowprep.run.recipe import load_recipe

    return load_recipe(
        recipe,
        out=args.out,
        cache_dir=args.cache_dir,
        jobs=jobs,
        overwrite=args.overwrite,
        limit=args.limit,
        backend=args.backend,
        device=args.device,
        devices=args.devices,
        progress=not args.no_progress,
        retry_failed=args.retry_failed,
        repair=args.repair,
        allow_partial=args.allow_partial,
        fetch=_fetch_overrides(args),
        **_cluster_overrides(args),
    )


def _print_run_summary(cfg: RunConfig, summary: RunSummary) -> None:
    from flowprep.run.state import index_path

    fps = summary.frames / summary.seconds if summary.seconds > 0 else 0.0
    print(
        f"{cfg.dataset}: {summary.rows} rows: {summary.done} done, {summary.failed} failed, "
        f"{summary.skipped} skipped (already complete) in {summary.seconds:.1f} s "
        f"({summary.frames} frames, {fps:.1f} frames/s, flow backend {summary.backend})"
    )
    if summary.failed:
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(summary.failed_by_reason.items()))
        index = index_path(cfg.out, cfg)
        print(f"failed by reason: {reasons}; details: {index}")
    print(f"store: {cfg.out}   inspect it: flowprep inspect {cfg.out}")


def _only_generated_input(out: str | None) -> bool:
    """A first ``run DIR`` / ``run VIDEO``: the run folder holds only the input just generated."""
    if out is None:
        return False
    from flowprep.run.state import run_dir

    rd = run_dir(out)
    return not Path(out).exists() and rd.is_dir() and {p.name for p in rd.iterdir()} == {"input"}


def _remove_generated(out: str) -> None:
    import shutil

    from flowprep.run.state import run_dir

    shutil.rmtree(run_dir(out), ignore_errors=True)


class FlowStats(NamedTuple):
    """A video's stored flow magnitude |flow| in pixels, measured over windows of 64 pairs."""

    mean_px: float  # mean of the windows' means
    p95_px: float  # the largest window's 95th percentile
    max_px: float
    clipped: float  # fraction of pixels with a component at the bound (|q| = 127)


def flow_stats(store, vid: str) -> FlowStats:
    """``vid``'s flow figures for ``inspect``, from its int8 flow (read 64 pairs at a time); all
    zero for a video without pairs (one frame)."""
    import numpy as np

    info = store.info(vid)
    bound = float(info["flow"]["bound_px"])
    windows, clipped, n = [], 0, 0
    for start in range(0, info["n_flow"], 64):
        q = store.read_flow_int8(vid, start, start + 64)
        px = q.astype(np.float32) * (bound / 127)
        m = np.hypot(px[..., 0], px[..., 1])
        windows.append((float(m.mean()), float(np.percentile(m, 95)), float(m.max())))
        clipped += int((np.abs(q) == 127).any(-1).sum())
        n += m.size
    if not windows:
        return FlowStats(0.0, 0.0, 0.0, 0.0)
    means, p95s, maxes = zip(*windows, strict=True)
    return FlowStats(float(np.mean(means)), max(p95s), max(maxes), clipped / max(n, 1))


def cmd_inspect(args: argparse.Namespace) -> int:
    from flowprep import open_store
    from flowprep.run.state import read_index, run_dir
    from flowprep.store.zarr_store import StoreError

    try:
        store = open_store(args.store)
    except StoreError as e:
        return usage_error(str(e))
    index = read_index(run_dir(args.store)) or {"videos": []}  # index.json + cluster tasks' parts
    if args.video and args.video not in store:
        return usage_error(f"video {args.video!r} is not in {args.store}; videos: {', '.join(store.video_ids[:20])}")
    print(
        f"{args.store}: {len(store)} complete video(s); dataset {store.meta.get('dataset')}, format v{store.meta['format_version']}"
    )
    motion, damaged = _inspect_videos(store, [args.video] if args.video else store.video_ids, full=args.verify)
    failed = [v for v in index["videos"] if v["status"] != "done"]
    for v in failed:
        print(f"{v['status']:<8} {v.get('id') or 'line ' + str(v['line'])}: {v.get('reason', '')}")
    if args.preview and (rc := _inspect_preview(store, args, motion)):
        return rc
    if damaged:
        print(
            f"{len(damaged)} damaged video(s): {', '.join(sorted(damaged))}; redo them with "
            f"`flowprep run RECIPE --out {args.store} --repair`",
            file=sys.stderr,
        )
        return 1
    return 0


def _inspect_videos(store, ids: list[str], *, full: bool) -> tuple[dict[str, float], dict[str, list[str]]]:
    """A row per video (DAMAGED with the reasons when its files or values are wrong).  Returns
    (mean |flow| of each sound video, problems of each damaged one)."""
    from flowprep.store.verify import video_problems
    from flowprep.store.zarr_store import StoreError

    header = (
        f"{'video':<28} {'label':<14} {'frames':>6} {'HxW':>9} {'|flow| mean':>11} {'p95':>6} {'max':>6} {'clipped':>7}"
    )
    print(header)
    print("-" * len(header))
    motion: dict[str, float] = {}
    damaged: dict[str, list[str]] = {}
    for vid in ids:
        # both arrays: files, shard indexes and shapes; --verify also decodes every chunk
        problems = video_problems(store.path / "videos" / vid, full=full)
        if not problems:
            try:
                info = store.info(vid)
                stats = flow_stats(store, vid)
            except (StoreError, KeyError, TypeError, ValueError) as e:
                problems = [str(e)]
        if problems:
            damaged[vid] = problems
            print(f"{vid:<28} DAMAGED: {'; '.join(problems)}")
            continue
        motion[vid] = stats.mean_px
        print(
            f"{vid:<28} {str(info.get('label'))[:14]:<14} {info['n_frames']:>6} "
            f"{info['height']:>4}x{info['width']:<4} {stats.mean_px:>9.2f}px {stats.p95_px:>6.2f} "
            f"{stats.max_px:>6.2f} {100 * stats.clipped:>6.2f}%"
        )
        src = str(info.get("source") or "")
        if src.startswith("synthetic:"):
            print(
                f"{'':<28} known motion: end-point error {_synthetic_epe(store, vid, src):.3f} px (interior, all pairs)"
            )
    return motion, damaged


def _inspect_preview(store, args: argparse.Namespace, motion: dict[str, float]) -> int | None:
    """Writes ``--preview``; an exit status when it cannot, else None."""
    from flowprep.flow.viz import save_preview
    from flowprep.store.zarr_store import StoreError

    # without --video, show the video with the most motion: the most telling picture
    vid = args.video or (max(motion, key=motion.__getitem__) if motion else None)
    if vid is None:
        return usage_error("no complete video to preview")
    why = "" if args.video else " (the video with the most motion; choose one with --video)"
    try:
        print(f"preview of {vid}{why}: {save_preview(store, vid, args.preview)}")
    except StoreError as e:
        return usage_error(str(e))
    except OSError as e:  # a missing or read-only folder
        return usage_error(f"--preview {args.preview}: cannot write ({e.strerror or e})")
    return None


def _synthetic_epe(store, vid: str, source: str) -> float:
    """Mean end-point error against the generated clip's true flow (stored, i.e. quantized, flow)."""
    import numpy as np

    from flowprep.dataset.demo import SYNTHETIC, true_flow

    info = store.info(vid)
    truth = true_flow(SYNTHETIC[source.split(":", 1)[1]], info["height"], info["width"])
    flow = store.read_flow(vid) * float(info["flow"]["bound_px"])
    m = 16  # borders: the texture enters and leaves the frame there
    err = np.hypot(*(flow - truth)[:, m:-m, m:-m].transpose(3, 0, 1, 2))
    return float(err.mean())


def _add_run(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "recipe",
        metavar="TARGET",
        help="a shipped recipe's name (demo, kinetics, ucf101, ...: `flowprep recipes`), a recipe file (my.toml),"
        " a folder of videos (class subfolders become labels) or one video file",
    )
    p.add_argument("--out", help="store path (default: out/<dataset>.zarr)")
    p.add_argument(
        "--jobs",
        default="auto",
        help="videos processed in parallel, one solver thread each (default: auto = the CPUs this process may use: "
        "affinity and cgroup quota)",
    )
    p.add_argument("--overwrite", action="store_true", help="redo videos that are already complete")
    p.add_argument("--limit", type=int, help="process only the first K manifest rows")
    p.add_argument("--backend", help="flow backend: auto (fastest here), opencv, torch")
    p.add_argument("--device", help="device for the torch backend: cpu, cuda, cuda:N (default: cuda if available)")
    p.add_argument(
        "--devices",
        help="flow workers, one per device, solving pairs gathered across videos while --jobs workers decode and "
        "write: 'cuda:0,cuda:1', 'cpu', or 'off' (default: every visible GPU with the torch backend on CUDA, else off); "
        "with flow workers, --jobs 1 (the default) means one decode/write worker per CPU but one per device",
    )
    p.add_argument("--cache-dir", help="downloads and generated clips (default: <out folder>/cache)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument(
        "--retry-failed",
        action="store_true",
        help="redo failed rows only if their failure may pass (rate_limited, network, other); keep removed/private/... "
        "as failed.  Without it a rerun redoes every row that is not complete",
    )
    p.add_argument(
        "--repair",
        action="store_true",
        help="redo exactly the videos `flowprep verify` finds damaged (every chunk is read first)",
    )
    p.add_argument(
        "--allow-partial",
        action="store_true",
        help="keep videos ffmpeg decodes only partly (truncated files), recorded as partial in the ledger",
    )
    from flowprep.cli.recipes import add_folder_options

    add_folder_options(p)
    f = p.add_argument_group("fetch (rows with a youtube_id; these override the recipe's [fetch] and turn it on)")
    f.add_argument("--url-template", help="download URL, {youtube_id} substituted (a mirror; default YouTube)")
    f.add_argument("--cookies", help="Netscape cookies.txt for sign-in/age-gated videos")
    f.add_argument("--proxy", help="proxy URL for downloads, e.g. socks5://127.0.0.1:1080")
    f.add_argument("--rate-limit", help="bytes/s per download, e.g. 2M")
    g = p.add_argument_group("cluster", "split the manifest over tasks (see `flowprep slurm submit`), or run on dask")
    g.add_argument(
        "--num-tasks", type=int, help="the manifest is split into N shards (default: $SLURM_ARRAY_TASK_COUNT, else 1)"
    )
    g.add_argument(
        "--task-index", type=int, help="do shard I: rows i with i %% N == I (default: $SLURM_ARRAY_TASK_ID, else 0)"
    )
    g.add_argument(
        "--ids-from", metavar="FILE", help="do only the video ids listed in FILE, one per line (a retry's list)"
    )
    g.add_argument(
        "--executor",
        choices=("local", "dask"),
        default="local",
        help="where videos run in parallel: local processes (default) or a dask cluster (joblib's dask backend)",
    )
    g.add_argument(
        "--scheduler", metavar="ADDRESS", help="dask scheduler address for --executor dask, e.g. tcp://head:8786"
    )


def _fetch_overrides(args: argparse.Namespace) -> dict[str, str | None]:
    return {
        "url_template": args.url_template,
        "cookies": args.cookies,
        "proxy": args.proxy,
        "rate_limit": args.rate_limit,
    }


def cmd_manifests(args: argparse.Namespace) -> int:
    from flowprep.dataset import manifests as m
    from flowprep.dataset.manifest import ManifestError

    root = Path(args.dir) if args.dir else m.DATA_MANIFESTS
    try:
        if args.action == "list":
            print(f"manifests folder: {root}")
            for ds in m.DATASETS.values():
                have = "present" if (root / ds.name / "SHA256SUMS").is_file() else "not fetched"
                print(f"{ds.name:<18} {have:<12} {ds.url}")
            return 0
        if args.dataset is None:
            return usage_error(f"manifests {args.action} needs a dataset; known: {', '.join(sorted(m.DATASETS))}")
        ds = m.dataset(args.dataset)
        if args.action == "fetch":
            print(m.fetch_official(ds.name, root, Path(args.source) if args.source else None, force=args.force))
            return 0
        # build: split lists + the folder of unpacked videos -> path,label,split manifest
        if ds.name not in ("ucf101", "hmdb51"):
            return usage_error(
                f"manifests build is for ucf101 and hmdb51; {ds.name} rows name YouTube clips (use [fetch] local_root)"
            )
        if not args.root:
            return usage_error("manifests build needs --root DIR (where the videos were unpacked)")
        entries = (m.ucf101_entries if ds.name == "ucf101" else m.hmdb51_entries)(root / ds.name, args.split)
        out = Path(args.out) if args.out else root / ds.name / f"{ds.name}_split{args.split}.csv"
        n, missing = m.write_local_manifest(entries, Path(args.root), out)
        print(f"{out}: {n} rows (split {args.split}, train + test); {missing} file(s) not found under {args.root}")
        return 0
    except (KeyError, ValueError, ManifestError, m.FetchManifestError) as e:
        print(f"flowprep manifests: error: {e.args[0] if isinstance(e, KeyError) else e}", file=sys.stderr)
        return 1


def _add_manifests(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "action",
        choices=("fetch", "build", "list"),
        help="fetch: official annotation files into the manifests folder (checked); build: UCF-101/HMDB-51 manifest"
        " from split lists + your video folder; list: datasets and what is present",
    )
    p.add_argument(
        "dataset", nargs="?", help="kinetics400 (kinetics), kinetics600, kinetics700, kinetics700-2020, ucf101, hmdb51"
    )
    p.add_argument(
        "--from",
        dest="source",
        metavar="PATH",
        help="fetch: a hand-downloaded archive or a folder of the files, not the network",
    )
    p.add_argument(
        "--force", action="store_true", help="fetch again although the files are present and pass their checks"
    )
    p.add_argument(
        "--dir",
        help="manifests folder (default: $FLOWPREP_DATA/manifests, a clone's data_manifests/,"
        " else ~/.local/share/flowprep/manifests; `manifests list` prints it)",
    )
    p.add_argument("--root", help="build: folder holding the unpacked videos ({class}/{name}.avi)")
    p.add_argument("--split", type=int, default=1, choices=(1, 2, 3), help="build: official split number (default 1)")
    p.add_argument(
        "--out", help="build: manifest CSV to write (default <manifests folder>/<dataset>/<dataset>_split<N>.csv)"
    )


def _add_inspect(p: argparse.ArgumentParser) -> None:
    p.add_argument("store", help="a store built by `flowprep run`, e.g. out/demo.zarr")
    p.add_argument("--video", help="only this video")
    p.add_argument("--preview", metavar="PNG", help="write a picture of frames and colour-coded flow")
    p.add_argument("--verify", action="store_true", help="also read back every chunk (checksums); exit 1 on damage")


def _cluster_overrides(args: argparse.Namespace) -> dict:
    """load_recipe overrides for the cluster options; SLURM's array variables are read here only."""

    from flowprep.run.shard import read_keys_file, task_from_env

    num_tasks, task_index = task_from_env(args.num_tasks, args.task_index, os.environ)
    if num_tasks is None and task_index is not None:
        raise ValueError("--task-index needs --num-tasks")
    return {
        "num_tasks": num_tasks,
        "task_index": task_index,
        "executor": args.executor,
        "scheduler": args.scheduler,
        "only_keys": read_keys_file(args.ids_from) if args.ids_from else None,
    }


def _record_run(recipe: Path, cfg) -> None:
    from flowprep.run.state import record_run, run_dir

    record_run(run_dir(cfg.out), recipe, cfg)


class Command(NamedTuple):
    """One ``flowprep`` command.  Its module is imported only when the command runs, so
    `flowprep --help` and `flowprep run` never import torch."""

    help: str  # the line under `flowprep --help`, and the command's description
    module: str  # the module that owns the command's arguments and handler
    add: str = "add_arguments"  # module.add(parser): declare the command's arguments
    run: str = "command"  # module.run(args) -> exit status


COMMANDS: dict[str, Command] = {
    "run": Command(
        "build a store from a recipe, a folder of videos or a video: decode, TV-L1 flow, write (resumable)",
        "flowprep.cli.main",
        add="_add_run",
        run="cmd_run",
    ),
    "inspect": Command(
        "summarize a store; --preview writes a flow picture", "flowprep.cli.main", add="_add_inspect", run="cmd_inspect"
    ),
    "verify": Command("check every chunk of a store; list damaged videos (exit 1 if any)", "flowprep.cli.verify"),
    "manifests": Command(
        "fetch and check official annotation files; build UCF-101/HMDB-51 manifests",
        "flowprep.cli.main",
        add="_add_manifests",
        run="cmd_manifests",
    ),
    "status": Command(
        "done / failed / pending over all tasks, throughput, time left",
        "flowprep.cli.cluster",
        add="_add_status",
        run="cmd_status",
    ),
    "finalize": Command(
        "write the store's index.json from all tasks' ledgers (after a cluster run)",
        "flowprep.cli.cluster",
        add="_add_finalize",
        run="cmd_finalize",
    ),
    "slurm": Command(
        "run a recipe as a SLURM job array: `flowprep slurm submit RECIPE --tasks N`",
        "flowprep.cli.cluster",
        add="_add_slurm",
        run="cmd_slurm",
    ),
    "train": Command("train one I3D stream (rgb or flow) on stores; torchrun for several GPUs", "flowprep.train.train"),
    "evaluate": Command(
        "per-stream and fused top-1 / top-k (k = min(5, classes)) of trained streams on whole videos",
        "flowprep.train.evaluate",
    ),
    "predict": Command(
        "top Kinetics classes of a video: the RGB I3D, or both streams with --two-stream", "flowprep.train.predict"
    ),
    "weights": Command(
        "import DeepMind's TensorFlow I3D checkpoints (all five, no TensorFlow); list the cache", "flowprep.cli.weights"
    ),
    "export": Command(
        "write a store as mmaction2 rawframes: `flowprep export rawframes STORE OUT`",
        "flowprep.cli.rawframes",
        add="_add_export",
        run="cmd_export",
    ),
    "import": Command(
        "rawframes / denseflow folders into a store: `flowprep import rawframes ROOT STORE`",
        "flowprep.cli.rawframes",
        add="_add_import",
        run="cmd_import",
    ),
    "recipes": Command(
        "the shipped recipes (flowprep run NAME) and whether their manifests are here", "flowprep.cli.recipes"
    ),
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser; ``only``: give arguments to that command alone (the others show their help line)."""
    parser = argparse.ArgumentParser(
        prog="flowprep",
        description="Action-recognition videos -> zarr stores of RGB and TV-L1 optical flow for two-stream I3D.",
        epilog="Start with: flowprep run demo && flowprep inspect out/demo.zarr --preview out/demo.png",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="more log output")
    parser.add_argument("--version", action="version", version=f"flowprep {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, command in COMMANDS.items():
        p = sub.add_parser(name, help=command.help, description=command.help)
        if only is None or name == only:
            mod = importlib.import_module(command.module)
            getattr(mod, command.add)(p)
            p.set_defaults(handler=getattr(mod, command.run))
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    quiet_openmp()  # before torch or numba start OpenMP threads (workers inherit it)
    only = next((a for a in argv if not a.startswith("-")), None)
    # import only the named command's module: `flowprep --help`, `--version` or a mistyped command
    # need none of them (importing them all pulled in torch and zarr: 7 s on a busy machine)
    args = build_parser(only if only in COMMANDS else "").parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    try:
        return args.handler(args)
    except KeyboardInterrupt:  # Ctrl-C: what is committed stays, the rest is redone by a rerun
        print("flowprep: interrupted; run again to resume", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader of our output went away (`flowprep recipes | head`): stop quietly, as cat
        # does; stdout goes to devnull so that flushing it at exit raises nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
