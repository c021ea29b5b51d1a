"""TensorFlow tensor bundles (a ``tf.train.Saver`` V2 checkpoint) read and written without TensorFlow.

A checkpoint ``PREFIX`` is two kinds of file:

* ``PREFIX.index``: an SSTable (LevelDB's table format) mapping each variable name to a
  ``BundleEntryProto`` (dtype, shape, shard, offset, size, masked CRC32C of the bytes); the empty
  key holds the ``BundleHeaderProto`` (number of shards, endianness, format version);
* ``PREFIX.data-SSSSS-of-NNNNN``: the tensors' raw bytes, back to back, at the offsets the index
  gives.

Only what those files need is implemented, by hand: protobuf's wire format (varints,
length-delimited fields, fixed32), LevelDB blocks (prefix-compressed keys, restart points, the
5-byte trailer with compression type and masked CRC32C) and the 48-byte footer.  Every block and
every tensor is checked against its CRC32C before it is used; a check that fails is a
``BundleError`` naming the file and the tensor.

``write_bundle`` writes the same format the way TensorFlow's ``BundleWriter`` does (keys sorted,
tensors back to back in key order, restart interval 16, no compression), so that tests can make
real-format checkpoints; on the names and offsets of DeepMind's I3D checkpoints it rebuilds their
index files byte for byte.

Pure file I/O on the paths it is given; no network, no environment variables.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import struct
from collections.abc import Iterator, Mapping
from pathlib import Path

import google_crc32c
import numpy as np

from flowprep.atomic import write_atomic

TABLE_MAGIC = 0xDB4775248B80FB57  # LevelDB's table magic number, the last 8 bytes of an index
FOOTER_SIZE = 48  # two block handles padded to 40 bytes, then the magic
BLOCK_TRAILER_SIZE = 5  # compression type (1 byte) + masked CRC32C (4 bytes)
_CRC_MASK_DELTA = 0xA282EAD8

# TensorFlow DataType enum value -> numpy type (without byte order).  Strings, bfloat16 and
# the quantized and complex types are not needed for model weights and are refused by name.
DTYPES: Mapping[int, str] = {
    1: "f4",  # DT_FLOAT
    2: "f8",  # DT_DOUBLE
    3: "i4",  # DT_INT32
    4: "u1",  # DT_UINT8
    5: "i2",  # DT_INT16
    6: "i1",  # DT_INT8
    9: "i8",  # DT_INT64
    10: "b1",  # DT_BOOL
    17: "u2",  # DT_UINT16
    19: "f2",  # DT_HALF
    22: "u4",  # DT_UINT32
    23: "u8",  # DT_UINT64
}
_DTYPE_NAMES = {7: "string", 8: "complex64", 14: "bfloat16", 18: "complex128", 20: "resource", 21: "variant"}


class BundleError(ValueError):
    """A checkpoint file is malformed, truncated, corrupt (CRC mismatch) or lacks a tensor."""


# --- CRC32C ----------------------------------------------------------------------------------


def crc32c(data: bytes | bytearray | memoryview, crc: int = 0) -> int:
    """CRC-32C (Castagnoli) of ``data``, continuing from ``crc``; hardware-accelerated where it can be."""
    # the C extension takes read-only buffers only; one copy of a tensor costs far less than its CRC
    return google_crc32c.extend(crc, data if isinstance(data, bytes) else bytes(data))


def mask_crc(crc: int) -> int:
    """LevelDB's / TensorFlow's ``crc32c::Mask``: rotate right by 15 bits, add a constant.

    Stored CRCs are masked so that a CRC computed over data that itself holds CRCs stays strong.
    """
    return (((crc >> 15) | (crc << 17)) + _CRC_MASK_DELTA) & 0xFFFFFFFF


def unmask_crc(masked: int) -> int:
    rot = (masked - _CRC_MASK_DELTA) & 0xFFFFFFFF
    return ((rot >> 17) | (rot << 15)) & 0xFFFFFFFF


def masked_crc32c(data: bytes | bytearray | memoryview) -> int:
    return mask_crc(crc32c(data))


# --- protobuf wire format --------------------------------------------------------------------


def _varint(buf: bytes | memoryview, pos: int, what: str) -> tuple[int, int]:
    """(value, position after it) of the base-128 varint at ``pos``."""
    value = shift = 0
    while True:
        if pos >= len(buf):
            raise BundleError(f"{what}: varint runs past the end of its buffer")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise BundleError(f"{what}: varint longer than 10 bytes")


def _put_varint(out: bytearray, value: int) -> None:
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def _proto_fields(buf: bytes | memoryview, what: str) -> Iterator[tuple[int, int, int | bytes]]:
    """(field number, wire type, value) of each field of a serialized message, unknown ones too.

    Varints and fixed-width fields come as ints, length-delimited ones as bytes.
    """
    pos = 0
    while pos < len(buf):
        tag, pos = _varint(buf, pos, what)
        field, wire = tag >> 3, tag & 7
        value: int | bytes
        if wire == 0:
            value, pos = _varint(buf, pos, what)
        elif wire == 1:
            if pos + 8 > len(buf):
                raise BundleError(f"{what}: fixed64 field {field} runs past the end")
            value, pos = struct.unpack_from("<Q", buf, pos)[0], pos + 8
        elif wire == 2:
            n, pos = _varint(buf, pos, what)
            if pos + n > len(buf):
                raise BundleError(f"{what}: field {field} of {n} bytes runs past the end")
            value, pos = bytes(buf[pos : pos + n]), pos + n
        elif wire == 5:
            if pos + 4 > len(buf):
                raise BundleError(f"{what}: fixed32 field {field} runs past the end")
            value, pos = struct.unpack_from("<I", buf, pos)[0], pos + 4
        else:
            raise BundleError(f"{what}: unsupported protobuf wire type {wire} (field {field})")
        yield field, wire, value


def _put_field(out: bytearray, field: int, value: int | bytes, *, fixed32: bool = False) -> None:
    if isinstance(value, bytes):
        _put_varint(out, field << 3 | 2)
        _put_varint(out, len(value))
        out += value
    elif fixed32:
        _put_varint(out, field << 3 | 5)
        out += struct.pack("<I", value)
    else:
        _put_varint(out, field << 3 | 0)
        _put_varint(out, value)


# --- the bundle's messages -------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class BundleHeader:
    """``BundleHeaderProto``: the record under the empty key."""

    num_shards: int = 1
    big_endian: bool = False
    version_producer: int = 0


@dataclasses.dataclass(frozen=True)
class BundleEntry:
    """``BundleEntryProto``: where one tensor's bytes are and how to check them."""

    name: str
    dtype_enum: int
    shape: tuple[int, ...]
    shard_id: int
    offset: int
    size: int
    crc32c: int  # masked, as stored

    def numpy_dtype(self, big_endian: bool = False) -> np.dtype:
        if self.dtype_enum not in DTYPES:
            kind = _DTYPE_NAMES.get(self.dtype_enum, f"enum {self.dtype_enum}")
            raise BundleError(f"tensor {self.name}: TensorFlow dtype {kind} is not supported (numeric tensors only)")
        code = DTYPES[self.dtype_enum]
        return np.dtype(code if code in ("u1", "i1", "b1") else (">" if big_endian else "<") + code)


