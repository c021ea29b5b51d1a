"""The torch TV-L1 backend: accuracy against ground truth and against OpenCV, conventions,
batching, robustness, options.  Small frames so the file runs in well under a minute eagerly."""

from __future__ import annotations

import dataclasses
import warnings

import cv2
import numpy as np
import pytest
import torch
from conftest import FAST_FLOW

from flowprep.dataset.demo import Motion, render
from flowprep.flow import evaluation as flow_eval
from flowprep.flow import tvl1_torch
from flowprep.flow.api import DEFAULT_TVL1_PARAMS, compute_flow, rgb_to_gray
from flowprep.flow.tvl1_torch import auto_batch_size, median_filter, resize_bhw, tvl1_flow

H, W, MARGIN = 96, 128, 24

gpu = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _torch_flow(i0_bhw: np.ndarray, i1_bhw: np.ndarray, **params) -> np.ndarray:
    return tvl1_flow(torch.from_numpy(i0_bhw), torch.from_numpy(i1_bhw), **params).numpy()


@pytest.fixture(scope="module")
def synthetic():
    """Every smooth field applied to one real frame: names, i0 (N,H,W), i1 (N,H,W), flows (N,H,W,2)."""
    frame = flow_eval.bikes_gray(1, short_side=H + 2 * MARGIN + 8, start=10)[0]
    src = flow_eval.center_crop(frame[None], H + 2 * MARGIN, W + 2 * MARGIN)[0]
    fields = flow_eval.smooth_fields(H, W)
    pairs = [flow_eval.warped_pair(src, f, MARGIN) for f in fields.values()]
    return (
        list(fields),
        np.stack([p[0] for p in pairs]),
        np.stack([p[1] for p in pairs]),
        np.stack(list(fields.values())),
    )


@pytest.fixture(scope="module")
def synthetic_results(synthetic):
    names, i0, i1, truth = synthetic
    cv = np.stack([compute_flow(np.stack([a, b]), backend="opencv")[0] for a, b in zip(i0, i1, strict=True)])
    th = _torch_flow(i0, i1)  # one batch of all fields
    return names, truth, cv, th


def test_defaults_are_the_projects():
    assert dataclasses.asdict(tvl1_torch.TVL1Params()) == dict(DEFAULT_TVL1_PARAMS)
    with pytest.raises(dataclasses.FrozenInstanceError):
        tvl1_torch.TVL1Params().tau = 0.1  # type: ignore[misc]
    with pytest.raises(TypeError, match="warp"):
        tvl1_flow(torch.zeros(1, 8, 8), torch.zeros(1, 8, 8), warp=3)  # a misspelt parameter is an error


def test_synthetic_warps_epe_no_worse_than_opencv(synthetic_results):
    names, truth, cv, th = synthetic_results
    for name, f, c, t in zip(names, truth, cv, th, strict=True):
        mask = flow_eval.interior_mask(f, border=8)
        epe_cv, epe_t = flow_eval.epe(c, f, mask), flow_eval.epe(t, f, mask)
        assert np.isfinite(epe_t)
        assert epe_t <= 1.05 * epe_cv + 0.005, f"{name}: torch EPE {epe_t:.3f} px vs OpenCV {epe_cv:.3f} px"


def test_synthetic_warps_are_actually_solved(synthetic_results):
    # guards the comparison above against both backends failing the same way
    names, truth, _, th = synthetic_results
    epe = {n: flow_eval.epe(t, f, flow_eval.interior_mask(f, 8)) for n, f, t in zip(names, truth, th, strict=True)}
    assert epe["shift(1.5,-0.7)"] < 0.15 and epe["shift(13,-7)"] < 0.1 and epe["sine(2px)"] < 0.5
    assert np.mean(list(epe.values())) < 1.2


