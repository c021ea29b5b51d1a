"""Fused CPU kernel of the TV-L1 iteration (numba): an outer iteration's inner iterations in one compiled call.

The "numba" engine of ``flowprep.flow.tvl1_torch`` (the CPU default): pyramid, centred gradient,
bicubic warp and the between-level upsampling stay in torch (profiled in a run: about a sixth of
a pair's time, most of it the bicubic warp); what runs here is the loop that costs, one warp's up
to ``outer x inner`` iterations with the median filter at the start of each outer iteration and
the per-pair stopping rule, for every pair of the batch, pairs in parallel on threads (one thread
per job is what the pipeline sets).

One iteration is one pass over the image: row ``y``'s u-update (threshold step, divergence of the
old p, per-pair error) then row ``y - 1``'s dual update (forward differences of the new u, which
row ``y`` has just written): the same skew as ``tvl1_torch.EagerIteration``, so u and p are
updated in place and each pixel's 10 arrays are touched once per iteration (88 bytes, the design
bound of ``tvl1_device.BYTES_PER_PIXEL_ITERATION``).  Same arithmetic as ``tvl1_iteration`` in
float32 (``fastmath=False``: no reassociation, no FMA contraction beyond what LLVM may do for
float32 by IEEE rules); the error sum is accumulated in float64 per row, one of the documented
"stopping sums in another order".  The median is the same min/max selection network as
``tvl1_torch.median_filter`` (exact, equal to cv::medianBlur), run over rows.

Compiled once per machine and cached on disk (``cache=True``: next to this file, or, where the
package directory is read-only as in a system-wide wheel install, numba's user-wide cache under
``~/.cache/numba`` or ``NUMBA_CACHE_DIR``); signatures depend on dtypes only, never on frame sizes.
What the first compile costs decides the layout: few compiled functions, callees inlined by numba
rather than linked, one median function per size compiled only when used, the outer loop and the
pairs' threads in Python (numba's ``parallel=True`` cost seconds of compile); ``make bench-flow``
prints the cold and cached figures.  ``warm_cache`` compiles or loads them ahead of a solve: a
run's workers call it one at a time (``flowprep.run.pipeline``), so a machine compiles once.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from numba import njit

from flowprep.flow.tvl1_torch import InPlaceSchedule, Level, Schedule, TVL1Params, TVL1State, WarpConsts, solve


@njit(cache=True, fastmath=False)
def _u_row(y, u1, u2, p11, p12, p21, p22, ix, iy, nig, rho, l_t, theta, s, d1, d2):
    """Row y's u-update in place; returns the row's sum of |d|^2 (float64).  Short loops that
    each write one scratch row, so that LLVM vectorizes them (few aliasing checks)."""
    w = u1.shape[1]
    u1r, u2r, ixr, iyr, nigr, rhor = u1[y], u2[y], ix[y], iy[y], nig[y], rho[y]
    for x in range(w):
        v = (rhor[x] + ixr[x] * u1r[x] + iyr[x] * u2r[x]) * nigr[x]
        v = v if v > -l_t else -l_t
        s[x] = v if v < l_t else l_t
    # divergence: backward differences, p = 0 before the first column / row
    for d, pa, pb, pbu in ((d1, p11[y], p12[y], p12[y - 1]), (d2, p21[y], p22[y], p22[y - 1])):
        d[0] = pa[0]
        for x in range(w - 1):
            d[x + 1] = pa[x + 1] - pa[x]
        if y > 0:
            for x in range(w):
                d[x] += pb[x] - pbu[x]
        else:
            for x in range(w):
                d[x] += pb[x]
    for x in range(w):
        d1[x] = theta * d1[x] + s[x] * ixr[x]
    for x in range(w):
        d2[x] = theta * d2[x] + s[x] * iyr[x]
    for x in range(w):
        u1r[x] += d1[x]
    for x in range(w):
        u2r[x] += d2[x]
    for x in range(w):
        s[x] = d1[x] * d1[x] + d2[x] * d2[x]
    # four running sums (float64): the order differs from a sequential one, not the rule
    a0 = a1 = a2 = a3 = 0.0
    n4 = w - w % 4
    for x in range(0, n4, 4):
        a0 += s[x]
        a1 += s[x + 1]
        a2 += s[x + 2]
        a3 += s[x + 3]
    for x in range(n4, w):
        a0 += s[x]
    return (a0 + a1) + (a2 + a3)


@njit(cache=True, fastmath=False)
def _p_row(y, u1, u2, p11, p12, p21, p22, taut, gx, gy, ng):
    """Row y's dual update from the new u (forward differences, 0 on the last row / column)."""
    h, w = u1.shape
    one = np.float32(1.0)
    for u, pa, pb in ((u1, p11[y], p12[y]), (u2, p21[y], p22[y])):
        ur = u[y]
        for x in range(w - 1):
            gx[x] = ur[x + 1] - ur[x]
        gx[w - 1] = 0
        if y < h - 1:
            un = u[y + 1]
            for x in range(w):
                gy[x] = un[x] - ur[x]
        else:
            for x in range(w):
                gy[x] = 0
        for x in range(w):
            ng[x] = one + taut * np.sqrt(gx[x] * gx[x] + gy[x] * gy[x])
        for x in range(w):
            pa[x] = (pa[x] + taut * gx[x]) / ng[x]
        for x in range(w):
            pb[x] = (pb[x] + taut * gy[x]) / ng[x]


