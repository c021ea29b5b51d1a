"""Run state: the one owner of ``<name>.run/``, the bookkeeping folder beside a store.

Nothing else knows this folder's layout; every other room asks here for a path.

    <name>.run/
      ledger/<task>.jsonl     one line per processed manifest row (append-only, per task)
      index.json              every manifest row with its latest status (single-task run, finalize)
      index/<task>.json       a cluster task's part of the index (its shard's rows)
      run.json                recipe, manifest and task count of the latest run
      staging/                videos being written, ``<task>--<video_id>--<random>``
      leases/<task>.json      the live process that owns a task tag (host, pid, heartbeat; run.lease)
      slurm/                  sbatch scripts, jobs.jsonl (flowprep.run.slurm)
      logs/                   cluster task logs
      input/                  recipe.toml + manifest.csv that `flowprep run DIR|VIDEO` generated
      repair.json             videos taken out of the store and not yet redone (``run --repair``
                              damage, or videos of old settings that ``--overwrite`` removed), so
                              a killed repair resumes instead of finding "0 damaged"

The rules of a run live here too: a row is **done** when its video is complete in the store,
**failed** when its latest ledger record failed, **pending** otherwise; ``is_retryable`` is the
single retry rule that ``run --retry-failed``, ``status`` and ``slurm submit --retry-failed``
share.

Ledger records: ``LedgerRecord`` (``key``, ``line``, ``status``: "done" | "failed" | "skipped",
``reason_class``, ``reason``, ...), written as one JSON line with ``task`` and ``time``; fields
that are unset are left out of the line.  ``key`` is the video id, or ``line:<n>`` for a row too malformed to have one.  Each task writes
only its own file, so cluster tasks never write the same file; the latest record of a key (by
time) wins when files are merged.  ``index.json`` is the merged view, rewritten atomically.

A bookkeeping file that cannot be written (a full disk, a quota, an I/O error) raises
``BookkeepingError`` (an OSError) naming the file; nothing is left torn (ledger lines are
appended whole or not at all, the other files are replaced atomically), so a rerun resumes.
"""

from __future__ import annotations

import errno
import json
import os
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal, get_args

from flowprep.atomic import append_whole, write_json
from flowprep.run.lease import Lease, live_owner
from flowprep.run.shard import read_manifest
from flowprep.store.zarr_store import FORMAT_VERSION, is_complete

Status = Literal["done", "failed", "skipped"]
STATUSES: tuple[Status, ...] = get_args(Status)

# The machine ran out of something, the input is not to blame: never a usage error, and a rerun
# (after freeing space, raising the quota, fixing the disk) resumes.  (Windows has no EDQUOT.)
RESOURCE_ERRNOS = frozenset(getattr(errno, n) for n in ("ENOSPC", "EDQUOT", "EIO", "EFBIG") if hasattr(errno, n))


class BookkeepingError(OSError):
    """A file of the run's bookkeeping (ledger, index, lease, ...) could not be written.

    The OSError it stands for (``errno``, ``strerror``, ``filename``), with a message that says
    which file it was: "cannot write the ledger <path>: No space left on device".  An OSError, so
    whoever handled the bare one still does."""

    def __init__(self, what: str, path: Path, error: OSError):
        super().__init__(error.errno, error.strerror or str(error), str(path))
        self.what = what  # "the ledger", "the index", ...

    def __str__(self) -> str:
        return f"cannot write {self.what} {self.filename}: {self.strerror}"


@contextmanager
def writing(what: str, path: Path) -> Iterator[None]:
    """An OSError inside becomes a ``BookkeepingError`` naming ``what`` (e.g. "the ledger") and ``path``."""
    try:
        yield
    except OSError as e:
        raise BookkeepingError(what, path, e) from e


