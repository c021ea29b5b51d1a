"""Batched TV-L1 optical flow in PyTorch: many frame pairs per call, on whatever device they sit.

``tvl1_flow(i0_bhw, i1_bhw, ...)`` returns ``(B, H, W, 2)`` float32 flow in pixels (u right,
v down) mapping ``i0`` to ``i1``: ``i1[y + v, x + u] ~ i0[y, x]``.  Numerical code only, over
tensors; the one system query (free memory, for ``auto_batch_size``) and the numpy adapter
``flow_video`` used by ``flowprep.flow.api``'s "torch" backend sit at the end of the module.

The scheme is the duality-based TV-L1 of Zach, Pock & Bischof (2007) as detailed by Sánchez,
Meinhardt-Llopis & Facciolo (IPOL 2013), step for step as OpenCV's CPU
``cv::optflow::DualTVL1OpticalFlow`` runs it (opencv_contrib, modules/optflow/src/tvl1flow.cpp),
so the parameters mean the same thing and the flows agree to a few hundredths of a pixel:

* intensities on the 0..255 scale (``lambda_`` is tuned for it); the pyramid resizes each level
  from the previous one by ``scale_step`` with OpenCV's INTER_LINEAR weights (no pre-smoothing;
  source position ``(x + 0.5) / scale_step - 0.5``, edges replicated, sizes
  ``round(side * scale_step)`` half to even as ``cvRound``) and stops before the first level with
  a side under 16 px; frames smaller than that are solved at full resolution only;
* per level: centred gradient of ``I1`` (half one-sided differences at the border); dual
  variables p reset to 0 per level (not per warp); per warp, ``I1`` and its gradient warped by
  bicubic interpolation (a = -0.75), 0 outside the frame, and ``rho_c = I1w - grad I1w . u - I0``;
* per warp, up to ``outer_iterations * inner_iterations`` iterations of the threshold step,
  ``u = v + theta div p`` (backward differences, p = 0 outside), ``p = (p + tau/theta grad u) /
  (1 + tau/theta |grad u|)`` (forward differences, 0 on the last row/column); the median filter
  (size ``median_filtering``, edges replicated) on u1, u2 at the start of each outer iteration; a
  pair stops iterating in this warp as soon as ``sum |u_new - u|^2 <= epsilon^2 * h * w``;
* between levels, bilinear upsampling (OpenCV's weights, size ratio) times ``1 / scale_step``;
  ``gamma != 0`` adds OpenCV's illumination term u3 (not rescaled between levels).

Where this necessarily differs from OpenCV (measured effect: mean EPE between the two backends
0.02-0.05 px on real 256x340 / 224x224 frames; against ground truth, mean EPE over the synthetic
warps within 0.2% of OpenCV's and 0.989 vs 0.990 px on Middlebury's motorcycle at 1/4 scale):

* **Warp sampling positions are exact.**  OpenCV's ``remap`` rounds sampling positions to 1/32 px
  (fixed-point tables); ``grid_sample`` uses the float positions.  Same kernel and zero border.
* **Threshold step where the image is flat.**  Computed as ``clamp(rho * -1/|grad I1w|^2,
  -lambda theta, lambda theta)`` (``neg_inv_grad2``), which is OpenCV's three cases exactly
  except where ``|grad I1w|^2 <= FLT_EPSILON``: there the step is 0, where OpenCV still moves
  by ``+-lambda theta grad I1w``, at most 1.6e-5 px.
* **Stopping sums in another order.**  OpenCV accumulates ``sum |u_new - u|^2`` over the image
  in float32 row by row; here per block and per pair, and the update is summed as ``|d|^2`` rather
  than ``|(u + d) - u|^2``.  A pair sitting right at the threshold can stop one iteration earlier
  or later; the rule (every iteration, per pair, per warp, stopping the outer loop too) is
  OpenCV's CPU one (its OpenCL path checks every other iteration).
* **Median filter.**  Same window and border, and exact: a min/max selection network (113
  comparators for 5x5) pruned from Batcher's merge-exchange sort, equal to ``cv::medianBlur``
  bit for bit (tested, ties included).  Only the implementation differs.
* **Pyramid: none.**  Level sizes and resize weights are OpenCV's (tested against cv2.resize).
* **Float rounding.**  float32 throughout as in OpenCV, in a different operation order (and
  ``hypot`` vs ``sqrt(x^2 + y^2)``, and on CUDA fused multiply-adds), so not bit for bit.

Structure: ``solve`` is the one TV-L1 (input checks, pyramids, per level the centred gradient
and p = 0, per warp ``warp_consts``, between levels ``upsample_flow``) over named records
(``TVL1Params``, frozen, defaults from ``params.DEFAULT_TVL1_PARAMS``; ``TVL1State``; ``WarpConsts``;
``Level``); an engine is a ``Schedule``, which only decides how one warp's iterations run.
Pairs in a batch are independent (a pair alone gives the same flow as in a batch).  Engines
(``tvl1_device.tvl1_flow_engine(..., engine=)``):

* "numba" (``flowprep.flow.tvl1_numba``; the default on the CPU): an outer iteration's inner
  iterations in one compiled call, one pass over the image per iteration, pairs in parallel.
* "cpu" (this module's ``tvl1_flow``, ``InPlaceSchedule``): u and p are updated in place in
  kept buffers; the frames are cut into blocks of rows sized for the caches, and a pair that
  has converged in a warp is simply skipped.  The host reads every pair's error after every
  iteration (``.tolist()``), and an iteration is ~65 small operations (counted by
  ``make bench-flow``).  ``compile=True`` runs functional kernels through ``torch.compile``
  instead (``CompactingSchedule``: converged pairs are compacted out); it falls back to eager
  if compiling fails.
* "device" (``flowprep.flow.tvl1_device``; the default on CUDA): the same numerics with the
  stopping rule masked on the device and one host check per block of iterations, compiled.
"""

from __future__ import annotations

import functools
import math
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from flowprep.flow.params import DEFAULT_TVL1_PARAMS

