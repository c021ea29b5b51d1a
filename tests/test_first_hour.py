"""The README's first path (issue 17): a folder of class folders -> `run DIR` with options ->
`train` and `evaluate` with their default splits -> `predict` with the trained checkpoints, which
makes its input as the training stores were made.  Tiny clips, 1 scale, 2 steps."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
import torch

from flowprep.cli.main import main as cli
from flowprep.dataset.demo import Motion, render, write_lossless
from flowprep.dataset.folder import FolderVideo, assign_splits
from flowprep.flow.api import resolve_params
from flowprep.flow.presets import PRESETS
from flowprep.store import open_store

TINY = ["--endpoint", "Conv3d_2c_3x3", "--init", "none", "--workers", "0", "--device", "cpu"]
FAST = ["--short-side", "32", "--preset", "preview", "--flow-param", "nscales=1", "--flow-param", "warps=1"]


@pytest.fixture(scope="module")
def myvids(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("first") / "myvids"
    for i, (c, m) in enumerate({"left": Motion(dx=-2), "right": Motion(dx=2), "down": Motion(dy=2)}.items()):
        for k in range(3):
            write_lossless(render(m, 10, 48, 64, seed=10 * i + k), root / c / f"clip{k}.mkv")
    return root


def test_split_is_stratified_and_fixed_by_the_id():
    def vids(label, n, start=0):
        return [
            FolderVideo(f"{label}__{i}", Path(f"/{label}/{i}"), f"{label}/{i}", label, None)
            for i in range(start, start + n)
        ]

    before = assign_splits(vids("a", 200) + vids("b", 2) + vids("c", 1))
    split = {v.video_id: v.split for v in before}
    a = [s for k, s in split.items() if k.startswith("a__")]
    assert 25 <= a.count("val") <= 55 and set(a) == {"train", "val"}  # about a fifth
    assert sorted(s for k, s in split.items() if k.startswith("b__")) == ["train", "val"]  # small class: one of each
    assert split["c__0"] == "train"  # a class of one trains
    after = {v.video_id: v.split for v in assign_splits(vids("a", 300) + vids("b", 2) + vids("c", 1))}
    assert all(after[k] == s for k, s in split.items())  # adding files moves no old video
    kept = assign_splits([FolderVideo("x", Path("/x"), "x", "a", "test")])
    assert kept[0].split == "test"


def test_the_readme_path(myvids, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    # 1. an editable recipe from the folder, and the same settings straight from `run DIR`
    assert cli(["recipes", "--from", str(myvids), *FAST]) == 0
    out = capsys.readouterr()
    recipe = tomllib.loads(out.out)
    assert recipe["decode"]["short_side"] == 32 and recipe["flow"]["preset"] == "preview"
    assert recipe["flow"]["params"] == {"nscales": 1, "warps": 1}
    assert "9 video(s), 3 label(s); split train 6, val 3" in out.err
    assert Path(recipe["manifest"]) == tmp_path / "myvids.csv"

    assert cli(["run", str(myvids), *FAST, "--no-progress"]) == 0
    assert "9 done, 0 failed" in capsys.readouterr().out
    store = open_store("out/myvids.zarr")
    splits = {v: store.info(v)["split"] for v in store.video_ids}
    assert sorted(splits.values()).count("val") == 3  # one per class
    assert {store.info(v)["label"] for v, s in splits.items() if s == "val"} == {"left", "right", "down"}
    assert store.info("left__clip0")["height"] == 32
    settings = json.loads(Path("out/myvids.zarr/zarr.json").read_text())["attributes"]["flowprep"]["settings"]
    assert settings["flow"]["preset"] == "preview" and settings["decode"]["short_side"] == 32
    assert settings["flow"]["params"] == {**PRESETS["preview"].resolved(), "nscales": 1.0, "warps": 1.0}

    # 2. train with the default split (train), evaluate with the default split (val)
    for stream in ("rgb", "flow"):
        assert (
            cli(
                [
                    "train",
                    "--store",
                    "out/myvids.zarr",
                    "--stream",
                    stream,
                    "--out",
                    f"runs/{stream}",
                    "--steps",
                    "2",
                    "--batch-size",
                    "2",
                    "--clip-len",
                    "4",
                    "--crop",
                    "32",
                    *TINY,
                ]
            )
            == 0
        )
    assert "train rgb: 6 videos, 3 classes" in capsys.readouterr().out
    blob = torch.load("runs/flow/checkpoint.pt", weights_only=False)
    assert (
        blob["store_settings"]["decode"]["short_side"] == 32 and blob["store_settings"]["flow"]["preset"] == "preview"
    )
    assert (
        cli(
            [
                "evaluate",
                "--store",
                "out/myvids.zarr",
                "--rgb",
                "runs/rgb/checkpoint.pt",
                "--flow",
                "runs/flow/checkpoint.pt",
                "--workers",
                "0",
                "--device",
                "cpu",
                "--no-progress",
            ]
        )
        == 0
    )
    ev = capsys.readouterr().out
    assert ev.startswith("3 videos, 3 classes")
    report = json.loads(Path("runs/rgb/report.json").read_text())
    rows = {line.split()[0]: line.split()[1:] for line in ev.split("per-class accuracy:\n")[1].splitlines()[1:4]}
    assert set(rows) == {"down", "left", "right"}
    for c, cells in rows.items():  # videos, rgb, flow, fused: the report's numbers
        assert cells[0] == "1" and float(cells[3]) == report["streams"]["fused"]["per_class"][c]

    # 3. predict with the checkpoints: decoded and flowed as the training stores were
    assert (
        cli(
            [
                "predict",
                str(myvids / "left" / "clip0.mkv"),
                "--two-stream",
                "--weights",
                "runs/rgb/checkpoint.pt",
                "--flow-weights",
                "runs/flow/checkpoint.pt",
                "--device",
                "cpu",
                "--top",
                "3",
                "--no-progress",
            ]
        )
        == 0
    )
    pr = capsys.readouterr().out
    assert (
        "input as the stores runs/flow/checkpoint.pt was trained on: 25 fps, short side 32; "
        "flow: preset preview with nscales=1, warps=1, bound 20 px" in pr
    )
    assert "32x42 (HxW), centre crop 32" in pr and "fused (sum of logits)" in pr
    # an option wins over the checkpoint
    assert (
        cli(
            [
                "predict",
                str(myvids / "left" / "clip0.mkv"),
                "--two-stream",
                "--weights",
                "runs/rgb/checkpoint.pt",
                "--flow-weights",
                "runs/flow/checkpoint.pt",
                "--device",
                "cpu",
                "--short-side",
                "48",
                "--no-progress",
            ]
        )
        == 0
    )
    assert "48x64 (HxW)" in capsys.readouterr().out


def test_empty_split_says_what_to_do(myvids, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli(["run", str(myvids), "--split", "val", *FAST, "--no-progress", "--limit", "2"]) == 0
    capsys.readouterr()
    assert (
        cli(["train", "--store", "out/myvids.zarr", "--stream", "rgb", "--out", "runs/x", "--steps", "1", *TINY]) == 2
    )
    err = capsys.readouterr().err
    assert "no videos of split 'train' in out/myvids.zarr (its videos by split: val: 2); choose one with --split" in err


def _code(argv: list[str]) -> int:
    try:
        return cli(argv)
    except SystemExit as e:  # what `flowprep` exits with
        return int(e.code)


def test_options_are_checked_and_for_folders_only(myvids, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert _code(["run", str(myvids), "--short-side", "33"]) == 2
    assert "--short-side 33: must be an even integer" in capsys.readouterr().err
    assert _code(["run", str(myvids), "--flow-param", "warp=2"]) == 2
    assert "unknown TV-L1 parameter(s) ['warp']" in capsys.readouterr().err
    assert _code(["run", "demo", "--preset", "preview"]) == 2
    assert "are for a folder of videos or a video" in capsys.readouterr().err
    assert not Path("out").exists()  # nothing written
    assert resolve_params({}) == resolve_params(PRESETS["i3d"].params)
