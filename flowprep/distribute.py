"""Distributor: one run split over many tasks (a SLURM array, a dask cluster), one shared store.

A cluster task runs the local ``run`` on its share of the manifest; there is no second code path.

* Shard rule: manifest item ``i`` (rows and malformed rows together, in file order, 0-based,
  after ``--limit``) belongs to task ``i % num_tasks``, as in img2dataset.  Interleaving spreads
  each class (manifests are often sorted by label, and clip lengths differ by class) and each
  stretch of slow sources over all tasks, so tasks finish together; a contiguous range would
  give one task the long classes.  The rule needs only the manifest, so ``status`` and
  ``slurm submit --retry-failed`` can say which task owns a row without asking anyone.
* Nothing two tasks write is shared: each task tags its ledger (``ledger/<task>.jsonl``), its
  staging entries and its index part (``index/<task>.json``) with ``t{index:04d}``; videos are
  disjoint by the shard rule and appear by one atomic rename.  ``index.json`` is written only by
  a single-task run or by ``finalize``; ``read_index`` merges the parts on read.
* ``run.json`` beside the store remembers the recipe, so ``status`` and ``finalize`` accept a
  store path.

This module never reads environment variables: the CLI passes them in.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

from flowprep.ledger import write_json_atomic

EXECUTORS = ("local", "dask")
T = TypeVar("T")


def task_tag(task_index: int) -> str:
    """Ledger / staging / index-part tag of cluster task ``task_index``: ``t0003``."""
    return f"t{task_index:04d}"


def check_cluster_overrides(overrides: Mapping[str, Any]) -> tuple[int, int, str, str | None]:
    """Checked (num_tasks, task_index, executor, scheduler) from load_recipe's overrides."""
    from flowprep.recipe import RecipeError

    num_tasks = 1 if overrides.get("num_tasks") is None else overrides["num_tasks"]
    task_index = 0 if overrides.get("task_index") is None else overrides["task_index"]
    if not isinstance(num_tasks, int) or not 1 <= num_tasks <= 100_000:
        raise RecipeError(f"--num-tasks {num_tasks!r}: must be an integer in [1, 100000]")
    if not isinstance(task_index, int) or not 0 <= task_index < num_tasks:
        raise RecipeError(f"--task-index {task_index!r}: must be an integer in [0, {num_tasks - 1}] (--num-tasks {num_tasks})")
    executor = overrides.get("executor") or "local"
    if executor not in EXECUTORS:
        raise RecipeError(f"--executor {executor!r}: allowed: {', '.join(EXECUTORS)}")
    scheduler = overrides.get("scheduler")
    if executor == "dask" and not scheduler:
        raise RecipeError("--executor dask needs --scheduler ADDRESS (e.g. tcp://head-node:8786)")
    if executor != "dask" and scheduler:
        raise RecipeError(f"--scheduler {scheduler!r} is only used with --executor dask")
    return num_tasks, task_index, executor, scheduler


def task_from_env(num_tasks: int | None, task_index: int | None, environ: Mapping[str, str]) -> tuple[int | None, int | None]:
    """Fill --num-tasks / --task-index from SLURM_ARRAY_TASK_COUNT / SLURM_ARRAY_TASK_ID when
    neither flag is given (the CLI passes ``os.environ``).  A retry array (``--array=1,4``) has
    fewer tasks than the shard count, which is why `flowprep slurm submit` always passes both."""
    if num_tasks is not None or task_index is not None or "SLURM_ARRAY_TASK_ID" not in environ:
        return num_tasks, task_index
    try:
        return int(environ["SLURM_ARRAY_TASK_COUNT"]), int(environ["SLURM_ARRAY_TASK_ID"])
    except (KeyError, ValueError):
        raise ValueError(
            "SLURM_ARRAY_TASK_ID is set but SLURM_ARRAY_TASK_COUNT is missing or not a number; "
            "pass --num-tasks N --task-index I"
        ) from None


def read_manifest(cfg: Any) -> tuple[list[Any], list[Any]]:
    """The rows and malformed rows a run of ``cfg`` covers (the manifest after ``--limit``), as ``run`` reads them."""
    from flowprep.manifest import parse_manifest

    rows, row_errors = parse_manifest(cfg.manifest)
    if cfg.limit is not None:
        rows = rows[: cfg.limit]
        row_errors = [e for e in row_errors if e.line <= (rows[-1].line if rows else 0)]
    return rows, row_errors


def item_key(item: Any) -> str:
    """Ledger key of a manifest item: the video id, or ``line:<n>`` for a malformed row."""
    video_id = getattr(item, "video_id", None)
    return video_id if video_id is not None else f"line:{item.line}"


def manifest_items(rows: list[Any], row_errors: list[Any]) -> list[Any]:
    """Rows and malformed rows in file order: the sequence the shard rule numbers."""
    return sorted([*rows, *row_errors], key=lambda x: x.line)


