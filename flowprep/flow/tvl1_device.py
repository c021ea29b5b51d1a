"""Device engine of the TV-L1 solver: masked, sync-free iterations in fusable functional code.

``tvl1_flow_device`` computes exactly the TV-L1 of ``flowprep.flow.tvl1_torch`` (same pyramid,
bicubic warp, median filter, iteration and per-pair stopping rule; the numerics are shared, only
the control flow differs), written for an accelerator, where what costs is not arithmetic but
kernel launches and host synchronizations:

* **No host synchronization inside a block of iterations.**  Each pair carries an ``active``
  flag on the device.  An iteration computes every pair's update and keeps it only where the
  pair is still active (``torch.where``); then ``active &= err > epsilon^2 h w``.  So a pair stops
  updating at the very iteration OpenCV's rule stops it (that iteration's u and p update is kept,
  as in OpenCV, whose loop tests the error after estimateU/estimateDualVariables), and the median
  filter at the start of each outer iteration only touches active pairs (OpenCV's outer loop
  stops too).  The host reads ``active.any()`` once per block of ``check_every`` iterations
  (default: one outer iteration, ``inner_iterations``), the only synchronization in a warp; a
  block that starts with every pair converged is not run, so no work is wasted beyond the
  masked pairs of a block.  The batch is never compacted (compaction needs the count on the host).
* **Few launches per iteration.**  One iteration is one pure function of tensors,
  ``masked_iteration`` (``tvl1_torch.tvl1_iteration``'s arithmetic with stencils written as
  slices and zero pads, plus the mask), and a block is a loop of them with the masked median.
  On CUDA each is compiled by ``torch.compile`` (Inductor fuses an iteration into a few Triton
  kernels: the u-update with its per-pair error sum, the dual update), and with
  ``cuda_graphs=True`` a whole block replays as one CUDA graph (see ``_Block`` for why that is
  opt-in).  Eager on the CPU, where the same code runs for the tests (the CPU engine,
  ``tvl1_torch``'s blocked in-place kernels, is the fast one there).  ``bench_flow.py`` counts
  the launches and syncs.  Why not hand-written Triton: the Triton wheel is ~440 MB (too big for
  the test extra) and its interpreter far too slow for tests on real 256x340 frames; Inductor
  emits Triton kernels on CUDA from the very code the CPU tests check.
* **No straggler cost.**  Masking alone would make a batch cost its slowest pair's iterations
  for every pair (on real frames a warp takes ~33 iterations on average, some pairs 300).  At a
  block's check, when at most half the pairs are still active, the working set shrinks to them
  (padded to a power of two with converged, masked pairs, so compiled code sees few shapes); the
  host already reads the flags there, so this costs no extra synchronization.
* **Bytes moved by design.**  A fused iteration reads u1, u2, p11..p22, I1wx, I1wy, nig, rho_c
  and writes u1, u2 in the u-kernel (12 floats per pixel), reads u1, u2, p11..p22 and writes the
  four p in the p-kernel (10): ``BYTES_PER_PIXEL_ITERATION`` = 88 bytes, 7.66 MB per pair-iteration
  at 256x340.
* Pyramid (separable matrix products), centred gradient, bicubic warp (``grid_sample``) and the
  exact median network all run on the device, as in ``tvl1_torch``.

``DeviceStats`` counts what the engine did (host syncs, blocks, iterations, pair-iterations in
finest-level equivalents) for benchmarks; counting pair-iterations adds one device reduction per
block and one read at the end, so it is off unless a ``DeviceStats`` is passed.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from flowprep.flow import tvl1_torch as tt

# floats per pixel read + written by one fused iteration (see the module docstring)
FLOATS_PER_PIXEL_ITERATION = 22
BYTES_PER_PIXEL_ITERATION = 4 * FLOATS_PER_PIXEL_ITERATION


@dataclass
class DeviceStats:
    """What one or more ``tvl1_flow_device`` calls did; filled when passed as ``stats``."""

    host_syncs: int = 0  # reads of device values by the host inside the solver (active.any())
    warps: int = 0  # warps run (levels x warps per call)
    blocks: int = 0  # blocks of iterations launched
    iterations: int = 0  # iterations launched (per batch, all pairs together)
    computed_pair_iterations: int = 0  # pair-iterations computed, masked ones included
    finest_pixels: int = 0  # h * w of the last call's finest level
    # pair-iterations actually updating, per level (pixels of that level, count)
    pair_iterations: dict[int, int] = field(default_factory=dict)
    # per level (coarsest first) of the last call: iterations each pair updated, all warps
    per_pair: list[list[int]] = field(default_factory=list)

    @property
    def finest_equivalent_pair_iterations(self) -> float:
        """Pair-iterations weighted by level size, in finest-level iterations."""
        if not self.finest_pixels:
            return 0.0
        return sum(px * n for px, n in self.pair_iterations.items()) / self.finest_pixels


def _forward_gradient(u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # u[i+1] - u[i], 0 on the last column / row: tvl1_torch's, as a slice difference and a zero
    # pad (pointwise with a mask for Inductor; torch.diff's append is a concatenation it
    # materializes)
    return F.pad(u[:, :, 1:] - u[:, :, :-1], (0, 1)), F.pad(u[:, 1:] - u[:, :-1], (0, 0, 0, 1))


def _divergence(p1: torch.Tensor, p2: torch.Tensor) -> torch.Tensor:
    # p[i] - p[i-1] with p[-1] = 0 (backward differences), the same values as tvl1_torch's
    return (p1 - F.pad(p1[:, :, :-1], (1, 0))) + (p2 - F.pad(p2[:, :-1], (0, 0, 1, 0)))


def fused_iteration(
    u1: torch.Tensor,
    u2: torch.Tensor,
    p11: torch.Tensor,
    p12: torch.Tensor,
    p21: torch.Tensor,
    p22: torch.Tensor,
    i1wx: torch.Tensor,
    i1wy: torch.Tensor,
    nig: torch.Tensor,
    rho_c: torch.Tensor,
    l_t: float,
    theta: float,
    taut: float,
) -> tuple[torch.Tensor, ...]:
    """``tvl1_torch.tvl1_iteration`` (the same arithmetic in the same order), with stencils that
    Inductor fuses: the u-update with its per-pair error sum, then the dual update."""
    step = ((rho_c + i1wx * u1 + i1wy * u2) * nig).clamp(-l_t, l_t)
    d1 = step * i1wx + theta * _divergence(p11, p12)
    d2 = step * i1wy + theta * _divergence(p21, p22)
    n1, n2 = u1 + d1, u2 + d2
    err = (d1 * d1 + d2 * d2).sum(dim=(1, 2))
    u1x, u1y = _forward_gradient(n1)
    u2x, u2y = _forward_gradient(n2)
    ng1 = 1.0 + taut * torch.hypot(u1x, u1y)
    ng2 = 1.0 + taut * torch.hypot(u2x, u2y)
    return (
        n1,
        n2,
        (p11 + taut * u1x) / ng1,
        (p12 + taut * u1y) / ng1,
        (p21 + taut * u2x) / ng2,
        (p22 + taut * u2y) / ng2,
        err,
    )


def masked_iteration(
    u: list[torch.Tensor],
    p: list[torch.Tensor],
    consts: tuple[torch.Tensor, ...],
    active: torch.Tensor,
    count: torch.Tensor,
    l_t: float,
    theta: float,
    taut: float,
    gamma: float,
    thresh: float,
) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """One TV-L1 iteration of the active pairs (``active``: bool (B,)); the others keep their
    state.  Returns ``(u, p, active, count)``: ``active`` cleared for pairs whose update was small
    (OpenCV's rule: the converging iteration's update is kept), ``count`` (int (B,)) plus one
    for each pair this iteration updated."""
    i1wx, i1wy, nig, rho_c = consts
    if len(u) == 3:
        u1, u2, u3 = u
        p11, p12, p21, p22, p31, p32 = p
        out = tt.tvl1_iteration_gamma(
            u1, u2, u3, p11, p12, p21, p22, p31, p32, i1wx, i1wy, nig, rho_c, l_t, theta, taut, gamma
        )
    else:
        u1, u2 = u
        p11, p12, p21, p22 = p
        out = fused_iteration(u1, u2, p11, p12, p21, p22, i1wx, i1wy, nig, rho_c, l_t, theta, taut)
    a = active[:, None, None]
    nu = len(u)
    new_u = [torch.where(a, n, o) for n, o in zip(out[:nu], u, strict=True)]
    new_p = [torch.where(a, n, o) for n, o in zip(out[nu:-1], p, strict=True)]
    return new_u, new_p, active & (out[-1] > thresh), count + active.to(count.dtype)


def masked_median(u: list[torch.Tensor], active: torch.Tensor, size: int) -> list[torch.Tensor]:
    """The median filter of u1, u2 (not u3, as OpenCV) of the active pairs."""
    a = active[:, None, None]
    return [torch.where(a, tt.median_filter(x, size), x) if i < 2 else x for i, x in enumerate(u)]


def _block_loop(
    iteration: Callable[..., Any],
    median: Callable[..., Any],
    u: list[torch.Tensor],
    p: list[torch.Tensor],
    consts: tuple[torch.Tensor, ...],
    active: torch.Tensor,
    count: torch.Tensor,
    start: int,
    n: int,
    inner_iterations: int,
    median_filtering: int,
    l_t: float,
    theta: float,
    taut: float,
    gamma: float,
    thresh: float,
) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor, torch.Tensor]:
    for k in range(start, start + n):
        if median_filtering > 1 and k % inner_iterations == 0:
            u = median(u, active, median_filtering)
        u, p, active, count = iteration(u, p, consts, active, count, l_t, theta, taut, gamma, thresh)
    return u, p, active, count


def iteration_block(*args: Any) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """Iterations ``start .. start + n - 1`` of a warp (arguments as ``_block_loop`` after its
    two functions), with the masked median where an outer iteration starts: straight-line, pure
    code, no host synchronization; one graph for torch.compile in "graphs" mode."""
    return _block_loop(masked_iteration, masked_median, *args)


class _Working:
    """The pairs a warp still computes: all at first; at a block boundary where at most half
    are active, the active ones (padded with converged ones, which stay masked, to a power of
    two: few distinct shapes for compiled graphs), so that a batch does not cost its slowest
    pair's iterations for every pair.  ``finish`` scatters the state back into the full batch."""

    def __init__(
        self, u: list[torch.Tensor], p: list[torch.Tensor], consts: tuple[torch.Tensor, ...], count: torch.Tensor
    ):
        self.full = (u, p, count)
        self.u, self.p, self.consts, self.count = u, p, consts, count
        self.all_consts = consts
        self.active = torch.ones(len(count), dtype=torch.bool, device=count.device)
        self.idx: torch.Tensor | None = None  # working rows -> pairs; None: all pairs in order

    def _write_back(self) -> None:
        if self.idx is None:
            return
        fu, fp, fc = self.full
        for full, part in zip([*fu, *fp, fc], [*self.u, *self.p, self.count], strict=True):
            full[self.idx] = part

    def compact(self, active_host: torch.Tensor) -> bool:
        """After a block, with its active flags on the host: False when every pair is done."""
        n_act = int(active_host.sum())
        if n_act == 0:
            return False
        size = len(active_host)
        keep = 1 << (n_act - 1).bit_length()  # next power of two
        if keep * 2 > size:
            return True
        order = torch.cat((active_host.nonzero().squeeze(1), (~active_host).nonzero().squeeze(1)))[:keep]
        rows = order.to(self.count.device)
        if self.idx is None:  # the working set is the whole batch: it becomes the full state
            self.full = ([x.clone() for x in self.u], [x.clone() for x in self.p], self.count.clone())
            idx = rows
        else:
            self._write_back()
            idx = self.idx[rows]
        fu, fp, fc = self.full
        self.u = [x.index_select(0, idx) for x in fu]
        self.p = [x.index_select(0, idx) for x in fp]
        self.count = fc.index_select(0, idx)
        self.consts = tuple(x.index_select(0, idx) for x in self.all_consts)
        self.active = self.active.index_select(0, rows)
        self.idx = idx
        return True

    def finish(self) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
        if self.idx is None:
            return self.u, self.p, self.count
        self._write_back()
        return self.full


