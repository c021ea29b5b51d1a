"""Store: the on-disk format (zarr v3), its writer and its reader.  FORMAT.md documents it.

    <name>.zarr/                      zarr v3 group; attributes["flowprep"] = {format, format_version, dataset}
      videos/<video_id>/              one group per complete video; attributes: see FORMAT.md
        rgb    uint8 (T, H, W, 3)     dims (t, y, x, c); chunks (8, H, W, 3) in shards of (64, H, W, 3)
        flow   int8  (T-1, H, W, 2)   dims (t_flow, y, x, uv); same layout; q = round(clip(px, -20, 20) / 20 * 127)

Format 2 (written now): each array's codec is chosen by ``WriteConfig.rgb_codec`` / ``flow_codec``
(``flowprep.store.codecs``: JPEG q95 RGB and near-lossless zstd flow by default) and recorded in its
zarr.json and in the video's ``codecs`` attribute; flow has its own time and channel dimension
names so xarray opens a video group.  Format 1 (zstd 3, dims t, y, x, c for both) still reads.
The reader decodes chunks itself where it can (``flowprep.store.shards``: every codec of the
table) and through zarr-python otherwise; the files are zarr's either way.

The bookkeeping beside the store (``<name>.run/``, staging included) belongs to
``flowprep.run.state``; this module only writes into the staging folder it is handed.

A video is written into a staging folder as a self-contained zarr group and moved into
``videos/`` with one ``rename`` once all its arrays and attributes are on disk, so a group under
``videos/`` is complete by construction; a killed run leaves only staging debris, removed on the
next run.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr

from flowprep.flow.api import RGB_SCALE, dequantize_flow, dequantize_rgb
from flowprep.store import codecs as store_codecs
from flowprep.store import verify
from flowprep.store.errors import StoreError
from flowprep.store.shards import ShardReader

if TYPE_CHECKING:
    from zarr.core.common import JSON

FORMAT_NAME = "flowprep"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)  # 1: zstd only, flow dims named like RGB's (xarray cannot open a video group)
DIMENSIONS = {"rgb": ("t", "y", "x", "c"), "flow": ("t_flow", "y", "x", "uv")}
# CF packing attributes of each array, so xarray's decode_cf (on by default in open_zarr) gives
# what read_rgb / read_flow give: RGB x / 127.5 - 1 and flow q / 127, both in [-1, 1] (flow in
# [-1, 1], not pixels: the model input; pixels = x the video's flow.bound_px).
CF_ATTRIBUTES: dict[str, dict[str, JSON]] = {
    "rgb": {"scale_factor": RGB_SCALE, "add_offset": -1.0, "units": "1", "long_name": "RGB in [-1, 1] (x / 127.5 - 1)"},
    "flow": {
        "scale_factor": 1 / 127,
        "add_offset": 0.0,
        "units": "1",
        "long_name": "TV-L1 flow (u right, v down) in [-1, 1] (q / 127); x the video's flow.bound_px for pixels",
    },
}


@dataclass(frozen=True)
class WriteConfig:
    shard_frames: int = 64  # frames per shard file: a 64-frame window touches at most 2 shards
    chunk_frames: int = 8  # frames per compressed chunk inside a shard (the unit of a read)
    # the zstd codecs' level ("lossless" RGB, flow "zstd-near" / "zstd"); None: each codec's own (3; 6 for zstd-near)
    zstd_level: int | None = None
    rgb_codec: str = "jpeg"  # "jpeg" (as faithful as JPEG rawframes at the same quality), "jpegxl", "lossless"
    rgb_quality: int = 95  # JPEG / JPEG XL quality; 95 = mmaction2's rawframes
    # "zstd-near" (within 1 int8 step, zarr's own codecs, decodes fastest), "ffv1" (exact, smallest,
    # decodes slowest), "zstd" (exact, largest); figures in FORMAT.md
    flow_codec: str = "zstd-near"

    def __post_init__(self) -> None:
        if not (isinstance(self.chunk_frames, int) and self.chunk_frames >= 1):
            raise ValueError(f"write.chunk_frames={self.chunk_frames!r}: must be an integer >= 1")
        if not (
            isinstance(self.shard_frames, int) and self.shard_frames % self.chunk_frames == 0 and self.shard_frames > 0
        ):
            raise ValueError(
                f"write.shard_frames={self.shard_frames!r}: must be a positive multiple of chunk_frames ({self.chunk_frames})"
            )
        if not (self.zstd_level is None or (isinstance(self.zstd_level, int) and 1 <= self.zstd_level <= 22)):
            raise ValueError(
                f"write.zstd_level={self.zstd_level!r}: must be an integer in [1, 22] (or unset: each codec's own)"
            )
        store_codecs.lookup("rgb", self.rgb_codec)
        store_codecs.lookup("flow", self.flow_codec)
        if not (isinstance(self.rgb_quality, int) and 50 <= self.rgb_quality <= 100):
            raise ValueError(f"write.rgb_quality={self.rgb_quality!r}: must be an integer in [50, 100]")

    def codecs(self) -> dict[str, dict[str, Any]]:
        """The video attribute ``codecs``: per array, its codec's name and settings."""
        return {
            kind: self.codec(kind).record(quality=self.rgb_quality, zstd_level=self.zstd_level)
            for kind in ("rgb", "flow")
        }

    def codec(self, kind: str) -> store_codecs.Codec:
        """The codec table's row for array ``kind`` ("rgb" or "flow")."""
        return store_codecs.lookup(kind, self.rgb_codec if kind == "rgb" else self.flow_codec)


