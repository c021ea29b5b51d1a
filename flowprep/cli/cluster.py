"""Command line of the cluster commands: ``flowprep status``, ``flowprep finalize``,
``flowprep slurm submit``.  Registered in ``flowprep.cli.COMMANDS``; the work is in
flowprep.run.status, flowprep.run.state and flowprep.run.slurm.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flowprep.console import usage_error

if TYPE_CHECKING:
    from flowprep.run.slurm import SlurmOptions


def _load_target(
    target: str, out: str | None, split: str | None = None, settings: Any = None, **overrides: Any
) -> tuple[Any, Path, int]:
    """A store (its run.json names the recipe), a recipe with --out, or a folder of videos / a video
    (its recipe and manifest generated into the store's run folder, as ``flowprep run DIR`` does;
    ``split`` and ``settings`` are its options): (cfg, recipe path, num_tasks)."""
    from flowprep.run.recipe import load_recipe
    from flowprep.run.state import read_run, run_dir, run_json_path

    p = Path(target)
    if p.suffix == ".zarr" or (p / "zarr.json").exists():
        if not p.is_dir() and not run_json_path(p).exists():  # submitted arrays have run.json first
            raise FileNotFoundError(f"{p}: no store here; build one with `flowprep run` or `flowprep slurm submit`")
        info = read_run(run_dir(p))
        recipe = Path(info["recipe"])
        cfg = load_recipe(recipe, out=str(p), cache_dir=info.get("cache_dir"), limit=info.get("limit"), **overrides)
        return cfg, recipe, int(info.get("num_tasks") or 1)
    from flowprep.cli.recipes import find_recipe, prepare_target

    if p.is_dir() or p.is_file() and p.suffix.lower() != ".toml":  # a folder / a video: its generated recipe
        recipe, out = prepare_target(target, out, split, settings)
        recipe = Path(recipe)
    else:
        recipe = find_recipe(target)
    cfg = load_recipe(recipe, out=out, **overrides)
    num_tasks = 1
    try:
        num_tasks = int(read_run(run_dir(cfg.out)).get("num_tasks") or 1)
    except FileNotFoundError:
        pass
    return cfg, recipe, num_tasks


def cmd_status(args: argparse.Namespace) -> int:
    from flowprep.dataset.manifest import ManifestError
    from flowprep.run.recipe import RecipeError
    from flowprep.run.status import format_status, store_status

    try:
        cfg, _, num_tasks = _load_target(args.target, args.out)
        st = store_status(cfg, args.num_tasks or num_tasks)
    except (RecipeError, ManifestError, FileNotFoundError, ValueError) as e:
        return usage_error(str(e))
    queue: dict = {}
    if args.slurm != "no":
        from flowprep.run.slurm import SlurmError, queued, read_jobs

        if read_jobs(Path(cfg.out)):
            try:
                queue = queued(Path(cfg.out), include_finalize=True)
            except SlurmError as e:
                queue = {"error": str(e)}
    if args.json:
        print(json.dumps({**st.to_json(), "slurm_queue": queue}, indent=1, sort_keys=True))
        return 0
    print(format_status(st))
    for job, states in queue.items():
        print(
            f"  slurm    job {job}: "
            + (", ".join(f"{n} {s.lower()}" for s, n in sorted(states.items())) if isinstance(states, dict) else states)
        )
    return 0


def cmd_finalize(args: argparse.Namespace) -> int:
    from flowprep.dataset.manifest import ManifestError
    from flowprep.run.recipe import RecipeError
    from flowprep.run.state import finalize, index_path

    try:
        cfg, _, _ = _load_target(args.target, args.out)
        index = finalize(cfg)
    except (RecipeError, ManifestError, FileNotFoundError, ValueError) as e:
        return usage_error(str(e))
    except OSError as e:  # state.BookkeepingError: a full disk under the index, which names the file
        print(
            f"flowprep: error: {e}; the tasks' ledgers are intact: run finalize again when there is room",
            file=sys.stderr,
        )
        return 1
    c = index["counts"]
    print(f"{cfg.dataset}: {index_path(cfg.out)}: {c['done']} done, {c['failed']} failed, {c['pending']} pending")
    return 0


def cmd_slurm(args: argparse.Namespace) -> int:
    from flowprep.cli.recipes import FolderSettings
    from flowprep.dataset.manifest import ManifestError
    from flowprep.run.recipe import RecipeError
    from flowprep.run.slurm import SlurmError, merge_options, read_jobs, submit

    try:
        given = {
            k: getattr(args, k)
            for k in ("partition", "gpus_per_task", "cpus", "mem", "time", "account", "max_running", "extra")
        }
        opts = merge_options(given, {}, finalize=not args.no_finalize)  # checked before anything is written
        cfg, recipe, recorded_tasks = _load_target(
            args.recipe, args.out, args.split, FolderSettings.from_args(args), backend=args.backend, device=args.device
        )
        store = Path(cfg.out).resolve()
        if args.retry_failed:  # the first submission's resources, unless given again
            opts = _retry_options(given, store, finalize=not args.no_finalize)
        jobs = read_jobs(store)
        num_tasks = (
            args.tasks or (jobs[-1]["num_tasks"] if jobs else None) or (recorded_tasks if args.retry_failed else None)
        )
        if not num_tasks or num_tasks < 1:
            return usage_error("--tasks N is needed (number of array tasks, each does 1/N of the manifest)")
        ids_file = None
        indices = list(range(num_tasks))
        if args.retry_failed:
            retry = _retry_tasks(cfg, store, num_tasks, queued_before=bool(jobs))
            if retry is None:
                return 0
            indices, ids_file = retry
        text, script = _write_array(args, cfg, recipe, num_tasks, indices, opts, ids_file)
        if args.dry_run:
            _print_dry_run(text, script, store, opts)
            return 0
        rec = submit(cfg, script, num_tasks, indices, opts, ids_file=ids_file)
    except (RecipeError, ManifestError, FileNotFoundError, ValueError, OSError) as e:
        return usage_error(str(e))
    except SlurmError as e:
        print(f"flowprep: error: {e}", file=sys.stderr)
        return 1
    _print_submitted(rec, num_tasks, script, store)
    return 0


def _write_array(
    args: argparse.Namespace,
    cfg: Any,
    recipe: Path,
    num_tasks: int,
    indices: list[int],
    opts: SlurmOptions,
    ids_file: Path | None,
) -> tuple[str, Path]:
    """The array's script (text, file), with the run record and the resources it asks for."""
    from dataclasses import replace

    from flowprep.run.slurm import record_options, render_script, write_script
    from flowprep.run.state import record_run, run_dir

    store = Path(cfg.out).resolve()
    # rendered first: it refuses paths no sbatch script can hold before anything is written
    text = render_script(
        cfg, recipe, num_tasks, indices, opts, ids_file=ids_file, backend=args.backend, device=args.device
    )
    # so `flowprep status STORE` works from the moment the array is queued
    record_run(run_dir(store), recipe, replace(cfg, num_tasks=num_tasks))
    number = int(ids_file.stem.split("-")[1]) if ids_file is not None else None
    script = write_script(store, text, "retry" if args.retry_failed else "array", number)
    record_options(store, opts)
    return text, script