# inline="always" (numba's own inlining): the callers compile this body with theirs instead of
# linking and optimizing it again (a second or more of each machine's first compile)
@njit(cache=True, fastmath=False, inline="always")
def _iteration(u1, u2, p11, p12, p21, p22, ix, iy, nig, rho, l_t, theta, taut, scratch):
    """One iteration over a pair (h, w), in place; returns sum |d|^2 (float64).  ``scratch``:
    (3, w) float32."""
    h, w = u1.shape
    s, d1, d2 = scratch[0], scratch[1], scratch[2]
    err = 0.0
    for y in range(h + 1):
        if y < h:
            err += _u_row(y, u1, u2, p11, p12, p21, p22, ix, iy, nig, rho, l_t, theta, s, d1, d2)
        if y > 0:
            _p_row(y - 1, u1, u2, p11, p12, p21, p22, taut, s, d1, d2)
    return err


@njit(cache=True, inline="always")
def _pad_replicate(u, padded):
    """padded[r:-r, r:-r] = u with its edges replicated, r = (padded.shape[0] - u.shape[0]) // 2."""
    h, w = u.shape
    r = (padded.shape[0] - h) // 2
    for y in range(h + 2 * r):
        src = u[min(max(y - r, 0), h - 1)]
        row = padded[y]
        for x in range(r):
            row[x] = src[0]
            row[w + r + x] = src[w - 1]
        for x in range(w):
            row[r + x] = src[x]


@njit(cache=True, fastmath=False, nogil=True)
def _median3_in_place(u, padded):
    """u = its exact 3x3 median, edges replicated, in place; ``padded`` (h + 2, w + 2) is
    scratch.  Per pixel the 22 comparators of tvl1_torch._MEDIAN_NETWORKS[3] unrolled (generated;
    test_flow_numba checks them against the table), which LLVM vectorizes across the row."""
    _pad_replicate(u, padded)
    for y in range(u.shape[0]):
        out = u[y]
        r0, r1, r2 = padded[y + 0], padded[y + 1], padded[y + 2]
        for x in range(out.shape[0]):
            a0 = r0[x + 0]
            a1 = r0[x + 1]
            a2 = r0[x + 2]
            a3 = r1[x + 0]
            a4 = r1[x + 1]
            a5 = r1[x + 2]
            a6 = r2[x + 0]
            a7 = r2[x + 1]
            a8 = r2[x + 2]
            t = min(a0, a8)
            a8 = max(a0, a8)
            a0 = t
            t = min(a0, a4)
            a4 = max(a0, a4)
            a0 = t
            t = min(a1, a5)
            a5 = max(a1, a5)
            a1 = t
            t = min(a2, a6)
            a6 = max(a2, a6)
            a2 = t
            t = min(a3, a7)
            a7 = max(a3, a7)
            a3 = t
            t = min(a4, a8)
            a8 = max(a4, a8)
            a4 = t
            t = min(a0, a2)
            a2 = max(a0, a2)
            a0 = t
            t = min(a1, a3)
            a3 = max(a1, a3)
            a1 = t
            t = min(a4, a6)
            a6 = max(a4, a6)
            a4 = t
            t = min(a5, a7)
            a7 = max(a5, a7)
            a5 = t
            t = min(a2, a8)
            a8 = max(a2, a8)
            a2 = t
            t = min(a2, a4)
            a4 = max(a2, a4)
            a2 = t
            t = min(a3, a5)
            a5 = max(a3, a5)
            a3 = t
            t = min(a6, a8)
            a8 = max(a6, a8)
            a6 = t
            a1 = a1 if a0 < a1 else a0
            a3 = a3 if a2 < a3 else a2
            a4 = a4 if a4 < a5 else a5
            a6 = a6 if a6 < a7 else a7
            a1 = a1 if a1 < a8 else a8
            a4 = a4 if a1 < a4 else a1
            a3 = a3 if a3 < a6 else a6
            a4 = a4 if a3 < a4 else a3
            out[x] = a4


