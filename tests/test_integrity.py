"""Nothing corrupt, ever (issue 9): real processes killed for real, real damage to real files.

Every case ends by comparing the store with a clean run's (same arrays, ``flowprep verify``
clean) or by checking that the damage is reported by name, and that rows = done + failed + skipped.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from conftest import Clip, ffmpeg, make_clip, write_dataset, write_recipe

from flowprep import open_store
from flowprep.cli.main import main
from flowprep.dataset.demo import Motion
from flowprep.run import pipeline
from flowprep.run.lease import Lease, LeaseHeld
from flowprep.run.pipeline import run
from flowprep.run.recipe import load_recipe
from flowprep.run.state import LedgerWriter, lease_path, read_latest, run_dir, write_index
from flowprep.store.verify import verify_store
from flowprep.store.zarr_store import StoreError

SUMMARY = re.compile(r"(\d+) rows: (\d+) done, (\d+) failed, (\d+) skipped")


def _manifest(tmp_path: Path, n: int, frames: int, extra_rows: tuple[str, ...] = ()) -> Path:
    clips = [
        Clip(f"clip{i}", Motion(dx=1 + i % 3, dy=-1), frames, f"move{i % 2}", seed=i, h=48, w=64) for i in range(n)
    ]
    return write_dataset(tmp_path, [*clips, *extra_rows])


def _cmd(recipe: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "flowprep", "run", str(recipe), "--out", str(out), "--no-progress", *extra]


def _counts(stdout: str) -> tuple[int, int, int, int]:
    m = SUMMARY.search(stdout)
    assert m, stdout
    rows, done, failed, skipped = map(int, m.groups())
    assert rows == done + failed + skipped
    return rows, done, failed, skipped


_CLEAN: dict[str, Path] = {}  # the module's clean reference stores, by what they were built from


def _clean(recipe: Path, tmp_path: Path, **kw) -> Path:
    """A clean run of ``recipe``: built once per module for the same recipe, manifest and clips."""
    folder = recipe.parent
    key = hashlib.sha256(repr((recipe.read_text().replace(str(folder), "<dir>"), sorted(kw.items()))).encode())
    for f in sorted(
        [*folder.glob("*.csv"), *(p for p in (folder / "vids").rglob("*") if p.is_file())]
    ):  # manifest, clips
        key.update(f.relative_to(folder).as_posix().encode() + f.read_bytes())
    if key.hexdigest() not in _CLEAN:
        cfg = load_recipe(recipe, out=str(tmp_path / "clean" / "t.zarr"), progress=False, **kw)
        s = run(cfg)
        assert s.rows == s.done + s.failed + s.skipped
        _CLEAN[key.hexdigest()] = cfg.out
    return _CLEAN[key.hexdigest()]


def _assert_same(store: Path, ref: Path) -> None:
    a, b = open_store(store), open_store(ref)
    assert a.video_ids == b.video_ids
    for vid in b.video_ids:
        np.testing.assert_array_equal(a.read_rgb_uint8(vid), b.read_rgb_uint8(vid))
        np.testing.assert_array_equal(a.read_flow_int8(vid), b.read_flow_int8(vid))
    assert verify_store(store) == {}


def _wait(pred, timeout: float = 120.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        assert proc is None or proc.poll() is None, "the run ended before the moment the test needs"
        time.sleep(0.01)
    raise AssertionError("timed out")


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = Path(f"/proc/{d}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(d))
    out, todo = set(), [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.add(c)
            todo.append(c)
    return out


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has ended; only its exit status waits to be collected


def _staged(out: Path) -> list[Path]:
    folder = run_dir(out) / "staging"
    return list(folder.iterdir()) if folder.is_dir() else []


# -- two runs, one store -------------------------------------------------------------------------


@pytest.mark.slow
def test_second_run_on_a_live_store_refuses_and_the_first_finishes_clean(tmp_path):
    # long videos: 200 small frames each (short side 32), so A is mid-video when B starts
    recipe = write_recipe(tmp_path, _manifest(tmp_path, n=2, frames=200), short_side=32)
    out = tmp_path / "s" / "t.zarr"
    a = subprocess.Popen(_cmd(recipe, out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait(lambda: lease_path(out, "local").exists() and any(p.name.startswith("local--") for p in _staged(out)), proc=a)
    staged_before = {p.name for p in _staged(out)}
    b = subprocess.run(_cmd(recipe, out), capture_output=True, text=True, timeout=120)
    assert b.returncode == 2
    err = b.stderr.strip().splitlines()
    assert len(err) == 1 and "being written by a live run" in err[0] and str(os.getpid()) not in err[0]
    assert f"pid {a.pid} on {socket.gethostname()}" in err[0]
    # B touched nothing of A's: its staging entries are all still there (or committed meanwhile)
    for name in staged_before:
        vid = name.split("--")[1]
        assert (run_dir(out) / "staging" / name).exists() or (out / "videos" / vid).exists()
    stdout, _ = a.communicate(timeout=300)
    assert a.returncode == 0
    assert _counts(stdout) == (2, 2, 0, 0)
    assert not lease_path(out, "local").exists()  # released at the end
    _assert_same(out, _clean(recipe, tmp_path))


def test_lease_of_another_host_is_live_until_its_heartbeat_is_old(tmp_path):
    path = tmp_path / "leases" / "local.json"
    path.parent.mkdir()
    info = {"host": "some-other-node", "pid": 1, "heartbeat": time.time(), "token": "x"}
    path.write_text(json.dumps(info))
    with pytest.raises(LeaseHeld, match="some-other-node"):
        Lease(path, "store s").acquire()
    path.write_text(json.dumps({**info, "heartbeat": time.time() - 3600}))  # that node died an hour ago
    lease = Lease(path, "store s").acquire()
    assert json.loads(path.read_text())["token"] == lease.token
    lease.check()
    lease.release()
    assert not path.exists()
    # a dead process on this host: stale at once, whatever its heartbeat
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    path.write_text(json.dumps({**info, "host": socket.gethostname(), "pid": dead.pid}))
    Lease(path, "store s").acquire().release()


# -- kill -9 -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_kill_9_of_the_main_process_only_ends_its_workers_and_commits_nothing_unrecorded(tmp_path):
    recipe = write_recipe(tmp_path, _manifest(tmp_path, n=4, frames=120), short_side=32)
    out = tmp_path / "k" / "t.zarr"
    cmd = _cmd(recipe, out, "--jobs", "2")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ledger = run_dir(out) / "ledger" / "local.jsonl"
    _wait(lambda: ledger.exists() and ledger.read_text().count('"done"') >= 1, proc=proc)
    helpers = _descendants(proc.pid)  # loky workers, the Manager, their ffmpeg processes
    assert len(helpers) >= 3, helpers
    os.kill(proc.pid, signal.SIGKILL)  # the main process only, not its group
    proc.wait()
    t_kill = time.monotonic()
    _wait(lambda: not any(_running(p) for p in helpers), timeout=10)
    print(f"helpers gone {time.monotonic() - t_kill:.2f} s after the kill")
    time.sleep(1.0)  # nobody is left to commit late
    recorded = {k for k, r in read_latest(run_dir(out)).items() if r["status"] == "done"}
    assert set(open_store(out).video_ids) <= recorded
    assert verify_store(out) == {}
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    rows, done, failed, skipped = _counts(again.stdout)
    assert (rows, failed) == (4, 0) and skipped == len(recorded) and done == 4 - len(recorded)
    assert _staged(out) == []
    _assert_same(out, _clean(recipe, tmp_path))


@pytest.mark.slow
def test_kill_9_during_commit_leaves_a_store_equal_to_a_clean_run(tmp_path):
    recipe = write_recipe(tmp_path, _manifest(tmp_path, n=3, frames=70), short_side=32)  # the clean run of full_disk's
    out = tmp_path / "c" / "t.zarr"
    cmd = _cmd(recipe, out)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)

    def prepared() -> bool:  # a video finished in staging (attributes written): its commit comes now
        for entry in _staged(out):
            try:
                if '"n_frames"' in (entry / "zarr.json").read_text():
                    return True
            except OSError:
                pass
        return False

    _wait(prepared, proc=proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert verify_store(out) == {}  # whatever made it into videos/ is whole
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert _counts(again.stdout)[0] == 3
    _assert_same(out, _clean(recipe, tmp_path))


# -- damaged stores ------------------------------------------------------------------------------


def _shard(out: Path, vid: str, array: str, s: int = 0) -> Path:
    return out / "videos" / vid / array / f"c.{s}.0.0.0"


def _damage_deleted_shard(out: Path) -> tuple[str, str]:
    _shard(out, "clip1", "rgb", 1).unlink()
    return "rgb", "frames 64-69"


def _damage_truncated(out: Path) -> tuple[str, str]:
    p = _shard(out, "clip1", "flow", 0)
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    return "flow", "frames 0-63"


def _damage_flipped(out: Path) -> tuple[str, str]:
    p = _shard(out, "clip1", "rgb", 0)
    data = bytearray(p.read_bytes())
    # the 5th chunk (frames 32-39) is in the middle of the data: 8 bytes of 0xff inside it
    index = np.frombuffer(bytes(data[-(16 * 8 + 4) : -4]), "<u8").reshape(8, 2)
    off, n = int(index[4, 0]), int(index[4, 1])
    data[off + n // 2 : off + n // 2 + 8] = b"\xff" * 8
    p.write_bytes(bytes(data))
    return "rgb", "frames 32-39"


def _damage_shape(out: Path) -> tuple[str, str]:
    p = out / "videos" / "clip1" / "rgb" / "zarr.json"
    meta = json.loads(p.read_text())
    meta["shape"][0] = 128
    p.write_text(json.dumps(meta))
    return "rgb", "shape"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("damage")
    recipe = write_recipe(tmp, _manifest(tmp, n=2, frames=70))
    cfg = load_recipe(recipe, out=str(tmp / "ref" / "t.zarr"), progress=False)
    assert run(cfg).done == 2
    return recipe, cfg.out


@pytest.mark.parametrize("damage", [_damage_deleted_shard, _damage_truncated, _damage_flipped, _damage_shape])
def test_damage_is_reported_by_name_and_repair_redoes_exactly_it(built, tmp_path, damage, capsys):
    recipe, ref = built
    out = tmp_path / "d" / "t.zarr"
    shutil.copytree(ref, out)
    shutil.copytree(run_dir(ref), run_dir(out))
    array, frames = damage(out)
    s = open_store(out)
    read = s.read_rgb if array == "rgb" else s.read_flow
    with pytest.raises(StoreError, match=f"video 'clip1': {array} .*{frames}" if frames != "shape" else "clip1.*shape"):
        read("clip1")
    np.testing.assert_array_equal(s.read_rgb_uint8("clip0"), open_store(ref).read_rgb_uint8("clip0"))
    assert list(verify_store(out)) == ["clip1"]
    capsys.readouterr()
    assert main(["verify", str(out)]) == 1
    printed = capsys.readouterr().out
    assert "damaged clip1:" in printed and "clip0" not in printed.split("video(s) checked")[0]
    assert main(["inspect", str(out), "--verify"]) == 1
    assert "clip1" in capsys.readouterr().err
    cfg = load_recipe(recipe, out=str(out), progress=False, repair=True)
    summary = run(cfg)
    assert (summary.rows, summary.done, summary.failed, summary.skipped) == (1, 1, 0, 0)  # clip1 only
    assert read_latest(run_dir(out))["clip1"]["status"] == "done"
    _assert_same(out, ref)
    assert main(["verify", str(out)]) == 0


def test_damaged_video_metadata_is_a_one_line_error(built, tmp_path, capsys):
    _, ref = built
    out = tmp_path / "m" / "t.zarr"
    shutil.copytree(ref, out)
    (out / "videos" / "clip0" / "zarr.json").write_text("{not json")
    with pytest.raises(StoreError, match="clip0.*metadata unreadable"):
        open_store(out).info("clip0")
    assert main(["inspect", str(out)]) == 1
    err = capsys.readouterr().err
    assert "clip0" in err and "Traceback" not in err
    (out / "zarr.json").write_text("{not json")
    assert main(["inspect", str(out)]) == 2
    assert main(["verify", str(out)]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 2


# -- decode completeness -------------------------------------------------------------------------


def test_faststart_mp4_cut_in_half_fails_as_decode_or_is_kept_only_when_allowed(tmp_path):
    vids = tmp_path / "vids"
    vids.mkdir()
    whole = vids / "whole.mp4"
    ffmpeg(
        "-f",
        "lavfi",
        "-i",
        "testsrc=size=96x64:rate=25:duration=3",
        "-c:v",
        "libx264",
        "-pix_fmt",
        "yuv420p",
        "-movflags",
        "+faststart",
        str(whole),
    )
    (vids / "half.mp4").write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label,split\nvids/half.mp4,x,train\nvids/whole.mp4,x,train\n")
    recipe = write_recipe(tmp_path, manifest)
    cfg = load_recipe(recipe, out=str(tmp_path / "a" / "t.zarr"), progress=False)
    s = run(cfg)
    assert (s.rows, s.done, s.failed, s.skipped) == (2, 1, 1, 0)
    rec = read_latest(run_dir(cfg.out))["half"]
    assert rec["reason_class"] == "decode" and "partial" in rec["reason"]
    # this ffmpeg (9.0) exits 0 without a word; older ones print "partial file", which is quoted too
    assert re.search(r"\d+ frames decoded, the container's duration says 75|partial file", rec["reason"])
    assert open_store(cfg.out).video_ids == ["whole"]
    assert open_store(cfg.out).info("whole")["n_frames"] == 75
    kept = load_recipe(recipe, out=str(tmp_path / "b" / "t.zarr"), progress=False, allow_partial=True)
    s = run(kept)
    assert (s.done, s.failed) == (2, 0)
    rec = read_latest(run_dir(kept.out))["half"]
    assert rec["status"] == "done" and "container's duration says 75" in rec["partial"]
    info = open_store(kept.out).info("half")
    assert 0 < info["n_frames"] < 75 and "duration says 75" in info["partial_decode"]


# -- names ---------------------------------------------------------------------------------------


def test_id_zarr_json_is_refused_and_overwrite_keeps_the_store(tmp_path):
    make_clip(tmp_path / "vids" / "a.mkv", n=4)
    manifest = tmp_path / "m.csv"
    manifest.write_text(
        "path,label,split,id\nvids/a.mkv,x,train,a\nvids/a.mkv,x,train,zarr.json\nvids/a.mkv,x,train,A\n"
    )
    recipe = write_recipe(tmp_path, manifest)
    for overwrite in (False, True):
        cfg = load_recipe(recipe, out=str(tmp_path / "o" / "t.zarr"), progress=False, overwrite=overwrite)
        s = run(cfg)
        assert (s.rows, s.done, s.failed) == (3, 1, 2)
        latest = read_latest(run_dir(cfg.out))
        assert "reserve" in latest["line:3"]["reason"] and "only in case" in latest["line:4"]["reason"]
        assert open_store(cfg.out).video_ids == ["a"]
        assert json.loads((cfg.out / "videos" / "zarr.json").read_text())["node_type"] == "group"


# -- settings ------------------------------------------------------------------------------------


def test_rerun_with_other_short_side_or_bound_refuses_naming_the_fields(tmp_path, capsys):
    manifest = _manifest(tmp_path, n=2, frames=6)
    recipe = write_recipe(tmp_path, manifest)
    out = tmp_path / "s" / "t.zarr"
    assert run(load_recipe(recipe, out=str(out), progress=False)).done == 2
    other = write_recipe(tmp_path / "vids", manifest, short_side=48, extra="bound = 10.0\n")
    with pytest.raises(StoreError) as e:
        run(load_recipe(other, out=str(out), progress=False))
    assert "decode.short_side: store 64.0, this run 48.0" in str(e.value)
    assert "flow.bound_px: store 20.0, this run 10.0" in str(e.value) and "--overwrite" in str(e.value)
    capsys.readouterr()
    assert main(["run", str(other), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "short_side" in err[0]
    assert len(open_store(out).video_ids) == 2 and open_store(out).info("clip0")["height"] == 64
    # --overwrite redoes every video with the new settings: equal to a clean run of them
    s = run(load_recipe(other, out=str(out), progress=False, overwrite=True))
    assert (s.rows, s.done, s.failed, s.skipped) == (2, 2, 0, 0)
    _assert_same(out, _clean(other, tmp_path))
    assert open_store(out).info("clip0")["flow"]["bound_px"] == 10.0


def test_data_reader_scales_flow_by_each_videos_bound(tmp_path):
    from flowprep.train.data import VideoClips, clips_to_model, collate_clips
    from flowprep.train.sampling import DenseEval

    manifest = _manifest(tmp_path, n=1, frames=8)
    stores = []
    for bound in (20.0, 10.0):
        folder = tmp_path / f"b{int(bound)}"
        folder.mkdir()
        # exact flow (not the default zstd-near, within one step): the tolerances below are the bounds' own steps
        recipe = write_recipe(folder, manifest, extra=f'bound = {bound}\n[write]\nflow_codec = "zstd"\n')
        cfg = load_recipe(recipe, out=str(folder / "t.zarr"), progress=False)
        run(cfg)
        stores.append(cfg.out)
    clips = [VideoClips([p], streams=("flow",), sampler=DenseEval(clip_len=0, crop=32)) for p in stores]
    # workers hand over int8; the scale is applied where the model runs (clips_to_model)
    f20, f10 = (clips_to_model(collate_clips([c[0]]), "flow", "cpu")[0].numpy() for c in clips)
    q20, q10 = (open_store(p).read_flow_int8("clip0").astype(int) for p in stores)
    assert np.abs(f10).max() <= 0.5 + 1e-6  # a 10 px bound reaches at most half of I3D's 20 px unit
    # the same motion in the same units, whatever the bound: agree to a quantization step of the coarser
    assert np.abs(f20 - f10).max() <= 1 / 127 + 1e-6
    # the stored steps differ twofold: a reader scaling every video by 1/127 would mix two scales
    assert np.abs(q10 - 2 * q20).max() <= 2 and np.abs(q10 - q20).max() >= 5


# -- a full disk ---------------------------------------------------------------------------------


@contextmanager
def _small_disk(folder: Path, size: int) -> Iterator[Path]:
    """A real file system of ``size`` bytes at ``folder`` (a tmpfs: it counts whole pages)."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("needs root to mount a small tmpfs")
    folder.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)]).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)])


