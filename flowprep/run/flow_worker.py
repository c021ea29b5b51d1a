"""Flow workers: one process per device owns it and solves frame pairs gathered across videos.

    parent (ledger, progress) <- records --- decode/write workers (--jobs processes)
                                               | gray uint8 blocks    ^ int8 flow
                                               v                      |
                                       flow workers (one per device in --devices)

The pipeline's default topology has every worker compute its own flow, 32 pairs of one video at
a time; on a GPU that means small batches and one CUDA context per worker.  Here ``--jobs``
CPU workers decode, convert to gray and write (``pipeline.process_video``, unchanged: the same
ledger record, staging and atomic commit, a video committed when all its blocks' flow is back),
but send each decoded block's gray frames (uint8) to a shared request queue.  Each flow worker
takes requests off it, gathering pairs from whatever videos have blocks waiting, up to a batch
sized from its free memory (``tvl1_torch.auto_batch_size``, up to ``CUDA_MAX_PAIRS`` on CUDA),
copies them to the device (pinned host memory, non-blocking), solves them in one call (the device
engine on CUDA), clips and quantizes to int8 there, and sends each request's int8 flow back.
A receiver thread unpickles and stacks the next batch while the current one is solved, so the
device waits for host work only when the decoders cannot keep up.  Several flow workers (several
GPUs) share the one request queue, so whichever is free takes the next batch.

Pairs are independent in the solver, so the flow is the one each worker would compute alone
(tests compare the stores).  A flow worker that dies fails only the videos waiting on it (as
``internal`` ledger rows, so a rerun redoes them); the videos not yet started go on with fresh
workers and queues (a process killed inside a queue operation can leave the queue's lock held
or a message cut in half, so queues are never reused).  A decode worker that dies stops the run
with one line (``orphan.WorkerDied``), and a rerun resumes from the ledger as after any
interruption.  The parent never waits on a queue's feeder thread at exit (``cancel_join_thread``).

May touch: processes and queues it starts, the devices named; nothing on disk but through
``pipeline.process_video``.
"""

from __future__ import annotations

import copyreg
import io
import logging
import multiprocessing
import os
import pickle
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np

from flowprep.dataset.manifest import ManifestRow
from flowprep.flow import api as flowmod
from flowprep.run import cpus, orphan
from flowprep.run.recipe import RunConfig

log = logging.getLogger("flowprep")

# Most pairs one flow worker solves in one call on CUDA (the memory estimate decides below it).
CUDA_MAX_PAIRS = 1024
# How long a flow worker waits for more requests to fill a batch once it has one.
GATHER_S = 0.05


@dataclass
class FlowWorkerStats:
    device: str
    pairs: int
    batches: int
    busy_s: float  # time spent solving (device work, until the int8 flow is on the host)
    wall_s: float  # from the first request to the last reply

    @property
    def busy_fraction(self) -> float:
        return self.busy_s / self.wall_s if self.wall_s > 0 else 0.0


# The flow workers' figures of the last ``results`` run in this process (benchmarks read them).
last_stats: list[FlowWorkerStats] = []


def flow_devices(cfg: RunConfig, backend: str) -> list[str]:
    """The flow workers' devices for this run; [] = the default topology (no flow workers)."""
    spec = cfg.flow.devices
    if spec == "off" or backend != "torch":
        return []
    if spec is not None:
        return spec.split(",")
    if cfg.flow.device is not None and not cfg.flow.device.startswith("cuda"):
        return []
    try:
        import torch
    except ImportError:
        return []
    if not torch.cuda.is_available():
        return []
    if cfg.flow.device not in (None, "cuda"):
        return [cfg.flow.device]  # one named GPU
    return [f"cuda:{i}" for i in range(torch.cuda.device_count())]


def decode_workers(jobs: int, n_devices: int) -> int:
    """Decode/write workers: ``--jobs`` when given (> 1), else every CPU but one per flow worker.

    Each worker has one block (up to 63 pairs) waiting at a time, so the workers bound a batch:
    ~14 of them fill batches of ~900 pairs on a 16-CPU node."""
    if jobs > 1:
        return jobs
    return max(1, (os.cpu_count() or 2) - n_devices)


def quantize_torch(flow: Any, bound: float) -> Any:
    """``api.quantize_flow`` on a torch tensor, on its device: the same int8 values (float32
    multiply by the same float32 constant, round half to even)."""
    import torch

    scale = torch.tensor(np.float32(flowmod.QUANT_LEVELS / bound), device=flow.device)
    return torch.round(flow.clamp(-bound, bound) * scale).to(torch.int8)


