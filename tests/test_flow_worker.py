"""The flow-worker topology (flowprep.run.flow_worker) with a CPU flow worker, end to end: the same
store as the default topology, ledger rows for bad input, devices resolved and checked."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import Clip, write_dataset, write_recipe

from flowprep import open_store
from flowprep.dataset.demo import Motion
from flowprep.flow.api import quantize_flow
from flowprep.run import flow_worker
from flowprep.run.pipeline import run
from flowprep.run.recipe import RecipeError, load_recipe
from flowprep.run.state import read_latest, run_dir


@pytest.fixture
def dataset(tmp_path):
    # one clip of another size: its pairs cannot share a batch with the others'
    clips = [
        Clip(f"clip{i}", Motion(dx=1 + i, dy=-1), 7 + 2 * i, f"move{i % 2}", seed=i, w=96 if i == 2 else 80)
        for i in range(3)
    ]
    manifest = write_dataset(tmp_path, [*clips, "vids/broken.mp4,move0,train"])
    (tmp_path / "vids" / "broken.mp4").write_text("not a video\n" * 50)
    # 4-frame blocks: each video is several requests, and batches gather blocks of several videos
    return write_recipe(tmp_path, manifest, extra="[write]\nshard_frames = 4\nchunk_frames = 2\n")


@pytest.mark.slow
def test_flow_workers_give_the_same_store_as_the_default_topology(tmp_path, dataset):
    common = dict(progress=False, backend="torch", device="cpu")
    ref_cfg = load_recipe(dataset, out=str(tmp_path / "ref" / "t.zarr"), **common)
    ref = run(ref_cfg)
    cfg = load_recipe(dataset, out=str(tmp_path / "fw" / "t.zarr"), jobs=2, devices="cpu", **common)
    assert flow_worker.flow_devices(cfg, "torch") == ["cpu"]
    got = run(cfg)
    stats = list(flow_worker.last_stats)
    assert (got.done, got.failed) == (ref.done, ref.failed) == (3, 1)
    a, b = open_store(ref_cfg.out), open_store(cfg.out)
    assert a.video_ids == b.video_ids == ["clip0", "clip1", "clip2"]
    for vid in a.video_ids:
        np.testing.assert_array_equal(a.read_rgb_uint8(vid), b.read_rgb_uint8(vid))
        np.testing.assert_array_equal(a.read_flow_int8(vid), b.read_flow_int8(vid))
        assert np.abs(b.read_flow_int8(vid)).mean() > 1  # there was motion to get right
        ia, ib = a.info(vid), b.info(vid)
        assert {k: v for k, v in ia.items() if k != "created"} == {k: v for k, v in ib.items() if k != "created"}
    latest = read_latest(run_dir(cfg.out))
    assert latest["broken"]["status"] == "failed" and latest["broken"]["reason_class"] == "decode"
    index = json.loads((run_dir(cfg.out) / "index.json").read_text())
    assert index["counts"] == {"done": 3, "failed": 1, "pending": 0}
    # every pair went through the one flow worker, in fewer batches than blocks
    (st,) = stats
    n_pairs = sum(b.info(v)["n_frames"] - 1 for v in b.video_ids)
    assert st.device == "cpu" and st.pairs == n_pairs and 0 < st.busy_fraction <= 1
    # a rerun skips what is complete, exactly as the default topology's does
    again = run(cfg)
    assert (again.done, again.skipped) == (0, 3)


def test_quantize_on_the_device_equals_quantize_flow():
    rng = np.random.default_rng(0)
    f = np.concatenate([rng.normal(0, 15, 10000), np.arange(-25, 25, 20 / 254)]).astype(np.float32)
    f = np.concatenate([f, (np.arange(-127, 128) + 0.5) * np.float32(20 / 127)]).astype(np.float32)
    np.testing.assert_array_equal(flow_worker.quantize_torch(torch.from_numpy(f), 20.0).numpy(), quantize_flow(f, 20.0))


def test_devices_are_resolved_and_checked(tmp_path, dataset):
    cfg = load_recipe(dataset, progress=False, backend="torch", device="cpu")
    assert flow_worker.flow_devices(cfg, "torch") == []  # no GPU: the default topology
    off = load_recipe(dataset, progress=False, backend="torch", devices="off")
    assert flow_worker.flow_devices(off, "torch") == []
    two = load_recipe(dataset, progress=False, backend="torch", devices="cuda:0,cuda:1")
    assert flow_worker.flow_devices(two, "torch") == ["cuda:0", "cuda:1"]
    if not torch.cuda.is_available():
        auto = load_recipe(dataset, progress=False, backend="torch")
        assert flow_worker.flow_devices(auto, "torch") == []
    import os

    assert flow_worker.decode_workers(3, 1) == 3  # --jobs given
    assert flow_worker.decode_workers(1, 1) == max(1, os.cpu_count() - 1)  # default: the CPUs
    with pytest.raises(RecipeError, match="flow.devices='gpu0'"):
        load_recipe(dataset, devices="gpu0")
    with pytest.raises(RecipeError, match="torch backend"):
        load_recipe(dataset, backend="opencv", devices="cpu")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_flow_worker_store_matches_cpu_engine(tmp_path, dataset):
    common = dict(progress=False, backend="torch")
    ref_cfg = load_recipe(dataset, out=str(tmp_path / "ref" / "t.zarr"), device="cpu", **common)
    run(ref_cfg)
    cfg = load_recipe(dataset, out=str(tmp_path / "gpu" / "t.zarr"), jobs=2, **common)
    assert flow_worker.flow_devices(cfg, "torch")  # the default on CUDA
    assert run(cfg).done == 3
    a, b = open_store(ref_cfg.out), open_store(cfg.out)
    for vid in a.video_ids:
        diff = np.abs(a.read_flow_int8(vid).astype(int) - b.read_flow_int8(vid).astype(int))
        assert diff.mean() < 0.5


def test_a_batch_gathers_blocks_of_several_videos_of_one_size():
    import queue

    q = queue.Queue()
    g = lambda n, w=80: np.zeros((n + 1, 64, w), np.uint8)  # noqa: E731 - n pairs
    for msg in [(1, 1, g(3)), (0, 2, g(5, w=96)), (2, 1, g(3)), (1, 2, g(3))]:
        q.put(msg)
    batch, stop = flow_worker._gather(q, (0, 1, g(3)), max_pairs=7)
    # the first two of another worker's and video's blocks join; the other size waits
    assert [(w, s) for w, s, _ in batch] == [(0, 1), (1, 1)] and not stop
    assert [m[:2] for m in list(q.queue)] == [(2, 1), (1, 2), (0, 2)]
    batch, stop = flow_worker._gather(q, q.get(), max_pairs=100)
    assert [(w, s) for w, s, _ in batch] == [(2, 1), (1, 2)] and not stop
    q.put(None)
    batch, stop = flow_worker._gather(q, q.get(), max_pairs=100)
    assert len(batch) == 1 and batch[0][2].shape == (6, 64, 96) and stop