@dataclass
class LedgerRecord:
    """One manifest row's outcome: what ``process_video`` returns and the ledger stores."""

    key: str  # the video id, or ``line:<n>`` for a row too malformed to have one
    line: int  # manifest line (1-based; the header is line 1)
    status: Status
    label: str | None = None
    split: str | None = None
    source: str | None = None  # the local file the video was decoded from
    reason_class: str | None = None  # failed: manifest, source, decode, interrupted, internal, ...
    reason: str | None = None  # failed / skipped: for a person
    traceback: str | None = None  # failed as "internal": where
    n_frames: int | None = None
    height: int | None = None
    width: int | None = None
    partial: str | None = None  # kept under --allow-partial: why the decode was partial
    seconds: float | None = None
    kept: bool = False  # an earlier non-retryable failure carried over by --retry-failed
    staged: str | None = None  # in flight only: the prepared staging folder the parent commits

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"ledger status must be one of {STATUSES}, got {self.status!r}")

    def to_json(self) -> dict[str, Any]:
        """The ledger line's fields: unset ones and ``staged`` (never written) left out."""
        return {
            f.name: v
            for f in fields(self)
            if (v := getattr(self, f.name)) is not None and v is not False and f.name != "staged"
        }


# Failures that a rerun cannot fix: the row, the file or the video itself is the problem.
# Everything else (network, timeouts, "internal" crashes, a full disk, out of memory, ...) is
# worth a retry.  The one rule for `run --retry-failed`, `status` and `slurm submit --retry-failed`.
NON_RETRYABLE = frozenset(
    {"manifest", "source", "decode", "too_few_frames", "unavailable", "private", "copyright", "geo_blocked", "sign_in"}
)


def is_retryable(reason_class: str | None) -> bool:
    return (reason_class or "other") not in NON_RETRYABLE


def run_dir(store_path: str | Path) -> Path:
    """The bookkeeping folder beside a store: ``out/demo.zarr`` -> ``out/demo.run``."""
    p = Path(store_path)
    return p.with_suffix(".run") if p.suffix == ".zarr" else p.with_name(p.name + ".run")


def input_dir(store_path: str | Path) -> Path:
    """Where ``flowprep run DIR`` / ``run VIDEO`` keep the recipe and manifest they generate."""
    return run_dir(store_path) / "input"


def staging_dir(store_path: str | Path) -> Path:
    return run_dir(store_path) / "staging"


def staging_entry(store_path: str | Path, tag: str, video_id: str) -> Path:
    """A fresh staging folder for one video of task ``tag`` (the tag lets the task find its debris)."""
    folder = staging_dir(store_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{tag or 'local'}--{video_id}--{uuid.uuid4().hex[:8]}"


def lease_path(store_path: str | Path, tag: str) -> Path:
    """The lease file of task ``tag``: which live process owns its ledger and staging entries."""
    return run_dir(store_path) / "leases" / f"{tag or 'local'}.json"


def acquire_lease(store_path: str | Path, tag: str, settings: str | None = None) -> Lease:
    """Own task ``tag`` of this store until ``release``; raises ``LeaseHeld`` if a live run owns it.
    ``settings``: the digest of the run's content settings, recorded in the lease so that a run
    with other settings can see this one (``live_leases``)."""
    extra = {"settings": settings} if settings is not None else {}
    path = lease_path(store_path, tag)
    with writing("the lease", path):
        return Lease(path, f"store {store_path} (task {tag or 'local'})", extra=extra).acquire()


def live_leases(store_path: str | Path) -> dict[str, dict[str, Any]]:
    """Task tag -> lease of every live run of this store (the caller's own included)."""
    folder = run_dir(store_path) / "leases"
    out = {}
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        info = live_owner(path)
        if info is not None:
            out[path.stem] = info
    return out


# -- repair list: videos out of the store that a repair must still redo -------------------------


def repair_path(store_path: str | Path) -> Path:
    return run_dir(store_path) / "repair.json"


def read_repair(store_path: str | Path) -> set[str]:
    try:
        return set(json.loads(repair_path(store_path).read_text())["ids"])
    except (OSError, ValueError, KeyError, TypeError):
        return set()


def update_repair(store_path: str | Path, add: Iterable[str] = (), done: Iterable[str] = ()) -> None:
    """Add ids before their videos leave the store; drop them once redone.  Atomic rewrite."""
    add, done = set(add), set(done)
    ids = read_repair(store_path)
    new = (ids | add) - done
    if new == ids:
        return
    path = repair_path(store_path)
    with writing("the repair list", path):
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, {"ids": sorted(new)})