@njit(cache=True, fastmath=False, nogil=True)
def _median5_in_place(u, padded):
    """u = its exact 5x5 median, edges replicated, in place; ``padded`` (h + 4, w + 4) is
    scratch.  Per pixel the 113 comparators of tvl1_torch._MEDIAN_NETWORKS[5] unrolled (generated;
    test_flow_numba checks them against the table), which LLVM vectorizes across the row."""
    _pad_replicate(u, padded)
    for y in range(u.shape[0]):
        out = u[y]
        r0, r1, r2, r3, r4 = padded[y + 0], padded[y + 1], padded[y + 2], padded[y + 3], padded[y + 4]
        for x in range(out.shape[0]):
            a0 = r0[x + 0]
            a1 = r0[x + 1]
            a2 = r0[x + 2]
            a3 = r0[x + 3]
            a4 = r0[x + 4]
            a5 = r1[x + 0]
            a6 = r1[x + 1]
            a7 = r1[x + 2]
            a8 = r1[x + 3]
            a9 = r1[x + 4]
            a10 = r2[x + 0]
            a11 = r2[x + 1]
            a12 = r2[x + 2]
            a13 = r2[x + 3]
            a14 = r2[x + 4]
            a15 = r3[x + 0]
            a16 = r3[x + 1]
            a17 = r3[x + 2]
            a18 = r3[x + 3]
            a19 = r3[x + 4]
            a20 = r4[x + 0]
            a21 = r4[x + 1]
            a22 = r4[x + 2]
            a23 = r4[x + 3]
            a24 = r4[x + 4]
            t = min(a0, a16)
            a16 = max(a0, a16)
            a0 = t
            t = min(a1, a17)
            a17 = max(a1, a17)
            a1 = t
            t = min(a2, a18)
            a18 = max(a2, a18)
            a2 = t
            t = min(a3, a19)
            a19 = max(a3, a19)
            a3 = t
            t = min(a4, a20)
            a20 = max(a4, a20)
            a4 = t
            t = min(a5, a21)
            a21 = max(a5, a21)
            a5 = t
            t = min(a6, a22)
            a22 = max(a6, a22)
            a6 = t
            t = min(a7, a23)
            a23 = max(a7, a23)
            a7 = t
            t = min(a8, a24)
            a24 = max(a8, a24)
            a8 = t
            t = min(a0, a8)
            a8 = max(a0, a8)
            a0 = t
            t = min(a1, a9)
            a9 = max(a1, a9)
            a1 = t
            t = min(a2, a10)
            a10 = max(a2, a10)
            a2 = t
            t = min(a3, a11)
            a11 = max(a3, a11)
            a3 = t
            t = min(a4, a12)
            a12 = max(a4, a12)
            a4 = t
            t = min(a5, a13)
            a13 = max(a5, a13)
            a5 = t
            t = min(a6, a14)
            a14 = max(a6, a14)
            a6 = t
            t = min(a7, a15)
            a15 = max(a7, a15)
            a7 = t
            t = min(a16, a24)
            a24 = max(a16, a24)
            a16 = t
            t = min(a8, a16)
            a16 = max(a8, a16)
            a8 = t
            t = min(a9, a17)
            a17 = max(a9, a17)
            a9 = t
            t = min(a10, a18)
            a18 = max(a10, a18)
            a10 = t
            t = min(a11, a19)
            a19 = max(a11, a19)
            a11 = t
            t = min(a12, a20)
            a20 = max(a12, a20)
            a12 = t
            t = min(a13, a21)
            a21 = max(a13, a21)
            a13 = t
            t = min(a14, a22)
            a22 = max(a14, a22)
            a14 = t
            t = min(a15, a23)
            a23 = max(a15, a23)
            a15 = t
            t = min(a0, a4)
            a4 = max(a0, a4)
            a0 = t
            t = min(a1, a5)
            a5 = max(a1, a5)
            a1 = t
            t = min(a2, a6)
            a6 = max(a2, a6)
            a2 = t
            t = min(a3, a7)
            a7 = max(a3, a7)
            a3 = t
            t = min(a8, a12)
            a12 = max(a8, a12)
            a8 = t
            t = min(a9, a13)
            a13 = max(a9, a13)
            a9 = t
            t = min(a10, a14)
            a14 = max(a10, a14)
            a10 = t
            t = min(a11, a15)
            a15 = max(a11, a15)
            a11 = t
            t = min(a16, a20)
            a20 = max(a16, a20)
            a16 = t
            t = min(a17, a21)
            a21 = max(a17, a21)
            a17 = t
            t = min(a18, a22)
            a22 = max(a18, a22)
            a18 = t
            t = min(a19, a23)
            a23 = max(a19, a23)
            a19 = t
            t = min(a4, a16)
            a16 = max(a4, a16)
            a4 = t
            t = min(a5, a17)
            a17 = max(a5, a17)
            a5 = t
            t = min(a6, a18)
            a18 = max(a6, a18)
            a6 = t
            t = min(a7, a19)
            a19 = max(a7, a19)
            a7 = t
            t = min(a12, a24)
            a24 = max(a12, a24)
            a12 = t
            t = min(a4, a8)
            a8 = max(a4, a8)
            a4 = t
            t = min(a5, a9)
            a9 = max(a5, a9)
            a5 = t
            t = min(a6, a10)
            a10 = max(a6, a10)
            a6 = t
            t = min(a7, a11)
            a11 = max(a7, a11)
            a7 = t
            t = min(a12, a16)
            a16 = max(a12, a16)
            a12 = t
            t = min(a13, a17)
            a17 = max(a13, a17)
            a13 = t
            t = min(a14, a18)
            a18 = max(a14, a18)
            a14 = t
            t = min(a15, a19)
            a19 = max(a15, a19)
            a15 = t
            t = min(a20, a24)
            a24 = max(a20, a24)
            a20 = t
            t = min(a0, a2)
            a2 = max(a0, a2)
            a0 = t
            t = min(a1, a3)
            a3 = max(a1, a3)
            a1 = t
            t = min(a4, a6)
            a6 = max(a4, a6)
            a4 = t
            t = min(a5, a7)
            a7 = max(a5, a7)
            a5 = t
            t = min(a8, a10)
            a10 = max(a8, a10)
            a8 = t
            t = min(a9, a11)
            a11 = max(a9, a11)
            a9 = t
            t = min(a12, a14)
            a14 = max(a12, a14)
            a12 = t
            t = min(a13, a15)
            a15 = max(a13, a15)
            a13 = t
            t = min(a16, a18)
            a18 = max(a16, a18)
            a16 = t
            t = min(a17, a19)
            a19 = max(a17, a19)
            a17 = t
            t = min(a20, a22)
            a22 = max(a20, a22)
            a20 = t
            t = min(a21, a23)
            a23 = max(a21, a23)
            a21 = t
            t = min(a2, a16)
            a16 = max(a2, a16)
            a2 = t
            t = min(a3, a17)
            a17 = max(a3, a17)
            a3 = t
            t = min(a6, a20)
            a20 = max(a6, a20)
            a6 = t
            t = min(a7, a21)
            a21 = max(a7, a21)
            a7 = t
            t = min(a10, a24)
            a24 = max(a10, a24)
            a10 = t
            t = min(a2, a8)
            a8 = max(a2, a8)
            a2 = t
            t = min(a3, a9)
            a9 = max(a3, a9)
            a3 = t
            t = min(a6, a12)
            a12 = max(a6, a12)
            a6 = t
            t = min(a7, a13)
            a13 = max(a7, a13)
            a7 = t
            t = min(a10, a16)
            a16 = max(a10, a16)
            a10 = t
            t = min(a11, a17)
            a17 = max(a11, a17)
            a11 = t
            t = min(a14, a20)
            a20 = max(a14, a20)
            a14 = t
            t = min(a15, a21)
            a21 = max(a15, a21)
            a15 = t
            t = min(a18, a24)
            a24 = max(a18, a24)
            a18 = t
            t = min(a2, a4)
            a4 = max(a2, a4)
            a2 = t
            t = min(a3, a5)
            a5 = max(a3, a5)
            a3 = t
            t = min(a6, a8)
            a8 = max(a6, a8)
            a6 = t
            t = min(a7, a9)
            a9 = max(a7, a9)
            a7 = t
            t = min(a10, a12)
            a12 = max(a10, a12)
            a10 = t
            t = min(a11, a13)
            a13 = max(a11, a13)
            a11 = t
            t = min(a14, a16)
            a16 = max(a14, a16)
            a14 = t
            t = min(a15, a17)
            a17 = max(a15, a17)
            a15 = t
            t = min(a18, a20)
            a20 = max(a18, a20)
            a18 = t
            t = min(a19, a21)
            a21 = max(a19, a21)
            a19 = t
            t = min(a22, a24)
            a24 = max(a22, a24)
            a22 = t
            a1 = a1 if a0 < a1 else a0
            a3 = a3 if a2 < a3 else a2
            a5 = a5 if a4 < a5 else a4
            a7 = a7 if a6 < a7 else a6
            a9 = a9 if a8 < a9 else a8
            a11 = a11 if a10 < a11 else a10
            a12 = a12 if a12 < a13 else a13
            a14 = a14 if a14 < a15 else a15
            a16 = a16 if a16 < a17 else a17
            a18 = a18 if a18 < a19 else a19
            a20 = a20 if a20 < a21 else a21
            a22 = a22 if a22 < a23 else a23
            a16 = a16 if a1 < a16 else a1
            a18 = a18 if a3 < a18 else a3
            a5 = a5 if a5 < a20 else a20
            a7 = a7 if a7 < a22 else a22
            a9 = a9 if a9 < a24 else a24
            a12 = a12 if a5 < a12 else a5
            a14 = a14 if a7 < a14 else a7
            a9 = a9 if a9 < a16 else a16
            a11 = a11 if a11 < a18 else a18
            a12 = a12 if a9 < a12 else a9
            a11 = a11 if a11 < a14 else a14
            a12 = a12 if a11 < a12 else a11
            out[x] = a12


