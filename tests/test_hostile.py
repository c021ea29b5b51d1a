"""Hostile cases of issue 18 that are not about settings: dead workers, signals, odd manifests and
folders, swapped files, and the one-line errors; real processes and files throughout."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import make_clip, write_recipe
from test_integrity import _assert_same, _clean, _cmd, _counts, _descendants, _running, _wait

from flowprep.cli.main import main
from flowprep.dataset.decode import DecodeConfig, DecodeInterrupted, decode_blocks
from flowprep.dataset.demo import Motion
from flowprep.dataset.folder import scan_folder, write_manifest
from flowprep.dataset.manifest import ManifestRow, parse_manifest
from flowprep.run.lease import Lease
from flowprep.run.pipeline import process_video
from flowprep.run.recipe import load_recipe
from flowprep.run.state import is_retryable, lease_path, read_latest, run_dir
from flowprep.store.verify import verify_store


def _clips(tmp_path: Path, n: int, frames: int = 10, rows: tuple[str, ...] = ()) -> Path:
    lines = ["path,label,split"]
    for i in range(n):
        make_clip(tmp_path / "vids" / f"clip{i}.mkv", Motion(dx=1 + i % 3, dy=1), n=frames, h=48, w=64, seed=i)
        lines.append(f"vids/clip{i}.mkv,c{i % 2},train")
    manifest = tmp_path / "m.csv"
    manifest.write_text("\n".join([*lines, *rows]) + "\n")
    return manifest


def _one_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.startswith("flowprep: ")]
    assert len(lines) == 1, err
    return lines[0]


# -- flow and decode workers ---------------------------------------------------------------------


def _write_torch_recipe(tmp_path: Path, manifest: Path) -> Path:
    path = tmp_path / "torch.toml"
    path.write_text(
        f'dataset = "t"\nmanifest = "{manifest}"\n[decode]\nshort_side = 48\n'
        '[flow]\nbackend = "torch"\ndevice = "cpu"\n'
        "params = { nscales = 1, warps = 1, outer_iterations = 1, inner_iterations = 20 }\n"
    )
    return path


@pytest.mark.slow
def test_kill_9_of_the_flow_worker_fails_only_waiting_videos_and_the_run_ends(tmp_path):
    recipe = _write_torch_recipe(tmp_path, _clips(tmp_path, 5, frames=40))
    out = tmp_path / "s.zarr"
    err_path = tmp_path / "err.txt"
    cmd = _cmd(recipe, out, "--devices", "cpu", "--jobs", "2")
    with open(err_path, "w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True)
    pid = re.compile(r"flow worker on cpu: pid (\d+)")
    ledger = run_dir(out) / "ledger" / "local.jsonl"
    _wait(lambda: ledger.exists() and '"done"' in ledger.read_text() and pid.search(err_path.read_text()), proc=proc)
    os.kill(int(pid.search(err_path.read_text()).group(1)), signal.SIGKILL)
    stdout, _ = proc.communicate(timeout=300)  # it ends (it used to hang at exit on a queue's feeder thread)
    rows, done, failed, skipped = _counts(stdout)
    assert rows == 5 and failed <= 2, stdout  # at most the 2 decode workers' videos waited on it
    assert "a flow worker died" in err_path.read_text() and "Traceback" not in err_path.read_text()
    latest = read_latest(run_dir(out))
    fails = [r for r in latest.values() if r["status"] == "failed"]
    assert all(r["reason_class"] == "internal" and is_retryable(r["reason_class"]) for r in fails)
    assert proc.returncode == (1 if failed else 0)
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    _assert_same(out, _clean(recipe, tmp_path, devices="off"))


@pytest.mark.slow
def test_kill_9_of_a_decode_worker_is_one_line_and_a_rerun_resumes(tmp_path):
    recipe = _write_torch_recipe(tmp_path, _clips(tmp_path, 4, frames=50))
    out = tmp_path / "s.zarr"
    cmd = _cmd(recipe, out, "--devices", "cpu", "--jobs", "2")
    err_path = tmp_path / "err.txt"
    with open(err_path, "w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, text=True)
    pid = re.compile(r"flow worker on cpu: pid (\d+)")
    _wait(lambda: pid.search(err_path.read_text()), proc=proc)
    flow_pid = int(pid.search(err_path.read_text()).group(1))
    _wait(lambda: len(_descendants(proc.pid) - {flow_pid}) >= 2, proc=proc)
    decoder = min(
        p for p in _descendants(proc.pid) - {flow_pid} if Path(f"/proc/{p}/cmdline").read_bytes().count(b"spawn")
    )
    os.kill(decoder, signal.SIGKILL)
    proc.wait(timeout=300)
    line = _one_line(err_path.read_text())
    assert proc.returncode == 1 and "decode worker" in line and "died; run again to resume" in line
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert verify_store(out) == {} and len(list((out / "videos").glob("clip*"))) == 4


@pytest.mark.slow
def test_flow_worker_ends_with_a_killed_parent_even_while_importing_torch(tmp_path):
    recipe = _write_torch_recipe(tmp_path, _clips(tmp_path, 2, frames=50))
    err_path = tmp_path / "err.txt"
    with open(err_path, "w") as err:
        proc = subprocess.Popen(
            _cmd(recipe, tmp_path / "s.zarr", "--devices", "cpu", "--jobs", "2"), stdout=subprocess.DEVNULL, stderr=err
        )
    pid = re.compile(r"flow worker on cpu: pid (\d+)")
    _wait(lambda: pid.search(err_path.read_text()), proc=proc)
    helpers = _descendants(proc.pid)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    t = time.monotonic()
    _wait(lambda: not any(_running(p) for p in helpers), timeout=30)
    print(f"workers gone {time.monotonic() - t:.2f} s after the kill (documented: orphan.POLL_S)")


def _ffmpeg_child() -> int | None:
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = Path(f"/proc/{d}/stat").read_text()
            except OSError:
                continue
            if "(ffmpeg" in stat and int(stat.rsplit(")", 1)[1].split()[1]) == os.getpid():
                return int(d)
    return None


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_ffmpeg_ended_by_a_signal_is_an_interruption_not_a_bad_file(tmp_path, sig):
    clip = tmp_path / "long.mkv"
    make_clip(clip, n=200, h=96, w=128)
    blocks = decode_blocks(str(clip), DecodeConfig(short_side=48, block_frames=8))
    next(blocks)
    os.kill(_ffmpeg_child(), sig)
    with pytest.raises(DecodeInterrupted, match="signal|SIGKILL|SIGINT"):
        for _ in blocks:
            pass
    # through the pipeline: a retryable ledger row (run --retry-failed redoes it)
    recipe = write_recipe(tmp_path, tmp_path / "m.csv", short_side=48)
    cfg = load_recipe(recipe, out=str(tmp_path / "s.zarr"), progress=False)
    killed = []

    def kill_ffmpeg(_n: int) -> None:
        if not killed:
            killed.append(_ffmpeg_child())
            os.kill(killed[0], sig)

    rec = process_video(ManifestRow(2, "long", str(clip)), cfg, "opencv", progress=kill_ffmpeg, commit=False)
    assert killed and rec.status == "failed" and rec.reason_class == "interrupted", rec
    assert is_retryable(rec.reason_class)


# -- manifests and folders -------------------------------------------------------------------------


def test_a_huge_field_and_a_non_utf8_byte_fail_their_rows_only(tmp_path, capsys):
    manifest = _clips(tmp_path, 2)
    with open(manifest, "ab") as f:
        f.write(b"vids/clip0.mkv," + b"x" * 140_000 + b",train\n")  # line 4
        f.write(b"vids/caf\xe9.mkv,c0,train\n")  # line 5: Latin-1, not UTF-8
    rows, errors = parse_manifest(manifest)
    assert [r.video_id for r in rows] == ["clip0", "clip1"]
    assert [e.line for e in errors] == [4, 5]
    assert "131072" in str(errors[0]) and str(errors[1]).endswith(
        "5: column 'path': not UTF-8 text (byte 0xe9); save the manifest as UTF-8"
    )
    recipe = write_recipe(tmp_path, manifest, short_side=48)
    assert main(["run", str(recipe), "--out", str(tmp_path / "s.zarr"), "--no-progress"]) == 1
    out, err = capsys.readouterr()
    assert "Traceback" not in err and "4 rows: 2 done, 2 failed" in out


def test_symlink_loops_list_each_real_file_once_and_are_named_in_one_line(tmp_path, caplog):
    root = tmp_path / "videos"
    make_clip(root / "cls" / "a.mkv")
    make_clip(root / "other" / "b.mkv", seed=1)
    os.symlink("..", root / "cls" / "up")
    os.symlink("../other", root / "cls" / "also")  # a second way to the same files
    with caplog.at_level("WARNING", logger="flowprep"):
        videos = scan_folder(root)
    assert [(v.rel_path, v.label) for v in videos] == [("cls/a.mkv", "cls"), ("other/b.mkv", "other")]
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "1 symlink loop(s) not followed: cls/up" in warnings[0]


def test_ids_that_differ_only_in_case_get_the_hash_suffix_and_both_are_processed(tmp_path):
    root = tmp_path / "videos"
    make_clip(root / "Clip.mkv", seed=1)
    make_clip(root / "clip.mkv", seed=2)
    make_clip(root / "solo.mkv", seed=3)
    videos = scan_folder(root)
    ids = sorted(v.video_id for v in videos)
    assert len({i.casefold() for i in ids}) == 3 and "solo" in ids
    assert all(re.fullmatch(r"[Cc]lip-[0-9a-f]{8}", i) for i in ids if i != "solo")
    # the manifest `run DIR` writes passes its own id check: every video can be processed
    rows, errors = parse_manifest(write_manifest(videos, tmp_path / "m.csv"))
    assert errors == [] and sorted(r.video_id for r in rows) == ids


# -- the store ----------------------------------------------------------------------------------------


def _uniform_clip(path: Path, level: int) -> None:
    from flowprep.dataset.demo import write_lossless

    write_lossless(np.full((10, 48, 64, 3), level, np.uint8), path, fps=25)


def test_swapped_shard_files_of_two_videos_fail_verify(tmp_path, capsys):
    # uniform frames of two close grey levels: shard files of the same size, other content
    _uniform_clip(tmp_path / "a.mkv", 100)
    _uniform_clip(tmp_path / "b.mkv", 102)
    (tmp_path / "m.csv").write_text("path\na.mkv\nb.mkv\n")
    recipe = write_recipe(tmp_path, tmp_path / "m.csv", short_side=48)
    out = tmp_path / "s.zarr"
    assert main(["run", str(recipe), "--out", str(out), "--no-progress"]) == 0
    fa, fb = out / "videos" / "a" / "rgb" / "c.0.0.0.0", out / "videos" / "b" / "rgb" / "c.0.0.0.0"
    assert fa.stat().st_size == fb.stat().st_size and fa.read_bytes() != fb.read_bytes()
    assert verify_store(out) == {}
    tmp = fa.with_name("swap")
    os.rename(fa, tmp)
    os.rename(fb, fa)
    os.rename(tmp, fb)
    capsys.readouterr()
    assert main(["verify", str(out)]) == 1
    text = capsys.readouterr().out
    assert "damaged a: rgb: shard file c.0.0.0.0 differs from the digest recorded at commit" in text
    assert "2 damaged" in text
    assert main(["run", str(recipe), "--out", str(out), "--no-progress", "--repair"]) == 0
    _assert_same(out, _clean(recipe, tmp_path))


# -- nothing written on exit 2, one line for each error ----------------------------------------------


def test_exit_2_leaves_nothing_behind(tmp_path, capsys):
    (tmp_path / "bad.csv").write_text("path,colour\nx.mkv,red\n")
    recipe = write_recipe(tmp_path, tmp_path / "bad.csv")
    out = tmp_path / "o" / "s.zarr"
    assert main(["run", str(recipe), "--out", str(out), "--no-progress"]) == 2
    assert "unknown column" in _one_line(capsys.readouterr().err)
    assert not run_dir(out).exists() and not out.exists()
    make_clip(tmp_path / "videos" / "a.mkv")
    out2 = tmp_path / "o" / "v.zarr"
    assert main(["run", str(tmp_path / "videos"), "--out", str(out2), "--limit", "0", "--no-progress"]) == 2
    assert "--limit 0" in _one_line(capsys.readouterr().err)
    assert not run_dir(out2).exists() and not out2.exists()


def test_zero_byte_lease_left_by_a_full_disk_is_stale(tmp_path):
    recipe = write_recipe(tmp_path, _clips(tmp_path, 1), short_side=48)
    out = tmp_path / "s.zarr"
    lease = lease_path(out, "local")
    lease.parent.mkdir(parents=True)
    lease.write_bytes(b"")
    assert main(["run", str(recipe), "--out", str(out), "--no-progress"]) == 0
    assert not lease.exists()
    # a lease is never seen half written: it appears with its content (hard link) or not at all
    held = Lease(lease, "test").acquire()
    try:
        assert json.loads(lease.read_text())["token"] == held.token
    finally:
        held.release()


def test_rawframes_and_inspect_errors_are_one_line_naming_the_file(tmp_path, capsys):
    recipe = write_recipe(tmp_path, _clips(tmp_path, 1), short_side=48)
    out = tmp_path / "s.zarr"
    assert main(["run", str(recipe), "--out", str(out), "--no-progress"]) == 0
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    capsys.readouterr()
    # export into a folder that cannot be written, a preview into a folder that cannot exist
    assert main(["export", "rawframes", str(out), str(blocker / "raw")]) == 2
    assert str(blocker) in _one_line(capsys.readouterr().err)
    assert main(["inspect", str(out), "--preview", str(blocker / "sub" / "p.png")]) == 2
    assert "--preview" in _one_line(capsys.readouterr().err)
    # import: a missing and a binary --list file, and a frame of another size
    raw = tmp_path / "raw"
    assert main(["export", "rawframes", str(out), str(raw)]) == 0
    for bad, what in ((tmp_path / "missing.txt", "no such file"), (tmp_path / "bin.txt", "not a text file")):
        if what != "no such file":
            bad.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff")
        assert main(["import", "rawframes", str(raw), str(tmp_path / "i.zarr"), "--list", str(bad)]) == 2
        line = _one_line(capsys.readouterr().err)
        assert str(bad) in line and what in line
    frame = raw / "clip0" / "img_00003.jpg"
    import cv2

    cv2.imwrite(str(frame), np.zeros((20, 30, 3), np.uint8))
    assert main(["import", "rawframes", str(raw), str(tmp_path / "i.zarr")]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"{frame}: frame of 30x20, the video's first frame is 64x48" in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_export_into_a_read_only_folder_is_one_line(tmp_path, capsys):
    recipe = write_recipe(tmp_path, _clips(tmp_path, 1), short_side=48)
    out = tmp_path / "s.zarr"
    assert main(["run", str(recipe), "--out", str(out), "--no-progress"]) == 0
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    capsys.readouterr()
    try:
        assert main(["export", "rawframes", str(out), str(ro)]) == 2
        assert "cannot write" in _one_line(capsys.readouterr().err)
    finally:
        ro.chmod(0o755)


@pytest.mark.slow
def test_ctrl_c_is_one_line_exit_130_and_a_rerun_resumes(tmp_path):
    recipe = write_recipe(tmp_path, _clips(tmp_path, 4, frames=60), short_side=48)
    out = tmp_path / "s.zarr"
    cmd = _cmd(recipe, out, "--jobs", "2")
    # its own process group, as a shell's foreground job: Ctrl-C reaches every process of it
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    ledger = run_dir(out) / "ledger" / "local.jsonl"
    _wait(lambda: ledger.exists() and '"done"' in ledger.read_text(), proc=proc)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert _one_line(err) == "flowprep: interrupted; run again to resume"
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert _counts(again.stdout)[2] == 0
    _assert_same(out, _clean(recipe, tmp_path))