# -- the flow worker process -------------------------------------------------------------------


def _gather(requests: Any, first: tuple, max_pairs: int) -> tuple[list[tuple], bool]:
    """``first`` and further requests of the same frame size, up to ``max_pairs`` pairs; a
    request of another size waits for the next batch.  Returns (batch, stop seen)."""
    batch, n = [first], len(first[2]) - 1
    deadline = time.monotonic() + GATHER_S
    while n < max_pairs:
        try:
            msg = requests.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            break
        if msg is None:
            return batch, True
        if msg[2].shape[1:] != first[2].shape[1:]:
            requests.put(msg)  # another size: another batch (another worker may take it)
            break
        batch.append(msg)
        n += len(msg[2]) - 1
    return batch, False


def _mappingproxy(d: dict) -> MappingProxyType:
    return MappingProxyType(d)


def _dump_cfg(cfg: RunConfig) -> bytes:
    """Pickle ``cfg``, whose mappingproxy fields plain pickle refuses (joblib's cloudpickle takes them)."""
    buf = io.BytesIO()
    pickler = pickle.Pickler(buf)
    pickler.dispatch_table = {**copyreg.dispatch_table, MappingProxyType: lambda m: (_mappingproxy, (dict(m),))}
    pickler.dump(cfg)
    return buf.getvalue()


def _load_cfg(blob: bytes) -> RunConfig:
    return pickle.loads(blob)


def _flow_main(device: str, cfg_blob: bytes, requests: Any, replies: list[Any], out: Any, parent_pid: int) -> None:
    orphan.watch_parent(parent_pid)  # kill -9 of the run ends this worker too (before torch's import: seconds)
    for r in replies:  # a reply nobody reads any more must not hold up this process's exit
        r.cancel_join_thread()
    import torch

    from flowprep.flow import tvl1_device, tvl1_torch

    cfg = _load_cfg(cfg_blob)
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    else:
        cpus.set_solver_threads(cpus.threads_per_job(cfg.jobs))
    params = flowmod.resolve_params(cfg.flow.params)
    pin = dev.type == "cuda"
    ready: queue.Queue = queue.Queue(maxsize=2)

    def receive() -> None:
        # gathers and stacks the next batch while the main thread solves this one
        stop = False
        while not stop:
            msg = requests.get()
            if msg is None:
                break
            h, w = msg[2].shape[1:]
            max_pairs = cfg.flow.batch or tvl1_torch.auto_batch_size(
                h, w, dev, max_batch=CUDA_MAX_PAIRS if dev.type == "cuda" else None
            )
            batch, stop = _gather(requests, msg, max_pairs)
            i0 = torch.from_numpy(np.concatenate([g[:-1] for _, _, g in batch]))
            i1 = torch.from_numpy(np.concatenate([g[1:] for _, _, g in batch]))
            if pin:
                i0, i1 = i0.pin_memory(), i1.pin_memory()
            ready.put((batch, i0, i1, max_pairs))
        ready.put(None)

    threading.Thread(target=receive, daemon=True).start()
    pairs = batches = 0
    busy = 0.0
    t_first: float | None = None
    while (item := ready.get()) is not None:
        batch, i0, i1, max_pairs = item
        t0 = time.perf_counter()
        t_first = t0 if t_first is None else t_first
        try:
            parts = []
            for s in range(0, len(i0), max_pairs):
                a = i0[s : s + max_pairs].to(dev, non_blocking=True)
                b = i1[s : s + max_pairs].to(dev, non_blocking=True)
                q = quantize_torch(tvl1_device.tvl1_flow_engine(a, b, **params), cfg.flow.bound)
                parts.append(q.cpu().numpy())
            flow_q = np.concatenate(parts)
            error = None
        except Exception as e:  # noqa: BLE001 - goes back to the videos as their failure
            flow_q, error = None, f"flow worker on {device}: {type(e).__name__}: {e}"
        busy += time.perf_counter() - t0
        start = 0
        for wid, seq, gray in batch:
            n = len(gray) - 1
            replies[wid].put((seq, error if flow_q is None else flow_q[start : start + n]))
            start += n
        pairs += len(i0)
        batches += 1
    wall = time.perf_counter() - t_first if t_first is not None else 0.0
    out.put(("stats", FlowWorkerStats(device, pairs, batches, busy, wall)))


# -- the decode/write worker process ----------------------------------------------------------