def median_in_place(u: np.ndarray, size: int, padded: np.ndarray) -> None:
    """Exact size x size median (3 or 5) of u (h, w) float32, edges replicated, in place;
    ``padded`` (h + size - 1, w + size - 1) float32 is scratch.  One compiled function per size,
    so that a process compiles only the size it uses (each costs seconds the first time)."""
    if size == 3:
        _median3_in_place(u, padded)
    elif size == 5:
        _median5_in_place(u, padded)
    else:
        raise ValueError(f"median size {size}: the numba engine has 3 and 5")


@njit(cache=True, fastmath=False, nogil=True)
def _iterations(u1, u2, p11, p12, p21, p22, ix, iy, nig, rho, l_t, theta, taut, thresh, n, scratch):
    """Up to n iterations of one pair, stopping after the first with sum |d|^2 <= thresh.
    Returns (iterations run, whether the rule stopped them)."""
    for k in range(n):
        if _iteration(u1, u2, p11, p12, p21, p22, ix, iy, nig, rho, l_t, theta, taut, scratch) <= thresh:
            return k + 1, True
    return n, False


def _pair_warp(arrays: list[np.ndarray], params: TVL1Params, thresh: float) -> int:
    """One warp of one pair, in place: up to ``n_iter`` iterations, the median at each outer
    iteration's start, stopping by the rule.  The outer loop runs here, in Python (a few dozen
    turns per warp), so that only the median size in use is ever compiled.  Returns iterations run."""
    u1, u2 = arrays[0], arrays[1]
    h, w = u1.shape
    size = params.median_filtering
    padded = np.empty((h + size - 1, w + size - 1), np.float32) if size > 1 else None
    scratch = np.empty((3, w), np.float32)
    f32 = np.float32
    scalars = (f32(params.l_t), f32(params.theta), f32(params.taut), float(thresh))
    done = 0
    while done < params.n_iter:
        if padded is not None:
            median_in_place(u1, size, padded)
            median_in_place(u2, size, padded)
        n = min(params.inner_iterations, params.n_iter - done)
        # mypy reads numba's Dispatcher (its __call__ lives in a C base) as taking no arguments
        ran, stopped = _iterations(*arrays, *scalars, n, scratch)  # type: ignore[call-arg]
        done += ran
        if stopped:
            break
    return done