def parse_header(buf: bytes) -> BundleHeader:
    num_shards, big, producer = 0, False, 0
    for field, _, value in _proto_fields(buf, "BundleHeaderProto"):
        if field == 1:
            num_shards = int(value)  # type: ignore[arg-type]
        elif field == 2:
            big = value == 1
        elif field == 3:
            for f, _, v in _proto_fields(value, "VersionDef"):  # type: ignore[arg-type]
                if f == 1:
                    producer = int(v)  # type: ignore[arg-type]
    return BundleHeader(num_shards=num_shards, big_endian=big, version_producer=producer)


def _parse_shape(buf: bytes, what: str) -> tuple[int, ...]:
    dims: list[int] = []
    for field, _, value in _proto_fields(buf, what):
        if field == 2:  # repeated Dim
            size = 0
            for f, _, v in _proto_fields(value, what):  # type: ignore[arg-type]
                if f == 1:
                    size = int(v)  # type: ignore[arg-type]
            if size >= 1 << 63:
                raise BundleError(f"{what}: negative (unknown) dimension in a saved tensor")
            dims.append(size)
        elif field == 3 and value:
            raise BundleError(f"{what}: shape of unknown rank in a saved tensor")
    return tuple(dims)


def parse_entry(name: str, buf: bytes) -> BundleEntry:
    what = f"BundleEntryProto of {name!r}"
    shape: tuple[int, ...] = ()
    dtype, shard, offset, size, crc = 0, 0, 0, 0, None
    for field, _, value in _proto_fields(buf, what):
        if field == 1:
            dtype = int(value)  # type: ignore[arg-type]
        elif field == 2:
            shape = _parse_shape(value, what)  # type: ignore[arg-type]
        elif field == 3:
            shard = int(value)  # type: ignore[arg-type]
        elif field == 4:
            offset = int(value)  # type: ignore[arg-type]
        elif field == 5:
            size = int(value)  # type: ignore[arg-type]
        elif field == 6:
            crc = int(value)  # type: ignore[arg-type]
        elif field == 7:
            raise BundleError(f"tensor {name}: a partitioned (sliced) variable; not supported")
    if crc is None:
        raise BundleError(f"tensor {name}: its index entry has no crc32c")
    return BundleEntry(name, dtype, shape, shard, offset, size, crc)