def _fill(folder: Path) -> Path:
    """Fill ``folder``'s file system to its last page with a real file; delete the file to free the space."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        while True:
            os.write(fd, b"\0" * (1 << 16))  # the last write is cut short, the one after it fails
    except OSError as e:
        assert e.errno == errno.ENOSPC, e
    finally:
        os.close(fd)
    return filler


def _store_bytes(store: Path) -> int:
    return sum(p.stat().st_size for p in store.rglob("*") if p.is_file())


@pytest.mark.slow
def test_full_disk_then_retry_failed_completes_the_store(tmp_path):
    recipe = write_recipe(tmp_path, _manifest(tmp_path, n=3, frames=70), short_side=32)
    ref = _clean(recipe, tmp_path)
    size = _store_bytes(ref)
    # room for about one and a half videos of three (tmpfs counts pages: round up to them)
    with _small_disk(tmp_path / "small", size // 2 + 64 * 1024) as mnt:
        out = mnt / "t.zarr"
        # --jobs 1: one video is written at a time, and a video that fills the disk has removed its
        # staging folder before the run appends its ledger line.  With two writers the other one
        # can fill the disk under that line: the run then stops on its bookkeeping instead (tested
        # on its own below, at a moment chosen by the test).
        first = subprocess.run(_cmd(recipe, out, "--jobs", "1"), capture_output=True, text=True, timeout=300)
        assert first.returncode == 1, first.stderr
        rows, done, failed, skipped = _counts(first.stdout)
        assert rows == 3 and failed >= 1 and done >= 1
        latest = read_latest(run_dir(out))
        full = [k for k, r in latest.items() if r["status"] == "failed"]
        assert all(latest[k]["reason_class"] == "internal" and "No space left" in latest[k]["reason"] for k in full)
        assert verify_store(out) == {}
        subprocess.run(["mount", "-o", f"remount,size={4 * size}", str(mnt)], check=True)
        again = subprocess.run(_cmd(recipe, out, "--retry-failed"), capture_output=True, text=True, timeout=300)
        assert again.returncode == 0, again.stderr
        assert _counts(again.stdout) == (3, len(full), 0, 3 - len(full))
        _assert_same(out, ref)


def _fill_before(real, folder: Path, filled: list[Path]):
    """``real``, called after filling ``folder``'s disk (the first call only): the write itself is the real one."""

    def hooked(*args, **kwargs):
        if not filled:
            filled.append(_fill(folder))
        return real(*args, **kwargs)

    return hooked


