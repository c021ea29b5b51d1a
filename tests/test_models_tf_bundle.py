"""flowprep.models.tf_bundle on DeepMind's real index files (../shared/i3d_checkpoints) and its own."""

import struct

import numpy as np
import pytest
from tf_checkpoints import SHARED_CHECKPOINTS, shared_index

from flowprep.models import kinetics_i3d as K
from flowprep.models import tf_bundle as T

needs_shared = pytest.mark.skipif(
    not SHARED_CHECKPOINTS.is_dir(), reason=f"{SHARED_CHECKPOINTS} (DeepMind's checkpoint indexes) is absent"
)


def test_crc32c_and_masking():
    assert T.crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value
    assert T.crc32c(b"6789", T.crc32c(b"12345")) == 0xE3069283
    assert T.mask_crc(0) == 0xA282EAD8
    for crc in (0, 1, 0xE3069283, 0xFFFFFFFF):
        assert T.unmask_crc(T.mask_crc(crc)) == crc


@needs_shared
@pytest.mark.parametrize("ckpt", list(K.CHECKPOINTS.values()), ids=lambda c: c.folder)
def test_real_index_parses_and_rebuilds_byte_for_byte(ckpt):
    prefix = shared_index(ckpt.folder)
    header, entries = T.read_index(prefix)
    assert header == T.BundleHeader(num_shards=1, big_endian=False, version_producer=1)
    assert len(entries) == (346 if ckpt.num_classes == 600 else 230)
    assert {e.dtype_enum for e in entries.values()} == {1}  # float32 only
    assert all(n.startswith(ckpt.scope) for n in entries)
    spans = sorted((e.offset, e.size) for e in entries.values())
    assert spans[0][0] == 0 and all(
        a + s == b for (a, s), (b, _) in zip(spans, spans[1:], strict=False)
    )  # back to back
    assert sum(s for _, s in spans) == ckpt.data_size
    # the writer's table, fed the parsed records, is TensorFlow's file byte for byte
    records = [(b"", T.serialize_header(header))] + [(n.encode(), T.serialize_entry(e)) for n, e in entries.items()]
    assert T.build_table(records) == T.index_path(prefix).read_bytes()
    assert K.git_blob_id(T.index_path(prefix)) == ckpt.index_blob


def test_write_read_round_trip_of_several_dtypes(tmp_path):
    rng = np.random.default_rng(0)
    tensors = {
        "a/w": rng.standard_normal((3, 4, 5)).astype(np.float32),
        "a/b": np.arange(7, dtype=np.int64),
        "half": rng.standard_normal(9).astype(np.float16),
        "u8": np.arange(256, dtype=np.uint8).reshape(16, 16),
        "big-endian-in": np.arange(4, dtype=">i4"),
        "scalar": np.array(2.5, np.float64),
    }
    entries = T.write_bundle(tmp_path / "m.ckpt", tensors)
    assert list(entries) == sorted(tensors)
    back = T.read_bundle(tmp_path / "m.ckpt")
    assert back.keys() == tensors.keys()
    for name, a in tensors.items():
        assert back[name].dtype == a.dtype.newbyteorder("<") or back[name].dtype == a.dtype
        np.testing.assert_array_equal(back[name], a, err_msg=name)
    only = T.read_bundle(tmp_path / "m.ckpt", ["u8"])
    assert list(only) == ["u8"]


def test_table_of_many_blocks():
    records = [(f"key/{i:05d}".encode(), bytes([i % 251]) * (i % 97)) for i in range(3000)]
    data = T.build_table(records, block_size=4096)
    assert T.read_table(data) == records
    # more than one data block: the index block has several separators
    assert data.count(b"key/") < 3000


@pytest.fixture
def bundle(tmp_path):
    rng = np.random.default_rng(1)
    tensors = {f"layer{i}/w": rng.standard_normal((8, 16)).astype(np.float32) for i in range(4)}
    T.write_bundle(tmp_path / "model.ckpt", tensors)
    return tmp_path / "model.ckpt", T.read_index(tmp_path / "model.ckpt")[1]


def test_corrupt_tensor_is_named(bundle):
    prefix, entries = bundle
    data = T.data_path(prefix)
    raw = bytearray(data.read_bytes())
    raw[entries["layer2/w"].offset + 5] ^= 0x10
    data.write_bytes(bytes(raw))
    T.read_bundle(prefix, ["layer1/w", "layer3/w"])  # the others still read
    with pytest.raises(T.BundleError, match=r"tensor layer2/w fails its CRC32C check \(index 0x[0-9a-f]{8}, data 0x"):
        T.read_bundle(prefix)


def test_truncated_and_missing_data(bundle):
    prefix, entries = bundle
    data = T.data_path(prefix)
    raw = data.read_bytes()
    data.write_bytes(raw[:-10])
    with pytest.raises(T.BundleError, match=r"truncated: 2038 bytes, but tensor layer3/w lies at bytes 1536\.\.2048"):
        T.read_bundle(prefix)
    data.unlink()
    with pytest.raises(T.BundleError, match="data file not found"):
        T.read_bundle(prefix)


def test_missing_tensor_and_broken_index(bundle):
    prefix, _ = bundle
    with pytest.raises(T.BundleError, match=r"no tensor named 'layer9/w'"):
        T.read_bundle(prefix, ["layer0/w", "layer9/w"])
    index = T.index_path(prefix)
    raw = bytearray(index.read_bytes())
    raw[20] ^= 1  # inside the one data block
    index.write_bytes(bytes(raw))
    with pytest.raises(T.BundleError, match=r"block at 0 fails its CRC32C check"):
        T.read_index(prefix)
    index.write_bytes(bytes(raw[:-8]) + struct.pack("<Q", 1234))
    with pytest.raises(T.BundleError, match="not a TensorFlow checkpoint index"):
        T.read_index(prefix)
    index.write_bytes(b"short")
    with pytest.raises(T.BundleError, match="too short"):
        T.read_index(prefix)
