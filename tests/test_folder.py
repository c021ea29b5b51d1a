"""`flowprep run DIR` / `run VIDEO`: the id rule, the folder layouts, the generated recipe, stores."""

from __future__ import annotations

import csv
import hashlib
import sys
from pathlib import Path

import numpy as np
import pytest

from flowprep.cli.main import main
from flowprep.dataset.demo import Motion, render, write_lossless
from flowprep.dataset.folder import scan_folder, single_video
from flowprep.dataset.manifest import ManifestError, check_video_id, parse_manifest, safe_video_id
from flowprep.store import open_store


def _sha8(s: str) -> str:
    return hashlib.sha1(s.encode()).hexdigest()[:8]


def test_id_rule_clean_paths_are_readable_and_unhashed():
    assert safe_video_id("walking/0001.mp4") == "walking__0001"
    assert safe_video_id("clip.avi") == "clip"
    assert safe_video_id("a.b-c_d.mkv") == "a.b-c_d"
    assert safe_video_id("-x.mp4") == "-x"  # ids may start with '-', like YouTube's


@pytest.mark.parametrize(
    "rel, readable",
    [
        ("my clip (1).mp4", "my_clip_1_"),
        ("café/Ünïcode.mp4", "cafe__Unicode"),
        ("日本/動画.mp4", "____"),  # "_" + "__" + "_"
        (".hidden.mp4", "_hidden"),
        ("a..b.mp4", "a_b"),
        ("a__b.mp4", "a__b"),  # "__" is the separator: a name holding it is hashed
        ("x_/y.mp4", "x___y"),
    ],
)
def test_id_rule_lossy_paths_get_a_hash_of_the_whole_path(rel, readable):
    vid = safe_video_id(rel)
    assert vid == f"{readable}-{_sha8(rel)}"
    assert check_video_id(vid) is None


def test_id_rule_long_names_and_uniqueness():
    long = "k" * 300 + ".mp4"
    vid = safe_video_id(long)
    assert len(vid) == 128 and vid.endswith(_sha8(long)) and check_video_id(vid) is None
    # stems that collide in a flat namespace differ here; every one is a valid group name
    rels = ["a/0001.mp4", "b/0001.mp4", "0001.mp4", "a 0001.mp4", "a_0001.mp4", "a__0001.mp4", "A/0001.mp4"]
    ids = [safe_video_id(r) for r in rels]
    assert len(set(ids)) == len(rels)
    # a function of the path alone: these ids, in any process, on any machine (fixed values, not recomputed)
    assert [safe_video_id(r) for r in ("a/0001.mp4", "my clip (1).mp4", "Café/été 2.MOV")] == [
        "a__0001",
        "my_clip_1_-c40c420a",
        "Cafe__ete_2-ce1a7c4c",
    ]
    assert safe_video_id("a/0001.mp4", force_hash=True) == f"a__0001-{_sha8('a/0001.mp4')}"


def _clip(path: Path, motion: Motion = Motion(dx=2.0), n: int = 3) -> Path:
    write_lossless(render(motion, n, 256, 320, seed=len(str(path))), path)
    return path


def _touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not read by scan_folder")


def test_scan_folder_layouts(tmp_path):
    root = tmp_path / "vids"
    for rel in [
        "walk/0001.mp4",
        "run/0001.mp4",
        "run/deep/x.avi",
        "flat.MP4",
        "train/jump/1.mp4",
        "val/2.mov",
        "same.mp4",
        "same.avi",
        ".hidden/a.mp4",
        "run/.b.mp4",
        "notes.txt",
        "run/cover.jpg",
    ]:
        _touch(root / rel)
    got = {v.rel_path: v for v in scan_folder(root)}
    assert sorted(got) == sorted(
        [
            "walk/0001.mp4",
            "run/0001.mp4",
            "run/deep/x.avi",
            "flat.MP4",
            "train/jump/1.mp4",
            "val/2.mov",
            "same.mp4",
            "same.avi",
        ]
    )
    assert (got["walk/0001.mp4"].label, got["walk/0001.mp4"].split) == ("walk", None)
    assert got["run/deep/x.avi"].label == "run" and got["run/deep/x.avi"].video_id == "run__deep__x"
    assert (got["flat.MP4"].label, got["flat.MP4"].video_id) == (None, "flat")
    assert (got["train/jump/1.mp4"].label, got["train/jump/1.mp4"].split) == ("jump", "train")
    assert (got["val/2.mov"].label, got["val/2.mov"].split) == (None, "val")
    # same name, other extension: both hashed, so neither takes the plain name
    assert (
        got["same.mp4"].video_id == f"same-{_sha8('same.mp4')}"
        and got["same.avi"].video_id == f"same-{_sha8('same.avi')}"
    )
    assert all(v.path == (root / r).resolve() for r, v in got.items())
    # --split fills in where no split folder says otherwise
    by_rel = {v.rel_path: v.split for v in scan_folder(root, split="test")}
    assert by_rel["walk/0001.mp4"] == "test" and by_rel["train/jump/1.mp4"] == "train"


