"""The numba engine of the torch TV-L1 (flowprep.flow.tvl1_numba), the CPU default: its fused
iteration and median against the torch definitions, and its flow against the "cpu" engine and
OpenCV on real frames.  Small frames: the plumbing is what is tested here, the speed is
``make bench-flow``'s."""

from __future__ import annotations

import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

from flowprep.flow import evaluation as flow_eval
from flowprep.flow import tvl1_device, tvl1_numba, tvl1_torch
from flowprep.flow.api import compute_flow
from flowprep.flow.tvl1_torch import WarpConsts


def _random_state(b, h, w, seed):
    gen = torch.Generator().manual_seed(seed)
    state = [torch.randn(b, h, w, generator=gen) for _ in range(6)]
    i1wx, i1wy = (10 * torch.randn(b, h, w, generator=gen) for _ in range(2))
    i1wx[0, :5], i1wy[0, :5] = 0.0, 0.0  # flat region: no data step
    consts = WarpConsts(i1wx, i1wy, tvl1_torch.neg_inv_grad2(i1wx, i1wy), 20 * torch.randn(b, h, w, generator=gen))
    return state, consts


@pytest.mark.parametrize("h,w", [(37, 53), (1, 1), (2, 3), (5, 1)])
def test_fused_iteration_equals_the_functional_one(h, w):
    state, consts = _random_state(2, h, w, seed=3)
    ref = tvl1_torch.tvl1_iteration(*state, *consts, 0.045, 0.3, 0.83)
    for b in range(2):
        arrays = [x[b].clone().numpy() for x in state]
        scratch = np.empty((3, w), np.float32)
        f32 = np.float32
        err = tvl1_numba._iteration(*arrays, *(c[b].numpy() for c in consts), f32(0.045), f32(0.3), f32(0.83), scratch)
        for a, e in zip(ref[:-1], arrays, strict=True):
            np.testing.assert_allclose(e, a[b].numpy(), atol=2e-6, rtol=0)
        assert err == pytest.approx(float(ref[-1][b]), rel=1e-5)
    if h * w > 100:
        assert (ref[0] - state[0]).abs().max() > 0.1  # the step did something


@pytest.mark.parametrize("shape", [(40, 50), (1, 1), (2, 3), (6, 2), (3, 17)])
@pytest.mark.parametrize("size", [3, 5])
def test_median_equals_opencv(shape, size):
    x = np.random.default_rng(5).standard_normal(shape).astype(np.float32)
    x[0, :2] = x[-1, -1]  # ties
    u = x.copy()
    tvl1_numba.median_in_place(u, size, np.empty((shape[0] + size - 1, shape[1] + size - 1), np.float32))
    np.testing.assert_array_equal(u, cv2.medianBlur(x, size))


@pytest.mark.parametrize("size", [3, 5])
def test_unrolled_median_networks_are_the_table(size):
    # the unrolled code in tvl1_numba was generated from tvl1_torch's network: same comparators
    import inspect

    src = inspect.getsource(getattr(tvl1_numba, f"_median{size}_in_place").py_func)
    body = [ln.strip() for ln in src.splitlines()]
    body = body[body.index("for x in range(out.shape[0]):") + 1 :]
    loads = [f"a{k} = r{k // size}[x + {k % size}]" for k in range(size * size)]
    expected = loads.copy()
    for i, j, kmin, kmax in tvl1_torch._MEDIAN_NETWORKS[size]:
        if kmin and kmax:
            expected += [f"t = min(a{i}, a{j})", f"a{j} = max(a{i}, a{j})", f"a{i} = t"]
        elif kmin:
            expected.append(f"a{i} = a{i} if a{i} < a{j} else a{j}")
        else:
            expected.append(f"a{j} = a{j} if a{i} < a{j} else a{i}")
    expected.append(f"out[x] = a{size * size // 2}")
    lines = [ln for ln in body if ln]
    assert lines == expected


@pytest.fixture(scope="module")
def bikes():
    return flow_eval.center_crop(flow_eval.bikes_gray(4, short_side=96, start=40), 96, 128)


