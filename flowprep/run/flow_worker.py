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
(tests compare the stores).  A flow worker that dies fails the videos waiting on it (as
``internal`` ledger rows, so a rerun redoes them); a decode worker that dies stops the run with
an error, and a rerun resumes from the ledger as after any interruption.

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
    import torch

    orphan.watch_parent(parent_pid)  # kill -9 of the run ends this worker too

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
            replies[wid].put((seq, error if error else flow_q[start : start + n]))
            start += n
        pairs += len(i0)
        batches += 1
    wall = time.perf_counter() - t_first if t_first is not None else 0.0
    out.put(("stats", FlowWorkerStats(device, pairs, batches, busy, wall)))


# -- the decode/write worker process ----------------------------------------------------------


def _decode_main(
    wid: int, cfg_blob: bytes, backend: str, work: tuple[Callable[..., dict[str, Any]], Callable[[int], None]],
    n_decode: int, rows: Any, requests: Any, reply: Any, out: Any, failed: Any, parent_pid: int,
) -> None:
    orphan.watch_parent(parent_pid)
    process_video, set_threads = work
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
                    raise RuntimeError("a flow worker died; this video's flow was not computed") from None
                continue
            if got != seq:
                continue  # the answer to an earlier request this worker gave up on
            if isinstance(result, str):
                raise RuntimeError(result)
            return result

    while (row := rows.get()) is not None:
        # commit=False: the video stays in staging, verified; the run's parent (the lease holder)
        # commits it and writes its ledger line (pipeline.commit_staged), as for the joblib workers
        rec = process_video(row, cfg, backend, lambda n: out.put(("pairs", n)), flow_fn=flow_fn, commit=False)
        out.put(("record", rec))


# -- the parent ---------------------------------------------------------------------------------


def results(
    cfg: RunConfig,
    backend: str,
    todo: list[ManifestRow],
    devices: list[str],
    work: tuple[Callable[..., dict[str, Any]], Callable[[int], None]],
    progress: Callable[[int], None] | None = None,
    stats: list[FlowWorkerStats] | None = None,
) -> Iterator[dict[str, Any]]:
    """Ledger records of ``todo`` as videos finish, computed by ``cfg.jobs`` decode/write workers
    and one flow worker per device; ``stats`` (a list) receives each flow worker's figures.
    ``work`` = (``pipeline.process_video``, ``pipeline._set_threads``), passed in so that this
    module does not import the pipeline that starts it."""
    last_stats.clear()
    if not todo:
        return
    # spawn: a CUDA context does not survive fork, and the parent may have one
    ctx = multiprocessing.get_context("spawn")
    blob = _dump_cfg(cfg)
    requests, rows, out, failed = ctx.Queue(), ctx.Queue(), ctx.Queue(), ctx.Event()
    n_decode = max(1, min(decode_workers(cfg.jobs, len(devices)), len(todo)))
    replies = [ctx.Queue() for _ in range(n_decode)]
    flows = [
        ctx.Process(target=_flow_main, args=(d, blob, requests, replies, out, os.getpid()), name=f"flowprep-flow-{d}", daemon=True)
        for d in devices
    ]
    decoders = [
        ctx.Process(
            target=_decode_main, args=(i, blob, backend, work, n_decode, rows, requests, replies[i], out, failed, os.getpid()),
            name=f"flowprep-decode-{i}", daemon=True,
        )
        for i in range(n_decode)
    ]
    for p in flows + decoders:
        p.start()
    for row in todo:
        rows.put(row)
    for _ in decoders:
        rows.put(None)
    remaining, got_stats = len(todo), 0
    try:
        while remaining:
            try:
                kind, value = out.get(timeout=0.5)
            except queue.Empty:
                if not failed.is_set() and any(p.exitcode is not None for p in flows):
                    log.error("a flow worker died; the videos waiting for it fail")
                    failed.set()
                dead = [p.name for p in decoders if p.exitcode not in (None, 0)]
                if dead:
                    raise RuntimeError(f"decode worker(s) {dead} died; rerun to resume") from None
                continue
            if kind == "pairs":
                if progress:
                    progress(value)
            elif kind == "record":
                remaining -= 1
                yield value
    finally:
        for _ in flows:
            requests.put(None)
        deadline = time.monotonic() + 30
        while got_stats < len(flows) and time.monotonic() < deadline:
            try:
                kind, value = out.get(timeout=0.5)
            except queue.Empty:
                if all(p.exitcode is not None for p in flows):
                    break
                continue
            if kind == "stats":
                got_stats += 1
                log.info(
                    "flow worker %s: %d pairs in %d batches, busy %.0f%%",
                    value.device, value.pairs, value.batches, 100 * value.busy_fraction,
                )
                last_stats.append(value)
                if stats is not None:
                    stats.append(value)
        for p in flows + decoders:
            p.join(timeout=5)
            if p.exitcode is None:
                p.terminate()
                p.join()
