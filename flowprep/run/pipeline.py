"""Pipeline: runs the stages over a manifest, locally in parallel, resumably, losing nothing.

    manifest row -> source (a local file) -> decode (blocks of RGB frames)
                 -> flow (gray, TV-L1, clip, int8) -> store (staging, then atomic rename)

``process_video`` handles one row in a worker and returns a ledger record; it never raises for
a bad video (the reason goes into the record).  ``run`` does the bookkeeping in the parent:
skip complete videos, fan rows out with joblib, append each record to the ledger, rewrite the
index, print the summary.

Who may write (issue 9): ``run`` holds the task tag's lease (``flowprep.run.lease``) for its
whole life, so a second run of the same tag refuses; worker processes watch the main process
(``flowprep.run.orphan``) and die with it; and a worker only *prepares* a video in staging
(written and read back in full): the main process renames it into the store after checking its
lease and the staged files, and then writes the ledger line.  So nothing is committed by a
process nobody records, and a staged video removed under a run is never committed.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from flowprep.dataset.decode import DecodeError, decode_blocks
from flowprep.dataset.manifest import ManifestRow, RowError
from flowprep.dataset.probe import expected_pairs
from flowprep.dataset.source import SourceError, resolve_clip
from flowprep.flow import api as flowmod
from flowprep.run import cpus, orphan
from flowprep.run.lease import Lease
from flowprep.run.recipe import RunConfig
from flowprep.run.shard import item_key, keep_only, read_manifest, shard_manifest
from flowprep.run.state import (
    LedgerWriter,
    acquire_lease,
    clean_staging,
    index_part_path,
    kept_failure,
    read_latest,
    run_dir,
    staging_entry,
    summarize,
    write_index,
)
from flowprep.store import fingerprint
from flowprep.store.verify import verify_store
from flowprep.store.zarr_store import FORMAT_VERSION, StoreError, VideoWriter, create_store, is_complete, publish

log = logging.getLogger("flowprep")
T = TypeVar("T")


class TooFewFrames(RuntimeError):
    pass


@dataclass(frozen=True)
class RunSummary:
    rows: int
    done: int
    failed: int
    skipped: int
    seconds: float
    frames: int
    failed_by_reason: dict[str, int]
    backend: str

    @property
    def ok(self) -> bool:
        return self.failed == 0


def _flow_batch(cfg: RunConfig, backend: str) -> int:
    if cfg.flow.batch:
        return cfg.flow.batch
    # OpenCV works pair by pair anyway: small calls keep the progress bar moving.
    return 4 if backend == "opencv" else 32


def _set_threads(jobs: int) -> None:
    # jobs x threads <= the CPUs this process may use (affinity, cgroup quota)
    cpus.set_solver_threads(cpus.threads_per_job(jobs))


def process_video(
    row: ManifestRow,
    cfg: RunConfig,
    backend: str,
    progress: Callable[[int], None] | None = None,
    commit: bool = True,
    flow_fn: Callable[[np.ndarray], np.ndarray] | None = None,
) -> dict[str, Any]:
    """Decode, compute flow and write one video.  Returns its ledger record; never raises for bad input.

    ``commit=False``: leave the finished, verified video in staging and name it in the record's
    ``staged`` field; the caller commits it (``commit_staged``).  ``run`` does that in its parent.
    ``flow_fn`` (gray uint8 (n+1, H, W) -> int8 flow (n, H, W, 2)) computes a whole block's flow
    elsewhere (a flow worker, ``flowprep.run.flow_worker``); by default it is computed here."""
    t0 = time.time()
    record: dict[str, Any] = {"key": row.video_id, "line": row.line, "label": row.label, "split": row.split}
    writer: VideoWriter | None = None
    try:
        path, start, end = resolve_clip(row, cfg.manifest.parent, cfg.cache_dir, cfg.fetch)
        record["source"] = str(path)
        batch = _flow_batch(cfg, backend)
        decoded: dict[str, Any] = {}
        for block, gray in flowmod.gray_blocks(decode_blocks(str(path), cfg.decode, start, end, report=decoded)):
            if writer is None:
                writer = VideoWriter(
                    cfg.out, row.video_id, block.shape[1], block.shape[2], cfg.write,
                    staging_entry(cfg.out, cfg.task, row.video_id),
                )
            if len(gray) < 2:
                flow_q = np.zeros((0, *block.shape[1:3], 2), np.int8)
            elif flow_fn is not None:  # the whole block at once, in a flow worker
                flow_q = flow_fn(gray)
                if progress:
                    progress(len(gray) - 1)
            else:
                flows = []
                for i in range(0, len(gray) - 1, batch):
                    f = flowmod.compute_flow(
                        gray[i : i + batch + 1], backend=backend, device=cfg.flow.device, **cfg.flow.params
                    )
                    flows.append(flowmod.quantize_flow(f, cfg.flow.bound))
                    if progress:
                        progress(len(f))
                flow_q = np.concatenate(flows)
            writer.append(block, flow_q)
        assert writer is not None  # decode_blocks raises when there are no frames
        if writer.n_frames < 2:
            raise TooFewFrames(f"too few frames: {writer.n_frames} decoded, flow needs at least 2")
        attrs = {
            **({"partial_decode": decoded["partial"]} if decoded.get("partial") else {}),
            "video_id": row.video_id,
            "label": row.label,
            "split": row.split,
            "source": row.path if row.path is not None else f"youtube:{row.youtube_id}",
            "manifest_line": row.line,
            "time_start": row.time_start,
            "time_end": row.time_end,
            "fps": cfg.decode.fps,
            "height": int(writer.rgb.array.shape[1]),
            "width": int(writer.rgb.array.shape[2]),
            "rgb": {"dtype": "uint8", "to_float": "x / 127.5 - 1", "range": [-1, 1]},
            "flow": {
                "algorithm": "tv-l1",
                "backend": backend,
                "params": flowmod.resolve_params(cfg.flow.params),
                "input": "BT.601 luma of the RGB frames, uint8",
                "bound_px": cfg.flow.bound,
                "quantization": {
                    "dtype": "int8",
                    "scale": flowmod.QUANT_LEVELS,
                    "encode": "q = round(clip(px, -bound, bound) / bound * 127)",
                    "decode": "q / 127 (in [-1, 1]); x bound for pixels",
                },
                "channels": ["u (right)", "v (down)"],
                "pairing": "flow[t] maps frame t to frame t+1",
            },
            "decode": {"short_side": cfg.decode.short_side, "interpolation": "bilinear", "fps": cfg.decode.fps},
            "format_version": FORMAT_VERSION,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        if commit:
            writer.commit(attrs, overwrite=cfg.overwrite)
        else:
            record["staged"] = str(writer.prepare(attrs))
        record.update(status="done", n_frames=writer.n_frames, height=attrs["height"], width=attrs["width"])
        if decoded.get("partial"):
            record["partial"] = decoded["partial"]  # kept under --allow-partial: the ledger says so
        writer = None
    except SourceError as e:
        # a fetch.FetchError carries its class (unavailable, private, rate_limited, ...)
        record.update(status="failed", reason_class=getattr(e, "reason_class", "source"), reason=str(e))
    except DecodeError as e:
        record.update(status="failed", reason_class="decode", reason=str(e))
    except TooFewFrames as e:
        record.update(status="failed", reason_class="too_few_frames", reason=str(e))
    except Exception as e:  # a bug or a resource problem: record it with the traceback, go on
        record.update(
            status="failed",
            reason_class="internal",
            reason=f"{type(e).__name__}: {e}",
            traceback=traceback.format_exc(limit=8),
        )
    finally:
        if writer is not None:
            writer.abort()
    record["seconds"] = round(time.time() - t0, 3)
    return record


def _worker(
    row: ManifestRow, cfg: RunConfig, backend: str, q: Any, parent_pid: int | None = None, cwd: str | None = None
) -> dict[str, Any]:
    if parent_pid is not None:
        orphan.watch_parent(parent_pid)
    if cwd is not None and os.getcwd() != cwd:
        # loky reuses workers across runs in one process: relative paths mean the caller's folder
        os.chdir(cwd)
    _set_threads(cfg.jobs)
    return process_video(row, cfg, backend, q.put if q is not None else None, commit=False)


def commit_staged(rec: dict[str, Any], cfg: RunConfig, lease: Lease | None) -> dict[str, Any]:
    """In the lease holder: make a worker's prepared video visible, or turn the record into a failure."""
    staged = rec.pop("staged", None)
    if staged is None:
        return rec
    from pathlib import Path

    try:
        if lease is not None:
            lease.check()
        publish(cfg.out, rec["key"], Path(staged), overwrite=cfg.overwrite)
    except (StoreError, OSError) as e:
        import shutil

        shutil.rmtree(staged, ignore_errors=True)
        for k in ("n_frames", "height", "width"):
            rec.pop(k, None)
        rec.update(status="failed", reason_class="internal", reason=f"commit: {e}")
    return rec