def _warn_eager(e: BaseException) -> None:
    warnings.warn(
        f"torch.compile of the device TV-L1 engine failed, running eagerly: {type(e).__name__}: {str(e)[:300]}",
        RuntimeWarning,
        stacklevel=4,
    )


class _Block:
    """Runs a block of iterations in one of three modes:

    * "eager": ``iteration_block`` as is (the CPU default: the tests' mode);
    * "kernels" (compiled, the CUDA default): ``masked_iteration`` and ``masked_median`` each
      compiled (Inductor fuses an iteration into a few Triton kernels), the block's loop in
      Python, still without a host synchronization; compiling takes seconds, as the graphs are
      small, and at the batch sizes the flow worker uses (hundreds of 256x340 pairs: ~2 GB
      moved per iteration) launch overhead is a small fraction of an iteration;
    * "graphs": the whole ``iteration_block`` compiled with ``mode="reduce-overhead"`` (CUDA
      graphs), one graph replay per block: no per-iteration launch overhead (what small batches
      and coarse levels need), at the price of compiling a block's unrolled iterations (minutes)
      and one graph per shape; opt-in (``cuda_graphs=True``) until measured on a GPU.

    A failure to compile warns once and runs eagerly from then on."""

    _kernels: tuple[Callable[..., Any], Callable[..., Any]] | None = None
    _graphs: Callable[..., Any] | None = None
    _error: BaseException | None = None

    @classmethod
    def run(cls, mode: str, *args: Any) -> Any:
        if mode != "eager" and cls._error is None:
            try:
                if mode == "kernels":
                    if cls._kernels is None:
                        cls._kernels = (
                            torch.compile(masked_iteration, dynamic=True, fullgraph=True),
                            torch.compile(masked_median, dynamic=True, fullgraph=True),
                        )
                    return _block_loop(*cls._kernels, *args)
                if cls._graphs is None:
                    cls._graphs = torch.compile(iteration_block, dynamic=True, fullgraph=True, mode="reduce-overhead")
                # CUDA graphs: outputs live in the graph's pool and the next replay overwrites
                # them, so each replay is a new step and its outputs are copied out (one copy of
                # the state per block of iterations)
                torch.compiler.cudagraph_mark_step_begin()
                u, p, active, count = cls._graphs(*args)
                return [x.clone() for x in u], [x.clone() for x in p], active.clone(), count.clone()
            except Exception as e:  # noqa: BLE001 - any failure to compile means: run eagerly
                cls._error = e
                _warn_eager(e)
        return iteration_block(*args)


