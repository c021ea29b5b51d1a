"""flowprep export / import rawframes: mmaction2 layout and lists, round trip through a store, bad folders."""

import cv2
import numpy as np
import pytest
from test_store_v2 import _bikes, _smooth_flow, _write

from flowprep import open_store
from flowprep.cli.main import main
from flowprep.store.rawframes import flow_q_to_u8, flow_u8_to_q
from flowprep.store.zarr_store import create_store


def test_flow_byte_mapping_is_denseflows_and_round_trips_every_step():
    q = np.arange(-127, 128, dtype=np.int8)
    v8 = flow_q_to_u8(q)
    assert (v8[0], v8[127], v8[-1]) == (0, 128, 255)  # -20 px, 0 px (127.5 rounds to 128), +20 px
    np.testing.assert_array_equal(flow_u8_to_q(v8), q)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    folder = tmp_path_factory.mktemp("raw")
    rgb = _bikes(6)
    flow = _smooth_flow(5, *rgb.shape[1:3])
    path = folder / "s.zarr"
    create_store(path, "t")
    _write(path, "bikes-a", rgb, flow)
    _write(path, "bikes-b", rgb[:4], flow[:3])
    return path


def test_export_writes_mmaction2_rawframes_and_lists(store, tmp_path, capsys):
    out = tmp_path / "rawframes"
    assert main(["export", "rawframes", str(store), str(out)]) == 0
    s = open_store(store)
    d = out / "bikes-a"
    assert sorted(p.name for p in d.glob("img_*.jpg")) == [f"img_{i:05d}.jpg" for i in range(1, 7)]
    assert len(list(d.glob("flow_x_*.jpg"))) == len(list(d.glob("flow_y_*.jpg"))) == 5
    img = cv2.cvtColor(cv2.imread(str(d / "img_00003.jpg")), cv2.COLOR_BGR2RGB)
    assert np.abs(img.astype(int) - s.read_rgb_uint8("bikes-a", 2, 3)[0]).mean() < 2
    fx = cv2.imread(str(d / "flow_x_00002.jpg"), cv2.IMREAD_GRAYSCALE)
    assert np.abs(fx.astype(int) - flow_q_to_u8(s.read_flow_int8("bikes-a", 1, 2)[0, ..., 0])).mean() < 1
    assert (out / "train_list_rawframes.txt").read_text() == "bikes-a 6 0\nbikes-b 4 0\n"
    assert (out / "train_list_rawframes_flow.txt").read_text() == "bikes-a 5 0\nbikes-b 3 0\n"
    assert (out / "classes.txt").read_text() == "a\n"
    assert main(["export", "rawframes", str(store), str(out)]) == 0  # rerun: complete folders kept
    assert "0 written, 2 already complete" in capsys.readouterr().out


def test_import_rawframes_round_trips_into_a_store(store, tmp_path, capsys):
    out = tmp_path / "rawframes"
    assert main(["export", "rawframes", str(store), str(out)]) == 0
    (out / "broken").mkdir()  # a folder with a gap in its numbering: reported, the others import
    for name in ("img_00001.jpg", "img_00003.jpg"):
        (out / "broken" / name).write_bytes((out / "bikes-a" / "img_00001.jpg").read_bytes())
    (out / "train_list_rawframes.txt").write_text("bikes-a 6 1\nbikes-b 4 0\nbroken 3 0\n")
    (out / "names.txt").write_text("walk\nride\n")
    back = tmp_path / "back.zarr"
    rc = main(
        [
            "import",
            "rawframes",
            str(out),
            str(back),
            "--list",
            str(out / "train_list_rawframes.txt"),
            "--classes",
            str(out / "names.txt"),
            "--split",
            "val",
        ]
    )
    captured = capsys.readouterr()
    assert rc == 1 and "2 imported" in captured.out and "broken" in captured.err and "without gaps" in captured.err
    s, b = open_store(store), open_store(back)
    assert b.video_ids == ["bikes-a", "bikes-b"]
    info = b.info("bikes-a")
    assert (info["label"], info["split"], info["n_frames"], info["n_flow"]) == ("ride", "val", 6, 5)
    assert b.meta["format_version"] == 2 and info["flow"]["bound_px"] == 20.0
    # RGB: JPEG twice (export, then the store's JPEG); flow: the JPEG images' values, a few steps off
    assert np.abs(b.read_rgb_uint8("bikes-a").astype(int) - s.read_rgb_uint8("bikes-a")).mean() < 2.5
    assert np.abs(b.read_flow_int8("bikes-a").astype(int) - s.read_flow_int8("bikes-a")).mean() < 1
    # an import is resumable: complete videos are skipped
    assert main(["import", "rawframes", str(out / "bikes-a"), str(back)]) == 0  # one video's own folder
    assert "1 already complete" in capsys.readouterr().out
    assert main(["import", "rawframes", str(tmp_path / "nothing"), str(back)]) == 2
    assert "no such folder" in capsys.readouterr().err