def _decode_main(
    wid: int,
    cfg_blob: bytes,
    backend: str,
    work_blob: bytes,
    n_decode: int,
    rows: Any,
    requests: Any,
    reply: Any,
    out: Any,
    failed: Any,
    parent_pid: int,
) -> None:
    orphan.watch_parent(parent_pid)
    # a dead flow worker may never read its requests again: exiting must not wait to flush them
    requests.cancel_join_thread()
    # (pipeline.process_video, pipeline._set_threads), pickled by name: imported here, after the
    # parent watch started (orphan.run_watched)
    process_video, set_threads = pickle.loads(work_blob)
    cfg = _load_cfg(cfg_blob)
    set_threads(n_decode)
    seq = 0

    def flow_fn(gray: np.ndarray) -> np.ndarray:
        nonlocal seq
        seq += 1
        requests.put((wid, seq, np.ascontiguousarray(gray)))
        while True:
            try:
                got, result = reply.get(timeout=0.5)
            except queue.Empty:
                if failed.is_set():
                    raise FlowWorkerDied(
                        "a flow worker died while this video's flow was being computed; a rerun redoes it"
                    ) from None
                continue
            if got != seq:
                continue  # the answer to an earlier request this worker gave up on
            if isinstance(result, str):
                raise RuntimeError(result)
            return result

    while not failed.is_set() and (row := rows.get()) is not None:
        out.put(("start", row.video_id))  # the parent knows which rows were taken
        # commit=False: the video stays in staging, verified; the run's parent (the lease holder)
        # commits it and writes its ledger line (pipeline.commit_staged), as for the joblib workers
        rec = process_video(row, cfg, backend, lambda n: out.put(("pairs", n)), flow_fn=flow_fn, commit=False)
        out.put(("record", rec))


class FlowWorkerDied(RuntimeError):
    """The flow worker a video waited on died (a retryable "internal" failure of that video)."""


# -- the parent ---------------------------------------------------------------------------------

# A flow worker that dies is replaced this many times per run (fresh processes and queues: a
# process killed inside a queue operation may leave that queue's lock held or a message cut).
MAX_RESTARTS = 2
# How long the decode workers of a broken session get to record their videos and exit.
GRACE_S = 5.0


def results(
    cfg: RunConfig,
    backend: str,
    todo: list[ManifestRow],
    devices: list[str],
    work: tuple[Callable[..., Any], Callable[[int], None]],
    progress: Callable[[int], None] | None = None,
    stats: list[FlowWorkerStats] | None = None,
) -> Iterator[Any]:
    """Ledger records of ``todo`` as videos finish, computed by ``cfg.jobs`` decode/write workers
    and one flow worker per device; ``stats`` (a list) receives each flow worker's figures.
    ``work`` = (``pipeline.process_video``, ``pipeline._set_threads``), passed in so that this
    module does not import the pipeline that starts it.

    A flow worker that dies fails only the videos waiting on it (retryable); the videos not yet
    started go on in a fresh session (new workers, new queues), up to ``MAX_RESTARTS`` times,
    after which the run stops (``orphan.WorkerDied``) and they stay pending."""
    last_stats.clear()
    remaining = list(todo)
    for attempt in range(MAX_RESTARTS + 1):
        if not remaining:
            return
        session = _Session(cfg, backend, remaining, devices, work, progress, stats)
        done_ids: set[str] = set()
        try:
            for rec in session.records():
                done_ids.add(rec.key)
                yield rec
        finally:
            session.close()
        remaining = [r for r in remaining if r.video_id not in done_ids]
        if remaining and attempt < MAX_RESTARTS:
            log.warning("a flow worker died; %d video(s) not started go on with fresh workers", len(remaining))
    if remaining:
        raise orphan.WorkerDied(
            f"flow workers died {MAX_RESTARTS + 1} times; {len(remaining)} video(s) left pending: run again to resume"
        )