def test_motorcycle_epe_matches_opencv():
    i0, i1, truth, valid = flow_eval.motorcycle_quarter()
    cv = compute_flow(np.stack([i0, i1]), backend="opencv")[0]
    th = compute_flow(np.stack([i0, i1]), backend="torch", device="cpu")[0]
    epe_cv, epe_t = flow_eval.epe(cv, truth, valid), flow_eval.epe(th, truth, valid)
    assert 0.9 < epe_cv < 1.1  # the known figure for OpenCV with scale_step 0.5
    assert epe_t <= 1.05 * epe_cv, f"torch {epe_t:.3f} px vs OpenCV {epe_cv:.3f} px"


def test_agrees_with_opencv_on_real_consecutive_frames():
    gray = flow_eval.center_crop(flow_eval.bikes_gray(3, short_side=96, start=40), 96, 128)
    cv = compute_flow(gray, backend="opencv")
    th = compute_flow(gray, backend="torch", device="cpu")
    assert np.abs(cv).mean() > 1.0  # there is motion to agree on
    assert flow_eval.epe(th, cv) < 0.05


@pytest.mark.parametrize("dx,dy", [(3, 0), (0, 2), (2, -1), (-4, 3)])
def test_translation_gives_u_right_v_down(dx, dy):
    gray = rgb_to_gray(render(Motion(dx=dx, dy=dy), 3, 64, 80))
    flow = compute_flow(gray, backend="torch", device="cpu")
    assert flow.shape == (2, 64, 80, 2) and flow.dtype == np.float32
    inner = flow[:, 8:-8, 8:-8]
    assert inner[..., 0].mean() == pytest.approx(dx, abs=0.1)
    assert inner[..., 1].mean() == pytest.approx(dy, abs=0.1)


def test_flow_t_maps_frame_t_to_t_plus_1():
    gray = rgb_to_gray(render(Motion(dx=3, dy=0), 3, 64, 80))
    gray[2] = gray[0]  # frames 0 -> 1 move +3 px, 1 -> 2 move back
    flow = compute_flow(gray, backend="torch", device="cpu")[:, 8:-8, 8:-8, 0]
    assert flow[0].mean() == pytest.approx(3, abs=0.1) and flow[1].mean() == pytest.approx(-3, abs=0.1)


def test_pair_alone_equals_pair_inside_a_batch():
    gray = flow_eval.center_crop(flow_eval.bikes_gray(4, short_side=64), 64, 96)
    x = torch.from_numpy(gray)
    batch = tvl1_flow(x[:-1], x[1:], **FAST_FLOW)  # plumbing: few iterations show it as well as 1,500
    alone = tvl1_flow(x[1:2], x[2:3], **FAST_FLOW)
    torch.testing.assert_close(alone[0], batch[1], atol=1e-4, rtol=0)


def test_batch_size_and_chunking_do_not_change_the_result():
    gray = flow_eval.center_crop(flow_eval.bikes_gray(5, short_side=48), 48, 64)
    a = compute_flow(gray, backend="torch", device="cpu", batch_size=3, **FAST_FLOW)
    b = compute_flow(gray, backend="torch", device="cpu", batch_size=1, **FAST_FLOW)
    assert a.shape == (4, 48, 64, 2)
    np.testing.assert_allclose(a, b, atol=1e-4, rtol=0)
    assert np.abs(a).max() > 0.5


def test_video_goes_to_the_solver_batch_by_batch_as_uint8(monkeypatch):
    calls = []
    solve = tvl1_torch.tvl1_flow

    def spy(i0, i1, **params):
        calls.append((tuple(i0.shape), i0.dtype, i0.device.type))
        return solve(i0, i1, **params)

    monkeypatch.setattr(tvl1_torch, "tvl1_flow", spy)
    gray = flow_eval.center_crop(flow_eval.bikes_gray(8, short_side=32), 32, 40)
    flow = compute_flow(gray, backend="torch", device="cpu", batch_size=3, engine="cpu", **FAST_FLOW)
    assert flow.shape == (7, 32, 40, 2) and flow.dtype == np.float32
    assert calls == [((3, 32, 40), torch.uint8, "cpu")] * 2 + [((1, 32, 40), torch.uint8, "cpu")]


