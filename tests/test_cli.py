"""The command line: every command of the COMMANDS table is registered, usage errors are one line
with exit 2, and `run` then `inspect --preview` work end to end."""

import argparse
import subprocess
import sys

import numpy as np
import pytest
from conftest import make_clip, write_recipe
from PIL import Image

from flowprep import open_store
from flowprep.cli.main import COMMANDS, build_parser, flow_stats, main


def test_help_lists_commands(capsys):
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert list(sub.choices) == list(COMMANDS) and len(COMMANDS) >= 14
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps the help lines
    for name, command in COMMANDS.items():
        assert f"{name} {command.help[:30]}" in out, name


def test_unknown_dataset_lists_known(capsys):
    with pytest.raises(SystemExit) as e:
        main(["run", "nosuchset"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "unknown dataset 'nosuchset'" in err and "demo" in err


def test_bad_recipe_key_is_a_clear_error(tmp_path, capsys):
    r = tmp_path / "r.toml"
    r.write_text('manifest = "m.csv"\n[flow]\nbackend = "opencv"\nwarps = 3\n')
    assert main(["run", str(r)]) == 2
    assert "unknown key(s) in [flow]: ['warps']" in capsys.readouterr().err


def test_run_then_inspect_with_preview(tmp_path):
    make_clip(tmp_path / "a.mkv", n=4)
    (tmp_path / "m.csv").write_text("path,label\na.mkv,walk\nmissing.mkv,walk\n")
    recipe = write_recipe(tmp_path, tmp_path / "m.csv")
    out = tmp_path / "o.zarr"
    proc = subprocess.run(
        [sys.executable, "-m", "flowprep", "run", str(recipe), "--out", str(out), "--no-progress"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1  # one row failed
    assert "2 rows: 1 done, 1 failed" in proc.stdout and "source: 1" in proc.stdout
    assert "Traceback" not in proc.stderr
    png = tmp_path / "p.png"
    proc = subprocess.run(
        [sys.executable, "-m", "flowprep", "inspect", str(out), "--preview", str(png)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert "a " in proc.stdout and "walk" in proc.stdout and "file not found" in proc.stdout
    img = np.asarray(Image.open(png))
    assert img.ndim == 3 and img.shape[0] > 100 and img.std() > 10

    # the figures inspect prints: against the stored flow read back whole (4 frames: one window)
    store = open_store(out)
    (vid,) = store.video_ids
    px = store.read_flow(vid) * float(store.info(vid)["flow"]["bound_px"])
    mag = np.hypot(px[..., 0], px[..., 1])
    stats = flow_stats(store, vid)
    assert stats.mean_px == pytest.approx(float(mag.mean()), rel=1e-5)
    assert stats.p95_px == pytest.approx(float(np.percentile(mag, 95)), rel=1e-5)
    assert stats.max_px == pytest.approx(float(mag.max()), rel=1e-5)
    assert stats.clipped == 0.0  # 2 px of motion is far inside the bound
    # the clip moves (2, 1) px per frame: the interior's median magnitude is sqrt(5)
    assert float(np.median(mag[:, 8:-8, 8:-8])) == pytest.approx(5**0.5, abs=0.3)


def test_output_cut_short_by_its_reader_ends_quietly():
    # `flowprep recipes | head -1`: the reader goes away after one line; no traceback, exit 141
    # (128 + SIGPIPE, what a shell reports for cat in the same place)
    p = subprocess.Popen(
        [sys.executable, "-m", "flowprep", "recipes"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0
    )
    assert p.stdout is not None and p.stderr is not None
    first = p.stdout.readline()
    p.stdout.close()
    err = p.stderr.read()
    assert p.wait(timeout=60) == 141, err
    assert first.startswith(b"shipped recipes")
    assert err == b""
