"""The zarr store (flowprep.store.zarr_store): round trips and windowed reads, a handful of files per
video, unknown format versions refused, and staged videos invisible until committed."""

import json

import numpy as np
import pytest

from flowprep import open_store
from flowprep.flow.api import quantize_flow
from flowprep.run.state import acquire_lease, clean_staging, run_dir, staging_entry
from flowprep.store.zarr_store import StoreError, VideoWriter, WriteConfig, create_store


# "lossless" RGB, exact "zstd" flow: these tests check exact round trips of random values (tests/test_store_v2.py
# and tests/test_codecs.py check the codecs)
def _write_video(
    store, vid, t=70, h=16, w=24, cfg=WriteConfig(rgb_codec="lossless", flow_codec="zstd"), seed=0, blocks=(64, 6)
):
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 256, (t, h, w, 3), dtype=np.uint8)
    flow_px = rng.uniform(-25, 25, (t - 1, h, w, 2)).astype(np.float32)
    q = quantize_flow(flow_px)
    wr = VideoWriter(store, vid, h, w, cfg, staging_entry(store, "", vid))
    i = 0
    for n in blocks:  # appended in decode-sized blocks, flow lagging one frame as in the pipeline
        wr.append(rgb[i : i + n], q[max(i - 1, 0) : i + n - 1])
        i += n
    wr.commit({"label": "x", "split": "val", "fps": 25.0, "flow": {"bound_px": 20.0}})
    return rgb, flow_px, q


def test_round_trip_and_ranges(tmp_path):
    store = tmp_path / "s.zarr"
    create_store(store, "t")
    rgb, flow_px, q = _write_video(store, "vid1")
    s = open_store(store)
    assert s.video_ids == ["vid1"]
    info = s.info("vid1")
    assert (info["n_frames"], info["n_flow"], info["label"]) == (70, 69, "x")
    r = s.read_rgb("vid1")
    assert r.dtype == np.float32 and r.shape == (70, 16, 24, 3)
    np.testing.assert_allclose(r, rgb / 127.5 - 1, atol=1e-6)
    f = s.read_flow("vid1")
    assert f.shape == (69, 16, 24, 2) and f.min() >= -1 and f.max() <= 1
    assert np.abs(f * 20 - np.clip(flow_px, -20, 20)).max() <= 20 / 127 / 2 + 1e-5
    np.testing.assert_array_equal(s.read_flow_int8("vid1"), q)


def test_window_read_equals_slice_of_full_read(tmp_path):
    store = tmp_path / "s.zarr"
    create_store(store, "t")
    _write_video(store, "v", t=150, blocks=(64, 64, 22))
    s = open_store(store)
    full_rgb, full_flow = s.read_rgb("v"), s.read_flow("v")
    for a, b in [(0, 64), (10, 74), (63, 65), (100, 150), (149, None)]:
        np.testing.assert_array_equal(s.read_rgb("v", a, b), full_rgb[a:b])
        np.testing.assert_array_equal(s.read_flow("v", a, b), full_flow[a:b])


def test_files_per_video_are_a_handful(tmp_path):
    store = tmp_path / "s.zarr"
    create_store(store, "t")
    _write_video(store, "v", t=250, blocks=(64, 64, 64, 58))
    files = [p for p in (store / "videos" / "v").rglob("*") if p.is_file()]
    # group zarr.json + per array (zarr.json + 4 shards of 64 frames)
    assert len(files) == 1 + 2 * (1 + 4)
    folders = [p for p in (store / "videos" / "v").rglob("*") if p.is_dir()]
    assert sorted(p.name for p in folders) == ["flow", "rgb"]


def test_unknown_format_version_is_refused(tmp_path):
    store = tmp_path / "s.zarr"
    create_store(store, "t")
    meta = json.loads((store / "zarr.json").read_text())
    meta["attributes"]["flowprep"]["format_version"] = 99
    (store / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(StoreError, match="format version 99"):
        open_store(store)
    with pytest.raises(StoreError, match="no store here"):
        open_store(tmp_path / "nothing.zarr")


def test_not_a_store_folder_is_not_overwritten(tmp_path):
    d = tmp_path / "mine"
    d.mkdir()
    (d / "precious.txt").write_text("x")
    with pytest.raises(StoreError, match="not a flowprep store"):
        create_store(d, "t")
    assert (d / "precious.txt").read_text() == "x"


def test_uncommitted_video_is_invisible_and_cleaned(tmp_path):
    store = tmp_path / "s.zarr"
    create_store(store, "t")
    wr = VideoWriter(store, "half", 8, 8, WriteConfig(), staging_entry(store, "", "half"))
    wr.append(np.zeros((10, 8, 8, 3), np.uint8), np.zeros((9, 8, 8, 2), np.int8))
    # the process dies here: no commit
    assert open_store(store).video_ids == []
    lease = acquire_lease(store, "local")  # a live owner: its debris is not anybody else's to clean
    assert clean_staging(store, "other") == 0
    assert list((run_dir(store) / "staging").iterdir()) != []
    assert clean_staging(store, held=lease) == 1  # the holder itself may (it took over a dead run's tag)
    lease.release()
    assert list((run_dir(store) / "staging").iterdir()) == []


def test_commit_refuses_existing_without_overwrite(tmp_path):
    store = tmp_path / "s.zarr"
    create_store(store, "t")
    _write_video(store, "v", seed=1)
    with pytest.raises(StoreError, match="already in the store"):
        _write_video(store, "v", seed=2)
    with pytest.raises(KeyError, match="not .*in"):
        open_store(store).info("w")
