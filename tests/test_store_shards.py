"""The store's direct shard reads (flowprep.store.shards): the same values as zarr-python for every
codec of the table and format 1's layout, windows and crops anywhere, damage named by its frames."""

import google_crc32c
import numpy as np
import pytest
import zarr
from numcodecs import Zstd
from zarr.codecs import BloscCodec, ZstdCodec

from flowprep import open_store
from flowprep.run.state import staging_entry
from flowprep.store import codecs, verify
from flowprep.store.shards import ShardReader
from flowprep.store.zarr_store import StoreError, VideoWriter, WriteConfig, create_store

T, H, W = 75, 40, 56  # 2 shards of 64 frames, the last chunk (72-79) partly past the end


def _values(kind: str, t: int = T) -> np.ndarray:
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:H, 0:W]
    if kind == "rgb":
        base = np.stack([xx * 4, yy * 6, xx + yy], -1)[None] + np.arange(t)[:, None, None, None]
        return (base % 256).astype(np.uint8)
    base = np.stack([np.sin(xx / 7) * 90, np.cos(yy / 5) * 60], -1)[None]
    return np.clip(base + rng.integers(-2, 3, (t, H, W, 2)), -127, 127).astype(np.int8)


def _store(tmp_path, cfg: WriteConfig):
    path = tmp_path / "s.zarr"
    create_store(path, "t")
    w = VideoWriter(path, "v", H, W, cfg, staging_entry(path, "", "v"))
    w.append(_values("rgb", T + 1), _values("flow"))
    w.commit({"label": "a", "split": "train", "fps": 25.0, "height": H, "width": W})
    return path


def _windows(n: int):
    """Windows (start, stop) of every kind: inside a chunk, across chunks and shards, past the end,
    negative, empty; crops (rows, columns) anywhere, the whole frame included."""
    rng = np.random.default_rng(0)
    fixed = [(0, None), (0, 8), (5, 6), (60, 70), (63, 64), (64, 75), (70, 200), (-10, None), (30, 20), (0, 0)]
    for a, b in fixed + [(int(a), int(a + rng.integers(1, 70))) for a in rng.integers(0, n, 20)]:
        y, x = int(rng.integers(0, H - 8)), int(rng.integers(0, W - 8))
        yield a, b, slice(y, y + int(rng.integers(1, H - y + 1))), slice(x, x + int(rng.integers(1, W - x + 1)))
    yield 3, 40, slice(None), slice(None)


@pytest.mark.parametrize("kind,name", list(codecs.CODECS))
def test_every_codec_reads_what_zarr_reads(tmp_path, kind, name):
    cfg = WriteConfig(**({"rgb_codec": name} if kind == "rgb" else {"flow_codec": name}))
    path = _store(tmp_path, cfg)
    s = open_store(path)
    arr = zarr.open_array(str(path / "videos" / "v" / kind), mode="r")
    layout = verify.ArrayLayout(path / "videos" / "v" / kind)
    assert ShardReader.open(layout) is not None  # every codec of the table is read directly
    read = s.read_rgb_uint8 if kind == "rgb" else s.read_flow_int8
    for a, b, ys, xs in _windows(arr.shape[0]):
        got, want = read("v", a, b, ys=ys, xs=xs), arr[a:b, ys, xs]
        assert got.dtype == want.dtype and got.shape == want.shape, (a, b, ys, xs)
        np.testing.assert_array_equal(got, want)
    if kind == "flow" and name == "zstd-near":  # and the values are the written ones on the 3-step grid
        np.testing.assert_array_equal(read("v"), codecs.near_lossless_thw2(_values("flow")))
    # a crop with a step is zarr's to read
    np.testing.assert_array_equal(read("v", 2, 30, ys=slice(0, H, 3), xs=slice(1, W, 2)), arr[2:30, ::3, 1::2])


def test_format1_arrays_without_checksums_and_with_missing_chunks_read_as_zarr_reads_them(tmp_path):
    """Format 1 skipped all-zero chunks: they read as zeros (the fill value), as zarr gives them."""
    flow = _values("flow")
    flow[8:16] = 0  # chunk 1 never written
    flow[64:] = 0  # shard 1 never written
    path = tmp_path / "old"
    arr = zarr.open_group(str(path), mode="w").create_array(
        "flow",
        shape=flow.shape,
        dtype="int8",
        chunks=(8, H, W, 2),
        shards=(64, H, W, 2),
        compressors=ZstdCodec(level=3),
        fill_value=0,
        chunk_key_encoding={"name": "default", "separator": "."},
    )
    arr[:] = flow
    layout = verify.ArrayLayout(path / "flow")
    assert not layout.strict and not layout.shard_file(1).exists()
    index, why = verify.shard_index(layout, 0)
    assert why is None and index is not None and (index[1] == verify.MISSING).all()
    reader = ShardReader.open(layout)
    assert reader is not None and not layout.strict
    for a, b, ys, xs in _windows(T):
        a, b, _ = slice(a, b).indices(T)
        np.testing.assert_array_equal(reader.read("v", "flow", a, max(a, b), ys, xs), flow[a:b, ys, xs])


