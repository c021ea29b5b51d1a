"""Store codecs: how a chunk of frames or flow fields becomes bytes, as zarr v3 codecs.

The room where the store's compression is chosen and where flowprep's own zarr v3 codecs live.
``CODECS`` is the one table: recipe name -> the array's ``create_array`` codec arguments, whether
it decodes to the written values, the settings it records (video attribute ``codecs``, the
settings fingerprint), what the writer does to values first (the near-lossless flow codec), and
the package a reader needs beside zarr.  Pure transformations of one chunk; no I/O.

Each array is sharded (``zarr_store``); a codec encodes one inner chunk of ``chunk_frames``
frames, so a read decodes only the chunks of its window.  The default flow codec,
``"zstd-near"``, uses only zarr v3 core codecs (transpose, bytes, zstd), so any zarr v3 reader
decodes it without flowprep.  flowprep's own codecs (``flowprep.jpeg`` / ``jpegxl`` / ``ffv1``)
are registered with zarr here and through the ``zarr.codecs`` entry points in setup.cfg, so any
zarr v3 reader where flowprep is installed decodes them; without it zarr stops with one line,
``Unknown codec: 'flowprep.jpeg'``, naming the package.

Why these codecs, and every candidate measured (bytes, error, encode and decode speed per core,
on real flow and frames): FORMAT.md, "Codecs", and ``make bench-store``.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from zarr.abc.codec import ArrayBytesCodec
from zarr.codecs import BytesCodec, Crc32cCodec, TransposeCodec, ZstdCodec
from zarr.registry import register_codec

if TYPE_CHECKING:
    from typing import Self

    import av
    from zarr.core.array_spec import ArraySpec
    from zarr.core.buffer import Buffer, NDBuffer

_HEADER = struct.Struct("<4sIIII")  # magic, payloads, height, width, channels; then payload sizes (uint32)


def _pack(magic: bytes, shape: tuple[int, ...], payloads: list[bytes | bytearray]) -> bytes:
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
        raise ValueError(
            f"{magic.decode()} chunk of {len(view)} bytes, its header accounts for {pos}: truncated or corrupt"
        )
    return shape, out


@dataclass(frozen=True)
class FramesCodec(ArrayBytesCodec):
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

    def encode_frames(self, frames_nhwc: np.ndarray) -> list[bytes | bytearray]:
        raise NotImplementedError

    def decode_frames(self, payloads: list[memoryview], out_nhwc: np.ndarray) -> None:
        raise NotImplementedError

    def _encode_sync(self, chunk_array: NDBuffer, chunk_spec: ArraySpec) -> Buffer | None:
        a = np.ascontiguousarray(chunk_array.as_numpy_array())
        return chunk_spec.prototype.buffer.from_bytes(_pack(self.magic, a.shape, self.encode_frames(a)))

    def decode_chunk(self, data: bytes | memoryview, out_nhwc: np.ndarray) -> None:
        """One chunk's bytes (header, payloads) into ``out_nhwc``, the chunk's (n, H, W, C) array."""
        (_, h, w, c), payloads = _unpack(self.magic, data)
        if (h, w, c) != out_nhwc.shape[1:]:
            raise ValueError(f"{self.name} chunk of frames {(h, w, c)}, the array's frames are {out_nhwc.shape[1:]}")
        self.decode_frames(payloads, out_nhwc)

    def _decode_sync(self, chunk_bytes: Buffer, chunk_spec: ArraySpec) -> NDBuffer:
        out = np.empty(tuple(chunk_spec.shape), dtype=chunk_spec.dtype.to_native_dtype())
        self.decode_chunk(chunk_bytes.to_bytes(), out)
        return chunk_spec.prototype.nd_buffer.from_numpy_array(out)

    async def _encode_single(self, chunk_array: NDBuffer, chunk_spec: ArraySpec) -> Buffer | None:
        return await asyncio.to_thread(self._encode_sync, chunk_array, chunk_spec)

    async def _decode_single(self, chunk_bytes: Buffer, chunk_spec: ArraySpec) -> NDBuffer:
        return await asyncio.to_thread(self._decode_sync, chunk_bytes, chunk_spec)


@dataclass(frozen=True)
class JpegCodec(FramesCodec):
    """uint8 RGB frames as baseline JPEGs (libjpeg-turbo through imagecodecs)."""

    name = "flowprep.jpeg"
    magic = b"FPJP"
    quality: int = 95
    subsampling: str = "420"  # as OpenCV's imwrite and so mmaction2 / denseflow rawframes

    def encode_frames(self, frames_nhwc: np.ndarray) -> list[bytes | bytearray]:
        import imagecodecs

        return [
            imagecodecs.jpeg8_encode(f, level=self.quality, subsampling=self.subsampling, optimize=True)
            for f in frames_nhwc
        ]

    def decode_frames(self, payloads: list[memoryview], out_nhwc: np.ndarray) -> None:
        import imagecodecs

        if len(payloads) != len(out_nhwc):
            raise ValueError(f"jpeg chunk: {len(payloads)} frames for a chunk of {len(out_nhwc)}")
        for i, p in enumerate(payloads):
            # imagecodecs reads any buffer; its stub only lists bytes, bytearray and mmap
            imagecodecs.jpeg8_decode(p, out=out_nhwc[i])  # type: ignore[arg-type]


@dataclass(frozen=True)
class JpegXlCodec(FramesCodec):
    """uint8 RGB frames as JPEG XL images (libjxl through imagecodecs); quality as libjxl's."""

    name = "flowprep.jpegxl"
    magic = b"FPJX"
    quality: int = 95
    effort: int = 3

    def encode_frames(self, frames_nhwc: np.ndarray) -> list[bytes | bytearray]:
        import imagecodecs

        return [imagecodecs.jpegxl_encode(f, level=self.quality, effort=self.effort, numthreads=1) for f in frames_nhwc]

    def decode_frames(self, payloads: list[memoryview], out_nhwc: np.ndarray) -> None:
        import imagecodecs

        if len(payloads) != len(out_nhwc):
            raise ValueError(f"jpegxl chunk: {len(payloads)} frames for a chunk of {len(out_nhwc)}")
        for i, p in enumerate(payloads):
            # imagecodecs reads any buffer; its stub only lists bytes, bytearray and mmap
            out_nhwc[i] = imagecodecs.jpegxl_decode(p, numthreads=1)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Ffv1Codec(FramesCodec):
    """8-bit fields, exact: each (H, W, C) field as one (C*H, W) gray image, coded by FFV1.

    int8 values are stored as ``q ^ 0x80`` (two's complement with the sign bit flipped: -128..127
    to 0..255, order kept, so smooth flow stays smooth); uint8 as they are.
    """

    name = "flowprep.ffv1"
    magic = b"FPF1"
    context: int = 1  # FFV1's large context model: 2% smaller than the small one on flow

    def _open(self, mode: Literal["r", "w"], h: int, w: int) -> av.VideoCodecContext:
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

    def encode_frames(self, frames_nhwc: np.ndarray) -> list[bytes | bytearray]:
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
            plane: np.ndarray = frames[0].to_ndarray(format="gray")  # uint8; the stub allows any dtype
            if flip:
                plane = plane ^ np.uint8(0x80)
            out_nhwc[i] = plane.reshape(c, h, w).transpose(1, 2, 0).view(out_nhwc.dtype)