def serialize_header(header: BundleHeader) -> bytes:
    out = bytearray()
    if header.num_shards:
        _put_field(out, 1, header.num_shards)
    if header.big_endian:
        _put_field(out, 2, 1)
    version = bytearray()
    if header.version_producer:
        _put_field(version, 1, header.version_producer)
    _put_field(out, 3, bytes(version))
    return bytes(out)


def serialize_entry(entry: BundleEntry) -> bytes:
    """Proto3 serialisation in field order, zero values left out (as TensorFlow writes it)."""
    out = bytearray()
    if entry.dtype_enum:
        _put_field(out, 1, entry.dtype_enum)
    shape = bytearray()
    for d in entry.shape:
        dim = bytearray()
        if d:
            _put_field(dim, 1, d)
        _put_field(shape, 2, bytes(dim))
    _put_field(out, 2, bytes(shape))
    for field, value in ((3, entry.shard_id), (4, entry.offset), (5, entry.size)):
        if value:
            _put_field(out, field, value)
    _put_field(out, 6, entry.crc32c, fixed32=True)
    return bytes(out)


# --- LevelDB table ---------------------------------------------------------------------------


def _block_handle(buf: bytes | memoryview, pos: int, what: str) -> tuple[int, int, int]:
    offset, pos = _varint(buf, pos, what)
    size, pos = _varint(buf, pos, what)
    return offset, size, pos


def _read_block(table: bytes, offset: int, size: int, where: str) -> memoryview:
    """A block's contents after checking its trailer (uncompressed, CRC32C)."""
    end = offset + size + BLOCK_TRAILER_SIZE
    if end > len(table):
        raise BundleError(
            f"{where}: block at {offset} (+{size} bytes) runs past the end of the file ({len(table)} bytes)"
        )
    view = memoryview(table)
    contents, ctype = view[offset : offset + size], table[offset + size]
    stored = struct.unpack_from("<I", table, offset + size + 1)[0]
    actual = mask_crc(crc32c(view[offset : offset + size + 1]))
    if stored != actual:
        raise BundleError(
            f"{where}: block at {offset} fails its CRC32C check (stored {stored:#010x}, computed {actual:#010x})"
        )
    if ctype != 0:
        kind = {1: "snappy", 2: "zlib"}.get(ctype, f"type {ctype}")
        raise BundleError(f"{where}: block at {offset} is {kind}-compressed; only uncompressed tables are supported")
    return contents