# "numba": fused CPU kernel (tvl1_numba), the CPU default; "cpu": tvl1_torch's blocked eager
# torch kernels (the CPU default before numba; kept for comparison and where numba is missing);
# "device": this module, the CUDA default
ENGINES = ("numba", "cpu", "device")


def _numba_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("numba") is not None


def resolve_engine(engine: str | None, device: torch.device) -> str:
    """None -> "device" on CUDA, "numba" (or "cpu" without numba) elsewhere; anything but
    ENGINES is an error, and so is "numba" off the CPU."""
    if engine is None:
        if device.type == "cuda":
            return "device"
        return "numba" if _numba_available() else "cpu"
    if engine not in ENGINES:
        raise ValueError(f"engine={engine!r}: allowed: {', '.join(ENGINES)} (or None: by device)")
    if engine == "numba" and device.type != "cpu":
        raise ValueError(f"engine='numba' runs on the CPU, not on {device}")
    return engine


def engine_solver(engine: str | None, device: torch.device) -> Callable[..., torch.Tensor]:
    """The solver function of ``engine`` (None: by ``device``), with ``tvl1_torch.tvl1_flow``'s signature."""
    name = resolve_engine(engine, device)
    if name == "numba":
        from flowprep.flow import tvl1_numba

        return tvl1_numba.tvl1_flow_numba
    return tvl1_flow_device if name == "device" else tt.tvl1_flow