def clean_staging(store_path: str | Path, tag: str = "", held: Lease | None = None) -> int:
    """Remove staging debris whose owner is dead; returns how many entries.

    An entry ``<tag>--...`` belongs to the process holding lease ``<tag>``: it is removed only
    when that lease is absent or stale, or is ``held`` by the caller itself (a run cleans its own
    tag's debris after taking the lease, since the previous holder must have died).  Entries of
    a live run, on this host or another, are never touched.  ``tag`` is kept for callers that
    name their own tag; every dead tag's debris is cleaned.
    """
    import shutil

    staging = staging_dir(store_path)
    if not staging.is_dir():
        return 0
    n = 0
    alive: dict[str, bool] = {}
    for entry in staging.iterdir():
        owner = entry.name.split("--", 1)[0]
        if owner not in alive:
            path = lease_path(store_path, owner)
            ours = held is not None and held.path == path and not held.lost
            alive[owner] = not ours and live_owner(path) is not None
        if not alive[owner]:
            shutil.rmtree(entry, ignore_errors=True)
            n += 1
    return n


def index_path(store_path: str | Path, cfg: Any = None) -> Path:
    """Where a run's index is: ``index.json``, or a cluster task's part ``index/<task>.json``."""
    if cfg is not None and cfg.num_tasks > 1:
        return index_part_path(run_dir(store_path), cfg.task)
    return run_dir(store_path) / "index.json"


def run_json_path(store_path: str | Path) -> Path:
    return run_dir(store_path) / "run.json"


def slurm_dir(store_path: str | Path) -> Path:
    return run_dir(store_path) / "slurm"


def logs_dir(store_path: str | Path) -> Path:
    return run_dir(store_path) / "logs"


def ledger_dir(run_dir: Path) -> Path:
    return run_dir / "ledger"


class LedgerWriter:
    """Appends records for one task (the lease holder is its only writer), each in one write.

    A line lands whole or not at all (``append_whole``: a full disk's partial line is cut off
    again), and a torn last line that a kill left is cut off on opening, so the next record
    starts on a line of its own instead of being glued to the torn one and lost."""

    def __init__(self, run_dir: Path, task: str):
        folder = ledger_dir(run_dir)
        self.path = folder / f"{task}.jsonl"
        self.task = task
        with writing("the ledger", self.path):
            folder.mkdir(parents=True, exist_ok=True)
            # read too: a torn tail is found by reading the end of the file
            self._fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o666)
            try:
                _cut_torn_tail(self._fd)
            except BaseException:
                os.close(self._fd)
                raise

    def write(self, record: LedgerRecord | Mapping[str, Any]) -> None:
        if isinstance(record, LedgerRecord):
            record = record.to_json()
        if record.get("status") not in STATUSES:
            raise ValueError(f"ledger status must be one of {STATUSES}, got {record.get('status')!r}")
        rec = {"time": time.time(), "task": self.task, **record}
        with writing("the ledger", self.path):
            append_whole(self._fd, (json.dumps(rec, sort_keys=True) + "\n").encode("utf-8"))

    def close(self) -> None:
        os.close(self._fd)

    def __enter__(self) -> LedgerWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _cut_torn_tail(fd: int) -> None:
    """Cut a file open for appending back to its last newline (a line cut by a kill is unreadable anyway)."""
    size = os.fstat(fd).st_size
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return
    # the lines are short: look back in small steps for the last newline
    end, keep = size, 0
    while end > 0:
        start = max(0, end - 65536)
        chunk = os.pread(fd, end - start, start)
        nl = chunk.rfind(b"\n")
        if nl >= 0:
            keep = start + nl + 1
            break
        end = start
    os.ftruncate(fd, keep)


