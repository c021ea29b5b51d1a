"""Status: how far a store has got, over all tasks: done / failed by reason / pending, per task,
throughput and time left; and which rows a retry should redo.

Reads the manifest, every task's ledger and the store's ``videos/`` folder; writes nothing, so
it is safe while tasks run.  A row is *done* when its group is complete in the store (the
store, not the ledger, is the truth: a task killed between the rename and its ledger line still
counts), *failed* when its latest ledger record says so, *pending* otherwise.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from flowprep.run.shard import item_key, read_manifest, task_of_keys, task_tag
from flowprep.run.state import is_retryable, read_latest, run_dir

THROUGHPUT_WINDOW_S = 900.0  # rate over the last 15 minutes of finished videos


@dataclass(frozen=True)
class TaskCounts:
    done: int = 0
    failed: int = 0
    pending: int = 0


@dataclass(frozen=True)
class Status:
    dataset: str
    store: str
    num_tasks: int
    rows: int
    done: int
    failed: int
    pending: int
    failed_by_reason: dict[str, int]
    retryable_failed: int
    per_task: tuple[TaskCounts, ...]
    videos_per_s: float | None  # over the throughput window; None with fewer than 2 videos done
    frames_per_s: float | None
    eta_s: float | None  # pending + retryable failures at videos_per_s
    last_done: float | None  # epoch seconds of the latest finished video
    retry_keys: tuple[str, ...]  # pending or retryably failed rows, in manifest order
    retry_tasks: tuple[int, ...]  # the tasks that own them

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["per_task"] = {task_tag(i): asdict(c) for i, c in enumerate(self.per_task)}
        return json.loads(json.dumps(d))  # tuples -> lists: the same as what --json prints


def complete_ids(store: str | Path) -> set[str]:
    """Ids of the complete videos: one directory scan, one stat per video."""
    videos = Path(store) / "videos"
    if not videos.is_dir():
        return set()
    with os.scandir(videos) as it:
        return {e.name for e in it if e.is_dir() and os.path.exists(os.path.join(e.path, "zarr.json"))}


def _throughput(done: list[tuple[float, int]]) -> tuple[float | None, float | None, float | None]:
    if not done:
        return None, None, None
    done.sort()
    t_last = done[-1][0]
    window = [d for d in done if d[0] >= t_last - THROUGHPUT_WINDOW_S]
    span = window[-1][0] - window[0][0]
    if len(window) < 2 or span <= 0:
        return None, None, t_last
    # n videos finished in `span` seconds after the first one: (n - 1) / span
    return (len(window) - 1) / span, sum(f for _, f in window[1:]) / span, t_last


def store_status(cfg: Any, num_tasks: int = 1) -> Status:
    """The status of ``cfg.out`` against ``cfg.manifest`` (after ``cfg.limit``)."""
    rows, row_errors = read_manifest(cfg)
    owner = task_of_keys(rows, row_errors, num_tasks)
    complete = complete_ids(cfg.out)
    done_events: list[tuple[float, int]] = []

    def count_done(rec: dict[str, Any]) -> None:
        if rec.get("status") == "done":
            done_events.append((rec.get("time", 0), rec.get("n_frames", 0)))

    latest = read_latest(run_dir(cfg.out), count_done)

    per_task: list[Counter[str]] = [Counter() for _ in range(num_tasks)]
    reasons: Counter[str] = Counter()
    retry: list[tuple[int, str]] = []
    retryable_failed = 0
    for row in rows:
        key = row.video_id
        rec = latest.get(key, {})
        if key in complete:
            state = "done"
        elif rec.get("status") == "failed":
            state = "failed"
            rc = rec.get("reason_class", "other")
            reasons[rc] += 1
            if is_retryable(rc):
                retryable_failed += 1
                retry.append((row.line, key))
        else:
            state = "pending"
            retry.append((row.line, key))
        per_task[owner[key]][state] += 1
    for e in row_errors:
        reasons["manifest"] += 1
        per_task[owner[item_key(e)]]["failed"] += 1

    done = sum(c["done"] for c in per_task)
    failed = sum(c["failed"] for c in per_task)
    pending = sum(c["pending"] for c in per_task)
    vps, fps, last_done = _throughput(done_events)
    todo = pending + retryable_failed
    retry_keys = tuple(k for _, k in sorted(retry))
    return Status(
        dataset=cfg.dataset,
        store=str(cfg.out),
        num_tasks=num_tasks,
        rows=len(rows) + len(row_errors),
        done=done,
        failed=failed,
        pending=pending,
        failed_by_reason=dict(sorted(reasons.items())),
        retryable_failed=retryable_failed,
        per_task=tuple(TaskCounts(c["done"], c["failed"], c["pending"]) for c in per_task),
        videos_per_s=vps,
        frames_per_s=fps,
        eta_s=todo / vps if vps and todo else (0.0 if not todo else None),
        last_done=last_done,
        retry_keys=retry_keys,
        retry_tasks=tuple(sorted({owner[k] for k in retry_keys})),
    )


def _duration(s: float) -> str:
    s = int(round(s))
    if s < 120:
        return f"{s} s"
    if s % 60 == 0 and s < 7200:
        return f"{s // 60} min"
    if s < 7200:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def format_status(st: Status, now: float | None = None) -> str:
    now = time.time() if now is None else now

    def pct(n: int) -> str:
        return f"{100 * n / st.rows:5.1f}%" if st.rows else "    -"

    lines = [f"{st.dataset}: {st.store}, {st.rows} rows over {st.num_tasks} task(s)"]
    lines.append(f"  done     {st.done:>8}  {pct(st.done)}")
    reasons = ", ".join(f"{k}: {v}" for k, v in st.failed_by_reason.items())
    lines.append(
        f"  failed   {st.failed:>8}  {pct(st.failed)}"
        + (f"  ({reasons}; {st.retryable_failed} retryable)" if reasons else "")
    )
    lines.append(f"  pending  {st.pending:>8}  {pct(st.pending)}")
    if st.videos_per_s:
        lines.append(
            f"  rate     {st.videos_per_s * 3600:,.0f} videos/h, {st.frames_per_s or 0:,.0f} frames/s "
            f"(videos finished in the last {_duration(THROUGHPUT_WINDOW_S)})"
        )
    if st.last_done is not None:
        lines.append(f"  last     video finished {_duration(max(0.0, now - st.last_done))} ago")
    todo = st.pending + st.retryable_failed
    if todo == 0:
        lines.append(
            "  left     nothing: every row is done or failed for good" + (" (see index.json)" if st.failed else "")
        )
    elif st.eta_s is not None:
        lines.append(f"  left     {todo} video(s), about {_duration(st.eta_s)} at that rate (if tasks are running)")
    else:
        lines.append(f"  left     {todo} video(s); no rate yet")
    if st.num_tasks > 1:
        open_tasks = [i for i, c in enumerate(st.per_task) if c.pending]
        shown = ", ".join(f"{task_tag(i)} ({st.per_task[i].pending})" for i in open_tasks[:12])
        more = f", ... {len(open_tasks) - 12} more" if len(open_tasks) > 12 else ""
        lines.append(
            f"  tasks    {st.num_tasks - len(open_tasks)} of {st.num_tasks} with nothing pending"
            + (f"; pending in {shown}{more}" if open_tasks else "")
        )
    if st.retry_keys:
        lines.append(
            f"  retry    {len(st.retry_keys)} row(s) in {len(st.retry_tasks)} task(s) once no task runs: "
            "flowprep run again, or flowprep slurm submit RECIPE --retry-failed"
        )
    return "\n".join(lines)
