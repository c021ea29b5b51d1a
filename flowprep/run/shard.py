"""Sharding: one run split over many tasks (a SLURM array, a dask cluster), one shared store.

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
  a single-task run or by ``finalize``; ``read_index`` merges the parts on read (all of these
  files belong to ``flowprep.run.state``).

This module never reads environment variables: the CLI passes them in.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def task_tag(task_index: int) -> str:
    """Ledger / staging / index-part tag of cluster task ``task_index``: ``t0003``."""
    return f"t{task_index:04d}"


def task_from_env(
    num_tasks: int | None, task_index: int | None, environ: Mapping[str, str]
) -> tuple[int | None, int | None]:
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
    from flowprep.dataset.manifest import parse_manifest

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