@pytest.mark.slow
@pytest.mark.parametrize(("what", "jobs"), [("ledger", 1), ("index", 1), ("ledger", 2)])
def test_a_bookkeeping_write_on_a_full_disk_is_one_line_exit_1_and_a_rerun_completes(
    tmp_path, monkeypatch, capsys, recwarn, what, jobs
):
    recipe = write_recipe(tmp_path, _manifest(tmp_path, n=3, frames=70), short_side=32)
    ref = _clean(recipe, tmp_path)
    with _small_disk(tmp_path / "small", 4 * _store_bytes(ref)) as mnt:
        out = mnt / "t.zarr"
        argv = ["run", str(recipe), "--out", str(out), "--no-progress", "--jobs", str(jobs)]
        filled: list[Path] = []
        rdir = run_dir(out)
        if what == "ledger":  # clip0 is committed; its ledger line is the first one the run appends
            monkeypatch.setattr(LedgerWriter, "write", _fill_before(LedgerWriter.write, mnt, filled))
            path, committed = rdir / "ledger" / "local.jsonl", 1
        else:  # every video committed and recorded; the index is written last
            monkeypatch.setattr(pipeline, "write_index", _fill_before(write_index, mnt, filled))
            path, committed = rdir / "index.json", 3
        capsys.readouterr()
        assert main(argv) == 1
        assert capsys.readouterr().err.splitlines() == [
            f"flowprep: error: cannot write the {what} {path}: No space left on device; the run stopped, "
            "videos committed so far are kept: run again to resume"
        ]
        # nothing torn, nothing recorded done that is not complete, no temporary file left
        assert len(open_store(out).video_ids) == committed and verify_store(out) == {}
        ledger = (rdir / "ledger" / "local.jsonl").read_text().splitlines()
        assert [json.loads(line)["status"] for line in ledger] == ["done"] * (3 if what == "index" else 0)
        assert not (rdir / "index.json").exists() and [p.name for p in rdir.rglob("*.tmp")] == []
        # one writer: nothing in flight when the run stopped; two: the other's video may be staged
        assert jobs > 1 or _staged(out) == []
        assert [str(w.message) for w in recwarn if "joblib" in w.filename] == []  # no advice from joblib
        monkeypatch.undo()
        filled[0].unlink()  # space freed: the same command resumes
        assert main(argv) == 0
        assert _counts(capsys.readouterr().out) == (3, 3 - committed, 0, committed)
        assert _staged(out) == []
        assert json.loads((rdir / "index.json").read_text())["counts"] == {"done": 3, "failed": 0, "pending": 0}
        _assert_same(out, ref)


