"""Dataset manifests: official files (real ones from ../shared/manifests when present), samples, CLI."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from flowprep.cli.main import main
from flowprep.dataset import manifests as m
from flowprep.dataset.manifest import ManifestError, parse_manifest

SHARED = Path(os.environ.get("FLOWPREP_SHARED_MANIFESTS", Path(__file__).resolve().parents[2] / "shared" / "manifests"))
SAMPLES = Path(__file__).resolve().parents[1] / "pipelines" / "samples"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"real annotation files not at {SHARED}")


@needs_shared
@pytest.mark.parametrize(
    "name, n_rows, labelled",
    [
        ("kinetics-400_val.csv", 19906, True),
        ("kinetics-400_test.csv", 38685, False),
        ("kinetics-600_val.csv", 30000, True),
    ],
)
def test_real_kinetics_csvs(name, n_rows, labelled):
    path = SHARED / "kinetics" / name
    assert m.csv_rows(path) == n_rows
    rows, errors = parse_manifest(path)
    # Ids that start with '-' are refused by this branch's check_video_id (main is relaxing it);
    # every row is accounted for either way, and no other error occurs.
    assert len(rows) + len(errors) == n_rows
    assert all("bad video id" in e.message and "'-" in e.message for e in errors)
    assert all(r.youtube_id and r.time_end - r.time_start > 0 for r in rows)
    assert all((r.label is not None) == labelled for r in rows)
    if labelled:
        assert len({r.label for r in rows}) == int(name.split("-")[1][:3])


@needs_shared
def test_real_ucf101_and_hmdb51_splits():
    entries = m.ucf101_entries(SHARED / "ucf101", 1)
    train = [e for e in entries if e.split == "train"]
    assert (len(train), len(entries) - len(train)) == (9537, 3783)
    assert train[0] == m.Entry("ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi", "ApplyEyeMakeup", "train")
    assert len({e.label for e in entries}) == 101
    for k in (1, 2, 3):
        h = m.hmdb51_entries(SHARED / "hmdb51", k)
        counts = {s: sum(e.split == s for e in h) for s in ("train", "test", "unused")}
        assert counts == {"train": 3570, "test": 1530, "unused": 1666}
        assert len({e.label for e in h}) == 51
    ids = [m.video_id_for(e.rel_path) for e in m.hmdb51_entries(SHARED / "hmdb51", 1)]
    assert len(set(ids)) == len(ids)  # odd names ('!', '[', '#', '&') still give distinct safe ids


@needs_shared
def test_fetch_from_a_folder_checks_counts_and_records_sums(tmp_path):
    report = m.fetch_official("kinetics", tmp_path, source=SHARED / "kinetics")
    assert "2 official file(s) checked" in report and "missing: train.csv" in report
    assert sorted(p.name for p in (tmp_path / "kinetics400").iterdir()) == ["SHA256SUMS", "test.csv", "validate.csv"]
    sums = (tmp_path / "kinetics400" / "SHA256SUMS").read_text().splitlines()
    assert len(sums) == 2 and all(len(ln.split()[0]) == 64 for ln in sums)
    # a changed file is noticed on the next fetch
    (tmp_path / "k").mkdir()
    bad = (
        (SHARED / "kinetics" / "kinetics-400_val.csv")
        .read_text()
        .replace("abseiling,0wR5jVB-WPk", "abseiling,0wR5jVB-WPX", 1)
    )
    (tmp_path / "k" / "validate.csv").write_text(bad)
    with pytest.raises(m.FetchManifestError, match="validate.csv differ from the sha256"):
        m.fetch_official("kinetics400", tmp_path, source=tmp_path / "k")
    # wrong row count is refused
    (tmp_path / "k" / "validate.csv").write_text("label,youtube_id,time_start,time_end,split\nx,abcdefghijk,0,10,val\n")
    with pytest.raises(m.FetchManifestError, match="1 rows, expected 19906"):
        m.fetch_official("kinetics400", tmp_path / "other", source=tmp_path / "k")


def test_network_failure_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(
        m.DATASETS, "ucf101", m.Dataset("ucf101", "http://127.0.0.1:9/splits.zip", m.DATASETS["ucf101"].files)
    )
    with pytest.raises(m.FetchManifestError, match=r"cannot download http://127.0.0.1:9/splits.zip: .*--from FILE"):
        m.fetch_official("ucf101", tmp_path, timeout=2)


def test_kinetics_samples_quoted_labels_and_bad_rows():
    rows, errors = parse_manifest(SAMPLES / "kinetics_quoted.csv")
    assert [r.label for r in rows] == ["air drumming", "passing American football (in game)", "abseiling"]
    assert rows[1].video_id == "Zyxwvut_-12_000003_000013" and rows[1].time_start == 3.5
    assert errors == []
    rows, errors = parse_manifest(SAMPLES / "kinetics_test_edge.csv")
    assert [r.video_id for r in rows] == ["abcdefghijk_000000_000010"]
    assert [(e.line, e.column) for e in errors] == [(3, "youtube_id"), (4, "time_end"), (5, "split")]


def test_ucf_and_hmdb_samples_crlf_codes_and_trailing_spaces():
    ucf = m.ucf101_entries(SAMPLES / "ucf101", 1)
    assert ucf == [
        m.Entry("ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi", "ApplyEyeMakeup", "train"),
        m.Entry("Archery/v_Archery_g08_c02.avi", "Archery", "train"),
        m.Entry("ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi", "ApplyEyeMakeup", "test"),
        m.Entry("Archery/v_Archery_g01_c01.avi", "Archery", "test"),
    ]
    hmdb = m.hmdb51_entries(SAMPLES / "hmdb51", 1)
    assert [(e.label, e.split) for e in hmdb] == [
        ("brush_hair", "train"),
        ("brush_hair", "test"),
        ("brush_hair", "unused"),
        ("wave", "test"),
        ("wave", "train"),
    ]
    assert (
        hmdb[1].rel_path == "brush_hair/Brushing_Her_Hair__[_NEW_AUDIO_]_UPDATED!!!!_brush_hair_h_cm_np1_fr_goo_0.avi"
    )
    assert m.video_id_for(hmdb[0].rel_path) == "April_09_brush_hair_u_nm_np1_ba_goo_0"
    assert (
        m.video_id_for(hmdb[1].rel_path)
        == "Brushing_Her_Hair____NEW_AUDIO___UPDATED_____brush_hair_h_cm_np1_fr_goo_0-d39575e2"
    )
    assert m.video_id_for(hmdb[2].rel_path).startswith("122_Cleaning_brush_hair_f_nm_np1_fr_bad_0-")
    with pytest.raises(ValueError):
        m.hmdb51_entries(SAMPLES / "hmdb51", 4)


def test_hostile_split_lines_are_refused(tmp_path):
    (tmp_path / "classInd.txt").write_text("1 ApplyEyeMakeup\n")
    (tmp_path / "trainlist01.txt").write_text("../../etc/passwd 1\n")
    (tmp_path / "testlist01.txt").write_text("")
    with pytest.raises(ManifestError, match="unsafe path"):
        m.ucf101_entries(tmp_path, 1)
    (tmp_path / "trainlist01.txt").write_text("Other/v_x.avi 1\n")
    with pytest.raises(ManifestError, match="class 'ApplyEyeMakeup' .* but folder 'Other'"):
        m.ucf101_entries(tmp_path, 1)
    (tmp_path / "trainlist01.txt").write_text("ApplyEyeMakeup/v_x.avi 7\n")
    with pytest.raises(ManifestError, match="class index '7' not in classInd"):
        m.ucf101_entries(tmp_path, 1)
    (tmp_path / "x_test_split1.txt").write_text("a.avi 5\n")
    with pytest.raises(ManifestError, match=r"x_test_split1.txt:1: expected"):
        m.hmdb51_entries(tmp_path, 1)


def test_generic_local_form_keeps_hostile_labels_as_text():
    rows, errors = parse_manifest(SAMPLES / "local_generic.csv")
    assert errors == [] and [r.label for r in rows] == ["class, with comma", "../../etc"]
    assert [r.video_id for r in rows] == ["a", "b"]


def test_build_ucf101_manifest_from_a_local_root(tmp_path, capsys):
    dm = tmp_path / "dm"
    (dm / "ucf101").mkdir(parents=True)
    for f in (SAMPLES / "ucf101").iterdir():
        (dm / "ucf101" / f.name).write_bytes(f.read_bytes())
    root = tmp_path / "UCF-101"
    (root / "Archery").mkdir(parents=True)
    (root / "Archery" / "v_Archery_g01_c01.avi").write_bytes(b"x")
    assert main(["manifests", "build", "ucf101", "--root", str(root), "--dir", str(dm)]) == 0
    assert "4 rows (split 1, train + test); 3 file(s) not found" in capsys.readouterr().out
    rows, errors = parse_manifest(dm / "ucf101" / "ucf101_split1.csv")
    assert errors == [] and len(rows) == 4
    assert rows[3].path == str(root.resolve() / "Archery" / "v_Archery_g01_c01.avi") and rows[3].split == "test"


def test_recipes_load_and_missing_manifest_says_what_to_run(tmp_path):
    from flowprep.cli.recipes import RECIPES_DIR
    from flowprep.run.recipe import load_recipe

    for name in ("kinetics400", "kinetics600", "kinetics700", "kinetics700-2020", "ucf101", "hmdb51"):
        cfg = load_recipe(RECIPES_DIR / f"{name}.toml")
        assert cfg.manifest.parent.name == name and cfg.manifest.parent.parent == m.DATA_MANIFESTS  # data:<name>/...
        assert (cfg.fetch is not None) == name.startswith("kinetics")
    # a shipped recipe whose manifest has not been fetched yet fails with the command to run
    out = subprocess.run(
        [sys.executable, "-m", "flowprep", "run", "kinetics", "--out", str(tmp_path / "k.zarr")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=False,
        env={**os.environ, "FLOWPREP_DATA": str(tmp_path / "data")},
    )
    assert out.returncode == 2
    assert "validate.csv not found: run `flowprep manifests fetch kinetics400` first" in out.stderr
