"""The device engine of the torch TV-L1 (flowprep.flow.tvl1_device), run on the CPU: same flow as
the CPU engine and OpenCV, per-pair stopping masked on the device, one host check per block."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flowprep.flow import evaluation as flow_eval
from flowprep.flow import tvl1_device, tvl1_torch
from flowprep.flow.api import compute_flow
from flowprep.flow.tvl1_device import DeviceStats, tvl1_flow_device

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(scope="module")
def bikes():
    return flow_eval.center_crop(flow_eval.bikes_gray(4, short_side=96, start=40), 96, 128)


def _pairs(gray):
    return torch.from_numpy(gray[:-1]), torch.from_numpy(gray[1:])


def test_device_engine_matches_cpu_engine_and_opencv_on_real_frames(bikes):
    cv = compute_flow(bikes, backend="opencv")
    dev = compute_flow(bikes, backend="torch", device="cpu", engine="device")
    cpu = compute_flow(bikes, backend="torch", device="cpu", engine="cpu")
    assert np.abs(cv).mean() > 1.0  # there is motion to agree on
    assert flow_eval.epe(dev, cv) < 0.05  # the CPU engine's tolerance (test_flow_torch)
    assert flow_eval.epe(dev, cpu) < 0.01


def test_device_engine_solves_synthetic_warps_as_well_as_opencv():
    h, w, margin = 64, 96, 16
    frame = flow_eval.bikes_gray(1, short_side=h + 2 * margin + 8, start=10)[0]
    src = flow_eval.center_crop(frame[None], h + 2 * margin, w + 2 * margin)[0]
    keep = ("shift(1.5,-0.7)", "shift(13,-7)", "zoom(1.08)", "sine(2px)")  # small, large, zoom, wavy
    fields = {k: v for k, v in flow_eval.smooth_fields(h, w).items() if k in keep}
    assert len(fields) == len(keep)
    pairs = [flow_eval.warped_pair(src, f, margin) for f in fields.values()]
    i0 = torch.from_numpy(np.stack([p[0] for p in pairs]))
    i1 = torch.from_numpy(np.stack([p[1] for p in pairs]))
    dev = tvl1_flow_device(i0, i1).numpy()
    cpu = tvl1_torch.tvl1_flow(i0, i1).numpy()
    for (name, f), (a, b), d, c in zip(fields.items(), pairs, dev, cpu, strict=True):
        cv = compute_flow(np.stack([a, b]), backend="opencv")[0]
        mask = flow_eval.interior_mask(f, border=8)
        epe_cv, epe_d = flow_eval.epe(cv, f, mask), flow_eval.epe(d, f, mask)
        assert epe_d <= 1.05 * epe_cv + 0.005, f"{name}: device EPE {epe_d:.3f} px vs OpenCV {epe_cv:.3f} px"
        # a pair right at the stopping threshold may stop an iteration apart in the two engines
        # (their error sums add in another order), which at worst moves a field by ~0.03 px
        assert flow_eval.epe(d, c, mask) < 0.05, name


def test_pairs_converging_at_different_iterations_are_masked_exactly(bikes):
    # a still pair converges at once, a pair with motion takes many iterations: in one batch each
    # must stop where it stops alone and give what it gives alone
    small = bikes[:, 16:80, 24:104]  # 64 x 80: four solves alone stay quick
    still = np.stack([small[0], small[0]])
    batch = np.stack([small[0], small[1], small[0], small[2]])  # pairs (0,1) (1,0) (0,2)
    i0 = torch.from_numpy(np.concatenate([still[:1], batch[:-1]]))
    i1 = torch.from_numpy(np.concatenate([still[1:], batch[1:]]))
    stats = DeviceStats()
    together = tvl1_flow_device(i0, i1, stats=stats).numpy()
    counts = np.array(stats.per_pair)  # (levels, pairs)
    for k in range(len(i0)):
        alone_stats = DeviceStats()
        alone = tvl1_flow_device(i0[k : k + 1], i1[k : k + 1], stats=alone_stats).numpy()[0]
        np.testing.assert_allclose(together[k], alone, atol=1e-4)
        assert [c[0] for c in alone_stats.per_pair] == counts[:, k].tolist()
    # the still pair stops within a few iterations per warp, the moving ones take many more, and
    # each its own number: the batch really mixed pairs converging at different iterations
    assert counts[0, 0] == 5  # coarsest level: the first iteration of each of the 5 warps
    assert (counts[:, 0][:, None] * 3 < counts[:, 1:]).all() and len(set(counts[-1].tolist())) == 4
    assert np.abs(together[0]).mean() < 0.05


def test_check_every_changes_syncs_not_the_flow(bikes):
    i0, i1 = _pairs(bikes[:3, 16:80, 24:104])
    every, rare = DeviceStats(), DeviceStats()
    a = tvl1_flow_device(i0, i1, check_every=7, stats=every)
    b = tvl1_flow_device(i0, i1, stats=rare)  # one check per outer iteration (30)
    assert torch.equal(a, b)
    assert every.per_pair == rare.per_pair
    # once one pair converged the other ran alone (compacted working set): fewer pair-iterations
    # computed than iterations times pairs, and the same flow
    assert every.computed_pair_iterations < 2 * every.iterations
    assert every.host_syncs > rare.host_syncs
    # at most one host read per block, none inside one: syncs < blocks <= iterations / block
    assert rare.host_syncs <= rare.blocks and rare.blocks * 30 >= rare.iterations >= rare.blocks


def test_gamma_term_runs_on_the_device_engine(bikes):
    i0, i1 = _pairs(bikes[:2])
    dev = tvl1_flow_device(i0, i1, gamma=0.1).numpy()
    cpu = tvl1_torch.tvl1_flow(i0, i1, gamma=0.1).numpy()
    assert np.isfinite(dev).all() and flow_eval.epe(dev, cpu) < 0.02


def test_engine_option_is_checked_and_defaults_by_device(bikes, monkeypatch):
    bikes = bikes[:, 32:64, 40:80]
    with pytest.raises(ValueError, match="engine"):
        compute_flow(bikes[:2], backend="torch", device="cpu", engine="gpu")
    with pytest.raises(ValueError, match="engine.*only accepted by backend.*torch"):
        compute_flow(bikes[:2], backend="opencv", engine="cpu")
    assert tvl1_device.resolve_engine(None, torch.device("cpu")) == "numba"
    assert tvl1_device.resolve_engine(None, torch.device("cuda")) == "device"
    monkeypatch.setattr(tvl1_device, "_numba_available", lambda: False)
    assert tvl1_device.resolve_engine(None, torch.device("cpu")) == "cpu"  # without numba: torch's kernels
    monkeypatch.undo()
    calls = []
    real = tvl1_flow_device

    def spy(*a, **k):
        calls.append(k.get("compile"))
        return real(*a, **k)

    monkeypatch.setattr(tvl1_device, "tvl1_flow_device", spy)
    compute_flow(bikes[:2], backend="torch", device="cpu")  # CPU: the numba engine
    assert calls == []
    compute_flow(bikes[:2], backend="torch", device="cpu", engine="device")
    assert calls == [None]  # None: eager on the CPU, compiled on CUDA


@pytest.mark.gpu
@needs_cuda
def test_cuda_device_engine_matches_cpu_engine(bikes):
    i0, i1 = _pairs(bikes)
    cpu = tvl1_torch.tvl1_flow(i0, i1).numpy()
    stats = DeviceStats()
    cuda = tvl1_flow_device(i0.cuda(), i1.cuda(), stats=stats).cpu().numpy()
    eager = tvl1_flow_device(i0.cuda(), i1.cuda(), compile=False).cpu().numpy()
    assert flow_eval.epe(cuda, cpu) < 0.02 and flow_eval.epe(eager, cpu) < 0.02
    assert stats.host_syncs <= stats.blocks
    auto = compute_flow(bikes, backend="torch", device="cuda")  # default engine on CUDA: device
    assert flow_eval.epe(auto, cpu) < 0.02


def test_fused_iteration_equals_the_reference_iteration():
    from flowprep.flow.tvl1_device import fused_iteration

    g = torch.Generator().manual_seed(0)
    args = [torch.randn((2, 9, 11), generator=g) for _ in range(10)]
    for a, b in zip(
        fused_iteration(*args, 0.045, 0.3, 0.83), tvl1_torch.tvl1_iteration(*args, 0.045, 0.3, 0.83), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


TINY = dict(nscales=2, warps=2, outer_iterations=2, inner_iterations=10)


def test_compile_failure_falls_back_to_eager(bikes, monkeypatch):
    from flowprep.flow.tvl1_device import _Block

    def broken(*a, **k):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(torch, "compile", broken)
    monkeypatch.setattr(_Block, "_kernels", None)
    monkeypatch.setattr(_Block, "_error", None)
    i0, i1 = _pairs(bikes[:2, :32, :40])
    with pytest.warns(RuntimeWarning, match="no compiler here"):
        got = tvl1_flow_device(i0, i1, compile=True, **TINY)
    assert not tvl1_device.compile_works()
    assert torch.equal(got, tvl1_flow_device(i0, i1, compile=False, **TINY))


@pytest.mark.slow
def test_compiled_kernels_match_eager(bikes, monkeypatch):
    from flowprep.flow.tvl1_device import _Block

    monkeypatch.setattr(_Block, "_kernels", None)
    monkeypatch.setattr(_Block, "_error", None)
    # one pair, one level and warp: compiling (the slow part on the CPU) sees one set of shapes
    one = dict(nscales=1, warps=1, outer_iterations=2, inner_iterations=5, median_filtering=3)
    i0, i1 = _pairs(bikes[:2, :24, :32])
    compiled = tvl1_flow_device(i0, i1, compile=True, **one)
    if not tvl1_device.compile_works():
        pytest.skip("torch.compile does not work on this machine (the fallback is tested above)")
    eager = tvl1_flow_device(i0, i1, compile=False, **one)
    assert flow_eval.epe(compiled.numpy(), eager.numpy()) < 0.01 and np.abs(eager.numpy()).mean() > 0.1


@pytest.mark.slow
def test_compiled_graphs_have_no_breaks_and_compile_at_most_twice_over_six_sizes():
    # the graphs CUDA compiles (the masked iteration and the masked median), compiled here on the
    # CPU by Inductor's C++ backend, fullgraph=True (a graph break is an error) and with dynamic
    # shapes: six frame sizes and two batch sizes reuse them.  Tiny frames, one iteration per
    # graph: the compile is what is tested.  Measured on the 2-core dev machine under load:
    # ~11 min for the first compile of both graphs (~1 min with Inductor's on-disk cache warm),
    # ~0 s for every later size.
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    iteration = torch.compile(tvl1_device.masked_iteration, dynamic=True, fullgraph=True)
    median = torch.compile(tvl1_device.masked_median, dynamic=True, fullgraph=True)
    sizes = [(16, 20), (24, 30), (17, 33), (32, 16), (20, 28), (40, 44)]
    gen = torch.Generator().manual_seed(0)
    for k, (h, w) in enumerate(sizes):
        b = 2 + k % 2
        u = [torch.randn(b, h, w, generator=gen) for _ in range(2)]
        p = [torch.randn(b, h, w, generator=gen) for _ in range(4)]
        i1wx, i1wy = (torch.randn(b, h, w, generator=gen) for _ in range(2))
        consts = (i1wx, i1wy, tvl1_torch.neg_inv_grad2(i1wx, i1wy), torch.randn(b, h, w, generator=gen))
        active, count = torch.ones(b, dtype=torch.bool), torch.zeros(b, dtype=torch.int32)
        ref = tvl1_device.masked_iteration(
            tvl1_device.masked_median(u, active, 5), p, consts, active, count, 0.045, 0.3, 0.83, 0.0, 1e-3
        )
        out = iteration(median(u, active, 5), p, consts, active, count, 0.045, 0.3, 0.83, 0.0, 1e-3)
        for a, e in zip([*ref[0], *ref[1]], [*out[0], *out[1]], strict=True):
            torch.testing.assert_close(e, a, atol=1e-4, rtol=1e-4)
    assert sum(counters["graph_break"].values()) == 0
    assert counters["stats"]["unique_graphs"] <= 2 * 2  # two functions, at most twice each