def shard_manifest(rows: list[T], row_errors: list[Any], num_tasks: int, task_index: int) -> tuple[list[T], list[Any]]:
    """Task ``task_index``'s share: item i is its own when ``i % num_tasks == task_index``."""
    if num_tasks == 1:
        return rows, row_errors
    mine = {id(x) for i, x in enumerate(manifest_items(rows, row_errors)) if i % num_tasks == task_index}
    return [r for r in rows if id(r) in mine], [e for e in row_errors if id(e) in mine]


def task_of_keys(rows: list[Any], row_errors: list[Any], num_tasks: int) -> dict[str, int]:
    """Ledger key -> the index of the task that owns it."""
    return {item_key(x): i % num_tasks for i, x in enumerate(manifest_items(rows, row_errors))}


def keep_only(rows: list[T], row_errors: list[Any], keys: frozenset[str] | None) -> tuple[list[T], list[Any]]:
    """Only the rows named in ``keys`` (a retry's list); malformed rows are never retried."""
    if keys is None:
        return rows, row_errors
    return [r for r in rows if item_key(r) in keys], []


def read_keys_file(path: str | Path) -> list[str]:
    """Video ids, one per line (blank lines and ``#`` comments ignored)."""
    text = Path(path).read_text(encoding="utf-8")
    return [s for s in (line.strip() for line in text.splitlines()) if s and not s.startswith("#")]


# -- index parts --------------------------------------------------------------------------------


def index_part_path(run_dir: Path, task: str) -> Path:
    folder = run_dir / "index"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{task}.json"


def read_index(run_dir: Path) -> dict[str, Any] | None:
    """The index, merged on read: ``index.json`` overlaid with every task part written after it
    (row by row, by manifest line).  None when there is neither."""
    base_path = run_dir / "index.json"
    base = json.loads(base_path.read_text()) if base_path.exists() else None
    parts = sorted((run_dir / "index").glob("*.json")) if (run_dir / "index").is_dir() else []
    fresh = []
    for p in parts:
        try:
            part = json.loads(p.read_text())
        except ValueError:
            continue
        if base is None or part.get("updated", "") >= base.get("updated", ""):
            fresh.append(part)
    if not fresh:
        return base
    merged = dict(base or {k: v for k, v in fresh[0].items() if k not in ("videos", "task", "num_tasks", "task_index")})
    by_line = {v["line"]: v for v in (base or {}).get("videos", [])}
    for part in sorted(fresh, key=lambda p: p.get("updated", "")):
        by_line.update({v["line"]: v for v in part.get("videos", [])})
        merged["updated"] = max(merged.get("updated", ""), part.get("updated", ""))
    videos = [by_line[line] for line in sorted(by_line)]
    merged["videos"] = videos
    merged["counts"] = {s: sum(v["status"] == s for v in videos) for s in ("done", "failed", "pending")}
    return merged


# -- run.json: what a store was built from --------------------------------------------------------


def record_run(run_dir: Path, recipe: Path, cfg: Any) -> None:
    """Remember the recipe and task count beside the store (``status`` / ``finalize`` read it).
    Every task of an array writes the same content, atomically; an equal file is left alone."""
    info = {
        "recipe": str(Path(recipe).resolve()),
        "manifest": str(cfg.manifest),
        "dataset": cfg.dataset,
        "store": str(Path(cfg.out).resolve()),
        "cache_dir": str(Path(cfg.cache_dir).resolve()),
        "num_tasks": cfg.num_tasks,
        "limit": cfg.limit,
    }
    path = run_dir / "run.json"
    try:
        if json.loads(path.read_text()) == info:
            return
    except (OSError, ValueError):
        pass
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, info)


def read_run(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "run.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{path} not found: this store was not built by `flowprep run` (or by an older flowprep); "
            "pass the recipe instead, with --out STORE"
        ) from None


# -- finalize -------------------------------------------------------------------------------------


def finalize(cfg: Any) -> dict[str, Any]:
    """Write the complete ``index.json`` from the manifest, all tasks' ledgers and the store;
    run it once after every task has ended (`flowprep slurm submit` queues it as a dependent job)."""
    from flowprep.pipeline import write_index

    return write_index(cfg, *read_manifest(cfg))


# -- other executors --------------------------------------------------------------------------------


def parallel_results(cfg: Any, fn: Callable[..., T], args_list: list[tuple[Any, ...]]) -> Iterator[T]:
    """``fn(*args)`` for each args tuple, on the executor ``cfg.executor`` names, yielded as they
    finish.  "dask": joblib's dask backend on the cluster at ``cfg.scheduler`` (a shared file
    system must hold the store and the sources); the caller's progress queue cannot cross hosts,
    so workers report nothing until a video is done."""
    from joblib import Parallel, delayed, parallel_config

    if cfg.executor != "dask":
        raise ValueError(f"executor {cfg.executor!r}: allowed here: dask")
    try:
        from distributed import Client
    except ImportError:
        raise RuntimeError("--executor dask needs the 'distributed' package: pip install distributed") from None
    with Client(cfg.scheduler), parallel_config(backend="dask"):
        n_jobs = cfg.jobs if cfg.jobs > 1 else -1  # -1: as many as the cluster has threads
        yield from Parallel(n_jobs=n_jobs, return_as="generator_unordered")(delayed(fn)(*a) for a in args_list)