def test_numba_engine_is_the_cpu_default_and_agrees_with_cpu_engine_and_opencv(bikes):
    assert tvl1_device.resolve_engine(None, torch.device("cpu")) == "numba"
    cv = compute_flow(bikes, backend="opencv")
    nb = compute_flow(bikes, backend="torch", device="cpu")
    cpu = compute_flow(bikes, backend="torch", device="cpu", engine="cpu")
    assert np.abs(cv).mean() > 1.0  # there is motion to agree on
    assert flow_eval.epe(nb, cv) < 0.05  # the CPU engine's tolerance (test_flow_torch)
    assert flow_eval.epe(nb, cpu) < 0.01


def test_pair_alone_equals_pair_in_batch_and_iterations_are_counted(bikes):
    i0, i1 = torch.from_numpy(bikes[:-1]), torch.from_numpy(bikes[1:])
    out: list = []
    batch = tvl1_numba.tvl1_flow_numba(i0, i1, schedule_out=out)
    alone = tvl1_numba.tvl1_flow_numba(i0[1:2], i1[1:2])
    torch.testing.assert_close(batch[1], alone[0], atol=0, rtol=0)
    iters = out[0].iterations
    assert max(iters) == 96 * 128 and len(iters) >= 3  # every level counted
    # at least one iteration per pair and warp, at most all of them
    for px, n in iters.items():
        assert 3 * 5 <= n <= 3 * 5 * 300, (px, n)


def test_gamma_runs_on_the_torch_kernels_and_stays_close(bikes):
    i0, i1 = torch.from_numpy(bikes[:2]), torch.from_numpy(bikes[1:3])
    a = tvl1_numba.tvl1_flow_numba(i0, i1, gamma=0.1, nscales=2, warps=2)
    b = tvl1_torch.tvl1_flow(i0, i1, gamma=0.1, nscales=2, warps=2)
    torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_numba_off_the_cpu_is_an_error():
    with pytest.raises(ValueError, match="runs on the CPU"):
        tvl1_device.resolve_engine("numba", torch.device("cuda"))


def test_compiled_code_is_cached_across_processes_outside_the_package(tmp_path):
    # where the package folder is read-only (a wheel installed system-wide) numba's in-tree cache
    # (__pycache__ beside the module) cannot be written and numba falls back to its user-wide
    # cache (~/.cache/numba); NUMBA_CACHE_DIR comes before both (numba's locator order).  Checked
    # with NUMBA_CACHE_DIR (tests run as root, who can write read-only folders): the first process
    # compiles into it, a second one loads the compiled code from it instead of compiling again
    cache = tmp_path / "numba-cache"
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache)}
    code = (
        "import numpy as np; from flowprep.flow import tvl1_numba as t; u = np.zeros((4, 4), np.float32); "
        "t._median3_in_place(u, np.empty((6, 6), np.float32)); s = t._median3_in_place.stats; "
        "print(len(s.cache_hits), len(s.cache_misses))"
    )
    first = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    second = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert first.stdout.split() == ["0", "1"]
    assert second.stdout.split() == ["1", "0"]
    assert any(cache.rglob("*.nbi"))


@pytest.mark.slow
def test_workers_warming_up_at_once_compile_once(tmp_path):
    # on a machine's first run every --jobs worker warms the solver up at the same moment: the
    # lock lets the first compile and the others load its code from the cache (numba counts a
    # cache miss where it compiled, a hit where it loaded)
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "numba-cache")}
    code = (
        "from types import SimpleNamespace as N; from flowprep.run import pipeline; "
        "from flowprep.flow import tvl1_numba as t; "
        "pipeline._warm_solver(N(flow=N(device='cpu', params={'median_filtering': 5})), 'torch'); "
        "print(len(t._iterations.stats.cache_misses), len(t._iterations.stats.cache_hits), "
        "len(t._median5_in_place.stats.cache_misses), len(t._median3_in_place.stats.cache_misses) + "
        "len(t._median3_in_place.stats.cache_hits))"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True) for _ in range(3)
    ]
    outs = sorted(p.communicate(timeout=600)[0].split() for p in procs)
    assert all(p.returncode == 0 for p in procs)
    # one compiled (miss), two loaded (hit); the 3x3 median was never needed, so never compiled
    assert outs == [["0", "1", "0", "0"], ["0", "1", "0", "0"], ["1", "0", "1", "0"]]