# flowprep's own zarr codecs by their zarr.json name (the store's direct reader decodes them too)
FRAME_CODECS: dict[str, type[FramesCodec]] = {c.name: c for c in (JpegCodec, JpegXlCodec, Ffv1Codec)}
for _name, _cls in FRAME_CODECS.items():
    register_codec(_name, _cls)


_VALUES = np.arange(-128, 128)
# int8 value (read as its uint8 byte) -> the nearest multiple of 3; -128 (never written) stays -128,
# and the bound itself (+-127, motion clipped at +-20 px: common) stays exact, so a read still spans [-1, 1]
_NEAR_LUT = np.empty(256, np.int8)
_NEAR_LUT[_VALUES.astype(np.uint8)] = np.clip(np.round(_VALUES / 3) * 3, -128, 127)
_NEAR_LUT[np.array([127, -127], np.int8).view(np.uint8)] = (127, -127)


def near_lossless_thw2(flow_q_thw2: np.ndarray) -> np.ndarray:
    """int8 flow rounded to the nearest multiple of 3 steps: at most 1 step (0.157 px) from the input.

    A third of the values an entropy coder sees, so zstd alone gets below JPEG flow rawframes'
    bytes while decoding several times faster (FORMAT.md); the same grid JPEG-LS NEAR=1 quantizes
    its residuals to.  One table look-up per value: float arithmetic here bounded the writer's speed."""
    if flow_q_thw2.dtype != np.int8:
        raise TypeError(f"near_lossless_thw2: int8 flow expected, got {flow_q_thw2.dtype}")
    return _NEAR_LUT[flow_q_thw2.view(np.uint8)]


def _same(values: np.ndarray) -> np.ndarray:
    return values