# Smallest pyramid side OpenCV keeps (a level with a side under this ends the pyramid).
MIN_PYRAMID_SIDE = 16
# std::numeric_limits<float>::epsilon(): below this |grad I1|^2 the data term gives no step.
_FLT_EPS = 1.1920928955078125e-07


@dataclass(frozen=True, slots=True)
class TVL1Params:
    """The TV-L1 parameters of one solve, frozen; defaults from ``params.DEFAULT_TVL1_PARAMS`` (the
    one table, where each is explained; ``api.resolve_params`` checks user input)."""

    tau: float = DEFAULT_TVL1_PARAMS["tau"]
    lambda_: float = DEFAULT_TVL1_PARAMS["lambda_"]
    theta: float = DEFAULT_TVL1_PARAMS["theta"]
    nscales: int = DEFAULT_TVL1_PARAMS["nscales"]
    scale_step: float = DEFAULT_TVL1_PARAMS["scale_step"]
    warps: int = DEFAULT_TVL1_PARAMS["warps"]
    epsilon: float = DEFAULT_TVL1_PARAMS["epsilon"]
    inner_iterations: int = DEFAULT_TVL1_PARAMS["inner_iterations"]
    outer_iterations: int = DEFAULT_TVL1_PARAMS["outer_iterations"]
    gamma: float = DEFAULT_TVL1_PARAMS["gamma"]
    median_filtering: int = DEFAULT_TVL1_PARAMS["median_filtering"]

    @property
    def l_t(self) -> float:
        """lambda theta: the threshold step's bound."""
        return self.lambda_ * self.theta

    @property
    def taut(self) -> float:
        """tau / theta: the dual step."""
        return self.tau / self.theta

    @property
    def n_iter(self) -> int:
        """Most iterations per warp."""
        return self.outer_iterations * self.inner_iterations


def pyramid_sizes(h: int, w: int, nscales: int, scale_step: float) -> list[tuple[int, int]]:
    """Level sizes (finest first) as OpenCV builds them: ``round`` per level, stop below 16."""
    sizes = [(h, w)]
    for _ in range(1, nscales):
        ph, pw = sizes[-1]
        nh, nw = round(ph * scale_step), round(pw * scale_step)
        if nh < MIN_PYRAMID_SIDE or nw < MIN_PYRAMID_SIDE:
            break
        sizes.append((nh, nw))
    return sizes


def _linear_weights(n_in: int, n_out: int, inv_scale: float, like: torch.Tensor) -> torch.Tensor:
    """(n_out, n_in) matrix of cv::resize INTER_LINEAR: source ``(d + 0.5) * inv_scale - 0.5``,
    edge pixels replicated."""
    f = (torch.arange(n_out, dtype=torch.float64, device=like.device) + 0.5) * inv_scale - 0.5
    f = f.clamp_min(0.0)  # OpenCV: a position left of pixel 0 takes pixel 0
    i0 = f.floor().long().clamp_max(n_in - 1)
    frac = (f - i0).clamp(0.0, 1.0)
    i1 = (i0 + 1).clamp_max(n_in - 1)
    m = torch.zeros((n_out, n_in), dtype=torch.float64, device=like.device)
    rows = torch.arange(n_out, device=like.device)
    m.index_put_((rows, i0), 1.0 - frac, accumulate=True)
    m.index_put_((rows, i1), frac, accumulate=True)
    return m.to(like.dtype)


def resize_bhw(x_bhw: torch.Tensor, size: tuple[int, int], inv_scale: tuple[float, float]) -> torch.Tensor:
    """Bilinear resize of (B, H, W) to ``size`` as cv::resize INTER_LINEAR with source step
    ``inv_scale`` (y, x) per output pixel; no antialiasing (OpenCV's 2x "area" fast path is the
    same 2x2 average).  Separable: two small matrix products."""
    _, h, w = x_bhw.shape
    wy = _linear_weights(h, size[0], inv_scale[0], x_bhw)
    wx = _linear_weights(w, size[1], inv_scale[1], x_bhw)
    return torch.matmul(wy, torch.matmul(x_bhw, wx.T))