def iterate_warp(state: TVL1State, consts: WarpConsts, params: TVL1Params, thresh: float) -> np.ndarray:
    """One warp's iterations for every pair, in place on CPU float32 tensors (B, h, w) (gamma = 0).
    Returns the iterations each pair ran (int32 (B,)).  Pairs run in parallel on torch's thread
    count (what ``cpus.set_solver_threads`` sets: one per job in a run), their compiled calls
    releasing the GIL (not numba's ``parallel=True``: the module docstring says why)."""
    arrays = [x.numpy() for x in (*state.u, *state.p, *consts)]
    n = len(arrays[0])

    def pair(b: int) -> int:
        return _pair_warp([a[b] for a in arrays], params, thresh)

    threads = min(n, torch.get_num_threads())
    if threads <= 1:
        return np.array([pair(b) for b in range(n)], np.int32)
    with ThreadPoolExecutor(threads) as pool:
        return np.array(list(pool.map(pair, range(n))), np.int32)


def warm_cache(median_filtering: int) -> None:
    """Compile, or load from the on-disk cache, the kernels a solve with this median size runs
    (a few milliseconds of work on 2x2 arrays; seconds the first time on a machine)."""
    z = np.zeros((2, 2), np.float32)
    one = np.ones((2, 2), np.float32)
    f32 = np.float32
    # mypy reads numba's Dispatcher (its __call__ lives in a C base) as taking no arguments
    _iterations(
        *(z.copy() for _ in range(6)), z, z, one, z, f32(0.1), f32(0.3), f32(0.25), 0.0, 1, np.empty((3, 2), f32)
    )  # type: ignore[call-arg]
    if median_filtering > 1:
        median_in_place(z.copy(), median_filtering, np.empty((1 + median_filtering, 1 + median_filtering), f32))