def _block_entries(block: memoryview, where: str) -> Iterator[tuple[bytes, memoryview]]:
    """(key, value) of each entry: keys are prefix-compressed against the previous one."""
    if len(block) < 4:
        raise BundleError(f"{where}: block of {len(block)} bytes has no restart array")
    num_restarts = struct.unpack_from("<I", block, len(block) - 4)[0]
    end = len(block) - 4 - 4 * num_restarts
    if num_restarts < 1 or end < 0:
        raise BundleError(f"{where}: block claims {num_restarts} restart points, more than fit in {len(block)} bytes")
    restarts = set(struct.unpack_from(f"<{num_restarts}I", block, end))
    pos, key = 0, b""
    while pos < end:
        at = pos
        shared, pos = _varint(block, pos, where)
        non_shared, pos = _varint(block, pos, where)
        value_len, pos = _varint(block, pos, where)
        if shared > len(key) or (at in restarts and shared != 0):
            raise BundleError(f"{where}: entry at {at} shares {shared} bytes with a key of {len(key)}")
        if pos + non_shared + value_len > end:
            raise BundleError(f"{where}: entry at {at} runs past the entries")
        key = key[:shared] + bytes(block[pos : pos + non_shared])
        pos += non_shared
        yield key, block[pos : pos + value_len]
        pos += value_len


def read_table(data: bytes, where: str = "table") -> list[tuple[bytes, bytes]]:
    """All (key, value) records of an SSTable held in ``data``, in key order."""
    if len(data) < FOOTER_SIZE:
        raise BundleError(f"{where}: {len(data)} bytes, too short for a table footer ({FOOTER_SIZE})")
    footer = memoryview(data)[len(data) - FOOTER_SIZE :]
    magic = struct.unpack_from("<Q", footer, FOOTER_SIZE - 8)[0]
    if magic != TABLE_MAGIC:
        raise BundleError(
            f"{where}: not a TensorFlow checkpoint index (table magic {magic:#018x}, expected {TABLE_MAGIC:#018x})"
        )
    _, _, pos = _block_handle(footer, 0, where)  # the metaindex: no filters in a bundle
    index_offset, index_size, _ = _block_handle(footer, pos, where)
    records: list[tuple[bytes, bytes]] = []
    for _, handle in _block_entries(_read_block(data, index_offset, index_size, where), where):
        offset, size, _ = _block_handle(handle, 0, where)
        for key, value in _block_entries(_read_block(data, offset, size, where), where):
            if records and key <= records[-1][0]:
                raise BundleError(f"{where}: keys out of order ({records[-1][0]!r} then {key!r})")
            records.append((key, bytes(value)))
    return records


def _short_successor(key: bytes) -> bytes:
    for i, b in enumerate(key):
        if b != 0xFF:
            return key[:i] + bytes([b + 1])
    return key


def _shortest_separator(start: bytes, limit: bytes) -> bytes:
    n = min(len(start), len(limit))
    i = 0
    while i < n and start[i] == limit[i]:
        i += 1
    if i < n and start[i] < 0xFF and start[i] + 1 < limit[i]:
        return start[:i] + bytes([start[i] + 1])
    return start


class _BlockBuilder:
    def __init__(self, restart_interval: int) -> None:
        self.interval = restart_interval
        self.buf = bytearray()
        self.restarts = [0]
        self.counter = 0
        self.last = b""

    def add(self, key: bytes, value: bytes) -> None:
        shared = 0
        if self.counter < self.interval:
            n = min(len(self.last), len(key))
            while shared < n and self.last[shared] == key[shared]:
                shared += 1
        else:
            self.restarts.append(len(self.buf))
            self.counter = 0
        _put_varint(self.buf, shared)
        _put_varint(self.buf, len(key) - shared)
        _put_varint(self.buf, len(value))
        self.buf += key[shared:] + value
        self.last = key
        self.counter += 1

    def size_estimate(self) -> int:
        return len(self.buf) + 4 * len(self.restarts) + 4

    def finish(self) -> bytes:
        return (
            bytes(self.buf)
            + struct.pack(f"<{len(self.restarts)}I", *self.restarts)
            + struct.pack("<I", len(self.restarts))
        )

    def empty(self) -> bool:
        return not self.buf


