"""What one TV-L1 solver call does per iteration, counted: kernel launches, host syncs, bytes.

Needs only torch and numpy (and flowprep's flow layer, which needs nothing more), so that
``bench_gpu.py`` can use it on a machine with only a CUDA torch.

* CPU: every operation dispatched to a kernel (a ``TorchDispatchMode``; views excluded) is what
  eager code launches on a GPU; host syncs are scalar reads (``aten._local_scalar_dense``: bool(),
  .item()) and ``.tolist()`` calls; operand bytes are the sizes of each operation's tensor inputs
  and outputs (what unfused code moves through memory).
* CUDA: ``torch.profiler``'s CUDA runtime trace: kernel and graph launches, and synchronize calls.

Per iteration = per call divided by the iterations the call launched (the batch's iterations,
counted by the engine's ``DeviceStats`` or by counting calls of the CPU engine's iteration).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from flowprep.flow import tvl1_device, tvl1_torch


@dataclass
class Counts:
    engine: str
    device: str
    pairs: int
    h: int
    w: int
    iterations: int  # iterations launched (all pairs of the batch together)
    launches: int
    syncs: int
    operand_bytes: int  # CPU only: bytes of the ops' tensor operands; 0 on CUDA
    pair_iterations: float  # finest-level-equivalent pair-iterations (device engine), else nan
    seconds: float

    def per_iter(self, x: float) -> float:
        return x / self.iterations if self.iterations else float("nan")


class _OpCounter(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.launches = self.syncs = self.bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001 - torch's signature
        out = func(*args, **(kwargs or {}))
        if func is torch.ops.aten._local_scalar_dense.default:
            self.syncs += 1
        elif not func.is_view:
            self.launches += 1
            for t in (*args, *(kwargs or {}).values(), *(out if isinstance(out, (tuple, list)) else (out,))):
                if isinstance(t, torch.Tensor):
                    self.bytes += t.numel() * t.element_size()
        return out


def count(i0: torch.Tensor, i1: torch.Tensor, engine: str, compile: bool | None = None) -> Counts:
    """Run one solve of (i0, i1) with ``engine`` on their device and count what it did."""
    import time

    dev = i0.device
    stats = tvl1_device.DeviceStats()
    calls = [0]
    real_call = tvl1_torch.EagerIteration.__call__

    def counted(self, *a, **k):  # noqa: ANN001, ANN002, ANN003
        calls[0] += 1
        return real_call(self, *a, **k)

    def solve() -> torch.Tensor:
        if engine == "device":
            return tvl1_device.tvl1_flow_device(i0, i1, compile=compile, stats=stats)
        return tvl1_torch.tvl1_flow(i0, i1, compile=bool(compile))

    tvl1_torch.EagerIteration.__call__ = counted
    real_tolist = torch.Tensor.tolist
    tolists = [0]

    def tolist(t: torch.Tensor):  # noqa: ANN202
        tolists[0] += 1
        return real_tolist(t)

    try:
        if dev.type == "cuda":
            from torch.profiler import ProfilerActivity, profile

            solve()  # warm-up: compilation and CUDA graph recording are not what an iteration costs
            torch.cuda.synchronize()
            stats.__init__()
            calls[0] = 0
            t0 = time.perf_counter()
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                solve()
                torch.cuda.synchronize()
            seconds = time.perf_counter() - t0
            names = [e.name for e in prof.events()]
            launches = sum(("LaunchKernel" in n) or ("GraphLaunch" in n) for n in names)
            syncs = sum("Synchronize" in n for n in names) - 1  # minus the synchronize() above
            operand_bytes = 0
        else:
            torch.Tensor.tolist = tolist
            counter = _OpCounter()
            t0 = time.perf_counter()
            with counter:
                solve()
            seconds = time.perf_counter() - t0
            launches, syncs, operand_bytes = counter.launches, counter.syncs + tolists[0], counter.bytes
    finally:
        tvl1_torch.EagerIteration.__call__ = real_call
        torch.Tensor.tolist = real_tolist
    # DeviceStats reads each level's per-pair counts once: the measurement's syncs, not the engine's
    syncs -= len(stats.per_pair)
    iterations = stats.iterations if engine == "device" else calls[0]
    b, h, w = i0.shape
    pair_iters = stats.finest_equivalent_pair_iterations if engine == "device" else float("nan")
    return Counts(engine, dev.type, b, h, w, iterations, launches, syncs, operand_bytes, pair_iters, seconds)


def copy_bandwidth(device: torch.device, nbytes: int = 1 << 30) -> float:
    """Device-to-device copy bandwidth in bytes/s (read + write counted), best of 5."""
    x = torch.empty(nbytes // 4, dtype=torch.float32, device=device)
    y = torch.empty_like(x)
    best = float("inf")
    for _ in range(5):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        y.copy_(x)
        end.record()
        torch.cuda.synchronize()
        best = min(best, start.elapsed_time(end) / 1000)
    return 2 * nbytes / best


def print_counts(gray_thw: np.ndarray, devices: list[str]) -> list[Counts]:
    """Count each engine on each device over the pairs of ``gray_thw`` and print a table."""
    t, h, w = gray_thw.shape
    design = tvl1_device.BYTES_PER_PIXEL_ITERATION * h * w
    print(
        f"\nper solver iteration, {t - 1} real pairs of {h}x{w} in one call (counted; launches and syncs are "
        f"per batch iteration, all pairs together); bytes by design (fused device iteration, "
        f"{tvl1_device.FLOATS_PER_PIXEL_ITERATION} floats/px): {design / 1e6:.2f} MB per pair-iteration"
    )
    head = f"{'engine':<8} {'device':<6} {'iters':>6} {'launches/iter':>13} {'syncs/iter':>10} {'syncs/warp':>10} {'eager operand MB/pair-iter':>26}"
    print(head)
    print("-" * len(head))
    out = []
    warps_per_call = len(tvl1_torch.pyramid_sizes(h, w, 5, 0.5)) * 5
    for d in devices:
        i0 = torch.from_numpy(gray_thw[:-1]).to(d)
        i1 = torch.from_numpy(gray_thw[1:]).to(d)
        for engine in ("cpu", "device"):
            c = count(i0, i1, engine)
            out.append(c)
            mb = c.per_iter(c.operand_bytes) / (t - 1) / 1e6 if c.operand_bytes else float("nan")
            print(
                f"{engine:<8} {d:<6} {c.iterations:>6} {c.per_iter(c.launches):>13.1f} {c.per_iter(c.syncs):>10.3f} "
                f"{c.syncs / warps_per_call:>10.2f} {mb:>26.2f}"
            )
    if "cuda" in devices:
        bw = copy_bandwidth(torch.device("cuda"))
        cuda_dev = [c for c in out if c.device == "cuda" and c.engine == "device"][0]
        achieved = cuda_dev.pair_iterations * design / cuda_dev.seconds
        print(
            f"CUDA device engine: {achieved / 1e9:.0f} GB/s by design bytes over {cuda_dev.pair_iterations:.0f} "
            f"finest-equivalent pair-iterations, copy bandwidth {bw / 1e9:.0f} GB/s: {achieved / bw:.1%} of copy"
            " (the timed call ran under the profiler)"
        )
    return out