def test_deterministic():
    gray = flow_eval.center_crop(flow_eval.bikes_gray(3, short_side=64), 64, 80)
    a = compute_flow(gray, backend="torch", device="cpu", **FAST_FLOW)
    b = compute_flow(gray, backend="torch", device="cpu", **FAST_FLOW)
    np.testing.assert_array_equal(a, b)


def test_constant_images_give_zero_flow():
    gray = np.stack([np.full((40, 50), 100, np.uint8), np.full((40, 50), 130, np.uint8)])
    flow = compute_flow(gray, backend="torch", device="cpu")
    np.testing.assert_array_equal(flow, 0.0)


def test_pure_noise_is_finite_and_bounded():
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (3, 47, 61), dtype=np.uint8)
    flow = compute_flow(gray, backend="torch", device="cpu", **FAST_FLOW)
    assert np.isfinite(flow).all() and np.abs(flow).max() < 60


@pytest.mark.parametrize("h,w", [(1, 1), (2, 3), (3, 17), (15, 40), (33, 47), (16, 16)])
def test_tiny_and_odd_sizes(h, w):
    # below the pyramid's 16 px minimum, OpenCV (and this) solve at full resolution only
    m = Motion(dx=1.0, dy=0.5)
    gray = rgb_to_gray(render(m, 2, max(h, 2), max(w, 2)))[:, :h, :w]
    flow = compute_flow(np.ascontiguousarray(gray), backend="torch", device="cpu")
    assert flow.shape == (1, h, w, 2) and np.isfinite(flow).all()
    if h >= 15:
        cv = compute_flow(np.ascontiguousarray(gray), backend="opencv")
        assert flow_eval.epe(flow, cv) < 0.02


def test_pyramid_sizes_follow_opencv():
    assert tvl1_torch.pyramid_sizes(256, 340, 5, 0.5) == [(256, 340), (128, 170), (64, 85), (32, 42), (16, 21)]
    assert tvl1_torch.pyramid_sizes(96, 128, 5, 0.5) == [(96, 128), (48, 64), (24, 32)]
    assert tvl1_torch.pyramid_sizes(15, 400, 5, 0.5) == [(15, 400)]
    assert tvl1_torch.pyramid_sizes(256, 340, 3, 0.8) == [(256, 340), (205, 272), (164, 218)]