def create_store(path: str | Path, dataset: str) -> None:
    """Create the root group (or check an existing one's format version).

    Safe when many cluster tasks start at once: the root is built in a private temporary folder
    and renamed into place, so ``path`` is either absent (or empty) or a complete root; the
    tasks that lose the race find the winner's root and only check it.
    """
    path = Path(path)
    if (path / "zarr.json").exists():
        _check_writable(path, _check_root(path))
        return
    if (
        path.exists() and any(path.iterdir()) and not (path / "zarr.json").exists()
    ):  # re-check: a task may have won meanwhile
        raise StoreError(f"{path} exists and is not a flowprep store; choose another --out")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.creating")
    try:
        root = zarr.open_group(str(tmp), mode="w")
        root.attrs["flowprep"] = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "dataset": dataset}
        root.create_group("videos")
        try:
            os.rename(tmp, path)  # replaces an empty folder; fails if another task's root is there
        except OSError:
            if not (path / "zarr.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _check_root(path)


def _check_writable(path: Path, info: dict[str, Any]) -> None:
    if info.get("format_version") != FORMAT_VERSION:
        # one store, one format: its root says how every video in it is laid out
        raise StoreError(
            f"{path} is a format {info.get('format_version')} store; this flowprep writes format {FORMAT_VERSION} "
            f"(it still reads it). Write new videos into a new store (--out), or finish this one with the flowprep "
            f"that started it."
        )


def _check_root(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads((path / "zarr.json").read_text())
    except (OSError, ValueError) as e:
        raise StoreError(f"{path}: cannot read zarr.json ({e})") from None
    info = (meta.get("attributes") or {}).get("flowprep")
    if meta.get("zarr_format") != 3 or not isinstance(info, dict) or info.get("format") != FORMAT_NAME:
        raise StoreError(f"{path} is not a flowprep store (no 'flowprep' attributes in a zarr v3 root group)")
    version = info.get("format_version")
    if version not in READABLE_VERSIONS:
        raise StoreError(
            f"{path} has flowprep format version {version!r}; this flowprep (format {FORMAT_VERSION}) reads "
            f"versions {', '.join(map(str, READABLE_VERSIONS))}. Rebuild the store with this version, or use a "
            f"flowprep that matches it."
        )
    return info


def is_complete(store_path: str | Path, video_id: str) -> bool:
    return (Path(store_path) / "videos" / video_id / "zarr.json").exists()


class _Appender:
    """Appends frames to a zarr array in whole shards, so each shard file is written once."""

    def __init__(self, array: zarr.Array, shard_frames: int):
        self.array = array
        self.shard = shard_frames
        self.pending: list[np.ndarray] = []
        self.n_pending = 0

    def add(self, block: np.ndarray) -> None:
        if len(block) == 0:
            return
        self.pending.append(block)
        self.n_pending += len(block)
        if self.n_pending >= self.shard:
            data = np.concatenate(self.pending)
            n_full = (len(data) // self.shard) * self.shard
            self.array.append(data[:n_full], axis=0)
            rest = data[n_full:]
            self.pending = [rest] if len(rest) else []
            self.n_pending = len(rest)

    def flush(self) -> None:
        if self.pending:
            self.array.append(np.concatenate(self.pending), axis=0)
            self.pending, self.n_pending = [], 0


class VideoWriter:
    """Writes one video into staging; ``commit`` makes it visible under ``videos/`` atomically."""

    def __init__(self, store_path: str | Path, video_id: str, height: int, width: int, cfg: WriteConfig, tmp: Path):
        """``tmp``: a fresh staging folder on the store's file system (flowprep.run.state.staging_entry)."""
        self.store_path = Path(store_path)
        self.video_id = video_id
        self.tmp = Path(tmp)
        group = zarr.open_group(str(self.tmp), mode="w")
        self.cfg = cfg

        def array(name: str, tail: tuple[int, ...], dtype: str) -> zarr.Array:
            return group.create_array(
                name,
                shape=(0, *tail),
                dtype=dtype,
                chunks=(cfg.chunk_frames, *tail),
                shards=(cfg.shard_frames, *tail),
                **cfg.codec(name).arrays(cfg.rgb_quality, cfg.zstd_level),
                fill_value=0,
                dimension_names=DIMENSIONS[name],
                attributes=CF_ATTRIBUTES[name],
                # shard files sit directly in the array folder (c.0.0.0.0) instead of 4 nested
                # folders each: 3 folders per video instead of 29 (~8M fewer inodes for Kinetics-400)
                chunk_key_encoding={"name": "default", "separator": "."},
                # every chunk is written, all-zero ones too: a missing shard or chunk is then damage (verify.py)
                config={"write_empty_chunks": True},
            )

        self.group = group
        self.rgb = _Appender(array("rgb", (height, width, 3), "uint8"), cfg.shard_frames)
        self.flow = _Appender(array("flow", (height, width, 2), "int8"), cfg.shard_frames)
        self._prepare_rgb, self._prepare_flow = cfg.codec("rgb").prepare, cfg.codec("flow").prepare
        self.n_frames = 0
        self.n_flow = 0

    def append(self, rgb_thwc: np.ndarray, flow_q_thw2: np.ndarray) -> None:
        self.rgb.add(self._prepare_rgb(rgb_thwc))
        self.flow.add(self._prepare_flow(flow_q_thw2))
        self.n_frames += len(rgb_thwc)
        self.n_flow += len(flow_q_thw2)

    def prepare(self, attrs: dict[str, Any]) -> Path:
        """Finish the video in staging and check it in full (every chunk read back); returns its folder.
        ``publish`` then makes it visible; a pipeline's parent process does that (the lease holder)."""
        self.rgb.flush()
        self.flow.flush()
        if self.n_flow != self.n_frames - 1:
            raise StoreError(f"{self.video_id}: {self.n_frames} frames but {self.n_flow} flow fields")
        # each shard file's size and SHA-256 (verify.shard_digests): ties the files to this video
        digests = verify.shard_digests(self.tmp)
        self.group.attrs.update(
            {
                **attrs,
                "n_frames": self.n_frames,
                "n_flow": self.n_flow,
                "codecs": self.cfg.codecs(),
                "shard_digests": digests,
            }
        )
        problems = verify.video_problems(self.tmp, full=True)
        if problems:
            raise StoreError(f"{self.video_id}: written data do not read back: {'; '.join(problems)}")
        return self.tmp

    def commit(self, attrs: dict[str, Any], overwrite: bool = False) -> None:
        publish(self.store_path, self.video_id, self.prepare(attrs), overwrite)

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


def publish(store_path: str | Path, video_id: str, tmp: Path, overwrite: bool = False) -> None:
    """Move a prepared staging folder into ``videos/`` with one rename, after checking that every
    shard file and the frame counts are still there (another process may have removed staging)."""
    problems = verify.video_problems(tmp, full=False)
    if problems:
        raise StoreError(f"{video_id}: staged data damaged before commit, not committed: {'; '.join(problems)}")
    dest = Path(store_path) / "videos" / video_id
    tmp = Path(tmp)
    if dest.exists():
        if not overwrite:
            raise StoreError(f"{video_id} is already in the store (use --overwrite to redo it)")
        trash = tmp.with_name(tmp.name + ".old")
        os.rename(dest, trash)
        os.rename(tmp, dest)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.rename(tmp, dest)


class Store:
    """Read access to a flowprep store.  Use ``flowprep.open_store(path)``."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not (self.path / "zarr.json").exists():
            raise StoreError(f"{self.path}: no store here (no zarr.json); build one with `flowprep run`")
        self.meta = _check_root(self.path)
        videos = self.path / "videos"
        self.video_ids: list[str] = (
            sorted(
                e.name for e in os.scandir(videos) if e.is_dir() and os.path.exists(os.path.join(e.path, "zarr.json"))
            )
            if videos.is_dir()
            else []
        )
        self._known = set(self.video_ids)
        self._groups: dict[str, zarr.Group] = {}
        self._arrays: dict[tuple[str, str], tuple[verify.ArrayLayout, int, ShardReader | None]] = {}
        self._zarrs: dict[tuple[str, str], zarr.Array] = {}

    def __len__(self) -> int:
        return len(self.video_ids)

    def __contains__(self, video_id: object) -> bool:
        return video_id in self._known

    def _group(self, video_id: str) -> zarr.Group:
        if video_id not in self._known:
            raise KeyError(f"video {video_id!r} is not (completely) in {self.path}")
        g = self._groups.get(video_id)
        if g is None:
            try:
                g = zarr.open_group(str(self.path / "videos" / video_id), mode="r")
            except Exception as e:  # damaged zarr.json: a message, not a traceback
                raise StoreError(
                    f"video {video_id!r}: metadata unreadable ({type(e).__name__}: {e}); flowprep verify; run --repair"
                ) from None
            self._groups[video_id] = g
        return g

    def _array(self, video_id: str, name: str) -> tuple[verify.ArrayLayout, int, ShardReader | None]:
        """Array ``name`` of a video, opened once: its layout, its length per the video's attributes and,
        where its codecs allow, the direct reader (``shards.ShardReader``)."""
        got = self._arrays.get((video_id, name))
        if got is None:
            count = "n_frames" if name == "rgb" else "n_flow"
            expected = self._group(video_id).attrs.get(count)
            if not isinstance(expected, int):
                raise StoreError(f"video {video_id!r}: attribute {count!r} missing; flowprep verify; run --repair")
            layout = verify.ArrayLayout(self.path / "videos" / video_id / name)
            got = self._arrays[(video_id, name)] = (layout, expected, ShardReader.open(layout))
        return got

    def _zarr_array(self, video_id: str, name: str) -> zarr.Array:
        """zarr-python's handle of array ``name``, opened once (the direct reader needs none)."""
        arr = self._zarrs.get((video_id, name))
        if arr is None:
            try:
                node = self._group(video_id)[name]
            except Exception as e:
                raise StoreError(f"video {video_id!r}: {name} array unreadable ({type(e).__name__}: {e})") from None
            if not isinstance(node, zarr.Array):
                raise StoreError(f"video {video_id!r}: {name} is a group, not an array; flowprep verify; run --repair")
            arr = self._zarrs[(video_id, name)] = node
        return arr

    def _read(
        self, video_id: str, name: str, start: int, stop: int | None, ys: slice = slice(None), xs: slice = slice(None)
    ) -> np.ndarray:
        """Frames start:stop of array ``name``, checked (verify.check_read): damage is a StoreError, never fill values.
        The direct reader reads what it can (every codec of the table), zarr-python the rest."""
        layout, expected, direct = self._array(video_id, name)
        a, b, _ = slice(start, stop).indices(expected)
        if direct is not None:
            verify.check_shape(video_id, name, layout, expected)  # the reader checks each shard it reads
            out = direct.read(video_id, name, a, max(a, b), ys, xs)
            if out is not None:
                return out
        arr = self._zarr_array(video_id, name)
        verify.check_read(video_id, name, layout, expected, a, b)
        try:
            # slices in every axis: always an array (zarr's type also allows the scalars an int index gives)
            return np.asarray(arr[start:stop, ys, xs])
        except Exception as e:
            raise verify.decode_error(video_id, name, arr, layout, a, b, e) from None

    def info(self, video_id: str) -> dict[str, Any]:
        """Attributes of a video: label, split, n_frames, n_flow, fps, height, width, source, flow, ..."""
        return dict(self._group(video_id).attrs)

    def read_rgb_uint8(
        self,
        video_id: str,
        start: int = 0,
        stop: int | None = None,
        *,
        ys: slice = slice(None),
        xs: slice = slice(None),
    ) -> np.ndarray:
        """Raw frames ``start:stop`` (rows ``ys``, columns ``xs``): only the chunks of those frames are read."""
        return self._read(video_id, "rgb", start, stop, ys, xs)

    def read_flow_int8(
        self,
        video_id: str,
        start: int = 0,
        stop: int | None = None,
        *,
        ys: slice = slice(None),
        xs: slice = slice(None),
    ) -> np.ndarray:
        return self._read(video_id, "flow", start, stop, ys, xs)

    def __repr__(self) -> str:
        return f"<flowprep Store {str(self.path)!r}: {len(self)} video(s), dataset {self.meta.get('dataset')!r}, format v{self.meta.get('format_version')}>"

    def read_rgb(self, video_id: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Frames ``start:stop`` as float32 (T, H, W, 3) in [-1, 1] (x / 127.5 - 1).

        ``start`` and ``stop`` slice like a Python list: a stop past the end gives the frames there
        are (``read_rgb(vid, 0, 64)`` of a 50-frame video is 50 frames), negative values count from
        the end; ``info(vid)["n_frames"]`` is the length."""
        raw = self.read_rgb_uint8(video_id, start, stop)
        return dequantize_rgb(raw)

    def read_flow(self, video_id: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Flow fields ``start:stop`` as float32 (T-1, H, W, 2) in [-1, 1] (u right, v down; x bound = px),
        sliced like ``read_rgb`` (``info(vid)["n_flow"]`` = n_frames - 1 fields)."""
        return dequantize_flow(self.read_flow_int8(video_id, start, stop))


def open_store(path: str | Path) -> Store:
    return Store(path)