def _retry_options(given: dict[str, Any], store: Path, *, finalize: bool) -> SlurmOptions:
    """The command line's resources over the first submission's (recorded ones reused are named)."""
    from flowprep.run.slurm import merge_options, recorded_options

    kept = recorded_options(store)
    opts = merge_options(given, kept, finalize=finalize)
    reused = sorted(k for k in kept if given.get(k) is None and kept[k] not in (None, []))
    if reused:
        print(
            f"retry keeps the recorded {', '.join(f'--{k.replace(chr(95), chr(45))}' for k in reused)} "
            f"({', '.join(f'{k}={kept[k]}' for k in reused)}); give one to change it"
        )
    return opts


def _retry_tasks(cfg: Any, store: Path, num_tasks: int, *, queued_before: bool) -> tuple[list[int], Path] | None:
    """(task indices, ids file) of a --retry-failed array; None when nothing is left to retry.
    ValueError while jobs of the store are still queued or running."""
    from flowprep.run.slurm import queued, write_ids_file
    from flowprep.run.status import store_status

    busy = queued(store) if queued_before else {}
    if busy:
        raise ValueError(
            f"job(s) {', '.join(busy)} of this store are still queued or running; wait for them "
            "(or scancel them) before --retry-failed, so no task runs twice at once"
        )
    st = store_status(cfg, num_tasks)
    if not st.retry_keys:
        print(
            f"{cfg.dataset}: nothing to retry: {st.done} done, {st.failed} failed for good "
            f"({', '.join(f'{k}: {v}' for k, v in st.failed_by_reason.items()) or 'none'})"
        )
        return None
    indices = list(st.retry_tasks)
    ids_file = write_ids_file(store, st.retry_keys)  # retry-NNN.ids; its script is retry-NNN.sbatch
    print(
        f"retrying {len(st.retry_keys)} row(s) ({st.pending} pending, {st.retryable_failed} retryable failures) "
        f"in {len(indices)} task(s); ids: {ids_file}"
    )
    return indices, ids_file