def content_settings(cfg: RunConfig, backend: str) -> dict[str, Any]:
    """The settings that change a store's content (its fingerprint; flowprep.store.fingerprint),
    the same fields ``process_video`` writes into every video's attributes."""
    return {
        "format_version": FORMAT_VERSION,
        "decode": {"fps": cfg.decode.fps, "short_side": cfg.decode.short_side, "interpolation": "bilinear"},
        "flow": {
            "algorithm": "tv-l1", "backend": backend, "params": flowmod.resolve_params(cfg.flow.params),
            "bound_px": cfg.flow.bound, "quantization": {"dtype": "int8", "scale": flowmod.QUANT_LEVELS},
        },
        "codecs": cfg.write.codecs(),  # a JPEG store and a lossless one must not mix
    }


def _repair_rows(cfg: RunConfig, rows: list[ManifestRow]) -> list[ManifestRow]:
    """``--repair``: the rows whose stored video is damaged (every chunk read); their groups are removed."""
    import shutil

    damaged = verify_store(cfg.out, full=True, ids=[r.video_id for r in rows])
    for vid, problems in damaged.items():
        log.warning("repair %s: %s", vid, "; ".join(problems))
        trash = staging_entry(cfg.out, cfg.task, vid)
        os.rename(cfg.out / "videos" / vid, trash)  # out of the store at once, then deleted
        shutil.rmtree(trash, ignore_errors=True)
    log.info("repair: %d damaged video(s) to redo", len(damaged))
    return [r for r in rows if r.video_id in damaged]