def read_latest(run_dir: Path, each: Callable[[dict[str, Any]], None] | None = None) -> dict[str, dict[str, Any]]:
    """The latest record of each key over all tasks' ledgers (a torn last line is ignored).
    ``each``, if given, also sees every record on the way (``status`` counts finished videos)."""
    latest: dict[str, dict[str, Any]] = {}
    folder = ledger_dir(run_dir)
    if not folder.is_dir():
        return latest
    for path in sorted(folder.glob("*.jsonl")):
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue  # a line cut by a kill; the row is simply redone
                key = rec.get("key")
                if key is None:
                    continue
                if each is not None:
                    each(rec)
                old = latest.get(key)
                if old is None or rec.get("time", 0) >= old.get("time", 0):
                    latest[key] = rec
    return latest


def write_json_atomic(path: Path, data: Any) -> None:
    write_json(path, data, indent=1, sort_keys=True)


def summarize(records: list[LedgerRecord]) -> dict[str, Any]:
    counts = Counter(r.status for r in records)
    reasons = Counter(r.reason_class or "other" for r in records if r.status == "failed")
    return {"rows": len(records), **{s: counts.get(s, 0) for s in STATUSES}, "failed_by_reason": dict(reasons)}


# -- index parts --------------------------------------------------------------------------------


def index_part_path(run_dir: Path, task: str) -> Path:
    return run_dir / "index" / f"{task}.json"  # its folder is made by the atomic write


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
    with writing("the run record", path):
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
    return write_index(cfg, *read_manifest(cfg))


# -- done / failed / pending -------------------------------------------------------------------


def kept_failure(row: Any, previous: dict[str, Any] | None) -> LedgerRecord | None:
    """For ``--retry-failed``: the record that keeps a row's earlier non-retryable failure.

    None (redo the row) unless its latest record failed with a class ``is_retryable`` refuses
    (a removed or private video stays failed; a 429, a timeout or a crash is tried again).
    """
    if previous is None or previous.get("status") != "failed" or is_retryable(previous.get("reason_class")):
        return None
    return LedgerRecord(
        key=row.video_id,
        line=row.line,
        label=row.label,
        split=row.split,
        status="failed",
        reason_class=previous["reason_class"],
        reason=previous.get("reason"),
        kept=True,
    )


def write_index(cfg: Any, rows: list[Any], row_errors: list[Any], dest: Path | None = None) -> dict[str, Any]:
    """Rewrite ``index.json`` (or ``dest``, a task's part): every row with its status (done / failed / pending)."""
    rdir = run_dir(cfg.out)
    latest = read_latest(rdir)
    videos = []
    for row in rows:
        rec = latest.get(row.video_id, {})
        if is_complete(cfg.out, row.video_id):
            status, reason = "done", None
        elif rec.get("status") == "failed":
            status, reason = "failed", rec.get("reason")
        else:
            status, reason = "pending", None
        entry = {"id": row.video_id, "line": row.line, "label": row.label, "split": row.split, "status": status}
        if reason:
            entry["reason"] = reason
            entry["reason_class"] = rec.get("reason_class", "other")
        if rec.get("n_frames"):
            entry["n_frames"] = rec["n_frames"]
        videos.append(entry)
    for e in row_errors:
        videos.append({"id": None, "line": e.line, "status": "failed", "reason_class": "manifest", "reason": str(e)})
    videos.sort(key=lambda v: v["line"])
    index = {
        "dataset": cfg.dataset,
        "manifest": str(cfg.manifest),
        "format_version": FORMAT_VERSION,
        "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "counts": {s: sum(v["status"] == s for v in videos) for s in ("done", "failed", "pending")},
        "config": {
            "decode": asdict(cfg.decode),
            "flow": {
                "backend": cfg.flow.backend,
                "device": cfg.flow.device,
                "batch": cfg.flow.batch,
                "bound": cfg.flow.bound,
                "params": dict(cfg.flow.params),
            },
            "write": asdict(cfg.write),
        },
        "videos": videos,
    }
    if dest is not None:
        index.update(task=cfg.task, task_index=cfg.task_index, num_tasks=cfg.num_tasks)
    path = dest or rdir / "index.json"
    with writing("the index", path):
        write_json_atomic(path, index)
    return index