def test_a_torn_last_ledger_line_is_cut_off_and_the_next_record_is_read(tmp_path):
    rdir = tmp_path / "t.run"
    with LedgerWriter(rdir, "local") as ledger:
        ledger.write({"key": "a", "line": 2, "status": "done"})
    path = rdir / "ledger" / "local.jsonl"
    with open(path, "a") as f:
        f.write('{"key": "b", "line": 3, "sta')  # a kill in the middle of a line
    with LedgerWriter(rdir, "local") as ledger:
        ledger.write({"key": "c", "line": 4, "status": "failed"})
    assert {k: r["status"] for k, r in read_latest(rdir).items()} == {"a": "done", "c": "failed"}
    assert len(path.read_text().splitlines()) == 2


# -- clean edges ---------------------------------------------------------------------------------


def test_bad_files_and_paths_are_one_line_errors_with_exit_2(built, tmp_path, capsys):
    recipe, store = built
    bad = tmp_path / "bad.pt"
    bad.write_text("not a checkpoint\n")
    cases = [
        ["predict", str(tmp_path / "vids_missing.mp4"), "--weights", str(bad)],
        [
            "train",
            "--store",
            str(store),
            "--stream",
            "rgb",
            "--out",
            str(tmp_path / "r"),
            "--init",
            "none",
            "--crop",
            "32",
            "--resume",
            str(bad),
        ],
        ["evaluate", "--store", str(store), "--rgb", str(bad)],
        ["evaluate", "--store", str(store), "--rgb", str(tmp_path / "absent.pt")],
        ["slurm", "submit", str(recipe), "--out", str(tmp_path / "a\nb.zarr"), "--tasks", "2", "--dry-run"],
    ]
    for argv in cases:
        capsys.readouterr()
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("flowprep: error:") and "Traceback" not in err[0], (argv, err)
    assert not any("\n" in p.name for p in tmp_path.iterdir())  # the refused sbatch wrote nothing


