"""Ledger: what happened to every manifest row, kept beside the store.

``<name>.run/ledger/<task>.jsonl``: one JSON object per line, appended as each row finishes:
``{"key", "line", "status": "done"|"failed"|"skipped", "reason", "task", "time", ...}``.
``key`` is the video id, or ``line:<n>`` for a row too malformed to have one.  Each task writes
only its own file, so cluster tasks never write the same file; the latest record of a key (by
time) wins when files are merged.  ``index.json`` is the merged view, rewritten atomically.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

STATUSES = ("done", "failed", "skipped")


def ledger_dir(run_dir: Path) -> Path:
    return run_dir / "ledger"


class LedgerWriter:
    """Appends records for one task; each record is flushed as it is written."""

    def __init__(self, run_dir: Path, task: str):
        folder = ledger_dir(run_dir)
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / f"{task}.jsonl"
        self.task = task
        self._f = open(self.path, "a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        if record.get("status") not in STATUSES:
            raise ValueError(f"ledger status must be one of {STATUSES}, got {record.get('status')!r}")
        rec = {"time": time.time(), "task": self.task, **record}
        self._f.write(json.dumps(rec, sort_keys=True) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> LedgerWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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
    # pid alone is not unique on a shared file system (two hosts, same pid): add a random part
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    counts = Counter(r["status"] for r in records)
    reasons = Counter(r.get("reason_class", "other") for r in records if r["status"] == "failed")
    return {"rows": len(records), **{s: counts.get(s, 0) for s in STATUSES}, "failed_by_reason": dict(reasons)}
