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

import fcntl
import logging
import os
import queue
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from flowprep.dataset.decode import DecodeError, DecodeInterrupted, decode_blocks
from flowprep.dataset.manifest import ManifestRow, RowError
from flowprep.dataset.probe import expected_pairs
from flowprep.dataset.source import SourceError, resolve_clip
from flowprep.flow import api as flowmod
from flowprep.run import cpus, orphan
from flowprep.run.lease import Lease, LeaseHeld, describe
from flowprep.run.recipe import RunConfig
from flowprep.run.shard import item_key, keep_only, read_manifest, shard_manifest
from flowprep.run.state import (
    LedgerRecord,
    LedgerWriter,
    acquire_lease,
    clean_staging,
    index_part_path,
    kept_failure,
    live_leases,
    read_latest,
    read_repair,
    run_dir,
    staging_entry,
    summarize,
    update_repair,
    write_index,
)
from flowprep.store import fingerprint
from flowprep.store.verify import verify_store
from flowprep.store.zarr_store import FORMAT_VERSION, StoreError, VideoWriter, create_store, publish

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


_warmed: set[tuple] = set()


def _warm_solver(cfg: RunConfig, backend: str) -> None:
    """Compile or load the flow solver's kernels before the first video, one process of this
    machine at a time: on a machine's first run the first worker compiles (seconds) and the others,
    waiting on the lock, load its code from numba's cache instead of each compiling it too.  A
    failure here is left to the video's own solve, which records it."""
    key = (backend, cfg.flow.device, tuple(sorted(cfg.flow.params.items())))
    if key in _warmed:  # loky reuses a worker for many videos
        return
    lock_path = Path(tempfile.gettempdir()) / f"flowprep-{os.getuid()}-solver-warm.lock"
    try:
        with open(lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            flowmod.warm_up(backend, cfg.flow.device, **cfg.flow.params)
        _warmed.add(key)
    except Exception as e:  # noqa: BLE001 - only a head start; the solve reports the real error
        log.debug("solver warm-up skipped: %s", e)


def _flow_blocks(
    cfg: RunConfig,
    backend: str,
    blocks: Iterator[np.ndarray],
    progress: Callable[[int], None] | None,
    flow_fn: Callable[[np.ndarray], np.ndarray] | None,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(RGB block, its int8 flow) for each decoded block; flow across blocks by ``gray_blocks``."""
    batch = _flow_batch(cfg, backend)
    for block, gray in flowmod.gray_blocks(blocks):
        if flow_fn is not None and len(gray) >= 2:  # the whole block at once, in a flow worker
            flow_q = flow_fn(gray)
            if progress:
                progress(len(gray) - 1)
        else:
            flow_q = flowmod.block_flow_int8(
                gray,
                backend=backend,
                device=cfg.flow.device,
                bound=cfg.flow.bound,
                batch=batch,
                progress=progress,
                **cfg.flow.params,
            )
        yield block, flow_q


def video_attrs(
    row: ManifestRow, cfg: RunConfig, backend: str, height: int, width: int, partial: str | None
) -> dict[str, Any]:
    """A video's attributes (FORMAT.md): its row, its size, and its content settings
    (``content_settings``, recorded whole as ``settings``: ``fingerprint.is_current`` compares it)."""
    s = content_settings(cfg, backend)
    flow, q = s["flow"], s["flow"]["quantization"]
    return {
        **({"partial_decode": partial} if partial else {}),
        "video_id": row.video_id,
        "label": row.label,
        "split": row.split,
        "source": row.path if row.path is not None else f"youtube:{row.youtube_id}",
        "manifest_line": row.line,
        "time_start": row.time_start,
        "time_end": row.time_end,
        "fps": cfg.decode.fps,
        "height": height,
        "width": width,
        "rgb": {"dtype": "uint8", "to_float": "x / 127.5 - 1", "range": [-1, 1]},
        "flow": {
            **flow,
            "input": "BT.601 luma of the RGB frames, uint8",
            "quantization": {
                **q,
                "encode": "q = round(clip(px, -bound, bound) / bound * 127)",
                "decode": "q / 127 (in [-1, 1]); x bound for pixels",
            },
            "channels": ["u (right)", "v (down)"],
            "pairing": "flow[t] maps frame t to frame t+1",
        },
        "decode": s["decode"],
        "format_version": s["format_version"],
        "settings": fingerprint.normal(s),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


# Exception -> ledger reason class, first match wins; anything else is "internal" (with its
# traceback).  A SourceError may carry its own class (fetch: unavailable, private, rate_limited, ...);
# DecodeInterrupted (ffmpeg killed by a signal) comes before DecodeError: it is retryable.
FAILURES: tuple[tuple[type[Exception], Callable[[Exception], str]], ...] = (
    (SourceError, lambda e: getattr(e, "reason_class", "source")),
    (DecodeInterrupted, lambda e: "interrupted"),
    (DecodeError, lambda e: "decode"),
    (TooFewFrames, lambda e: "too_few_frames"),
)


def _fail(rec: LedgerRecord, e: Exception) -> None:
    for kind, reason_class in FAILURES:
        if isinstance(e, kind):
            rec.status, rec.reason_class, rec.reason = "failed", reason_class(e), str(e)
            return
    # a bug or a resource problem: record it with the traceback, go on
    rec.status, rec.reason_class, rec.reason = "failed", "internal", f"{type(e).__name__}: {e}"
    rec.traceback = traceback.format_exc(limit=8)


def process_video(
    row: ManifestRow,
    cfg: RunConfig,
    backend: str,
    progress: Callable[[int], None] | None = None,
    commit: bool = True,
    flow_fn: Callable[[np.ndarray], np.ndarray] | None = None,
) -> LedgerRecord:
    """Decode, compute flow and write one video.  Returns its ledger record; never raises for bad input.

    ``commit=False``: leave the finished, verified video in staging and name it in the record's
    ``staged`` field; the caller commits it (``commit_staged``).  ``run`` does that in its parent.
    ``flow_fn`` (gray uint8 (n+1, H, W) -> int8 flow (n, H, W, 2)) computes a whole block's flow
    elsewhere (a flow worker, ``flowprep.run.flow_worker``); by default it is computed here."""
    t0 = time.time()
    rec = LedgerRecord(key=row.video_id, line=row.line, status="failed", label=row.label, split=row.split)
    writer: VideoWriter | None = None
    try:
        path, start, end = resolve_clip(row, cfg.manifest.parent, cfg.cache_dir, cfg.fetch)
        rec.source = str(path)
        decoded: dict[str, Any] = {}
        blocks = decode_blocks(str(path), cfg.decode, start, end, report=decoded)
        for block, flow_q in _flow_blocks(cfg, backend, blocks, progress, flow_fn):
            if writer is None:
                entry = staging_entry(cfg.out, cfg.task, row.video_id)
                writer = VideoWriter(cfg.out, row.video_id, block.shape[1], block.shape[2], cfg.write, entry)
            writer.append(block, flow_q)
        assert writer is not None  # decode_blocks raises when there are no frames
        if writer.n_frames < 2:
            raise TooFewFrames(f"too few frames: {writer.n_frames} decoded, flow needs at least 2")
        h, w = int(writer.rgb.array.shape[1]), int(writer.rgb.array.shape[2])
        attrs = video_attrs(row, cfg, backend, h, w, decoded.get("partial"))
        if commit:
            writer.commit(attrs, overwrite=cfg.overwrite)
        else:
            rec.staged = str(writer.prepare(attrs))
        rec.status, rec.n_frames, rec.height, rec.width = "done", writer.n_frames, h, w
        rec.partial = decoded.get("partial")  # kept under --allow-partial: the ledger says so
        writer = None
    except Exception as e:
        _fail(rec, e)
    finally:
        if writer is not None:
            writer.abort()
    rec.seconds = round(time.time() - t0, 3)
    return rec


def _worker(
    row: ManifestRow, cfg: RunConfig, backend: str, q: Any, parent_pid: int | None = None, cwd: str | None = None
) -> LedgerRecord:
    if parent_pid is not None:
        orphan.watch_parent(parent_pid)
        orphan.ignore_interrupts()
    if cwd is not None and os.getcwd() != cwd:
        # loky reuses workers across runs in one process: relative paths mean the caller's folder
        os.chdir(cwd)
    _set_threads(cfg.jobs)
    _warm_solver(cfg, backend)
    return process_video(row, cfg, backend, q.put if q is not None else None, commit=False)


def commit_staged(
    rec: LedgerRecord, cfg: RunConfig, lease: Lease | None, settings: dict[str, Any] | None = None
) -> LedgerRecord:
    """In the lease holder: make a worker's prepared video visible, or turn the record into a failure.

    A video another run (another task tag) committed meanwhile with the same settings is not a
    failure: the staged copy is dropped and the row is skipped.  A video in the store made with
    other settings is replaced (it is not complete: ``fingerprint.is_current``)."""
    staged, rec.staged = rec.staged, None
    if staged is None:
        return rec
    import shutil

    def current() -> bool:
        return settings is not None and fingerprint.is_current(cfg.out, rec.key, settings)

    try:
        if lease is not None:
            lease.check()
        if not cfg.overwrite and current():
            raise _AlreadyThere()
        publish(cfg.out, rec.key, Path(staged), overwrite=True if settings is not None else cfg.overwrite)
    except (StoreError, OSError, _AlreadyThere) as e:
        shutil.rmtree(staged, ignore_errors=True)
        rec.n_frames = rec.height = rec.width = None
        if isinstance(e, _AlreadyThere) or (not cfg.overwrite and current()):  # lost a race to the same video
            rec.status, rec.reason = "skipped", "already complete in the store (committed by another run meanwhile)"
        else:
            rec.status, rec.reason_class, rec.reason = "failed", "internal", f"commit: {e}"
    return rec


class _AlreadyThere(Exception):
    pass


def content_settings(cfg: RunConfig, backend: str) -> dict[str, Any]:
    """The settings that change a store's content (its fingerprint; flowprep.store.fingerprint),
    the same fields ``video_attrs`` writes into every video's attributes."""
    return {
        "format_version": FORMAT_VERSION,
        "decode": {"fps": cfg.decode.fps, "short_side": cfg.decode.short_side, "interpolation": "bilinear"},
        "flow": {
            "algorithm": "tv-l1",
            "backend": backend,
            "params": flowmod.resolve_params(cfg.flow.params),
            "bound_px": cfg.flow.bound,
            "quantization": {"dtype": "int8", "scale": flowmod.QUANT_LEVELS},
            **({"preset": cfg.flow.preset} if cfg.flow.preset else {}),  # absent = none: older stores still match
        },
        "codecs": cfg.write.codecs(),  # a JPEG store and a lossless one must not mix
    }


def _take_out(cfg: RunConfig, video_ids: list[str], why: str) -> None:
    """Move videos out of the store (at once, by rename), then delete them; they are listed in the
    repair list first (``state.update_repair``), so a kill in between loses no redo."""
    import shutil

    if not video_ids:
        return
    update_repair(cfg.out, add=video_ids)
    for vid in video_ids:
        trash = staging_entry(cfg.out, cfg.task, vid)
        try:
            os.rename(cfg.out / "videos" / vid, trash)
        except FileNotFoundError:
            continue  # another task of the same run took it out first
        shutil.rmtree(trash, ignore_errors=True)
    log.warning("%d video(s) taken out of the store (%s); they are redone by this run or the next", len(video_ids), why)


def _repair_rows(cfg: RunConfig, rows: list[ManifestRow], settings: dict[str, Any]) -> list[ManifestRow]:
    """``--repair``: the rows whose stored video is damaged (every chunk read; other settings count
    as damage), plus those an interrupted repair or a settings change took out and nobody redid."""
    damaged = verify_store(cfg.out, full=True, ids=[r.video_id for r in rows])
    for vid, problems in damaged.items():
        log.warning("repair %s: %s", vid, "; ".join(problems))
    _take_out(cfg, sorted(damaged), "damaged")
    listed = {vid for vid in read_repair(cfg.out) if not fingerprint.is_current(cfg.out, vid, settings)}
    redo = set(damaged) | listed
    log.info(
        "repair: %d damaged video(s), %d left by an earlier repair or settings change; to redo: %d",
        len(damaged),
        len(listed - set(damaged)),
        len(redo & {r.video_id for r in rows}),
    )
    return [r for r in rows if r.video_id in redo]


def _row_error_record(e: RowError) -> LedgerRecord:
    return LedgerRecord(key=item_key(e), line=e.line, status="failed", reason_class="manifest", reason=str(e))


@dataclass(frozen=True)
class _Work:
    """What a run covers, read before its lease is taken."""

    rows: list[ManifestRow]  # to process (after sharding, --ids-from)
    row_errors: list[RowError]
    index_rows: list[ManifestRow]  # the task's share: what its index covers
    index_errors: list[RowError]
    backend: str
    settings: dict[str, Any]  # content_settings(cfg, backend)


def run(cfg: RunConfig, on_start: Callable[[], None] | None = None) -> RunSummary:
    """Process every row of ``cfg.manifest`` into ``cfg.out``; see the module docstring.

    ``on_start`` runs once the manifest, the store, the lease and the settings are checked, before
    any row is processed (the CLI records ``run.json`` there): a run refused for bad input leaves
    nothing behind."""
    t0 = time.time()
    rows, row_errors = read_manifest(cfg)
    # A cluster task does its share; the index covers the share, the work may be a retry's subset.
    index_rows, index_errors = shard_manifest(rows, row_errors, cfg.num_tasks, cfg.task_index)
    rows, row_errors = keep_only(index_rows, index_errors, cfg.only_keys)
    backend = flowmod.pick_backend(cfg.flow.backend, cfg.flow.device)
    work = _Work(rows, row_errors, index_rows, index_errors, backend, content_settings(cfg, backend))
    create_store(cfg.out, cfg.dataset)
    run_dir(cfg.out).mkdir(parents=True, exist_ok=True)
    # LeaseHeld: a live run owns this task tag
    with acquire_lease(cfg.out, cfg.task, fingerprint.digest(work.settings)) as lease:
        records, frames = _run_leased(cfg, lease, work, on_start)
    s = summarize(records)
    return RunSummary(
        rows=s["rows"],
        done=s["done"],
        failed=s["failed"],
        skipped=s["skipped"],
        seconds=time.time() - t0,
        frames=frames,
        failed_by_reason=s["failed_by_reason"],
        backend=backend,
    )


def _refuse_other_settings(cfg: RunConfig, work: _Work) -> None:
    """A run never overlaps a live run (any task tag) of other content settings: one of two such
    runs always sees the other, since each records its settings in its lease before looking."""
    mine = fingerprint.digest(work.settings)
    stored = fingerprint.recorded(cfg.out)
    differs = stored is not None and fingerprint.differences(stored, work.settings) != []
    for tag, info in live_leases(cfg.out).items():
        theirs = info.get("settings")
        if tag != cfg.task and (theirs not in (None, mine) or (theirs is None and differs)):
            raise LeaseHeld(
                f"{cfg.out} is being written by a live run with other settings (task {tag}, {describe(info)}); "
                "a run with other settings must not overlap it: wait for it to end, or use another --out"
            )


def _prepare_store(cfg: RunConfig, lease: Lease, work: _Work) -> None:
    """Under the lease: clean dead runs' debris, settle the settings (refuse, or invalidate under --overwrite)."""
    n_debris = clean_staging(cfg.out, cfg.task, held=lease)
    if n_debris:
        log.info("removed %d partial video(s) left by an interrupted run", n_debris)
    _refuse_other_settings(cfg, work)
    diff = fingerprint.check(
        cfg.out,
        work.settings,
        cfg.overwrite,
        invalidate=lambda stale: _take_out(cfg, stale, "made with the store's old settings"),
    )
    if diff:
        log.warning("new settings recorded (%s); every video made with the old ones was taken out", "; ".join(diff))


def _triage(
    cfg: RunConfig, work: _Work, rows: list[ManifestRow], row_errors: list[RowError]
) -> tuple[list[LedgerRecord], list[ManifestRow]]:
    """Records of rows settled without work (malformed, current in the store, kept failures) and the rows to do."""
    records = [_row_error_record(e) for e in row_errors]
    todo: list[ManifestRow] = []
    previous = read_latest(run_dir(cfg.out)) if cfg.retry_failed else {}
    for row in rows:
        kept = kept_failure(row, previous.get(row.video_id))
        if not cfg.overwrite and fingerprint.is_current(cfg.out, row.video_id, work.settings):
            records.append(
                LedgerRecord(key=row.video_id, line=row.line, status="skipped", reason="already complete in the store")
            )
        elif kept is not None:
            records.append(kept)
        else:
            todo.append(row)
    return records, todo


@contextmanager
def _executor(
    cfg: RunConfig, backend: str, todo: list[ManifestRow], pairs: Callable[[int], None]
) -> Iterator[Iterator[LedgerRecord]]:
    """Ledger records of ``todo`` as videos finish, on the executor the config picks; on exit
    every helper (workers, queues, the progress drainer) is stopped, also after an error."""
    from flowprep.run import flow_worker

    devices = flow_worker.flow_devices(cfg, backend)
    with ExitStack() as helpers:
        results: Iterator[LedgerRecord]
        if cfg.executor != "local":
            results = parallel_results(cfg, _worker, [(row, cfg, backend, None) for row in todo])
        elif devices:
            log.info(
                "flow workers on %s; %d decode/write worker(s)",
                ", ".join(devices),
                flow_worker.decode_workers(cfg.jobs, len(devices)),
            )
            results = flow_worker.results(cfg, backend, todo, devices, (process_video, _set_threads), pairs)
        elif cfg.jobs == 1:
            _set_threads(1)
            _warm_solver(cfg, backend)
            results = (process_video(row, cfg, backend, pairs, commit=False) for row in todo)
        else:
            results = helpers.enter_context(_joblib_results(cfg, backend, todo, pairs))
        # a generator's own clean-up (workers, queues) runs when the run stops, not at exit
        helpers.callback(getattr(results, "close", lambda: None))
        yield _named_deaths(results)


@contextmanager
def _joblib_results(
    cfg: RunConfig, backend: str, todo: list[ManifestRow], pairs: Callable[[int], None]
) -> Iterator[Iterator[LedgerRecord]]:
    """``--jobs N`` loky workers; their flow-pair counts come back through a Manager queue."""
    from joblib import Parallel, delayed

    manager = orphan.manager(os.getpid())
    q = manager.Queue()
    stop = threading.Event()

    def drain() -> None:
        while not stop.is_set():
            try:
                pairs(q.get(timeout=0.2))
            except queue.Empty:
                pass
            except (EOFError, OSError):  # the Manager is gone (the run is ending)
                return

    drainer = threading.Thread(target=drain, daemon=True)
    drainer.start()
    try:
        yield Parallel(n_jobs=cfg.jobs, return_as="generator_unordered")(
            delayed(_worker)(row, cfg, backend, q, os.getpid(), os.getcwd()) for row in todo
        )
    finally:
        stop.set()
        drainer.join()
        manager.shutdown()


def _named_deaths(results: Iterator[LedgerRecord]) -> Iterator[LedgerRecord]:
    """A worker process that died (kill -9, the OOM killer) ends the run with one line (WorkerDied)."""
    try:
        from joblib.externals.loky.process_executor import TerminatedWorkerError
    except ImportError:  # pragma: no cover
        TerminatedWorkerError = orphan.WorkerDied  # noqa: N806
    try:
        yield from results
    except TerminatedWorkerError as e:
        raise orphan.WorkerDied(
            f"a worker process died ({str(e).splitlines()[-1][:200]}); the videos it held were not committed: "
            "run again to resume"
        ) from None


def _run_leased(
    cfg: RunConfig, lease: Lease, work: _Work, on_start: Callable[[], None] | None = None
) -> tuple[list[LedgerRecord], int]:
    from tqdm import tqdm

    _prepare_store(cfg, lease, work)
    if on_start is not None:
        on_start()
    rows, row_errors = work.rows, work.row_errors
    if cfg.repair:  # exactly the damaged videos; malformed rows and pending ones are not repairs
        rows, row_errors = _repair_rows(cfg, rows, work.settings), []
    rdir = run_dir(cfg.out)
    records, todo = _triage(cfg, work, rows, row_errors)
    frames = 0
    with LedgerWriter(rdir, cfg.task) as ledger:
        for rec in records:
            ledger.write(rec)
        log.info(
            "%s: %d rows, %d to do, %d already complete, %d malformed; flow backend: %s; %d job(s)",
            cfg.dataset,
            len(rows) + len(row_errors),
            len(todo),
            len(rows) - len(todo),
            len(row_errors),
            work.backend,
            cfg.jobs,
        )
        video_bar = tqdm(total=len(todo), unit="video", desc="videos", disable=not cfg.progress, position=0)
        total = expected_pairs(todo, cfg.manifest.parent, cfg.decode.fps) if cfg.progress else None  # an estimate
        pair_bar = tqdm(total=total, unit="pair", desc="flow", disable=not cfg.progress, position=1, leave=False)
        try:
            with _executor(cfg, work.backend, todo, pair_bar.update) as results:
                for rec in results:
                    rec = commit_staged(rec, cfg, lease, work.settings)
                    ledger.write(rec)
                    records.append(rec)
                    frames += rec.n_frames or 0
                    video_bar.update(1)
                    if rec.status == "failed":
                        video_bar.write(f"failed {rec.key}: {rec.reason}")
        finally:
            pair_bar.close()
            video_bar.close()
    if cfg.repair or read_repair(cfg.out):
        update_repair(
            cfg.out, done=[vid for vid in read_repair(cfg.out) if fingerprint.is_current(cfg.out, vid, work.settings)]
        )
    # Many tasks never write one file: each writes its part, `flowprep finalize` the whole index.
    write_index(cfg, work.index_rows, work.index_errors, index_part_path(rdir, cfg.task) if cfg.num_tasks > 1 else None)
    return records, frames


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
