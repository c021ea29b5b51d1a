"""Direct shard reads: the reader's fast path for arrays in zarr's own codecs (transpose, bytes, zstd).

The room where the reader decodes a sharded array's inner chunks itself instead of through
zarr-python, for training's many small window reads.  It follows the zarr v3 sharding layout
the writer made (FORMAT.md): the shard's chunk index (``verify.shard_index``, crc32c-checked),
one ``pread`` per inner chunk, zstd straight into one reused buffer (zstd checks the chunk's
content checksum), and only the window's rows and columns copied out, the ``transpose`` filter
undone in that copy.  zarr-python reads the same window through its codec pipeline, an asyncio
task and a thread hop per chunk and codec, at several times the cost of decoding it
(``make bench-store``; FORMAT.md, loader).

``ShardReader.open`` returns None for any other layout (flowprep's image codecs, an unsharded
array, a codec or data type this module does not know), and the store reads those through
zarr.  Reads files only.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from numcodecs import zstd

from flowprep.store import verify
from flowprep.store.errors import StoreError

_DTYPES = ("int8", "uint8")  # one byte: the bytes codec's endianness does not matter


def _inner_pipeline(codecs: list[dict[str, Any]], ndim: int) -> tuple[tuple[int, ...], bool] | None:
    """``(order, zstd)`` of ``[transpose]? bytes [zstd]?``: the axis order the chunk's bytes are in,
    and whether they are one zstd frame; None for any other pipeline."""
    names = [c.get("name") for c in codecs]
    order: tuple[int, ...] = tuple(range(ndim))
    if names[:1] == ["transpose"]:
        order = tuple(int(i) for i in (codecs[0].get("configuration") or {}).get("order", ()))
        names, codecs = names[1:], codecs[1:]
        if sorted(order) != list(range(ndim)):
            return None
    if names not in (["bytes"], ["bytes", "zstd"]):
        return None
    return order, names == ["bytes", "zstd"]


class ShardReader:
    """Frames of one sharded array, decoded here (see the module docstring); ``open`` picks it or None."""

    def __init__(self, layout: verify.ArrayLayout, order: tuple[int, ...], compressed: bool):
        self.layout = layout
        self.dtype = np.dtype(layout.dtype)
        self.order = order  # axis i of the stored bytes is axis order[i] of the array
        self.compressed = compressed  # the chunk's bytes are one zstd frame (else as they are)
        self.stored_shape = tuple(layout.chunk_shape[i] for i in order)
        self.chunk_bytes = int(np.prod(layout.chunk_shape)) * self.dtype.itemsize

    @classmethod
    def open(cls, layout: verify.ArrayLayout) -> ShardReader | None:
        # (T, H, W, C) in shards and chunks of whole frames, as the writer makes them (FORMAT.md)
        whole_frames = len(layout.shape) == 4 and layout.shard_shape[1:] == layout.chunk_shape[1:] == layout.shape[1:]
        if not (layout.sharded and layout.index_at_end and whole_frames and layout.dtype in _DTYPES):
            return None
        pipeline = _inner_pipeline(layout.inner, len(layout.shape))
        return None if pipeline is None else cls(layout, *pipeline)

    def read(self, video_id: str, name: str, start: int, stop: int, ys: slice, xs: slice) -> np.ndarray | None:
        """Frames ``start:stop`` (in range, checked), rows ``ys``, columns ``xs`` as (T, y, x, ...);
        None where a slice has a step (zarr reads it).  Damage is a StoreError naming the frames."""
        lay = self.layout
        (y0, y1, ystep), (x0, x1, xstep) = ys.indices(lay.shape[1]), xs.indices(lay.shape[2])
        if ystep != 1 or xstep != 1:
            return None
        out = np.empty((max(stop - start, 0), max(y1 - y0, 0), max(x1 - x0, 0), *lay.shape[3:]), self.dtype)
        if not out.size:
            return out
        buf = np.empty(self.stored_shape, self.dtype)  # each chunk's bytes, decoded in place
        chunk = buf.transpose(np.argsort(self.order))  # the same memory in the array's axis order
        for s in range(start // lay.shard, (stop - 1) // lay.shard + 1):
            index, why = verify.shard_index(lay, s)
            if why:
                raise StoreError(f"video {video_id!r}: {name} {why} (flowprep verify; run --repair)")
            path = lay.shard_file(s)
            fd = os.open(path, os.O_RDONLY) if index is not None else -1
            try:
                a, b = lay.frames_of_shard(s)
                for c0 in range(max(start, a) // lay.chunk * lay.chunk, min(stop, b), lay.chunk):
                    t0, t1 = max(start, c0), min(stop, c0 + lay.chunk, lay.shape[0])
                    off, n = index[(c0 - a) // lay.chunk] if index is not None else (verify.MISSING,) * 2
                    dest = out[t0 - start : t1 - start]
                    if off == verify.MISSING and n == verify.MISSING:  # a non-strict (format 1) array: fill
                        dest[...] = lay.fill_value
                        continue
                    data = os.pread(fd, int(n), int(off))
                    try:
                        self._decode(data, buf)
                    except Exception as e:  # zstd checksum mismatch, corrupt frame, short chunk
                        c1 = min(c0 + lay.chunk, lay.shape[0])
                        raise StoreError(
                            f"video {video_id!r}: {name} frames {c0}-{c1 - 1}: chunk cannot be decoded "
                            f"({type(e).__name__}: {e}) (flowprep verify; run --repair)"
                        ) from None
                    _copy_out(dest, chunk[t0 - c0 : t1 - c0, y0:y1, x0:x1])
            finally:
                if fd >= 0:
                    os.close(fd)
        return out

    def _decode(self, data: bytes, buf: np.ndarray) -> None:
        if not self.compressed:
            if len(data) != self.chunk_bytes:
                raise ValueError(f"{len(data)} bytes for a chunk of {self.chunk_bytes}")
            buf.reshape(-1).view(np.uint8)[:] = np.frombuffer(data, np.uint8)
            return
        got = zstd.decompress(data, buf.reshape(-1).view(np.uint8))
        if len(got) != self.chunk_bytes:
            raise ValueError(f"zstd frame of {len(got)} bytes for a chunk of {self.chunk_bytes}")


def _copy_out(dest: np.ndarray, src: np.ndarray) -> None:
    """``dest[...] = src`` for a planar ``src`` (its last axis the slowest in memory): one copy per
    channel, so numpy's inner loop runs along a row instead of over the 2-3 channels of one pixel."""
    if src.ndim >= 4 and src.strides[-1] > src.strides[-2] * src.shape[-2]:
        for c in range(src.shape[-1]):
            dest[..., c] = src[..., c]
    else:
        dest[...] = src