def tvl1_flow_engine(
    i0_bhw: torch.Tensor, i1_bhw: torch.Tensor, *, engine: str | None = None, **params: Any
) -> torch.Tensor:
    """TV-L1 flow with the engine named (None: "device" on CUDA, "numba" elsewhere)."""
    return engine_solver(engine, i0_bhw.device)(i0_bhw, i1_bhw, **params)


def compile_works() -> bool:
    """Whether compiling the device engine's block has not failed so far in this process."""
    return _Block._error is None


def tvl1_flow_device(
    i0_bhw: torch.Tensor,
    i1_bhw: torch.Tensor,
    *,
    compile: bool | None = None,
    cuda_graphs: bool = False,
    check_every: int | None = None,
    stats: DeviceStats | None = None,
    **params: Any,
) -> torch.Tensor:
    """As ``tvl1_torch.tvl1_flow`` (same parameters, same flow), with the device engine.

    ``compile=None``: compiled on CUDA, eager elsewhere; ``cuda_graphs=True`` (with compile)
    replays each block of iterations as one CUDA graph (see ``_Block``).  ``check_every``:
    iterations between the host's convergence checks (default ``inner_iterations``); the result
    does not depend on either.
    """
    prm = tt.TVL1Params(**params)
    if compile is None:
        compile = i0_bhw.device.type == "cuda"
    block = check_every or prm.inner_iterations
    if block < 1:
        raise ValueError(f"check_every={check_every!r}: must be >= 1")
    mode = "eager" if not compile else ("graphs" if cuda_graphs and i0_bhw.device.type == "cuda" else "kernels")
    if stats is not None:
        stats.finest_pixels = i0_bhw.shape[-2] * i0_bhw.shape[-1]
        stats.per_pair = []
    return tt.solve(i0_bhw, i1_bhw, prm, MaskedSchedule(prm, mode, block, stats))