def test_a_requeued_task_waits_for_the_lease_of_a_node_that_stopped_beating(tmp_path):
    path = tmp_path / "leases" / "t0001.json"
    path.parent.mkdir()
    # another node, last heartbeat 1.5 s ago with beats every 0.5 s: probably dead, not yet stale
    path.write_text(json.dumps({"host": "node-b", "pid": 7, "heartbeat": time.time() - 1.5, "token": "x"}))
    t0 = time.monotonic()
    lease = Lease(path, "store s", heartbeat_s=0.5, stale_after=3.0).acquire()
    waited = time.monotonic() - t0
    assert 1.0 <= waited <= 4.0  # waited until the lease went stale, then took it
    assert json.loads(path.read_text())["token"] == lease.token
    lease.release()


@pytest.mark.slow
def test_finalize_on_a_full_disk_is_one_line_exit_1_and_runs_again(tmp_path, capsys):
    recipe = write_recipe(tmp_path, _manifest(tmp_path, n=2, frames=40), short_side=32)
    with _small_disk(tmp_path / "small", 1 << 20) as mnt:
        out = mnt / "t.zarr"
        assert main(["run", str(recipe), "--out", str(out), "--no-progress", "--jobs", "1"]) == 0
        index = run_dir(out) / "index.json"
        expected = json.loads(index.read_text())["counts"]
        index.unlink()
        filler = _fill(mnt)
        capsys.readouterr()
        assert main(["finalize", str(recipe), "--out", str(out)]) == 1
        assert capsys.readouterr().err.splitlines() == [
            f"flowprep: error: cannot write the index {index}: No space left on device; the tasks' ledgers are "
            "intact: run finalize again when there is room"
        ]
        assert not index.exists() and [p.name for p in run_dir(out).rglob("*.tmp")] == []
        filler.unlink()
        assert main(["finalize", str(recipe), "--out", str(out)]) == 0
        assert json.loads(index.read_text())["counts"] == expected == {"done": 2, "failed": 0, "pending": 0}