def centered_gradient(x_bhw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """OpenCV's centredGradient: ``(x[i+1] - x[i-1]) / 2``, edges replicated (half one-sided)."""
    xp = _pad_replicate(x_bhw, 1)
    dx = 0.5 * (xp[:, 1:-1, 2:] - xp[:, 1:-1, :-2])
    dy = 0.5 * (xp[:, 2:, 1:-1] - xp[:, :-2, 1:-1])
    return dx, dy


def _forward_gradient(u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # u[i+1] - u[i], zero on the last column (x) / last row (y)
    ux = torch.diff(u, dim=2, append=u[:, :, -1:])
    uy = torch.diff(u, dim=1, append=u[:, -1:, :])
    return ux, uy


def _divergence(p1: torch.Tensor, p2: torch.Tensor) -> torch.Tensor:
    # backward differences with p = 0 before the first row/column (adjoint of _forward_gradient)
    return torch.diff(F.pad(p1, (1, 0)), dim=2) + torch.diff(F.pad(p2, (0, 0, 1, 0)), dim=1)


def neg_inv_grad2(i1wx: torch.Tensor, i1wy: torch.Tensor) -> torch.Tensor:
    """``-1 / |grad I1w|^2``, and 0 where that is under FLT_EPSILON (no data step there).

    The threshold step of TV-L1 is then ``clamp(rho * neg_inv_grad2, -lambda theta, lambda theta)``:
    the same three cases as OpenCV's estimateV.  Only where ``|grad I1w|^2 <= FLT_EPSILON`` does
    OpenCV still step by ``+-lambda theta grad I1w``, i.e. by at most 1.6e-5 px.
    """
    g2 = i1wx * i1wx + i1wy * i1wy
    return torch.where(g2 > _FLT_EPS, -1.0 / g2.clamp_min(_FLT_EPS), 0.0)


def tvl1_iteration(
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
    """One primal-dual iteration (gamma = 0) on (B, H, W) tensors; functional (for torch.compile).

    ``nig`` is ``neg_inv_grad2(i1wx, i1wy)``.  Returns ``(u1, u2, p11, p12, p21, p22, err_b)``
    with ``err_b`` the per-pair sum of squared updates of u.
    """
    step = ((rho_c + i1wx * u1 + i1wy * u2) * nig).clamp(-l_t, l_t)
    d1 = step * i1wx + theta * _divergence(p11, p12)
    d2 = step * i1wy + theta * _divergence(p21, p22)
    n1, n2 = u1 + d1, u2 + d2
    err = (d1 * d1 + d2 * d2).sum(dim=(1, 2))
    u1x, u1y = _forward_gradient(n1)
    u2x, u2y = _forward_gradient(n2)
    ng1 = 1.0 + taut * torch.hypot(u1x, u1y)
    ng2 = 1.0 + taut * torch.hypot(u2x, u2y)
    p11 = (p11 + taut * u1x) / ng1
    p12 = (p12 + taut * u1y) / ng1
    p21 = (p21 + taut * u2x) / ng2
    p22 = (p22 + taut * u2y) / ng2
    return n1, n2, p11, p12, p21, p22, err


# Elements per block and thread of the eager CPU iteration: small enough that a block's ~15
# arrays stay in cache (L2/L3) between the ~40 operations of an iteration, large enough to
# amortize each operation's dispatch (~2 us) and, with several threads, its OpenMP fork/join.
# Measured on 2 cores at 256x340 (s/pair, 1 thread): 32k 0.41, 64k 0.34, 128k 0.31.
_BLOCK_ELEMS = 131072


def _blocks(b: int, h: int, w: int, device: torch.device) -> list[tuple[int, int, int, int]]:
    """(pair start, pair end, row start, row end) blocks covering (b, h, w), rows in order."""
    if device.type != "cpu":
        return [(0, b, 0, h)]
    limit = _BLOCK_ELEMS * torch.get_num_threads()
    if h * w > limit // 2:
        rows = max(1, limit // w)
        return [(i, i + 1, y0, min(h, y0 + rows)) for i in range(b) for y0 in range(0, h, rows)]
    group = max(1, limit // (h * w))
    return [(i, min(b, i + group), 0, h) for i in range(0, b, group)]


def _runs(active: list[int]) -> list[tuple[int, int]]:
    """Maximal runs [start, end) of consecutive integers in sorted ``active``."""
    runs, start = [], 0
    for j in range(1, len(active) + 1):
        if j == len(active) or active[j] != active[j - 1] + 1:
            runs.append((active[start], active[j - 1] + 1))
            start = j
    return runs


def _active_blocks(active: list[int], h: int, w: int, device: torch.device) -> list[tuple[int, int, int, int]]:
    """``_blocks`` over each run of consecutive pair indices in ``active``."""
    return [(b0 + s0, b1 + s0, y0, y1) for s0, s1 in _runs(active) for b0, b1, y0, y1 in _blocks(s1 - s0, h, w, device)]


class _UViews(NamedTuple):
    """One flow component's views for the u-update of a block (see ``EagerIteration._make_plan``)."""

    pa0: torch.Tensor  # pa's first column: div's first column
    d0: torch.Tensor  # ... goes here
    pa_r: torch.Tensor  # pa[x], x >= 1
    pa_l: torch.Tensor  # pa[x - 1]
    d_r: torch.Tensor  # d[x], x >= 1
    pb: torch.Tensor  # pb of the block's rows
    pb_dst: torch.Tensor  # where pb[y - 1] is subtracted (rows y >= 1 of the image)
    pb_up: torch.Tensor  # pb[y - 1]
    iw: torch.Tensor  # the warped gradient component (i1wx or i1wy)
    u: torch.Tensor  # the component, updated in place


class _PViews(NamedTuple):
    """One flow component's views for the dual update of a block."""

    u_r: torch.Tensor  # u[x + 1]
    u_l: torch.Tensor  # u[x]
    gx_l: torch.Tensor  # gx[x], x < w - 1 (gx's last column stays 0)
    u_next: torch.Tensor  # u[y + 1]
    u_cur: torch.Tensor  # u[y]
    gy_dst: torch.Tensor  # gy[y]
    gy_last: torch.Tensor | None  # gy's last image row when the block holds it (zeroed), else None
    pa: torch.Tensor
    pb: torch.Tensor


class _BlockViews(NamedTuple):
    """Views of the state and the kept buffers over one block of (pairs, rows)."""

    step: torch.Tensor
    d: torch.Tensor
    gx: torch.Tensor
    gy: torch.Tensor
    sq: torch.Tensor  # |d|^2, then |grad u| (the two stencils share the buffer)
    consts: WarpConsts  # the block's rows of the warp's constants
    u1: torch.Tensor
    u2: torch.Tensor
    sq_flat: torch.Tensor  # sq as (pairs, pixels), for the per-pair error
    err: torch.Tensor  # the block's pairs' rows of the per-pair error
    for_u: tuple[_UViews, _UViews]
    for_p: tuple[_PViews, _PViews]


class EagerIteration:
    """``tvl1_iteration`` for eager mode: updates u and p in place, block by block, and keeps its
    temporaries (same arithmetic; tested against ``tvl1_iteration``).

    Eager PyTorch on the CPU spends most of its time allocating and first-touching the outputs
    of the ~40 elementwise operations per iteration, and in OpenMP fork/joins; here every
    output goes into kept buffers, and on the CPU the frame is cut into blocks of rows small
    enough to stay in cache and run each operation inline.  The two stencils are skewed: the
    u-update of block k (which reads the old p of block k-1's last row) runs before the p-update
    of block k-1 (which reads the new u of block k's first row).
    """

    def __init__(self) -> None:
        self.buffers: dict[tuple[int, ...], tuple[torch.Tensor, ...]] = {}
        # views of the state and buffers per block, rebuilt when the tensors or pairs change
        self._plan_key: tuple[tuple[torch.Tensor, ...], tuple[int, ...]] | None = None
        self._plan: tuple[torch.Tensor, list[_BlockViews]] | None = None

    def _buffers(self, nb: int, nr: int, like: torch.Tensor) -> tuple[torch.Tensor, ...]:
        key = (nb, nr, like.shape[2])
        if key not in self.buffers:
            if len(self.buffers) > 8:
                self.buffers.clear()
            # gx's last column stays 0: the forward difference there is 0
            self.buffers[key] = tuple(like.new_zeros((nb, nr, like.shape[2])) for _ in range(5))
        return self.buffers[key]

    def _make_plan(
        self, state: TVL1State, consts: WarpConsts, active: tuple[int, ...]
    ) -> tuple[torch.Tensor, list[_BlockViews]]:
        (u1, u2), (p11, p12, p21, p22) = state
        b, h, w = u1.shape
        err = u1.new_zeros(b)
        blocks = []
        for b0, b1, y0, y1 in _active_blocks(list(active), h, w, u1.device):
            step, d, gx, gy, ng = self._buffers(b1 - b0, y1 - y0, u1)
            sl = (slice(b0, b1), slice(y0, y1))
            for_u, for_p = [], []
            for u, pa, pb, iw in ((u1, p11, p12, consts.i1wx), (u2, p21, p22, consts.i1wy)):
                pa_, u_ = pa[sl], u[sl]
                # div: d[x] = pa[x] - pa[x-1] + pb[y] - pb[y-1], with pa[-1] = pb[-1] = 0
                pb_dst, pb_up = (d[:, 1:], pb[b0:b1, : y1 - 1]) if y0 == 0 else (d, pb[b0:b1, y0 - 1 : y1 - 1])
                for_u.append(
                    _UViews(
                        pa_[:, :, :1],
                        d[:, :, :1],
                        pa_[:, :, 1:],
                        pa_[:, :, :-1],
                        d[:, :, 1:],
                        pb[sl],
                        pb_dst,
                        pb_up,
                        iw[sl],
                        u_,
                    )
                )
                # forward differences of the new u; gy's last image row is 0
                gy_last: torch.Tensor | None
                if y1 < h:
                    u_next, u_cur, gy_dst, gy_last = u[b0:b1, y0 + 1 : y1 + 1], u_, gy, None
                else:
                    u_next, u_cur, gy_dst, gy_last = u[b0:b1, y0 + 1 : y1], u_[:, :-1], gy[:, :-1], gy[:, -1:]
                for_p.append(
                    _PViews(u_[:, :, 1:], u_[:, :, :-1], gx[:, :, :-1], u_next, u_cur, gy_dst, gy_last, pa_, pb[sl])
                )
            blocks.append(
                _BlockViews(
                    step,
                    d,
                    gx,
                    gy,
                    ng,
                    WarpConsts(*(c[sl] for c in consts)),
                    u1[sl],
                    u2[sl],
                    ng.view(b1 - b0, -1),
                    err[b0:b1],
                    (for_u[0], for_u[1]),
                    (for_p[0], for_p[1]),
                )  # fmt: skip
            )
        return err, blocks

    def __call__(
        self,
        state: TVL1State,
        consts: WarpConsts,
        l_t: float,
        theta: float,
        taut: float,
        active: list[int] | None = None,
    ) -> torch.Tensor:
        """As ``tvl1_iteration``, in place on ``state`` (gamma = 0), for the pairs in ``active``
        only (all when None); returns the per-pair error, 0 for the pairs left alone."""
        tensors = (*state.u, *state.p, *consts)
        act = tuple(range(state.u[0].shape[0])) if active is None else tuple(active)
        key = self._plan_key
        if key is None or key[1] != act or any(a is not b for a, b in zip(key[0], tensors, strict=True)):
            self._plan, self._plan_key = self._make_plan(state, consts, act), (tensors, act)
        assert self._plan is not None
        err, blocks = self._plan
        err.zero_()
        for k, blk in enumerate(blocks):
            self._update_u(blk, l_t, theta)
            if k:
                self._update_p(blocks[k - 1], taut)
        if blocks:
            self._update_p(blocks[-1], taut)
        return err.clone()

    @staticmethod
    def _update_u(blk: _BlockViews, l_t: float, theta: float) -> None:
        step, d, sq, c = blk.step, blk.d, blk.sq, blk.consts
        torch.mul(c.i1wx, blk.u1, out=step)
        step.addcmul_(c.i1wy, blk.u2).add_(c.rho_c).mul_(c.nig).clamp_(-l_t, l_t)
        for n, v in enumerate(blk.for_u):
            # d = theta * div(pa, pb) + step * iw
            v.d0.copy_(v.pa0)
            torch.sub(v.pa_r, v.pa_l, out=v.d_r)
            d.add_(v.pb)
            v.pb_dst.sub_(v.pb_up)
            d.mul_(theta).addcmul_(step, v.iw)
            if n == 0:
                torch.mul(d, d, out=sq)
            else:
                sq.addcmul_(d, d)
            v.u.add_(d)
        blk.err.add_(blk.sq_flat.sum(1))  # (not bmm: MKL's threads would fork/join per block)

    @staticmethod
    def _update_p(blk: _BlockViews, taut: float) -> None:
        gx, gy, ng = blk.gx, blk.gy, blk.sq
        for v in blk.for_p:
            torch.sub(v.u_r, v.u_l, out=v.gx_l)
            torch.sub(v.u_next, v.u_cur, out=v.gy_dst)
            if v.gy_last is not None:
                v.gy_last.zero_()
            torch.mul(gx, gx, out=ng)
            ng.addcmul_(gy, gy).sqrt_().mul_(taut).add_(1.0)
            v.pa.add_(gx, alpha=taut).div_(ng)
            v.pb.add_(gy, alpha=taut).div_(ng)


def tvl1_iteration_gamma(
    u1: torch.Tensor,
    u2: torch.Tensor,
    u3: torch.Tensor,
    p11: torch.Tensor,
    p12: torch.Tensor,
    p21: torch.Tensor,
    p22: torch.Tensor,
    p31: torch.Tensor,
    p32: torch.Tensor,
    i1wx: torch.Tensor,
    i1wy: torch.Tensor,
    nig: torch.Tensor,
    rho_c: torch.Tensor,
    l_t: float,
    theta: float,
    taut: float,
    gamma: float,
) -> tuple[torch.Tensor, ...]:
    """As ``tvl1_iteration`` with OpenCV's illumination term u3 (weight ``gamma``).

    Like OpenCV, the threshold step uses ``|grad I1|^2`` (without ``gamma^2``).
    """
    step = ((rho_c + i1wx * u1 + i1wy * u2 + gamma * u3) * nig).clamp(-l_t, l_t)
    d = [
        step * i1wx + theta * _divergence(p11, p12),
        step * i1wy + theta * _divergence(p21, p22),
        step * gamma + theta * _divergence(p31, p32),
    ]
    err = (d[0] * d[0] + d[1] * d[1] + d[2] * d[2]).sum(dim=(1, 2))
    new_u = [u1 + d[0], u2 + d[1], u3 + d[2]]
    ps = []
    for n, (pa, pb) in zip(new_u, ((p11, p12), (p21, p22), (p31, p32)), strict=True):
        nx, ny = _forward_gradient(n)
        ng = 1.0 + taut * torch.hypot(nx, ny)
        ps += [(pa + taut * nx) / ng, (pb + taut * ny) / ng]
    return *new_u, *ps, err


def _merge_exchange(n: int) -> list[tuple[int, int]]:
    """Comparators (i, j), i < j, of Batcher's merge-exchange sorting network for n inputs
    (Knuth, TAOCP vol. 3, 5.2.2 Algorithm M); after them wire k holds the k-th smallest."""
    t = max(1, math.ceil(math.log2(n)))
    pairs = []
    p = 1 << (t - 1)
    while p > 0:
        q, r, d = 1 << (t - 1), 0, p
        while True:
            pairs += [(i, i + d) for i in range(n - d) if i & p == r]
            if q == p:
                break
            d, q, r = q - p, q // 2, p
        p //= 2
    return pairs


def _selection_network(n: int, k: int) -> list[tuple[int, int, bool, bool]]:
    """The comparators of ``_merge_exchange(n)`` that wire k's final value depends on, each with
    which of its two outputs (min to i, max to j) is used later."""
    needed, kept = {k}, []
    for i, j in reversed(_merge_exchange(n)):
        if i in needed or j in needed:
            kept.append((i, j, i in needed, j in needed))
            needed |= {i, j}
    return kept[::-1]


_MEDIAN_NETWORKS = {size: _selection_network(size * size, size * size // 2) for size in (3, 5)}


def _pad_replicate(x_bhw: torch.Tensor, r: int) -> torch.Tensor:
    # index-based: F.pad(mode="replicate") is several times slower on CPU
    _, h, w = x_bhw.shape
    iy = torch.arange(-r, h + r, device=x_bhw.device).clamp_(0, h - 1)
    ix = torch.arange(-r, w + r, device=x_bhw.device).clamp_(0, w - 1)
    return x_bhw.index_select(1, iy).index_select(2, ix)


def _median_of_padded(xp: torch.Tensor, size: int, pool: dict | None = None) -> torch.Tensor:
    """Median of each size x size window of the padded ``xp``.  With ``pool`` (shape -> free
    buffers), every comparator writes into recycled buffers instead of new tensors (on the CPU,
    each new 0.5 MB tensor is a fresh mmap and page faults); the result then belongs to the
    pool too: copy it out before the next call."""
    h, w = xp.shape[1] - size + 1, xp.shape[2] - size + 1
    wires: list[torch.Tensor | None] = [xp[:, dy : dy + h, dx : dx + w] for dy in range(size) for dx in range(size)]
    net = _MEDIAN_NETWORKS[size]
    if pool is None:
        for i, j, keep_min, keep_max in net:
            a, b = wires[i], wires[j]
            if a is None or b is None:
                raise RuntimeError(f"median network of size {size} reads a dropped wire ({i}, {j})")
            wires[i] = torch.minimum(a, b) if keep_min else None
            wires[j] = torch.maximum(a, b) if keep_max else None
    else:
        key = (xp.shape[0], h, w)
        if key not in pool and len(pool) >= 4:
            pool.clear()  # buffers of an earlier pyramid level
        free = pool.setdefault(key, [])
        owned = [False] * len(wires)
        for i, j, keep_min, keep_max in net:
            a, b = wires[i], wires[j]
            if a is None or b is None:
                raise RuntimeError(f"median network of size {size} reads a dropped wire ({i}, {j})")
            lo = hi = None
            if keep_min:
                lo = torch.minimum(a, b, out=free.pop() if free else xp.new_empty((xp.shape[0], h, w)))
            if keep_max:
                hi = torch.maximum(a, b, out=free.pop() if free else xp.new_empty((xp.shape[0], h, w)))
            free += [t for t, mine in ((a, owned[i]), (b, owned[j])) if mine]
            wires[i], wires[j], owned[i], owned[j] = lo, hi, keep_min, keep_max
        free += [t for t, mine in zip(wires, owned, strict=True) if mine and t is not wires[len(wires) // 2]]
    out = wires[len(wires) // 2]
    assert out is not None
    return out


def median_filter(x_bhw: torch.Tensor, size: int) -> torch.Tensor:
    """Exact ``size`` x ``size`` median (3 or 5) of each (H, W) image, edges replicated, as
    cv::medianBlur: a min/max selection network over the shifted images (113 comparators for
    5x5), exact like a sort, and one fused loop under torch.compile."""
    return _median_of_padded(_pad_replicate(x_bhw, size // 2), size).contiguous()


def median_filter_blocked(
    x_bhw: torch.Tensor,
    size: int,
    pairs: list[int] | None = None,
    out: torch.Tensor | None = None,
    pool: dict | None = None,
) -> torch.Tensor:
    """``median_filter`` by the eager iteration's blocks, in recycled buffers (same values).
    With ``pairs``, only those images are filtered, into ``out`` (which may be ``x_bhw``).
    ``pool`` keeps the buffers from call to call."""
    b, h, w = x_bhw.shape
    r = size // 2
    if out is None:
        if pairs is not None:
            raise ValueError("median_filter_blocked: pairs needs out")
        out = torch.empty_like(x_bhw)
    pool = {} if pool is None else pool
    for s0, s1 in _runs(list(range(b)) if pairs is None else pairs):
        xp = _pad_replicate(x_bhw[s0:s1], r)  # a copy: out may be x_bhw
        for b0, b1, y0, y1 in _blocks(s1 - s0, h, w, x_bhw.device):
            med = _median_of_padded(xp[b0:b1, y0 : y1 + 2 * r], size, pool)
            out[s0 + b0 : s0 + b1, y0:y1] = med
            pool[(b1 - b0, y1 - y0, w)].append(med)
    return out


def _warp_bhw(
    i1_stack: torch.Tensor, u1: torch.Tensor, u2: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sample (B, C, H, W) at ``(x + u1, y + u2)``: bicubic, zero outside the frame."""
    h, w = i1_stack.shape[-2:]
    xs = torch.arange(w, device=u1.device, dtype=u1.dtype)
    ys = torch.arange(h, device=u1.device, dtype=u1.dtype)
    # align_corners=False: pixel centre i sits at (2 i + 1) / size - 1
    gx = (2.0 * (xs + u1) + 1.0) / w - 1.0
    gy = (2.0 * (ys[:, None] + u2) + 1.0) / h - 1.0
    out = F.grid_sample(
        i1_stack, torch.stack((gx, gy), dim=-1), mode="bicubic", padding_mode="zeros", align_corners=False
    )
    return out[:, 0], out[:, 1], out[:, 2]


def tvl1_flow(
    i0_bhw: torch.Tensor, i1_bhw: torch.Tensor, *, compile: bool | None = False, **params: Any
) -> torch.Tensor:
    """TV-L1 flow from each ``i0_bhw[b]`` to ``i1_bhw[b]``: float32 ``(B, H, W, 2)`` in pixels.

    Inputs are (B, H, W) intensities on the 0..255 scale (uint8 or float), on any device; the
    computation runs there in float32.  ``params``: ``TVL1Params`` fields (defaults:
    ``flowprep.flow.api.DEFAULT_TVL1_PARAMS``).  This is the "cpu" engine: blocked in-place
    torch kernels, one host check of convergence per iteration, converged pairs skipped;
    ``tvl1_device.tvl1_flow_engine`` picks an engine by name ("numba", the CPU default, is
    ``tvl1_numba``).  ``compile=True`` runs the iteration and the median filter through
    ``torch.compile`` (falling back to eager, with a warning, if that fails); the result is the
    same up to float rounding.
    """
    prm = TVL1Params(**params)
    schedule = CompactingSchedule(prm, _Kernels(True)) if compile else InPlaceSchedule(prm)
    return solve(i0_bhw, i1_bhw, prm, schedule)


def check_inputs(
    i0_bhw: torch.Tensor, i1_bhw: torch.Tensor, median_filtering: int, scale_step: float
) -> tuple[int, int, int]:
    """(B, H, W) of a valid pair of batches; ValueError naming what is wrong otherwise."""
    if i0_bhw.ndim != 3 or i0_bhw.shape != i1_bhw.shape:
        raise ValueError(
            f"i0_bhw and i1_bhw must both be (B, H, W), got {tuple(i0_bhw.shape)} and {tuple(i1_bhw.shape)}"
        )
    if i0_bhw.device != i1_bhw.device:
        raise ValueError(f"i0_bhw on {i0_bhw.device} but i1_bhw on {i1_bhw.device}")
    if median_filtering not in (1, 3, 5):
        raise ValueError(f"median_filtering={median_filtering!r}: must be 1 (off), 3 or 5")
    if not 0 < scale_step < 1:
        raise ValueError(f"scale_step={scale_step!r}: must be in (0, 1)")
    b, h, w = i0_bhw.shape
    return b, h, w


def build_pyramids(
    i0_bhw: torch.Tensor, i1_bhw: torch.Tensor, nscales: int, scale_step: float
) -> tuple[list[tuple[int, int]], list[torch.Tensor], list[torch.Tensor]]:
    """(level sizes, float32 pyramids of i0 and i1), finest first, on the inputs' device."""
    i0 = i0_bhw.to(torch.float32)
    i1 = i1_bhw.to(torch.float32)
    if not (torch.isfinite(i0).all() and torch.isfinite(i1).all()):
        raise ValueError("i0_bhw and i1_bhw must be finite")
    b, h, w = i0.shape
    sizes = pyramid_sizes(h, w, nscales, scale_step)
    i0s, i1s = [i0], [i1]
    for size in sizes[1:]:
        # OpenCV resizes by scale_step exactly (Size() + fx, fy), not by the size ratio
        inv = (1.0 / scale_step, 1.0 / scale_step)
        i0s.append(resize_bhw(i0s[-1], size, inv))
        i1s.append(resize_bhw(i1s[-1], size, inv))
    return sizes, i0s, i1s


def upsample_flow(
    u: list[torch.Tensor], fine: tuple[int, int], coarse: tuple[int, int], scale_step: float
) -> list[torch.Tensor]:
    """u1, u2 (and u3) of a coarse level at the next finer level's size."""
    # upsampling to a given size: OpenCV's step is the size ratio
    (fh, fw), (ch, cw) = fine, coarse
    up = [resize_bhw(x, (fh, fw), (ch / fh, cw / fw)) for x in u]
    # flow is rescaled by 1/scale_step as in OpenCV (not by the exact size ratio); the
    # illumination term u3 is not a displacement and is not rescaled
    return [up[0] / scale_step, up[1] / scale_step, *up[2:]]


class TVL1State(NamedTuple):
    """The primal and dual variables of a batch at one level, each (B, h, w) float32."""

    u: list[torch.Tensor]  # [u1, u2] (flow x, y), or [u1, u2, u3] with the illumination term
    p: list[torch.Tensor]  # [p11, p12, p21, p22] (+ [p31, p32]): dual variable of each u


class WarpConsts(NamedTuple):
    """What one warp fixes for its iterations, each (B, h, w) float32."""

    i1wx: torch.Tensor  # x gradient of I1 warped by the current flow
    i1wy: torch.Tensor  # y gradient
    nig: torch.Tensor  # neg_inv_grad2(i1wx, i1wy)
    rho_c: torch.Tensor  # I1w - grad I1w . u0 - I0: the data term's constant part


class Level(NamedTuple):
    """One pyramid level as the schedules see it."""

    number: int  # 0 = finest (not `index`: a NamedTuple field may not shadow tuple.index)
    h: int
    w: int
    thresh: float  # epsilon^2 h w: a pair stops once its sum |u_new - u|^2 is at most this


class Schedule:
    """How a warp's iterations run: the one thing TV-L1 engines differ in.  ``solve`` builds the
    pyramid, levels and warps (the numerics all engines share) and hands each warp's state and
    constants to ``run_warp``; ``begin_level`` / ``end_level`` let a schedule count per level."""

    def begin_level(self, b: int, level: Level) -> None:
        pass

    def run_warp(self, state: TVL1State, consts: WarpConsts, level: Level) -> TVL1State:
        raise NotImplementedError

    def end_level(self, level: Level) -> None:
        pass


def solve(i0_bhw: torch.Tensor, i1_bhw: torch.Tensor, params: TVL1Params, schedule: Schedule) -> torch.Tensor:
    """TV-L1 of each pair, coarse to fine, with ``schedule`` running each warp's iterations:
    float32 ``(B, H, W, 2)`` in pixels on the inputs' device."""
    b, h, w = check_inputs(i0_bhw, i1_bhw, params.median_filtering, params.scale_step)
    if b == 0:
        return torch.zeros((0, h, w, 2), dtype=torch.float32, device=i0_bhw.device)
    sizes, i0s, i1s = build_pyramids(i0_bhw, i1_bhw, params.nscales, params.scale_step)
    n_u = 3 if params.gamma != 0.0 else 2
    ch, cw = sizes[-1]
    u = [i0s[-1].new_zeros((b, ch, cw)) for _ in range(n_u)]
    for s in range(len(sizes) - 1, -1, -1):
        i0, i1 = i0s[s], i1s[s]
        level = Level(s, *sizes[s], params.epsilon * params.epsilon * sizes[s][0] * sizes[s][1])
        schedule.begin_level(b, level)
        i1x, i1y = centered_gradient(i1)
        i1_stack = torch.stack((i1, i1x, i1y), dim=1)
        del i1x, i1y
        # p starts at 0 on each level (not each warp), as in OpenCV
        state = TVL1State([x.contiguous() for x in u], [torch.zeros_like(i0) for _ in range(2 * n_u)])
        for _ in range(params.warps):
            state = schedule.run_warp(state, warp_consts(i1_stack, i0, state.u), level)
        schedule.end_level(level)
        u = state.u
        del i0s[s], i1s[s], state
        if s > 0:
            u = upsample_flow(u, sizes[s - 1], sizes[s], params.scale_step)
    return torch.stack((u[0], u[1]), dim=-1)


def warp_consts(i1_stack: torch.Tensor, i0: torch.Tensor, u: list[torch.Tensor]) -> WarpConsts:
    """I1 and its gradient (``i1_stack``, (B, 3, h, w)) warped by ``u``, and the data term."""
    i1w, i1wx, i1wy = _warp_bhw(i1_stack, u[0], u[1])
    i1wx, i1wy = i1wx.contiguous(), i1wy.contiguous()
    return WarpConsts(i1wx, i1wy, neg_inv_grad2(i1wx, i1wy), i1w - i1wx * u[0] - i1wy * u[1] - i0)


class InPlaceSchedule(Schedule):
    """The "cpu" engine: ``EagerIteration`` in place, one host read of the per-pair errors per
    iteration, a converged pair simply skipped (gamma != 0: ``CompactingSchedule`` eagerly)."""

    def __init__(self, params: TVL1Params) -> None:
        self.params = params
        self.iteration = EagerIteration()
        self.pool: dict = {}  # the median's recycled buffers
        self.gamma = CompactingSchedule(params, _Kernels(False))

    def run_warp(self, state: TVL1State, consts: WarpConsts, level: Level) -> TVL1State:
        prm = self.params
        if len(state.u) == 3:
            return self.gamma.run_warp(state, consts, level)
        active = list(range(state.u[0].shape[0]))
        for k in range(prm.n_iter):
            if prm.median_filtering > 1 and k % prm.inner_iterations == 0:
                for comp in state.u:
                    median_filter_blocked(comp, prm.median_filtering, active, out=comp, pool=self.pool)
            err = self.iteration(state, consts, prm.l_t, prm.theta, prm.taut, active=active).tolist()
            active = [i for i in active if err[i] > level.thresh]
            if not active:
                break
        return state


class CompactingSchedule(Schedule):
    """Functional kernels (compiled, or eager for gamma != 0): converged pairs are written back
    and dropped from the working set, which shrinks."""

    def __init__(self, params: TVL1Params, kernels: _Kernels) -> None:
        self.params = params
        self.kernels = kernels

    def run_warp(self, state: TVL1State, consts: WarpConsts, level: Level) -> TVL1State:
        prm, kernels = self.params, self.kernels
        u, p = list(state.u), list(state.p)
        b = u[0].shape[0]
        idx = None  # rows of the working set -> pairs; None: all pairs, in order
        wu, wp, wc = list(u), list(p), tuple(consts)
        for k in range(prm.n_iter):
            if prm.median_filtering > 1 and k % prm.inner_iterations == 0:
                wu[0] = kernels.median(wu[0], prm.median_filtering)
                wu[1] = kernels.median(wu[1], prm.median_filtering)
            if len(wu) == 3:
                out = kernels.iteration_gamma(*wu, *wp, *wc, prm.l_t, prm.theta, prm.taut, prm.gamma)
            else:
                out = kernels.iteration(*wu, *wp, *wc, prm.l_t, prm.theta, prm.taut)
            nu = len(wu)
            wu, wp, err = list(out[:nu]), list(out[nu:-1]), out[-1]
            done = err <= level.thresh
            n_done = int(done.sum())
            if n_done == 0:
                continue
            if idx is None:
                idx = torch.arange(b, device=u[0].device)
                u, p = [x.clone() for x in wu], [x.clone() for x in wp]
            else:
                fin = idx[done]
                for full, part in zip(u + p, wu + wp, strict=True):
                    full[fin] = part[done]
            if n_done == len(done):
                return TVL1State(u, p)
            keep = done.logical_not().nonzero().squeeze(1)
            idx = idx[keep]
            wu = [x.index_select(0, keep) for x in wu]
            wp = [x.index_select(0, keep) for x in wp]
            wc = tuple(x.index_select(0, keep) for x in wc)
        if idx is None:
            return TVL1State(wu, wp)
        for full, part in zip(u + p, wu + wp, strict=True):
            full[idx] = part
        return TVL1State(u, p)


class _CompiledOrEager:
    """``torch.compile(fn)``; the first time compiling or running the compiled code raises (no
    compiler, unsupported platform...) it warns once and from then on runs the eager fallback."""

    def __init__(self, fn: Callable[..., Any]):
        self.fn = fn
        self.compiled: Callable[..., Any] | None = None
        self.error: BaseException | None = None

    def __call__(self, fallback: Callable[..., Any], *args: Any) -> Any:
        if self.error is None:
            try:
                if self.compiled is None:
                    self.compiled = torch.compile(self.fn, dynamic=True, fullgraph=True)
                return self.compiled(*args)
            except Exception as e:  # noqa: BLE001 - any failure to compile means: run eagerly
                self.error = e
                warnings.warn(
                    f"torch.compile of {self.fn.__name__} failed, running eagerly: {type(e).__name__}: {str(e)[:300]}",
                    RuntimeWarning,
                    stacklevel=2,
                )
        return fallback(*args)


_COMPILED = {fn.__name__: _CompiledOrEager(fn) for fn in (tvl1_iteration, tvl1_iteration_gamma, median_filter)}


class _Kernels:
    """The functional iteration, its gamma variant and the median: compiled (falling back to
    eager) or eager."""

    # called with a flat argument list (the compiled wrappers take the eager fallback first)
    iteration: Callable[..., tuple[torch.Tensor, ...]]
    iteration_gamma: Callable[..., tuple[torch.Tensor, ...]]
    median: Callable[..., torch.Tensor]

    def __init__(self, compile: bool):
        pool: dict = {}
        eager_median = functools.partial(median_filter_blocked, pool=pool)
        if compile:
            # the fallback: the "cpu" engine's in-place iteration (updates its inputs), so that a
            # failed compile gives the very flow of compile=False
            eager = EagerIteration()

            def eager_iteration(*a: Any) -> tuple[torch.Tensor, ...]:
                err = eager(TVL1State(list(a[:2]), list(a[2:6])), WarpConsts(*a[6:10]), *a[10:])
                return (*a[:6], err)

            self.iteration = functools.partial(_COMPILED["tvl1_iteration"], eager_iteration)
            self.iteration_gamma = functools.partial(_COMPILED["tvl1_iteration_gamma"], tvl1_iteration_gamma)
            self.median = functools.partial(_COMPILED["median_filter"], eager_median)
        else:
            self.iteration, self.iteration_gamma, self.median = tvl1_iteration, tvl1_iteration_gamma, eager_median


def compile_works() -> bool:
    """Whether the compiled kernels have not failed so far in this process."""
    return all(k.error is None for k in _COMPILED.values())


# ---- video adapter: the only part that looks at the system (free memory) ----

# Peak float32 values alive per pixel of a pair while solving (pyramids, warped images and
# gradients, u, p, the iteration's buffers, the median's ~27 temporaries, which on CUDA span
# the whole batch).  bench_flow.py's peak memory on the CPU, 8 pairs of 256x340: 36 (1 thread)
# to 53 (2 threads) floats per pixel; rounded up.
FLOATS_PER_PIXEL = 64
# On the CPU a bigger batch stops paying off once a level's working set leaves the caches.
CPU_MAX_BATCH = 8
CUDA_MAX_BATCH = 256


def resolve_device(device: str | torch.device | None) -> torch.device:
    """None -> CUDA when available, else CPU; a device CUDA-less torch cannot use is an error."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device={device!r}: not a torch device ({e})") from None
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device={device!r}: backend 'torch' runs on 'cpu' or 'cuda'")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r}: CUDA is not available to this torch")
    return dev


def available_memory_bytes(device: torch.device) -> int:
    """Free device memory (CUDA) or the kernel's estimate of available RAM (CPU)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))


def auto_batch_size(
    h: int, w: int, device: torch.device, free_bytes: int | None = None, max_batch: int | None = None
) -> int:
    """Pairs per call: what fits in half the free memory, at most ``max_batch`` (default
    CPU_/CUDA_MAX_BATCH), at least 1."""
    if free_bytes is None:
        free_bytes = available_memory_bytes(device)
    per_pair = FLOATS_PER_PIXEL * 4 * h * w
    cap = max_batch or (CUDA_MAX_BATCH if device.type == "cuda" else CPU_MAX_BATCH)
    return max(1, min(cap, free_bytes // 2 // per_pair))


def flow_video(
    gray_thw: np.ndarray,
    *,
    device: str | torch.device | None = None,
    batch_size: int | None = None,
    compile: bool | None = None,
    solver: Callable[..., torch.Tensor] | None = None,
    **params: Any,
) -> np.ndarray:
    """TV-L1 flow between consecutive uint8 frames: float32 numpy (T-1, H, W, 2), pixels.

    Frames go to ``device`` ``batch_size`` + 1 at a time as uint8 (never the whole video as
    float); ``batch_size=None`` picks it from free memory (``auto_batch_size``).  ``solver``:
    ``tvl1_flow`` (None) or another engine with its signature (``tvl1_device.tvl1_flow_device``).
    """
    dev = resolve_device(device)
    solve = solver or tvl1_flow
    t, h, w = gray_thw.shape
    n = t - 1
    bs = batch_size or auto_batch_size(h, w, dev)
    out = np.empty((n, h, w, 2), np.float32)
    for s in range(0, n, bs):
        e = min(n, s + bs)
        frames = torch.from_numpy(np.array(gray_thw[s : e + 1])).to(dev)
        flow = solve(frames[:-1], frames[1:], compile=compile, **params)
        out[s:e] = flow.cpu().numpy()
    return out