def build_table(records: list[tuple[bytes, bytes]], *, block_size: int = 262144, restart_interval: int = 16) -> bytes:
    """An uncompressed SSTable of ``records`` (sorted by key), as LevelDB's TableBuilder writes it.

    Defaults are TensorFlow's ``table::Options``; the index block restarts at every entry.
    """
    out = bytearray()

    def write_block(contents: bytes) -> bytes:
        handle = bytearray()
        _put_varint(handle, len(out))
        _put_varint(handle, len(contents))
        trailer = b"\x00" + struct.pack("<I", mask_crc(crc32c(contents + b"\x00")))
        out.extend(contents + trailer)
        return bytes(handle)

    data, index = _BlockBuilder(restart_interval), _BlockBuilder(1)
    pending: bytes | None = None  # handle of a flushed block, indexed when the next key comes
    last = b""
    for key, value in records:
        if pending is not None:
            index.add(_shortest_separator(last, key), pending)
            pending = None
        data.add(key, value)
        last = key
        if data.size_estimate() >= block_size:
            pending = write_block(data.finish())
            data = _BlockBuilder(restart_interval)
    if not data.empty():
        pending = write_block(data.finish())
    meta_handle = write_block(_BlockBuilder(restart_interval).finish())
    if pending is not None:
        index.add(_short_successor(last), pending)
    index_handle = write_block(index.finish())
    footer = meta_handle + index_handle
    out += footer + b"\x00" * (FOOTER_SIZE - 8 - len(footer)) + struct.pack("<Q", TABLE_MAGIC)
    return bytes(out)


# --- the bundle ------------------------------------------------------------------------------


def index_path(prefix: str | os.PathLike[str]) -> Path:
    return Path(f"{os.fspath(prefix)}.index")


def data_path(prefix: str | os.PathLike[str], shard: int = 0, num_shards: int = 1) -> Path:
    return Path(f"{os.fspath(prefix)}.data-{shard:05d}-of-{num_shards:05d}")


def read_index(prefix: str | os.PathLike[str]) -> tuple[BundleHeader, dict[str, BundleEntry]]:
    """The header and the entries (by variable name, sorted) of ``PREFIX.index``."""
    path = index_path(prefix)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise BundleError(f"{path}: no such checkpoint index") from None
    records = read_table(data, str(path))
    if not records or records[0][0] != b"":
        raise BundleError(f"{path}: no bundle header (the record under the empty key)")
    header = parse_header(records[0][1])
    if header.num_shards < 1:
        raise BundleError(f"{path}: header says {header.num_shards} shards")
    entries: dict[str, BundleEntry] = {}
    for key, value in records[1:]:
        name = key.decode("utf-8")
        entry = parse_entry(name, value)
        if entry.shard_id >= header.num_shards:
            raise BundleError(f"{path}: tensor {name} is in shard {entry.shard_id} of {header.num_shards}")
        entries[name] = entry
    return header, entries