def _flip_bytes_of_chunk(shard, c: int) -> None:
    data = bytearray(shard.read_bytes())
    index = np.frombuffer(bytes(data[-(16 * 8 + 4) : -4]), "<u8").reshape(8, 2)
    off, n = int(index[c, 0]), int(index[c, 1])
    data[off + n // 2 : off + n // 2 + 8] = bytes(255 - b for b in data[off + n // 2 : off + n // 2 + 8])
    shard.write_bytes(bytes(data))


def test_a_damaged_chunk_is_a_store_error_naming_its_frames(tmp_path):
    path = _store(tmp_path, WriteConfig())
    _flip_bytes_of_chunk(path / "videos" / "v" / "flow" / "c.0.0.0.0", 2)  # frames 16-23
    _flip_bytes_of_chunk(path / "videos" / "v" / "rgb" / "c.1.0.0.0", 0)  # frames 64-71
    s = open_store(path)
    with pytest.raises(StoreError, match=r"video 'v': rgb frames 64-71: chunk cannot be decoded .*crc32c checksum"):
        s.read_rgb_uint8("v", 60, 66)
    np.testing.assert_array_equal(s.read_flow_int8("v", 0, 16), codecs.near_lossless_thw2(_values("flow")[:16]))
    with pytest.raises(StoreError, match=r"video 'v': flow frames 16-23: chunk cannot be decoded .*flowprep verify"):
        s.read_flow_int8("v", 10, 30, ys=slice(0, 8), xs=slice(0, 8))
    (path / "videos" / "v" / "flow" / "c.1.0.0.0").unlink()
    with pytest.raises(StoreError, match=r"video 'v': flow frames 64-74: shard file c.1.0.0.0 is missing"):
        s.read_flow_int8("v", 60, 70)


def test_layouts_it_does_not_know_go_to_zarr(tmp_path):
    g = zarr.open_group(str(tmp_path / "g"), mode="w")
    kw = {"shape": (16, H, W, 2), "dtype": "int8", "chunks": (8, H, W, 2), "fill_value": 0}
    g.create_array("unsharded", **kw)
    g.create_array("blosc", shards=(16, H, W, 2), compressors=BloscCodec(), **kw)
    g.create_array("int16", **{**kw, "dtype": "int16"}, shards=(16, H, W, 2))
    g.create_array("tiles", **{**kw, "chunks": (8, H // 2, W, 2)}, shards=(16, H, W, 2))
    for name in ("unsharded", "blosc", "int16", "tiles"):
        assert ShardReader.open(verify.ArrayLayout(tmp_path / "g" / name)) is None, name


def test_a_short_zstd_chunk_is_damage_not_the_previous_chunks_values(tmp_path):
    """A chunk that decompresses to fewer bytes than a chunk holds (rewritten with a valid zstd frame of
    other data) fails; the reader's buffer still holds the chunk read before it."""
    path = _store(tmp_path, WriteConfig())
    shard = path / "videos" / "v" / "flow" / "c.0.0.0.0"
    data = bytearray(shard.read_bytes())
    index = np.frombuffer(bytes(data[-(16 * 8 + 4) : -4]), "<u8").reshape(8, 2).copy()
    short = Zstd(level=6, checksum=True).encode(np.zeros(100, np.int8).tobytes())
    off = int(index[1, 0])
    data[off : off + len(short)] = short  # chunk 1 (frames 8-15): a frame of 100 bytes in its place
    index[1, 1] = len(short)
    tail = index.tobytes()
    data[-(16 * 8 + 4) :] = tail + google_crc32c.value(tail).to_bytes(4, "little")
    shard.write_bytes(bytes(data))
    with pytest.raises(StoreError, match=r"flow frames 8-15: chunk cannot be decoded .*zstd frame of 100 bytes"):
        open_store(path).read_flow_int8("v", 0, 16)