@pytest.mark.parametrize("size,step", [((85, 43), 0.5), ((256, 340), 0.8), ((77, 101), 0.6)])
def test_resize_is_opencv_inter_linear(size, step):
    rng = np.random.default_rng(1)
    x = (rng.random(size) * 255).astype(np.float32)
    ref_down = cv2.resize(x, None, fx=step, fy=step, interpolation=cv2.INTER_LINEAR)
    down = resize_bhw(torch.from_numpy(x)[None], ref_down.shape, (1 / step, 1 / step))[0].numpy()
    np.testing.assert_allclose(down, ref_down, atol=2e-3)
    ref_up = cv2.resize(ref_down, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
    (dh, dw), (uh, uw) = ref_down.shape, size
    up = resize_bhw(torch.from_numpy(ref_down)[None], size, (dh / uh, dw / uw))[0].numpy()
    np.testing.assert_allclose(up, ref_up, atol=2e-3)


@pytest.mark.parametrize("shape", [(3, 40, 50), (1, 1, 1), (2, 3, 4), (1, 6, 2)])
@pytest.mark.parametrize("size", [3, 5])
def test_median_filter_equals_opencv(shape, size):
    rng = np.random.default_rng(2)
    for x in (rng.standard_normal(shape).astype(np.float32), rng.integers(0, 3, shape).astype(np.float32)):
        ref = np.stack([cv2.medianBlur(a, size) for a in x])
        np.testing.assert_array_equal(median_filter(torch.from_numpy(x), size).numpy(), ref)


@pytest.mark.parametrize("block", [32000, 500, 60])  # whole pairs, groups of rows, single rows
def test_eager_in_place_iteration_equals_the_functional_one(monkeypatch, block):
    monkeypatch.setattr(tvl1_torch, "_BLOCK_ELEMS", block)
    gen = torch.Generator().manual_seed(3)
    b, h, w = 3, 37, 53
    state = [torch.randn(b, h, w, generator=gen) for _ in range(6)]
    i1wx, i1wy = (10 * torch.randn(b, h, w, generator=gen) for _ in range(2))
    i1wx[0, :5], i1wy[0, :5] = 0.0, 0.0  # flat region: no data step
    consts = tvl1_torch.WarpConsts(
        i1wx, i1wy, tvl1_torch.neg_inv_grad2(i1wx, i1wy), 20 * torch.randn(b, h, w, generator=gen)
    )
    ref = tvl1_torch.tvl1_iteration(*state, *consts, 0.045, 0.3, 0.83)
    eager = tvl1_torch.EagerIteration()
    st = [x.clone() for x in state]
    err = eager(tvl1_torch.TVL1State(st[:2], st[2:]), consts, 0.045, 0.3, 0.83)
    for a, e in zip(ref[:-1], st, strict=True):
        torch.testing.assert_close(e, a, atol=2e-6, rtol=0)
    torch.testing.assert_close(err, ref[-1], rtol=1e-5, atol=0)
    assert (ref[0] - state[0]).abs().max() > 0.1  # the step did something


@pytest.mark.parametrize("block", [32000, 500, 60])
def test_blocked_median_equals_whole_median(monkeypatch, block):
    monkeypatch.setattr(tvl1_torch, "_BLOCK_ELEMS", block)
    x = torch.randn(4, 31, 45, generator=torch.Generator().manual_seed(4))
    for size in (3, 5):
        whole = median_filter(x, size)
        torch.testing.assert_close(tvl1_torch.median_filter_blocked(x, size), whole, atol=0, rtol=0)
        some = x.clone()
        tvl1_torch.median_filter_blocked(some, size, pairs=[0, 2, 3], out=some)
        torch.testing.assert_close(some[[0, 2, 3]], whole[[0, 2, 3]], atol=0, rtol=0)
        torch.testing.assert_close(some[1], x[1], atol=0, rtol=0)


def test_gamma_term_runs_and_stays_close():
    gray = rgb_to_gray(render(Motion(dx=2, dy=1), 2, 48, 64))
    cv = compute_flow(gray, backend="opencv", gamma=0.1)
    th = compute_flow(gray, backend="torch", device="cpu", gamma=0.1)
    assert np.isfinite(th).all() and flow_eval.epe(th, cv) < 0.05
    assert th[0, 8:-8, 8:-8, 0].mean() == pytest.approx(2, abs=0.15)


def test_backend_options_are_checked():
    g = np.zeros((2, 16, 16), np.uint8)
    with pytest.raises(ValueError, match="batch_size.*only accepted by backend.*torch"):
        compute_flow(g, backend="opencv", batch_size=4)
    with pytest.raises(ValueError, match="compile.*only accepted by backend.*torch"):
        compute_flow(g, backend="opencv", compile=False)
    for bad in (0, -1, 2.5, True, "4"):
        with pytest.raises(ValueError, match="batch_size"):
            compute_flow(g, backend="torch", batch_size=bad)
    for bad in ("yes", "auto", 1):
        with pytest.raises(ValueError, match="compile"):
            compute_flow(g, backend="torch", compile=bad)
    with pytest.raises(ValueError, match="device"):
        compute_flow(g, backend="torch", device="gpu7")
    with pytest.raises(ValueError, match="allowed: .*scale_step"):
        compute_flow(g, backend="torch", scalestep=0.5)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            compute_flow(g, backend="torch", device="cuda")


def test_core_rejects_bad_tensors():
    x = torch.zeros(2, 8, 8)
    with pytest.raises(ValueError, match="finite"):
        tvl1_flow(x, x.clone().fill_(float("nan")))
    with pytest.raises(ValueError, match=r"\(B, H, W\)"):
        tvl1_flow(x, x[:1])
    assert tvl1_flow(x[:0], x[:0]).shape == (0, 8, 8, 2)


def test_auto_batch_size_follows_free_memory():
    cpu, per_pair = torch.device("cpu"), tvl1_torch.FLOATS_PER_PIXEL * 4 * 256 * 340
    assert auto_batch_size(256, 340, cpu, free_bytes=0) == 1
    assert auto_batch_size(256, 340, cpu, free_bytes=6 * per_pair) == 3  # half of the free memory
    assert auto_batch_size(256, 340, cpu, free_bytes=10**12) == tvl1_torch.CPU_MAX_BATCH
    assert auto_batch_size(256, 340, torch.device("cuda"), free_bytes=10**12) == tvl1_torch.CUDA_MAX_BATCH
    assert tvl1_torch.available_memory_bytes(cpu) > 0


@pytest.mark.slow
def test_compile_failure_falls_back_to_the_same_result(monkeypatch):
    def broken_compile(*args, **kwargs):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(torch, "compile", broken_compile)
    fresh = {name: tvl1_torch._CompiledOrEager(k.fn) for name, k in tvl1_torch._COMPILED.items()}
    monkeypatch.setattr(tvl1_torch, "_COMPILED", fresh)
    gray = flow_eval.center_crop(flow_eval.bikes_gray(2, short_side=48), 48, 64)
    with pytest.warns(RuntimeWarning, match="no compiler here"):
        fallback = compute_flow(gray, backend="torch", device="cpu", engine="cpu", compile=True)
    assert not tvl1_torch.compile_works()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second attempt, no second warning
        again = compute_flow(gray, backend="torch", device="cpu", engine="cpu", compile=True)
    eager = compute_flow(gray, backend="torch", device="cpu", engine="cpu", compile=False)
    np.testing.assert_array_equal(fallback, eager)
    np.testing.assert_array_equal(again, eager)


@pytest.mark.slow
def test_compiled_matches_eager():
    gray = flow_eval.center_crop(flow_eval.bikes_gray(3, short_side=64), 64, 96)
    compiled = compute_flow(gray, backend="torch", device="cpu", engine="cpu", compile=True)
    if not tvl1_torch.compile_works():
        pytest.skip("torch.compile does not work on this machine (the fallback is tested above)")
    eager = compute_flow(gray, backend="torch", device="cpu", engine="cpu", compile=False)
    assert flow_eval.epe(compiled, eager) < 0.02


@gpu
@needs_cuda
def test_cuda_matches_cpu(synthetic):
    names, i0, i1, truth = synthetic
    cpu = _torch_flow(i0[:4], i1[:4])
    cuda = tvl1_flow(torch.from_numpy(i0[:4]).cuda(), torch.from_numpy(i1[:4]).cuda()).cpu().numpy()
    for f, a, b in zip(truth[:4], cpu, cuda, strict=True):
        mask = flow_eval.interior_mask(f, 8)
        assert flow_eval.epe(b, f, mask) <= 1.05 * flow_eval.epe(a, f, mask) + 0.005
        assert flow_eval.epe(a, b) < 0.05


@gpu
@needs_cuda
def test_cuda_default_device_and_batching():
    gray = flow_eval.center_crop(flow_eval.bikes_gray(4, short_side=64), 64, 96)
    auto = compute_flow(gray, backend="torch")  # device=None: CUDA here
    one = compute_flow(gray, backend="torch", device="cuda", batch_size=1)
    assert auto.dtype == np.float32 and auto.shape == (3, 64, 96, 2)
    np.testing.assert_allclose(auto, one, atol=1e-3)
