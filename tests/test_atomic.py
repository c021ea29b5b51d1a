"""flowprep/atomic.py: the one atomic write: complete files only, the mode open() would give, the
old file kept when the write fails, and a finished file published by one rename."""

import errno
import json
import os
import shutil
import stat
import subprocess

import pytest

from flowprep import atomic


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_text_and_json_land_whole_with_the_mode_open_would_give(tmp_path):
    old = os.umask(0o027)
    try:
        assert atomic.umask() == 0o027 and atomic.default_mode() == 0o640
        atomic.write_text(tmp_path / "sub" / "a.txt", "héllo\n")  # the folder is made
        atomic.write_json(tmp_path / "b.json", {"x": [1, 2]}, indent=1)
    finally:
        os.umask(old)
    assert (tmp_path / "sub" / "a.txt").read_text(encoding="utf-8") == "héllo\n"
    assert json.loads((tmp_path / "b.json").read_text()) == {"x": [1, 2]}
    assert _mode(tmp_path / "sub" / "a.txt") == 0o640 and _mode(tmp_path / "b.json") == 0o640
    atomic.write_bytes(tmp_path / "c.bin", b"\0\1", mode=0o600)
    assert _mode(tmp_path / "c.bin") == 0o600
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a.txt", "b.json", "c.bin", "sub"]  # no temporaries left


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "t.json"
    atomic.write_json(target, {"v": 1})

    def half(f):
        f.write(b'{"v": 2')
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic.write_atomic(target, half)
    assert json.loads(target.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["t.json"]


def test_publish_file_moves_a_finished_file_onto_the_target(tmp_path):
    src, dest = tmp_path / ".part" / "clip.mp4", tmp_path / "clip.mp4"
    src.parent.mkdir()
    src.write_bytes(b"new")
    dest.write_bytes(b"old")
    atomic.publish_file(src, dest)
    assert dest.read_bytes() == b"new" and not src.exists()


def test_append_whole_cuts_off_what_a_full_disk_took_of_a_record(tmp_path):
    # a real full file system: a tmpfs of 16 pages filled to the last byte by a real file
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("needs root to mount a small tmpfs")
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)]).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        log = mnt / "log.jsonl"
        fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            atomic.append_whole(fd, b"x" * 4000 + b"\n")  # most of one page
            filler = os.open(mnt / "filler", os.O_WRONLY | os.O_CREAT, 0o644)
            with pytest.raises(OSError) as full:
                while True:
                    os.write(filler, b"\0" * 4096)
            assert full.value.errno == errno.ENOSPC
            # 95 bytes still fit in the log's page: the kernel writes them, then ENOSPC
            with pytest.raises(OSError) as e:
                atomic.append_whole(fd, b"y" * 200 + b"\n")
            assert e.value.errno == errno.ENOSPC
            assert log.read_bytes() == b"x" * 4000 + b"\n"  # no torn record
            atomic.append_whole(fd, b"z\n")  # what fits still lands, on a line of its own
            os.close(filler)
            os.unlink(mnt / "filler")
            atomic.append_whole(fd, b"y" * 200 + b"\n")
        finally:
            os.close(fd)
        assert log.read_bytes().split(b"\n") == [b"x" * 4000, b"z", b"y" * 200, b""]
    finally:
        subprocess.run(["umount", "-l", str(mnt)])