class _Session:
    """One set of flow and decode/write workers with their queues, over ``todo``."""

    def __init__(
        self,
        cfg: RunConfig,
        backend: str,
        todo: list[ManifestRow],
        devices: list[str],
        work: tuple[Callable[..., Any], Callable[[int], None]],
        progress: Callable[[int], None] | None,
        stats: list[FlowWorkerStats] | None,
    ):
        self.todo, self.progress, self.stats = todo, progress, stats
        # spawn: a CUDA context does not survive fork, and the parent may have one
        ctx = multiprocessing.get_context("spawn")
        blob = _dump_cfg(cfg)
        self.requests, self.rows, self.out, self.failed = ctx.Queue(), ctx.Queue(), ctx.Queue(), ctx.Event()
        n_decode = max(1, min(decode_workers(cfg.jobs, len(devices)), len(todo)))
        self.replies = [ctx.Queue() for _ in range(n_decode)]
        self.flows = [
            ctx.Process(
                target=orphan.run_watched,
                args=(
                    os.getpid(),
                    f"{__name__}:_flow_main",
                    d,
                    blob,
                    self.requests,
                    self.replies,
                    self.out,
                    os.getpid(),
                ),
                name=f"flowprep-flow-{d}",
                daemon=True,
            )
            for d in devices
        ]
        self.decoders = [
            ctx.Process(
                target=orphan.run_watched,
                args=(
                    os.getpid(),
                    f"{__name__}:_decode_main",
                    i,
                    blob,
                    backend,
                    pickle.dumps(work),
                    n_decode,
                    self.rows,
                    self.requests,
                    self.replies[i],
                    self.out,
                    self.failed,
                    os.getpid(),
                ),
                name=f"flowprep-decode-{i}",
                daemon=True,
            )
            for i in range(n_decode)
        ]
        for p in self.flows + self.decoders:
            p.start()
        for p in self.flows:
            log.info("flow worker on %s: pid %d", p.name.removeprefix("flowprep-flow-"), p.pid)
        for row in todo:
            self.rows.put(row)
        for _ in self.decoders:
            self.rows.put(None)
        self.started: dict[str, ManifestRow] = {}
        self.rows_by_id = {r.video_id: r for r in todo}
        self.got_stats = 0

    def records(self) -> Iterator[Any]:
        remaining = len(self.todo)
        broken_at: float | None = None
        while remaining:
            try:
                kind, value = self.out.get(timeout=0.5)
            except queue.Empty:
                if broken_at is None and any(p.exitcode is not None for p in self.flows):
                    log.error("a flow worker died; the videos waiting for it fail")
                    self.failed.set()  # decoders fail their waiting video and take no more rows
                    broken_at = time.monotonic()
                if broken_at is not None:
                    alive = [p for p in self.decoders if p.exitcode is None]
                    if not alive or time.monotonic() - broken_at > GRACE_S:
                        yield from self._fail_unrecorded()
                        return
                    continue
                dead = [p.name for p in self.decoders if p.exitcode not in (None, 0)]
                if dead:
                    raise orphan.WorkerDied(f"decode worker(s) {', '.join(dead)} died; run again to resume") from None
                continue
            if kind == "pairs":
                if self.progress:
                    self.progress(value)
            elif kind == "start":
                self.started[value] = self.rows_by_id[value]
            elif kind == "record":
                remaining -= 1
                self.started.pop(value.key, None)
                yield value
            elif kind == "stats":
                self._stats(value)

    def _fail_unrecorded(self) -> Iterator[Any]:
        """Videos a decode worker took but never reported (it was stuck on a dead flow worker)."""
        from flowprep.run.state import LedgerRecord

        for p in self.decoders:
            if p.exitcode is None:
                p.terminate()
        for vid, row in self.started.items():
            yield LedgerRecord(
                key=vid,
                line=row.line,
                status="failed",
                label=row.label,
                split=row.split,
                reason_class="internal",
                reason="flow worker died while this video's flow was being computed; a rerun redoes it",
            )
        self.started.clear()

    def _stats(self, value: FlowWorkerStats) -> None:
        self.got_stats += 1
        log.info(
            "flow worker %s: %d pairs in %d batches, busy %.0f%%",
            value.device,
            value.pairs,
            value.batches,
            100 * value.busy_fraction,
        )
        last_stats.append(value)
        if self.stats is not None:
            self.stats.append(value)

    def close(self) -> None:
        """Stop every worker, then let go of the queues without waiting on their feeder threads
        (a dead reader would block the interpreter's exit forever)."""
        for q in (self.requests, self.rows, self.out, *self.replies):
            q.cancel_join_thread()
        for p in self.flows:
            if p.exitcode is None:
                self.requests.put(None)
        deadline = time.monotonic() + 30
        while self.got_stats < len(self.flows) and time.monotonic() < deadline:
            if all(p.exitcode is not None for p in self.flows):
                break
            try:
                kind, value = self.out.get(timeout=0.5)
            except queue.Empty:
                continue
            if kind == "stats":
                self._stats(value)
        for p in self.flows + self.decoders:
            p.join(timeout=5)
            if p.exitcode is None:
                p.terminate()
                p.join()
        for q in (self.requests, self.rows, self.out, *self.replies):
            q.close()