@dataclass(frozen=True)
class Codec:
    """One row of the codec table: a recipe's ``[write] rgb_codec`` / ``flow_codec`` value."""

    kind: str  # "rgb" or "flow": the array it codes
    name: str  # the recipe value
    exact: bool  # reads back the values written (else: see max_error)
    build: Callable[
        [int, int], dict[str, Any]
    ]  # (quality, zstd_level) -> create_array's filters / serializer / compressors
    settings: tuple[str, ...] = ()  # the WriteConfig settings it uses: recorded with it (video attribute, fingerprint)
    zstd_level: int = 3  # its zstd level where the recipe sets none (the figures behind each: FORMAT.md)
    max_error: int | None = (
        None  # flow: the largest difference in int8 steps a read may show (None: exact or lossy RGB)
    )
    prepare: Callable[[np.ndarray], np.ndarray] = field(default=_same)  # what the writer does to values before encoding
    package: str | None = None  # what a reader needs beside zarr (None: zarr alone decodes it)

    def arrays(self, quality: int, zstd_level: int | None = None) -> dict[str, Any]:
        """``create_array`` keyword arguments (``filters``, ``serializer``, ``compressors``)."""
        return self.build(quality, zstd_level or self.zstd_level)

    def record(self, *, quality: int, zstd_level: int | None = None) -> dict[str, Any]:
        """What a video's attributes say about this array's codec (zarr.json has the full pipeline)."""
        rec: dict[str, Any] = {"name": self.name, "exact": self.exact}
        if self.max_error is not None:
            rec["max_error_steps"] = self.max_error
        values = {"quality": quality, "zstd_level": zstd_level or self.zstd_level}
        rec.update({k: values[k] for k in self.settings})
        return rec


# Every chunk carries a checksum, so flipped bytes fail the read instead of returning other pixels
# (flowprep.store.verify): zstd's own content checksum, or a crc32c codec after the image codecs,
# which have none of their own.
def _zstd(level: int) -> ZstdCodec:
    return ZstdCodec(level=level, checksum=True)


CODECS: dict[tuple[str, str], Codec] = {
    (c.kind, c.name): c
    for c in (
        Codec(
            "rgb",
            "jpeg",
            False,
            lambda q, z: {"serializer": JpegCodec(quality=q), "compressors": Crc32cCodec()},
            ("quality",),
            package="flowprep",
        ),
        Codec(
            "rgb",
            "jpegxl",
            False,
            lambda q, z: {"serializer": JpegXlCodec(quality=q), "compressors": Crc32cCodec()},
            ("quality",),
            package="flowprep",
        ),
        Codec(
            "rgb", "lossless", True, lambda q, z: {"serializer": BytesCodec(), "compressors": _zstd(z)}, ("zstd_level",)
        ),
        # flow (T, H, W, 2) as planes (u of 8 fields, then v) before zstd: 5-10% smaller than interleaved u, v;
        # level 6: 15% smaller than 3, where the whole store falls below rawframes on bikes (FORMAT.md)
        Codec(
            "flow",
            "zstd-near",
            False,
            lambda q, z: {
                "filters": [TransposeCodec(order=(0, 3, 1, 2))],
                "serializer": BytesCodec(),
                "compressors": _zstd(z),
            },
            ("zstd_level",),
            zstd_level=6,
            max_error=1,
            prepare=near_lossless_thw2,
        ),
        Codec(
            "flow",
            "ffv1",
            True,
            lambda q, z: {"serializer": Ffv1Codec(), "compressors": Crc32cCodec()},
            package="flowprep",
        ),
        Codec(
            "flow", "zstd", True, lambda q, z: {"serializer": BytesCodec(), "compressors": _zstd(z)}, ("zstd_level",)
        ),
    )
}


def names(kind: str) -> tuple[str, ...]:
    """The recipe values of one array's codecs, in the table's order (the default first)."""
    return tuple(name for k, name in CODECS if k == kind)


def lookup(kind: str, name: str) -> Codec:
    """The table's row, or a ValueError naming the setting, the value and the allowed ones."""
    codec = CODECS.get((kind, name))
    if codec is None:
        raise ValueError(f"write.{kind}_codec={name!r}: allowed: {', '.join(names(kind))}")
    return codec


def array_codecs(kind: str, codec: str, *, quality: int, zstd_level: int | None = None) -> dict[str, Any]:
    """``create_array`` keyword arguments (``filters``, ``serializer``, ``compressors``) for one array."""
    return lookup(kind, codec).arrays(quality, zstd_level)
