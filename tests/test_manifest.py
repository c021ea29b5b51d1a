"""Manifest parsing (flowprep.dataset.manifest): Kinetics and path columns, malformed rows reported
with line and column while the others are kept, hostile ids, and the real Kinetics files when present."""

import pytest
from conftest import SHARED_MANIFESTS

from flowprep.dataset.manifest import ManifestError, check_video_id, parse_manifest


def _write(tmp_path, text, name="m.csv"):
    p = tmp_path / name
    p.write_bytes(text.encode())
    return p


def test_kinetics_columns_and_quoted_labels(tmp_path):
    p = _write(
        tmp_path,
        'label,youtube_id,time_start,time_end,split,is_cc\n"playing cards, poker",0wR5jVB-WPk,417,427,val,0\nabseiling,3caPS4FHFF8,36.5,46,train,1\n',
    )
    rows, errors = parse_manifest(p)
    assert errors == []
    assert rows[0].label == "playing cards, poker" and rows[0].video_id == "0wR5jVB-WPk_000417_000427"
    assert (rows[0].time_start, rows[0].time_end, rows[0].split, rows[0].line) == (417.0, 427.0, "val", 2)
    assert rows[1].video_id == "3caPS4FHFF8_000036_000046" and rows[1].split == "train"


def test_malformed_rows_are_reported_with_line_and_column_and_others_kept(tmp_path):
    p = _write(
        tmp_path,
        (
            "label,youtube_id,time_start,time_end,split\n"
            "a,0wR5jVB-WPk,10,20,val\n"  # 2 ok
            "b,short,10,20,val\n"  # 3 bad id
            "c,3caPS4FHFF8,20,10,val\n"  # 4 end <= start
            "d,3caPS4FHFF8,1,2,holdout\n"  # 5 unknown split
            "e,3caPS4FHFF8,1\n"  # 6 missing column
            "f,3caPS4FHFF8,x,2,val\n"  # 7 not a number
            "g,abcdefghijk,1,2,val,extra\n"  # 8 too many fields
            "h,abcdefghijk,nan,2,val\n"  # 9 nan
            "i,0wR5jVB-WPk,10,20,val\n"  # 10 duplicate id
            "j,abcdefghijk,5,15,validate\n"  # 11 ok (alias)
        ),
    )
    rows, errors = parse_manifest(p)
    assert [r.line for r in rows] == [2, 11] and rows[1].split == "val"
    got = {e.line: (e.column, e.message) for e in errors}
    assert set(got) == {3, 4, 5, 6, 7, 8, 9, 10}
    assert got[3][0] == "youtube_id" and got[4][0] == "time_end" and "end 20 <= start" not in got[4][1]
    assert got[4][1] == "end 10 <= start 20"
    assert got[5][0] == "split" and "holdout" in got[5][1]
    assert got[6][0] == "time_end" and "missing" in got[6][1]
    assert got[7][0] == "time_start" and got[9][0] == "time_start"
    assert "fields" in got[8][1] and got[10][0] == "id" and "first on line 2" in got[10][1]
    assert str(errors[0]).startswith(f"{p}:3: column 'youtube_id'")


def test_path_rows_crlf_and_ids(tmp_path):
    p = _write(tmp_path, "path,label,split\r\nvids/v_Run_g01_c01.avi,Run,train\r\n/abs/../x y.mp4,Run,test\r\n")
    rows, errors = parse_manifest(p)
    assert rows[0].video_id == "v_Run_g01_c01" and rows[0].path == "vids/v_Run_g01_c01.avi"
    assert len(errors) == 1 and errors[0].column == "id" and "x y" in errors[0].message


def test_hostile_ids_and_labels(tmp_path):
    p = _write(
        tmp_path, 'id,path,label\n../../etc,a.mp4,x\n.hidden,a.mp4,x\nok,a.mp4,"bad\x01label"\nfine,a.mp4,../../etc\n'
    )
    rows, errors = parse_manifest(p)
    assert [r.video_id for r in rows] == ["fine"] and rows[0].label == "../../etc"  # labels never become paths
    assert [e.column for e in errors] == ["id", "id", "label"]
    assert check_video_id("a..b") is not None and check_video_id("v_x-1.2") is None


def test_whole_file_errors(tmp_path):
    with pytest.raises(ManifestError, match="not found"):
        parse_manifest(tmp_path / "nope.csv")
    with pytest.raises(ManifestError, match="unknown column"):
        parse_manifest(_write(tmp_path, "path,labl\na.mp4,x\n"))
    with pytest.raises(ManifestError, match="needs a 'path' or a 'youtube_id'"):
        parse_manifest(_write(tmp_path, "label,split\nx,val\n"))


@pytest.mark.parametrize(
    "name,n_rows", [("kinetics-400_val.csv", 19906), ("kinetics-400_test.csv", 38685), ("kinetics-600_val.csv", 30000)]
)
def test_real_kinetics_files(name, n_rows):
    path = SHARED_MANIFESTS / "kinetics" / name
    if not path.exists():
        pytest.skip(f"{path} not present (shared manifests are not part of the repository)")
    rows, errors = parse_manifest(path)
    assert errors == [] and len(rows) == n_rows
    assert len({r.video_id for r in rows}) == n_rows
    assert any(r.youtube_id.startswith("-") for r in rows)  # ids may start with '-': still valid
