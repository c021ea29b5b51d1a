"""Issue 17's small things: a fast top-level --help, near-miss paths, Store repr and slicing,
rawframes list names and split, the inspect labels."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from flowprep import open_store
from flowprep.cli.main import main
from flowprep.cli.rawframes import _split_of_list
from flowprep.run.state import staging_entry
from flowprep.store.zarr_store import VideoWriter, WriteConfig, create_store


def _code(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as e:
        return int(e.code)


def test_top_level_help_and_a_mistyped_command_import_no_command_module():
    code = (
        "import sys\nfrom flowprep.cli.main import main\n"
        "for argv in (['--help'], ['trian']):\n"
        "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
        "print(sorted(m for m in ('torch', 'zarr', 'cv2', 'flowprep.train.train', 'flowprep.run.pipeline') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stderr
    assert "invalid choice: 'trian'" in out.stderr and "train one I3D stream" in out.stdout


def test_a_mistyped_folder_is_not_an_unknown_dataset(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "myvids").mkdir()
    assert _code(["run", "myvid/"]) == 2
    assert capsys.readouterr().err.strip() == "flowprep: error: no folder myvid/; did you mean myvids/?"
    assert _code(["run", "myvid"]) == 2
    assert "no file or folder 'myvid' and no dataset of that name; did you mean myvids/?" in capsys.readouterr().err
    assert _code(["run", "kinetic"]) == 2
    assert "unknown dataset 'kinetic'; known: demo" in capsys.readouterr().err


@pytest.fixture
def store(tmp_path):
    path = tmp_path / "s.zarr"
    create_store(path, "t")
    rgb = np.random.default_rng(0).integers(0, 255, (50, 16, 24, 3), dtype=np.uint8)
    wr = VideoWriter(path, "v", 16, 24, WriteConfig(rgb_codec="lossless"), staging_entry(path, "", "v"))
    wr.append(rgb, np.zeros((49, 16, 24, 2), np.int8))
    wr.commit(
        {
            "label": "a",
            "split": "train",
            "fps": 25.0,
            "height": 16,
            "width": 24,
            "flow": {"bound_px": 20.0, "backend": "opencv"},
        }
    )
    return path


def test_store_repr_and_slicing(store):
    s = open_store(store)
    assert repr(s) == f"<flowprep Store {str(store)!r}: 1 video(s), dataset 't', format v2>"
    assert s.read_rgb("v", 0, 64).shape == (50, 16, 24, 3)  # like a list: a stop past the end gives what there is
    assert s.read_rgb("v", -2).shape[0] == 2 and s.read_flow("v", 10, 20).shape[0] == 10


def test_rawframes_split_from_the_list_name():
    assert _split_of_list("/x/ucf101_val_split_1_rawframes.txt") == "val"
    assert _split_of_list("train_list_rawframes.txt") == "train"
    assert _split_of_list("kinetics_list.txt") is None and _split_of_list(None) is None
    assert _split_of_list("train_val.txt") is None  # ambiguous: none


def test_export_names_its_list_files_and_inspect_labels(store, tmp_path, capsys):
    out = tmp_path / "raw"
    assert main(["export", "rawframes", str(store), str(out)]) == 0
    printed = capsys.readouterr().out
    assert "<split>" not in printed and str(out / "train_list_rawframes.txt") in printed
    assert main(["inspect", str(store), "--preview", str(tmp_path / "p.png")]) == 0
    printed = capsys.readouterr().out
    assert " HxW " in printed and "16x24" in printed
    assert "preview of v (the video with the most motion; choose one with --video)" in printed