class NumbaSchedule(Schedule):
    """The "numba" engine: each warp's iterations in one compiled call per pair (``_pair_warp``),
    pairs in parallel over threads.  ``iterations`` counts pair-iterations per level size (pixels),
    for the benchmarks' bytes-moved figure.  gamma != 0 runs ``tvl1_torch``'s eager kernels."""

    def __init__(self, params: TVL1Params):
        self.params = params
        self.iterations: dict[int, int] = {}
        self.fallback = InPlaceSchedule(params)

    def run_warp(self, state: TVL1State, consts: WarpConsts, level: Level) -> TVL1State:
        if len(state.u) == 3:
            return self.fallback.run_warp(state, consts, level)
        counts = iterate_warp(state, consts, self.params, level.thresh)
        self.iterations[level.h * level.w] = self.iterations.get(level.h * level.w, 0) + int(counts.sum())
        return state


def tvl1_flow_numba(
    i0_bhw: torch.Tensor,
    i1_bhw: torch.Tensor,
    *,
    compile: bool | None = None,
    schedule_out: list | None = None,
    **params: Any,
) -> torch.Tensor:
    """As ``tvl1_torch.tvl1_flow`` with the numba engine (CPU tensors only).  ``compile`` is
    accepted for the common signature and ignored: this engine is always compiled.
    ``schedule_out``: a list the schedule is appended to (for its iteration counts)."""
    if i0_bhw.device.type != "cpu":
        raise ValueError(f"engine 'numba' runs on the CPU; the frames are on {i0_bhw.device}")
    prm = TVL1Params(**params)
    schedule = NumbaSchedule(prm)
    if schedule_out is not None:
        schedule_out.append(schedule)
    return solve(i0_bhw, i1_bhw, prm, schedule)
