"""End-to-end: manifests through the real decode, flow and store, and the ledger for bad input."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import Clip, ffmpeg, make_clip, manifest_lines, write_recipe

from flowprep import open_store
from flowprep.dataset.demo import Motion
from flowprep.run.pipeline import run
from flowprep.run.recipe import load_recipe
from flowprep.run.state import read_latest, run_dir


def _dataset(tmp_path, n=3, frames=6):
    return manifest_lines(
        tmp_path, [Clip(f"clip{i}", Motion(dx=1 + i, dy=-1), frames, f"move{i % 2}", seed=i) for i in range(n)]
    )


def _run(tmp_path, manifest_lines, **kw):
    manifest = tmp_path / "m.csv"
    manifest.write_text("\n".join(manifest_lines) + "\n")
    recipe = write_recipe(tmp_path, manifest)
    cfg = load_recipe(recipe, out=str(tmp_path / "out" / "t.zarr"), progress=False, **kw)
    return cfg, run(cfg)


def test_manifest_to_store(tmp_path):
    cfg, summary = _run(tmp_path, _dataset(tmp_path))
    assert (summary.rows, summary.done, summary.failed, summary.skipped) == (3, 3, 0, 0)
    s = open_store(cfg.out)
    assert s.video_ids == ["clip0", "clip1", "clip2"]
    info = s.info("clip1")
    assert (info["n_frames"], info["n_flow"], info["height"], info["width"], info["fps"]) == (6, 5, 64, 80, 25.0)
    assert info["label"] == "move1" and info["split"] == "train" and info["flow"]["backend"] == "opencv"
    assert info["flow"]["params"]["warps"] == 2 and info["flow"]["bound_px"] == 20.0
    flow = s.read_flow("clip1") * 20
    assert flow[:, 8:-8, 8:-8, 0].mean() == pytest.approx(2, abs=0.15)
    assert flow[:, 8:-8, 8:-8, 1].mean() == pytest.approx(-1, abs=0.15)
    index = json.loads((run_dir(cfg.out) / "index.json").read_text())
    assert index["counts"] == {"done": 3, "failed": 0, "pending": 0}


def test_bad_inputs_become_ledger_rows_and_others_finish(tmp_path):
    lines = _dataset(tmp_path, n=2)
    vids = tmp_path / "vids"
    (vids / "zero.mp4").write_bytes(b"")
    (vids / "text.mp4").write_text("not a video\n" * 50)
    ffmpeg(
        "-f",
        "lavfi",
        "-i",
        "testsrc=size=96x64:rate=25:duration=2",
        "-c:v",
        "libx264",
        "-pix_fmt",
        "yuv420p",
        str(vids / "good.mp4"),
    )
    (vids / "trunc.mp4").write_bytes((vids / "good.mp4").read_bytes()[:2000])
    ffmpeg("-f", "lavfi", "-i", "sine=duration=1", "-c:a", "aac", str(vids / "audio.m4a"))
    make_clip(vids / "one.mkv", n=1)
    lines += [
        "vids/missing.mp4,x,train",
        "vids/zero.mp4,x,train",
        "vids/text.mp4,x,train",
        "vids/trunc.mp4,x,train",
        "vids/audio.m4a,x,train",
        "vids/one.mkv,x,train",
        "vids/good.mp4,x,holdout",  # malformed: unknown split
        "vids/good.mp4,x,train",
    ]
    cfg, summary = _run(tmp_path, lines)
    assert summary.rows == 10 and summary.done == 3 and summary.failed == 7
    assert summary.rows == summary.done + summary.failed + summary.skipped
    latest = read_latest(run_dir(cfg.out))
    expect = {
        "missing": ("source", "file not found"),
        "zero": ("decode", "empty file"),
        "text": ("decode", "could not read"),
        "trunc": ("decode", "could not read"),
        "audio": ("decode", "no video stream"),
        "one": ("too_few_frames", "1 decoded"),
        "line:10": ("manifest", "column 'split'"),
    }
    for key, (cls, words) in expect.items():
        assert latest[key]["status"] == "failed" and latest[key]["reason_class"] == cls, latest[key]
        assert words in latest[key]["reason"]
    assert "traceback" not in json.dumps(latest)
    assert sorted(open_store(cfg.out).video_ids) == ["clip0", "clip1", "good"]
    assert list((run_dir(cfg.out) / "staging").iterdir()) == []


def test_rerun_skips_complete_and_overwrite_redoes(tmp_path):
    lines = _dataset(tmp_path, n=2)
    cfg, first = _run(tmp_path, lines)
    mtime = os.stat(cfg.out / "videos" / "clip0" / "zarr.json").st_mtime_ns
    _, again = _run(tmp_path, lines)
    assert (again.done, again.skipped) == (0, 2)
    assert os.stat(cfg.out / "videos" / "clip0" / "zarr.json").st_mtime_ns == mtime
    _, redo = _run(tmp_path, lines, overwrite=True)
    assert (redo.done, redo.skipped) == (2, 0)
    assert open_store(cfg.out).video_ids == ["clip0", "clip1"]


def test_parallel_jobs_give_the_same_store(tmp_path):
    lines = _dataset(tmp_path, n=3)
    cfg1, _ = _run(tmp_path, lines)
    cfg2 = load_recipe(tmp_path / "test.toml", out=str(tmp_path / "out2" / "t.zarr"), progress=False, jobs=2)
    assert run(cfg2).done == 3
    a, b = open_store(cfg1.out), open_store(cfg2.out)
    for vid in a.video_ids:
        np.testing.assert_array_equal(a.read_rgb_uint8(vid), b.read_rgb_uint8(vid))
        np.testing.assert_array_equal(a.read_flow_int8(vid), b.read_flow_int8(vid))


@pytest.mark.slow
def test_killed_run_resumes_to_a_complete_store(tmp_path):
    lines = _dataset(tmp_path, n=6, frames=40)
    manifest = tmp_path / "m.csv"
    manifest.write_text("\n".join(lines) + "\n")
    recipe = write_recipe(tmp_path, manifest)
    out = tmp_path / "killed" / "t.zarr"
    cmd = [sys.executable, "-m", "flowprep", "run", str(recipe), "--out", str(out), "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    ledger = run_dir(out) / "ledger" / "local.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if ledger.exists() and ledger.read_text().count('"done"') >= 2:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed; make the clips longer"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = open_store(out).video_ids
    assert 2 <= len(partial) < 6
    # a half-written video is in staging, never visible
    assert subprocess.run(cmd).returncode == 0
    resumed = open_store(out)
    assert resumed.video_ids == [f"clip{i}" for i in range(6)]
    assert list((run_dir(out) / "staging").iterdir()) == []
    latest = read_latest(run_dir(out))
    assert all(latest[f"clip{i}"]["status"] in ("done", "skipped") for i in range(6))
    clean = load_recipe(recipe, out=str(tmp_path / "clean" / "t.zarr"), progress=False)
    run(clean)
    ref = open_store(clean.out)
    for vid in ref.video_ids:
        np.testing.assert_array_equal(resumed.read_rgb_uint8(vid), ref.read_rgb_uint8(vid))
        np.testing.assert_array_equal(resumed.read_flow_int8(vid), ref.read_flow_int8(vid))


def test_torch_backend_through_the_pipeline_matches_opencv(tmp_path):
    lines = _dataset(tmp_path, n=1)
    cfg_cv, _ = _run(tmp_path, lines)
    cfg_t = load_recipe(tmp_path / "test.toml", out=str(tmp_path / "torch" / "t.zarr"), progress=False, backend="auto")
    summary = run(cfg_t)
    assert summary.backend == "torch" and summary.done == 1  # auto = the faster backend here
    a, b = open_store(cfg_cv.out), open_store(cfg_t.out)
    assert b.info("clip0")["flow"]["backend"] == "torch"
    np.testing.assert_array_equal(a.read_rgb_uint8("clip0"), b.read_rgb_uint8("clip0"))
    diff = np.abs(a.read_flow_int8("clip0").astype(int) - b.read_flow_int8("clip0").astype(int))
    assert diff[:, 8:-8, 8:-8].mean() < 0.5  # int8 steps of 0.157 px: agreement well under a step