def _print_dry_run(text: str, script: Path, store: Path, opts: SlurmOptions) -> None:
    print(text, end="")
    print(f"# dry run: written to {script}, not submitted (submit it with: sbatch {script})")
    if opts.finalize:
        print(
            f"# `flowprep finalize {store}` is queued only by `flowprep slurm submit`: after a hand-submitted "
            f"array, run it (or: sbatch --dependency=afterany:<job id> --wrap 'flowprep finalize {store}')"
        )


def _print_submitted(rec: dict[str, Any], num_tasks: int, script: Path, store: Path) -> None:
    from flowprep.run.state import logs_dir

    print(f"submitted array job {rec['job_id']} (tasks {rec['array']} of {num_tasks}): {script}")
    if rec.get("finalize_job_id"):
        print(f"finalize job {rec['finalize_job_id']} runs after it")
    print(f"logs: {logs_dir(store)}/{rec['job_id']}_<task>.out   progress: flowprep status {store}")


def _add_status(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", help="a store (out/kinetics400.zarr) or a recipe (with --out when not the default)")
    p.add_argument("--out", help="store path, when target is a recipe (default: out/<dataset>.zarr)")
    p.add_argument("--num-tasks", type=int, help="per-task counts for N shards (default: the last run's)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument(
        "--slurm", choices=("auto", "no"), default="auto", help="show this store's SLURM jobs (auto: if any)"
    )


def _add_finalize(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", help="a store (out/kinetics400.zarr) or a recipe (with --out when not the default)")
    p.add_argument("--out", help="store path, when target is a recipe (default: out/<dataset>.zarr)")


def _add_slurm(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="slurm_command", required=True, metavar="SLURM_COMMAND")
    s = sub.add_parser(
        "submit",
        help="write an sbatch job array script for a recipe and submit it",
        description="Write <store>.run/slurm/array-NNN.sbatch (a job array; each task runs "
        "`flowprep run` on 1/N of the manifest) and submit it with sbatch.",
    )
    s.add_argument(
        "recipe",
        metavar="TARGET",
        help="recipe file or dataset name, a folder of videos or a video (as for "
        "`flowprep run`: its recipe and manifest go into the store's run folder), or an existing store",
    )
    s.add_argument(
        "--tasks", type=int, help="number of array tasks N (with --retry-failed: default the last submission's)"
    )
    s.add_argument("--out", help="store path (default: out/<dataset>.zarr); must be on a file system all nodes share")
    s.add_argument(
        "--partition", help="SLURM partition (--retry-failed: the last script's unless given; so are the next six)"
    )
    s.add_argument(
        "--gpus-per-task", type=int, help="GPUs per task (default: 1 if the recipe or --device asks for cuda, else 0)"
    )
    s.add_argument("--cpus", type=int, help="CPUs per task (default: 1); a CPU-only task runs that many videos at once")
    s.add_argument("--mem", help="memory per task, e.g. 16G")
    s.add_argument("--time", help="time limit per task, e.g. 4:00:00")
    s.add_argument("--account", help="SLURM account to charge")
    s.add_argument("--max-running", type=int, help="at most K tasks at once (--array=...%%K)")
    s.add_argument(
        "--extra", action="append", metavar='"#SBATCH ..."', help="an extra sbatch line, verbatim (repeatable)"
    )
    s.add_argument("--backend", help="flow backend override, as for `flowprep run`")
    s.add_argument("--device", help="torch device override, as for `flowprep run`")
    s.add_argument(
        "--retry-failed",
        action="store_true",
        help="resubmit only the tasks owning pending or retryably failed rows, and only those rows",
    )
    s.add_argument("--no-finalize", action="store_true", help="do not queue `flowprep finalize` after the array")
    s.add_argument("--dry-run", action="store_true", help="write and print the script; do not submit")
    from flowprep.cli.recipes import add_folder_options

    add_folder_options(s)
