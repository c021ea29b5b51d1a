"""The codec table (flowprep.store.codecs): every row round-trips through a real zarr array within
its promise, records what it says, and the default flow codec reads without flowprep."""

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import zarr

from flowprep import open_store
from flowprep.run.state import staging_entry
from flowprep.store import codecs
from flowprep.store.zarr_store import VideoWriter, WriteConfig, create_store


def _values(kind: str, shape=(10, 24, 40)) -> np.ndarray:
    """Smooth values with every extreme: RGB 0 and 255, flow -128 (representable, never written) and 127."""
    rng = np.random.default_rng(1)
    t, h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    if kind == "rgb":
        base = np.stack([xx * 6, yy * 10, (xx + yy) * 4], -1) % 256
        x = np.clip(base[None] + rng.integers(-3, 4, (t, h, w, 3)), 0, 255).astype(np.uint8)
        x[0, 0, 0], x[-1, -1, -1] = 0, 255
    else:
        base = np.stack([np.sin(xx / 7) * 90, np.cos(yy / 5) * 60], -1)
        x = np.clip(base[None] + rng.integers(-2, 3, (t, h, w, 2)), -127, 127).astype(np.int8)
        x[0, 0, 0], x[-1, -1, -1] = (-128, 127), (127, -128)
    return x


@pytest.mark.parametrize("kind,name", list(codecs.CODECS))
def test_every_codec_round_trips_within_its_promise(tmp_path, kind, name):
    codec = codecs.lookup(kind, name)
    x = _values(kind)
    a = zarr.open_group(str(tmp_path / "g.zarr"), mode="w").create_array(
        kind,
        shape=x.shape,
        dtype=x.dtype,
        chunks=(4, *x.shape[1:]),
        shards=(8, *x.shape[1:]),
        **codec.arrays(95, 3),
        fill_value=0,
    )
    a[:] = codec.prepare(x)
    got = a[:].astype(int)
    if codec.exact:
        np.testing.assert_array_equal(got, x)
    elif kind == "flow":
        assert np.abs(got - x).max() == codec.max_error == 1
    else:  # lossy RGB at quality 95: close, not equal
        assert 0 < np.abs(got - x).mean() < 3
    np.testing.assert_array_equal(a[2:7, 3:20, 5:33], got[2:7, 3:20, 5:33])
    rec = codec.record(quality=95)
    assert rec["name"] == name and rec["exact"] == codec.exact
    assert set(rec) - {"name", "exact", "max_error_steps"} == set(codec.settings)
    if "zstd_level" in codec.settings:  # unset: the codec's own level; set: the recipe's
        assert (rec["zstd_level"], codec.record(quality=95, zstd_level=9)["zstd_level"]) == (codec.zstd_level, 9)
        assert codec.arrays(95)["compressors"].level == codec.zstd_level


def test_near_lossless_grid_over_every_int8_value():
    q = np.arange(-128, 128, dtype=np.int8).reshape(1, 16, 8, 2)
    near = codecs.near_lossless_thw2(q)
    assert near.dtype == np.int8 and np.abs(near.astype(int) - q).max() == 1
    inner = np.abs(q.astype(int)) < 127  # the grid, except the bound and -128, which stay exact
    assert set(np.unique(near[inner] % 3)) == {0}
    assert near[~inner].tolist() == q[~inner].tolist() and sorted(q[~inner].tolist()) == [-128, -127, 127]
    np.testing.assert_array_equal(codecs.near_lossless_thw2(near), near)  # a rewrite changes nothing


def test_table_names_and_errors():
    assert codecs.names("rgb") == ("jpeg", "jpegxl", "lossless")
    assert codecs.names("flow") == ("zstd-near", "ffv1", "zstd")
    assert (WriteConfig().rgb_codec, WriteConfig().flow_codec) == ("jpeg", "zstd-near")  # the defaults come first
    assert codecs.lookup("flow", "zstd-near").zstd_level == 6 and codecs.lookup("rgb", "lossless").zstd_level == 3
    with pytest.raises(ValueError, match=r"write.flow_codec='png': allowed: zstd-near, ffv1, zstd"):
        WriteConfig(flow_codec="png")
    # the rows zarr decodes on its own name no package; flowprep's codecs name flowprep
    assert {n: c.package for (k, n), c in codecs.CODECS.items() if k == "flow"} == {
        "zstd-near": None,
        "ffv1": "flowprep",
        "zstd": None,
    }


def _venv_without_flowprep(folder: Path) -> Path:
    """A fresh virtualenv (offline: no pip) that sees this environment's packages but not flowprep.

    Each installed distribution of this interpreter's site-packages is linked in except flowprep's
    own files (its package, editable-install hook and dist-info, whose zarr.codecs entry points
    would otherwise name its codecs)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True)
    site = Path(sysconfig.get_paths()["purelib"])
    target = Path(
        subprocess.run(
            [str(folder / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    for entry in site.iterdir():
        if entry.name.lower().startswith(("flowprep", "__editable__")) or entry.suffix == ".pth":
            continue
        (target / entry.name).symlink_to(entry)
    return folder / "bin" / "python"


@pytest.mark.slow
def test_a_default_store_opens_with_zarr_alone_in_a_fresh_virtualenv(tmp_path):
    """Flow (zarr's own codecs) reads with ``zarr.open`` and no flowprep; RGB (flowprep.jpeg) stops
    with one line that names the package to install."""
    rgb, flow = _values("rgb", (9, 24, 40)), _values("flow", (8, 24, 40))
    store = tmp_path / "s.zarr"
    create_store(store, "t")
    w = VideoWriter(store, "v", 24, 40, WriteConfig(), staging_entry(store, "", "v"))
    w.append(rgb, flow)
    w.commit({"label": "a", "split": "train", "fps": 25.0, "height": 24, "width": 40})
    python = _venv_without_flowprep(tmp_path / "venv")
    code = (
        "import importlib.util, sys, numpy as np, zarr\n"
        "assert importlib.util.find_spec('flowprep') is None, 'flowprep is importable'\n"
        "v = zarr.open_group(sys.argv[1], mode='r')\n"
        "np.save(sys.argv[2], v['flow'][:])\n"
        "v['rgb']\n"
    )
    out = subprocess.run(
        [str(python), "-c", code, str(store / "videos" / "v"), str(tmp_path / "f.npy")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    np.testing.assert_array_equal(np.load(tmp_path / "f.npy"), codecs.near_lossless_thw2(flow))
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1] == "zarr.errors.UnknownCodecError: Unknown codec: 'flowprep.jpeg'"
    # and the same store, RGB included, in this environment (flowprep installed)
    np.testing.assert_allclose(open_store(store).read_rgb_uint8("v"), rgb, atol=12)
    assert json.loads((store / "videos" / "v" / "flow" / "zarr.json").read_text())["zarr_format"] == 3
