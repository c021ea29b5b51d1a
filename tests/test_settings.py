"""One store, one set of settings (issue 18): the three ways a store came to mix videos of two
settings, redone with real runs (clips of 128x96, short side 48 vs 32, torch TV-L1 on the CPU
with 1 scale and 20 iterations), each ending in a store equal to a clean run of the settings the
store records; and ``verify`` / ``--repair`` on a video of other settings.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
from conftest import make_clip
from test_integrity import _assert_same, _cmd, _counts, _wait

from flowprep.cli.main import main
from flowprep.dataset.demo import Motion
from flowprep.run.pipeline import content_settings, run
from flowprep.run.recipe import load_recipe
from flowprep.run.state import lease_path, read_latest, run_dir
from flowprep.store import fingerprint
from flowprep.store.verify import verify_store

N_CLIPS = 6  # the sweep used 12; 6 show the same (2 of them with --limit, 3 per task of 2) at half the cost
FLOW = "nscales = 1, warps = 1, outer_iterations = 1, inner_iterations = 20"


def _recipe(folder: Path, manifest: Path, short_side: int) -> Path:
    path = folder / f"r{short_side}.toml"
    path.write_text(
        f'dataset = "t"\nmanifest = "{manifest}"\n[decode]\nshort_side = {short_side}\n'
        f'[flow]\nbackend = "torch"\ndevice = "cpu"\ndevices = "off"\nparams = {{ {FLOW} }}\n'
    )
    return path


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """Recipes r48 / r32, a complete r48 store and a clean r32 store, built once for the module."""
    root = tmp_path_factory.mktemp("sweep")
    lines = ["path,label,split"]
    for i in range(N_CLIPS):
        make_clip(root / "vids" / f"clip{i}.mkv", Motion(dx=1 + i % 3, dy=-1), n=50, h=96, w=128, seed=i)
        lines.append(f"vids/clip{i}.mkv,c{i % 2},train")
    (root / "m.csv").write_text("\n".join(lines) + "\n")
    r48, r32 = _recipe(root, root / "m.csv", 48), _recipe(root, root / "m.csv", 32)
    built = {}
    for name, recipe in (("s48", r48), ("s32", r32)):
        s = run(load_recipe(recipe, out=str(root / name / "t.zarr"), progress=False))
        assert (s.done, s.failed) == (N_CLIPS, 0)
        built[name] = root / name / "t.zarr"
    return {"r48": r48, "r32": r32, **built}


def _copy_store(src: Path, dest_dir: Path) -> Path:
    dest = dest_dir / "s.zarr"
    shutil.copytree(src, dest, symlinks=True)
    shutil.copytree(run_dir(src), run_dir(dest), symlinks=True)
    return dest


def _run(recipe: Path, out: Path, **kw):
    return run(load_recipe(recipe, out=str(out), progress=False, **kw))


def _heights(store: Path) -> set[int]:
    from flowprep import open_store

    s = open_store(store)
    return {s.info(v)["height"] for v in s.video_ids}


def test_overwrite_with_new_settings_and_limit_takes_every_old_video_out(sweep, tmp_path):
    """Scenario 1: --overwrite --limit 2 with short side 32, then a plain run."""
    out = _copy_store(sweep["s48"], tmp_path)
    s = _run(sweep["r32"], out, overwrite=True, limit=2)
    assert (s.rows, s.done, s.failed) == (2, 2, 0)
    # the root records 32 and no video of 48 is left to be taken for complete
    assert _heights(out) == {32} and len([p for p in (out / "videos").iterdir() if p.is_dir()]) == 2
    assert verify_store(out) == {}
    s = _run(sweep["r32"], out)
    assert (s.rows, s.done, s.failed, s.skipped) == (N_CLIPS, N_CLIPS - 2, 0, 2)
    _assert_same(out, sweep["s32"])


def test_repair_overwrite_with_new_settings_redoes_every_video(sweep, tmp_path):
    """Scenario 2: a shard deleted, then --repair (refused) and --repair --overwrite with short side 32."""
    out = _copy_store(sweep["s48"], tmp_path)
    next((out / "videos" / "clip3" / "rgb").glob("c.*")).unlink()
    assert main(["run", str(sweep["r32"]), "--out", str(out), "--no-progress", "--repair"]) == 2
    s = _run(sweep["r32"], out, overwrite=True, repair=True)
    assert (s.done, s.failed) == (N_CLIPS, 0)
    _assert_same(out, sweep["s32"])


def test_verify_reports_a_video_of_other_settings_and_repair_redoes_it(sweep, tmp_path, capsys):
    out = _copy_store(sweep["s32"], tmp_path)
    shutil.rmtree(out / "videos" / "clip2")
    shutil.copytree(sweep["s48"] / "videos" / "clip2", out / "videos" / "clip2")  # sound, but of short side 48
    assert main(["verify", str(out)]) == 1
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("damaged"))
    assert "clip2" in line and "decode.short_side: store 32.0, video 48.0" in line
    settings = content_settings(load_recipe(sweep["r32"], out=str(out)), "torch")
    assert not fingerprint.is_current(out, "clip2", settings)
    s = _run(sweep["r32"], out, repair=True)
    assert (s.rows, s.done, s.failed) == (1, 1, 0)
    _assert_same(out, sweep["s32"])
    # a plain rerun (not --repair) also redoes such a video instead of taking it for complete
    shutil.rmtree(out / "videos" / "clip4")
    shutil.copytree(sweep["s48"] / "videos" / "clip4", out / "videos" / "clip4")
    s = _run(sweep["r32"], out)
    assert (s.done, s.skipped, s.failed) == (1, N_CLIPS - 1, 0)
    _assert_same(out, sweep["s32"])


@pytest.mark.slow
def test_a_run_of_other_settings_never_overlaps_a_live_run_whatever_its_task_tag(sweep, tmp_path, capsys):
    """Scenario 3: while r48 runs, r32 --num-tasks 2 --task-index 1 --overwrite is refused (exit 2)."""
    out = tmp_path / "s.zarr"
    first = subprocess.Popen(_cmd(sweep["r48"], out), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    ledger = run_dir(out) / "ledger" / "local.jsonl"
    try:
        _wait(lambda: ledger.exists() and '"done"' in ledger.read_text(), proc=first)
        os.kill(first.pid, signal.SIGSTOP)  # alive and holding its lease, whatever the machine's speed
        rc = main(
            [
                "run",
                str(sweep["r32"]),
                "--out",
                str(out),
                "--no-progress",
                "--overwrite",
                "--num-tasks",
                "2",
                "--task-index",
                "1",
            ]
        )
        err = capsys.readouterr().err
        assert rc == 2 and "live run with other settings (task local" in err, err
        assert not lease_path(out, "t0001").exists()
    finally:
        os.kill(first.pid, signal.SIGCONT)
    out_text, _ = first.communicate(timeout=600)
    assert first.returncode == 0
    assert _counts(out_text)[1:3] == (N_CLIPS, 0)
    _assert_same(out, sweep["s48"])


@pytest.mark.slow
def test_overlapping_runs_of_different_task_tags_record_no_false_failures(sweep, tmp_path):
    """Run A (task local) commits one video and is stopped; task 1 of 2 commits its share; A goes on
    and meets those videos already in the store: skipped, not "commit: already in the store"."""
    out = tmp_path / "s.zarr"
    first = subprocess.Popen(_cmd(sweep["r48"], out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ledger = run_dir(out) / "ledger" / "local.jsonl"
    try:
        _wait(lambda: ledger.exists() and '"done"' in ledger.read_text(), proc=first)
        os.kill(first.pid, signal.SIGSTOP)
        second = subprocess.run(
            _cmd(sweep["r48"], out, "--num-tasks", "2", "--task-index", "1"),
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert second.returncode == 0, second.stderr
    finally:
        os.kill(first.pid, signal.SIGCONT)
    out_text, err = first.communicate(timeout=600)
    assert first.returncode == 0, err
    rows, done, failed, skipped = _counts(out_text)
    assert (rows, failed) == (N_CLIPS, 0) and skipped >= 1
    latest = read_latest(run_dir(out))
    assert not [r for r in latest.values() if r["status"] == "failed"]
    _assert_same(out, sweep["s48"])


@pytest.mark.slow
def test_kill_9_during_repair_is_resumed_by_the_same_repair(sweep, tmp_path):
    out = _copy_store(sweep["s48"], tmp_path)
    damaged = ["clip0", "clip1", "clip4", "clip5"]
    for vid in damaged:
        next((out / "videos" / vid / "flow").glob("c.*")).unlink()
    cmd = _cmd(sweep["r48"], out, "--repair")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # the damaged videos leave the store before any is redone: kill the run in between
    _wait(lambda: not any((out / "videos" / v).exists() for v in damaged), proc=proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert any(not (out / "videos" / v).exists() for v in damaged)
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    rows, done, failed, _ = _counts(again.stdout)
    assert failed == 0 and done >= 1
    assert not (run_dir(out) / "repair.json").exists() or "clip" not in (run_dir(out) / "repair.json").read_text()
    _assert_same(out, sweep["s48"])