def read_bundle(prefix: str | os.PathLike[str], names: list[str] | None = None) -> dict[str, np.ndarray]:
    """The tensors of checkpoint ``prefix`` (all, or ``names``), each checked against its CRC32C.

    Raises ``BundleError`` when a name is not in the index, a data file is missing or shorter
    than the index says, or a tensor's bytes do not match their CRC32C.
    """
    header, entries = read_index(prefix)
    if names is None:
        names = list(entries)
    missing = [n for n in names if n not in entries]
    if missing:
        raise BundleError(
            f"{index_path(prefix)}: no tensor named {missing[0]!r} ({len(missing)} missing; the index has {len(entries)})"
        )
    out: dict[str, np.ndarray] = {}
    with contextlib.ExitStack() as stack:  # data files stay open until every tensor is read
        files: dict[int, tuple[Path, io.BufferedReader]] = {}
        for name in names:
            entry = entries[name]
            if entry.shard_id not in files:
                path = data_path(prefix, entry.shard_id, header.num_shards)
                try:
                    files[entry.shard_id] = (path, stack.enter_context(open(path, "rb")))
                except FileNotFoundError:
                    raise BundleError(
                        f"{path}: data file not found (the index {index_path(prefix)} needs it)"
                    ) from None
            path, f = files[entry.shard_id]
            out[name] = _read_tensor(f, path, name, entry, header.big_endian)
    return out


def _read_tensor(f: io.BufferedReader, path: Path, name: str, entry: BundleEntry, big_endian: bool) -> np.ndarray:
    """One tensor from its data file, checked: inside the file, as many bytes as its shape needs,
    and its CRC32C."""
    file_size = os.fstat(f.fileno()).st_size
    if entry.offset + entry.size > file_size:
        raise BundleError(
            f"{path}: truncated: {file_size} bytes, but tensor {name} lies at bytes "
            f"{entry.offset}..{entry.offset + entry.size} (download the file again)"
        )
    dtype = entry.numpy_dtype(big_endian)
    count = int(np.prod(entry.shape, dtype=np.int64))
    if count * dtype.itemsize != entry.size:
        raise BundleError(f"tensor {name}: {entry.size} bytes do not hold {entry.shape} of {dtype}")
    f.seek(entry.offset)
    raw = bytearray(entry.size)  # writable, so torch.from_numpy may share it
    if f.readinto(raw) != entry.size:
        raise BundleError(f"{path}: short read of tensor {name} (the file changed while read?)")
    actual = masked_crc32c(raw)
    if actual != entry.crc32c:
        raise BundleError(
            f"{path}: tensor {name} fails its CRC32C check (index {entry.crc32c:#010x}, data "
            f"{actual:#010x}): the file is corrupt or belongs to another checkpoint"
        )
    return np.frombuffer(raw, dtype).reshape(entry.shape)


_NUMPY_TO_ENUM = {np.dtype(v).str.lstrip("<>|"): k for k, v in DTYPES.items()}


def write_bundle(prefix: str | os.PathLike[str], tensors: Mapping[str, np.ndarray]) -> dict[str, BundleEntry]:
    """Write ``tensors`` as a one-shard little-endian bundle (``PREFIX.index`` + data file).

    Both files are written to temporary names and renamed, data first.  Returns the entries.
    """
    entries: dict[str, BundleEntry] = {}
    blobs: list[bytes] = []
    offset = 0
    for name in sorted(tensors, key=lambda n: n.encode("utf-8")):
        if not name:
            raise BundleError("a tensor name cannot be empty (the empty key holds the header)")
        a = np.asarray(tensors[name])
        code = a.dtype.newbyteorder("<").str.lstrip("<>|") if a.dtype.itemsize > 1 else a.dtype.str.lstrip("<>|")
        if code not in _NUMPY_TO_ENUM:
            raise BundleError(f"tensor {name}: numpy dtype {a.dtype} has no TensorFlow dtype here")
        raw = np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<")).tobytes()
        entries[name] = BundleEntry(name, _NUMPY_TO_ENUM[code], tuple(a.shape), 0, offset, len(raw), masked_crc32c(raw))
        blobs.append(raw)
        offset += len(raw)
    records = [(b"", serialize_header(BundleHeader(num_shards=1, version_producer=1)))]
    records += [(n.encode("utf-8"), serialize_entry(e)) for n, e in entries.items()]
    _atomic_write(data_path(prefix), b"".join(blobs))
    _atomic_write(index_path(prefix), build_table(records))
    return entries


def _atomic_write(path: Path, data: bytes) -> None:
    write_atomic(path, lambda f: f.write(data))
