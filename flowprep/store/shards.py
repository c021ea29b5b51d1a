"""Direct shard reads: the store reader's fast path, decoding a sharded array's chunks itself.

The room where the reader decodes inner chunks without zarr-python, for training's many small
window reads.  It follows the zarr v3 sharding layout the writer made (FORMAT.md): the shard's
chunk index (``verify.shard_index``, crc32c-checked), one ``pread`` per inner chunk, then the
chunk's own codecs as its zarr.json names them: zarr's ``[transpose] bytes [zstd]`` (zstd into
one reused buffer; zstd checks a chunk's content checksum where it has one), or flowprep's
frame codecs (``codecs.FRAME_CODECS``) after the ``crc32c`` check; only the window's rows and
columns are copied out, the ``transpose`` filter undone in that copy.  zarr-python reads the same window
through its codec pipeline, an asyncio task and a thread hop per chunk and codec, and copies
planar flow out pixel by pixel: several times the cost of decoding it (FORMAT.md, loader).

``ShardReader.open`` returns None for any other layout (an unsharded array, a codec or data
type not named here), and the store reads those through zarr.  Reads files only.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import google_crc32c  # zarr's own dependency for its crc32c codec
import imagecodecs
import numpy as np

from flowprep.store import verify
from flowprep.store.codecs import FRAME_CODECS
from flowprep.store.errors import StoreError

_DTYPES = ("int8", "uint8")  # one byte: the bytes codec's endianness does not matter

# one chunk's bytes -> its values, written into the chunk's buffer (in its stored axis order)
Decoder = Callable[[bytes, np.ndarray], None]


def _raw(data: bytes, buf: np.ndarray) -> None:
    if len(data) != buf.nbytes:
        raise ValueError(f"{len(data)} bytes for a chunk of {buf.nbytes}")
    buf.reshape(-1).view(np.uint8)[:] = np.frombuffer(data, np.uint8)


def _zstd(data: bytes, buf: np.ndarray) -> None:
    # imagecodecs returns the part of ``out`` it wrote (numcodecs' zstd does not say when a frame
    # is short: the rest of the buffer would keep the previous chunk's values)
    got = imagecodecs.zstd_decode(data, out=buf.reshape(-1).view(np.uint8).data)
    if len(got) != buf.nbytes:
        raise ValueError(f"zstd frame of {len(got)} bytes for a chunk of {buf.nbytes}")


def _frames(codec: dict[str, Any], checked: bool) -> Decoder:
    frames = FRAME_CODECS[codec["name"]].from_dict(codec)

    def decode(data: bytes, buf: np.ndarray) -> None:
        payload = np.frombuffer(data, np.uint8)  # google_crc32c takes arrays, not memoryviews
        if checked:  # zarr's crc32c codec: the payload's CRC-32C after it, 4 bytes little-endian
            payload, crc = payload[:-4], data[-4:]
            if len(crc) != 4 or google_crc32c.value(payload) != int.from_bytes(crc, "little"):
                raise ValueError("the chunk fails its crc32c checksum")
        frames.decode_chunk(payload.data, buf)

    return decode


def _pipeline(codecs: list[dict[str, Any]], ndim: int) -> tuple[tuple[int, ...], Decoder] | None:
    """``(order, decode)`` of a chunk's codecs: the axis order its bytes are in and how to decode
    them; None for a pipeline not handled here."""
    names = [str(c.get("name")) for c in codecs]
    if names and names[0] in FRAME_CODECS and names[1:] in ([], ["crc32c"]):
        try:
            return tuple(range(ndim)), _frames(codecs[0], checked=len(names) == 2)
        except (TypeError, ValueError):  # a configuration this flowprep does not know: zarr says why
            return None
    order: tuple[int, ...] = tuple(range(ndim))
    if names[:1] == ["transpose"]:
        order = tuple(int(i) for i in (codecs[0].get("configuration") or {}).get("order", ()))
        names = names[1:]
        if sorted(order) != list(range(ndim)):
            return None
    decode = {("bytes",): _raw, ("bytes", "zstd"): _zstd}.get(tuple(names))
    return None if decode is None else (order, decode)


class ShardReader:
    """Frames of one sharded array, decoded here (see the module docstring); ``open`` picks it or None."""

    def __init__(self, layout: verify.ArrayLayout, order: tuple[int, ...], decode: Decoder):
        self.layout = layout
        self.dtype = np.dtype(layout.dtype)
        self.order = order  # axis i of the stored chunk is axis order[i] of the array
        self.decode = decode
        self.stored_shape = tuple(layout.chunk_shape[i] for i in order)

    @classmethod
    def open(cls, layout: verify.ArrayLayout) -> ShardReader | None:
        # (T, H, W, C) in shards and chunks of whole frames, as the writer makes them (FORMAT.md)
        whole_frames = len(layout.shape) == 4 and layout.shard_shape[1:] == layout.chunk_shape[1:] == layout.shape[1:]
        if not (layout.sharded and layout.index_at_end and whole_frames and layout.dtype in _DTYPES):
            return None
        pipeline = _pipeline(layout.inner, len(layout.shape))
        return None if pipeline is None else cls(layout, *pipeline)

    def read(self, video_id: str, name: str, start: int, stop: int, ys: slice, xs: slice) -> np.ndarray | None:
        """Frames ``start:stop`` (in range, checked), rows ``ys``, columns ``xs`` as (T, y, x, C);
        None where a slice has a step (zarr reads it).  Damage is a StoreError naming the frames."""
        lay = self.layout
        (y0, y1, ystep), (x0, x1, xstep) = ys.indices(lay.shape[1]), xs.indices(lay.shape[2])
        if ystep != 1 or xstep != 1:
            return None
        out = np.empty((max(stop - start, 0), max(y1 - y0, 0), max(x1 - x0, 0), *lay.shape[3:]), self.dtype)
        if out.size:
            buf = np.empty(self.stored_shape, self.dtype)  # each chunk, decoded in place
            crop = buf.transpose(np.argsort(self.order))[:, y0:y1, x0:x1]  # the same memory in the array's order
            for s in range(start // lay.shard, (stop - 1) // lay.shard + 1):
                self._read_shard(f"video {video_id!r}: {name}", s, start, stop, out, buf, crop)
        return out

    def _read_shard(
        self, what: str, s: int, start: int, stop: int, out: np.ndarray, buf: np.ndarray, crop: np.ndarray
    ) -> None:
        """Frames ``start:stop`` of shard ``s`` into ``out`` (frame ``start`` at 0), each chunk
        decoded into ``buf``, ``crop`` (a view of ``buf``) copied out."""
        lay = self.layout
        index, why = verify.shard_index(lay, s)
        if why:
            raise StoreError(f"{what} {why} (flowprep verify; run --repair)")
        a, b = lay.frames_of_shard(s)
        chunks = range(max(start, a) // lay.chunk * lay.chunk, min(stop, b), lay.chunk)
        if index is None:  # a non-strict (format 1) array without this shard: fill values, as zarr reads it
            out[max(start, a) - start : min(stop, b) - start] = lay.fill_value
            return
        fd = os.open(lay.shard_file(s), os.O_RDONLY)
        try:
            for c0 in chunks:
                t0, t1 = max(start, c0), min(stop, c0 + lay.chunk)
                off, n = index[(c0 - a) // lay.chunk]
                if off == verify.MISSING and n == verify.MISSING:  # format 1 skipped all-zero chunks
                    out[t0 - start : t1 - start] = lay.fill_value
                    continue
                try:
                    self.decode(os.pread(fd, int(n), int(off)), buf)
                except Exception as e:  # checksum mismatch, corrupt or short chunk
                    c1 = min(c0 + lay.chunk, lay.shape[0])
                    raise StoreError(
                        f"{what} frames {c0}-{c1 - 1}: chunk cannot be decoded ({type(e).__name__}: {e}) "
                        "(flowprep verify; run --repair)"
                    ) from None
                copy_crop(out[t0 - start : t1 - start], crop[t0 - c0 : t1 - c0])
        finally:
            os.close(fd)


def copy_crop(dest: np.ndarray, src: np.ndarray) -> None:
    """``dest[...] = src`` for a planar ``src`` (its last axis the slowest in memory): one copy per
    channel, so numpy's inner loop runs along a row instead of over the 2-3 channels of one pixel."""
    if src.ndim >= 4 and src.strides[-1] > src.strides[-2] * src.shape[-2]:
        for c in range(src.shape[-1]):
            dest[..., c] = src[..., c]
    else:
        dest[...] = src