def test_scan_folder_refusals(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ManifestError, match="no videos under"):
        scan_folder(tmp_path / "empty")
    with pytest.raises(ManifestError, match="--split 'dev'"):
        scan_folder(tmp_path, split="dev")
    with pytest.raises(ManifestError, match="no such video"):
        single_video(tmp_path / "nope.mp4")


def _run(argv, capsys) -> tuple[int, str, str]:
    try:
        rc = main(argv)
    except SystemExit as e:
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


def test_run_folder_builds_a_store_with_colliding_stems_spaces_and_non_ascii(tmp_path, monkeypatch, capsys):
    root = tmp_path / "my vids"
    names = ["walk/0001.mp4", "run/0001.mp4", "run/my clip (1).mp4", "café/Ünï.mkv"]
    for rel in names:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        _clip(root / rel)
    monkeypatch.chdir(tmp_path)
    rc, out, err = _run(["run", str(root), "--no-progress", "--backend", "opencv"], capsys)
    assert rc == 0, err
    assert "4 video(s), 3 label(s)" in out and "4 done, 0 failed" in out
    store = open_store(tmp_path / "out" / "my_vids.zarr")
    want = {safe_video_id(r): r for r in names}
    assert sorted(store.video_ids) == sorted(want)
    assert {"walk__0001", "run__0001"} <= set(store.video_ids)  # a/0001 and b/0001 both kept
    for vid, rel in want.items():
        info = store.info(vid)
        assert info["source"] == str((root / rel).resolve())  # the original path, as given
        assert info["label"] == rel.split("/")[0] and info["n_frames"] == 3
        assert store.read_flow(vid).shape == (2, 256, 320, 2)
    # the generated manifest is a plain manifest; a rerun regenerates it and skips every video
    manifest = tmp_path / "out" / "my_vids.run" / "input" / "manifest.csv"
    rows, errors = parse_manifest(manifest)
    assert errors == [] and len(rows) == 4
    rc, out, _ = _run(["run", str(root), "--no-progress", "--backend", "opencv"], capsys)
    assert rc == 0 and "4 skipped" in out
    # another folder of the same name is not mixed into this store
    other = tmp_path / "elsewhere" / "my vids"
    _clip(other / "x.mp4")
    rc, _, err = _run(["run", str(other), "--no-progress"], capsys)
    assert rc == 2 and "was built from videos under" in err and "--out" in err and len(err.strip().splitlines()) == 1


def test_run_one_video(tmp_path, monkeypatch, capsys):
    video = _clip(tmp_path / "Ünï clip.mp4", Motion(dx=3.0, dy=1.0), n=4)
    monkeypatch.chdir(tmp_path)
    rc, out, err = _run(["run", str(video), "--no-progress", "--backend", "opencv", "--split", "test"], capsys)
    assert rc == 0, err
    store = open_store(tmp_path / "out" / "Uni_clip.zarr")
    (vid,) = store.video_ids
    assert (
        vid == safe_video_id("Ünï clip.mp4") and store.info(vid)["split"] == "test" and store.info(vid)["label"] is None
    )
    flow_px = store.read_flow(vid) * 20
    assert flow_px.shape == (3, 256, 320, 2)
    assert np.allclose(flow_px[:, 16:-16, 16:-16].mean(axis=(0, 1, 2)), [3.0, 1.0], atol=0.3)


def test_things_that_are_not_recipes_get_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "binary.toml").write_bytes(b"\xa0\xff\x00")
    for target, needle in [
        ("notes.txt", "is not a recipe (a .toml file), a folder of videos or a video file"),
        ("binary.toml", "is not a recipe (not UTF-8 text"),
        ("nosuch", "unknown dataset 'nosuch'; known: demo, "),
        ("nosuch.toml", "recipe nosuch.toml not found"),
    ]:
        rc, _, err = _run(["run", target], capsys)
        assert rc == 2 and needle in err and len(err.strip().splitlines()) == 1, (target, err)
    rc, _, err = _run(["run", "demo", "--split", "val"], capsys)
    assert rc == 2 and "--split is for a folder" in err


def test_manifest_csv_quotes_odd_paths(tmp_path):
    root = tmp_path / "v"
    _touch(root / 'odd, "name".mp4')
    from flowprep.dataset.folder import manifest_text

    text = manifest_text(scan_folder(root))
    (rec,) = list(csv.DictReader(text.splitlines()))
    assert rec["path"].endswith('odd, "name".mp4') and rec["label"] == "" and check_video_id(rec["id"]) is None
    assert sys.getfilesystemencoding() == "utf-8"