class MaskedSchedule(tt.Schedule):
    """The device engine's schedule: blocks of masked iterations (``_Block`` in ``mode``), one
    host read of the active flags per block, the working set compacted (``_Working``)."""

    def __init__(self, params: tt.TVL1Params, mode: str, block: int, stats: DeviceStats | None):
        self.params, self.block, self.stats = params, block, stats
        self.run_block = functools.partial(_Block.run, mode)
        self.count: torch.Tensor | None = None

    def begin_level(self, b: int, level: tt.Level) -> None:
        self.count = None

    def run_warp(self, state: tt.TVL1State, consts: tt.WarpConsts, level: tt.Level) -> tt.TVL1State:
        prm, stats, block = self.params, self.stats, self.block
        u, p = state
        if self.count is None:
            self.count = torch.zeros(u[0].shape[0], dtype=torch.int32, device=u[0].device)
        work = _Working(u, p, tuple(consts), self.count)
        n_iter = prm.n_iter
        for start in range(0, n_iter, block):
            n = min(block, n_iter - start)
            work.u, work.p, work.active, work.count = self.run_block(
                work.u, work.p, work.consts, work.active, work.count, start, n, prm.inner_iterations,
                prm.median_filtering, prm.l_t, prm.theta, prm.taut, prm.gamma, level.thresh,
            )  # fmt: skip
            if stats is not None:
                stats.blocks += 1
                stats.iterations += n
                stats.computed_pair_iterations += n * len(work.active)
            if start + n < n_iter:
                # the one host synchronization of a block: which pairs still iterate?
                if stats is not None:
                    stats.host_syncs += 1
                if not work.compact(work.active.cpu()):
                    break
        u, p, self.count = work.finish()
        if stats is not None:
            stats.warps += 1
        return tt.TVL1State(u, p)

    def end_level(self, level: tt.Level) -> None:
        stats = self.stats
        if stats is not None and self.count is not None:
            stats.per_pair.append(self.count.tolist())
            px = level.h * level.w
            stats.pair_iterations[px] = stats.pair_iterations.get(px, 0) + sum(stats.per_pair[-1])