def _row_error_record(e: RowError) -> dict[str, Any]:
    return {"key": item_key(e), "line": e.line, "status": "failed", "reason_class": "manifest", "reason": str(e)}


def run(cfg: RunConfig) -> RunSummary:
    """Process every row of ``cfg.manifest`` into ``cfg.out``; see the module docstring."""

    t0 = time.time()
    rows, row_errors = read_manifest(cfg)
    # A cluster task does its share; the index covers the share, the work may be a retry's subset.
    index_rows, index_errors = shard_manifest(rows, row_errors, cfg.num_tasks, cfg.task_index)
    rows, row_errors = keep_only(index_rows, index_errors, cfg.only_keys)
    backend = flowmod.pick_backend(cfg.flow.backend, cfg.flow.device)
    create_store(cfg.out, cfg.dataset)
    rdir = run_dir(cfg.out)
    rdir.mkdir(parents=True, exist_ok=True)
    with acquire_lease(cfg.out, cfg.task) as lease:  # LeaseHeld: a live run owns this task tag
        return _run_leased(cfg, lease, t0, rows, row_errors, index_rows, index_errors, backend, rdir)


def _run_leased(
    cfg: RunConfig, lease: Lease, t0: float, rows: list[ManifestRow], row_errors: list[RowError],
    index_rows: list[ManifestRow], index_errors: list[RowError], backend: str, rdir: Any,
) -> RunSummary:
    from joblib import Parallel, delayed
    from tqdm import tqdm

    n_debris = clean_staging(cfg.out, cfg.task, held=lease)
    if n_debris:
        log.info("removed %d partial video(s) left by an interrupted run", n_debris)
    fingerprint.check(cfg.out, content_settings(cfg, backend), cfg.overwrite)
    if cfg.repair:  # exactly the damaged videos; malformed rows and pending ones are not repairs
        rows, row_errors = _repair_rows(cfg, rows), []

    records: list[dict[str, Any]] = []
    with LedgerWriter(rdir, cfg.task) as ledger:
        for e in row_errors:
            rec = _row_error_record(e)
            ledger.write(rec)
            records.append(rec)
        todo: list[ManifestRow] = []
        previous = read_latest(rdir) if cfg.retry_failed else {}
        for row in rows:
            kept = kept_failure(row, previous.get(row.video_id))
            if not cfg.overwrite and is_complete(cfg.out, row.video_id):
                rec = {"key": row.video_id, "line": row.line, "status": "skipped", "reason": "already complete in the store"}
                ledger.write(rec)
                records.append(rec)
            elif kept is not None:
                ledger.write(kept)
                records.append(kept)
            else:
                todo.append(row)

        log.info(
            "%s: %d rows, %d to do, %d already complete, %d malformed; flow backend: %s; %d job(s)",
            cfg.dataset, len(rows) + len(row_errors), len(todo), len(rows) - len(todo), len(row_errors), backend, cfg.jobs,
        )
        frames = 0
        video_bar = tqdm(total=len(todo), unit="video", desc="videos", disable=not cfg.progress, position=0)
        total = expected_pairs(todo, cfg.manifest.parent, cfg.decode.fps) if cfg.progress else None  # an estimate
        pair_bar = tqdm(total=total, unit="pair", desc="flow", disable=not cfg.progress, position=1, leave=False)
        from flowprep.run import flow_worker

        devices = flow_worker.flow_devices(cfg, backend)
        if cfg.executor != "local":
            results = parallel_results(cfg, _worker, [(row, cfg, backend, None) for row in todo])
            stop = None
        elif devices:
            n_decode = flow_worker.decode_workers(cfg.jobs, len(devices))
            log.info("flow workers on %s; %d decode/write worker(s)", ", ".join(devices), n_decode)
            results = flow_worker.results(cfg, backend, todo, devices, (process_video, _set_threads), pair_bar.update)
            stop = None
        elif cfg.jobs == 1:
            _set_threads(1)
            results = (process_video(row, cfg, backend, pair_bar.update, commit=False) for row in todo)
            stop = None
        else:
            manager = orphan.manager(os.getpid())
            q = manager.Queue()
            stop = threading.Event()

            def drain() -> None:
                while not stop.is_set():
                    try:
                        pair_bar.update(q.get(timeout=0.2))
                    except queue.Empty:
                        pass

            drainer = threading.Thread(target=drain, daemon=True)
            drainer.start()
            results = Parallel(n_jobs=cfg.jobs, return_as="generator_unordered")(
                delayed(_worker)(row, cfg, backend, q, os.getpid(), os.getcwd()) for row in todo
            )
        try:
            for rec in results:
                rec = commit_staged(rec, cfg, lease)
                ledger.write(rec)
                records.append(rec)
                frames += rec.get("n_frames", 0)
                video_bar.update(1)
                if rec["status"] == "failed":
                    video_bar.write(f"failed {rec['key']}: {rec['reason']}")
        finally:
            if stop is not None:
                stop.set()
                drainer.join()
                manager.shutdown()
            pair_bar.close()
            video_bar.close()

    # Many tasks never write one file: each writes its part, `flowprep finalize` the whole index.
    write_index(cfg, index_rows, index_errors, index_part_path(rdir, cfg.task) if cfg.num_tasks > 1 else None)
    s = summarize(records)
    return RunSummary(
        rows=s["rows"], done=s["done"], failed=s["failed"], skipped=s["skipped"], seconds=time.time() - t0,
        frames=frames, failed_by_reason=s["failed_by_reason"], backend=backend,
    )


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
        from flowprep.dataset.extras import missing_module_message

        raise RuntimeError(missing_module_message("distributed")) from None
    with Client(cfg.scheduler), parallel_config(backend="dask"):
        n_jobs = cfg.jobs if cfg.jobs > 1 else -1  # -1: as many as the cluster has threads
        yield from Parallel(n_jobs=n_jobs, return_as="generator_unordered")(delayed(fn)(*a) for a in args_list)
