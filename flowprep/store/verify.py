"""Verify: is every byte a video needs present and intact?  Used by commit, reads, inspect, verify.

A video is sound when its group metadata reads, both arrays' shapes agree with ``n_frames`` /
``n_flow``, every shard file the shape needs exists, its index (the table of chunk offsets at
the end of each shard, crc32c-protected) is intact and points inside the file, and, for a
**full** check, every chunk decompresses and passes its checksum.  Videos written since
``shard_digests`` existed record each shard file's size and SHA-256 at commit (attribute
``shard_digests``): sizes are checked always, digests in a full check, so a shard file swapped
with another video's (chunk checksums are not tied to their video) is damage too.  In a store,
a video made with other content settings than the root records is damaged as well
(``flowprep.store.fingerprint``; ``run --repair`` redoes it).

Stores written since chunks carry checksums (zstd ``checksum: true``; FORMAT.md) are
**strict**: they write every chunk, also all-zero ones, so a missing shard file or a chunk the
index marks empty is damage.  Older format-1 stores omitted all-zero chunks (they read as 0),
so for them a missing shard or chunk cannot be told from an all-zero one; only shapes, shard
indexes and decoding are checked there.

This module reads files only; it never repairs anything (``flowprep run --repair`` redoes the
damaged videos).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from flowprep.store.errors import StoreError

MISSING = np.uint64(2**64 - 1)  # a shard-index entry for a chunk that was never written
ARRAYS = (("rgb", "n_frames"), ("flow", "n_flow"))


class ArrayLayout:
    """What an array's zarr.json says about its files: shape, shard and chunk lengths, key form."""

    def __init__(self, array_dir: Path):
        self.dir = Path(array_dir)
        try:
            meta = json.loads((self.dir / "zarr.json").read_text())
            self.shape = tuple(int(n) for n in meta["shape"])
            self.shard_shape = tuple(int(n) for n in meta["chunk_grid"]["configuration"]["chunk_shape"])
            self.shard = self.shard_shape[0]
            sep = (meta.get("chunk_key_encoding") or {}).get("configuration", {}).get("separator", "/")
            codecs = meta["codecs"]
            self.dtype = str(meta["data_type"])
            self.fill_value = meta.get("fill_value", 0)
        except (OSError, ValueError, KeyError, TypeError, IndexError) as e:
            raise StoreError(f"{self.dir}: array metadata unreadable ({type(e).__name__}: {e})") from None
        self.sep = sep
        self.sharded = bool(codecs) and codecs[0].get("name") == "sharding_indexed"
        if self.sharded:
            conf = codecs[0]["configuration"]
            self.chunk = int(conf["chunk_shape"][0])
            self.chunk_shape = tuple(int(n) for n in conf["chunk_shape"])
            inner = conf.get("codecs", [])
            self.index_crc = any(c.get("name") == "crc32c" for c in conf.get("index_codecs", []))
            self.index_at_end = conf.get("index_location", "end") == "end"
        else:
            self.chunk, inner, self.index_crc, self.index_at_end = self.shard, codecs, False, True
            self.chunk_shape = (self.shard, *self.shape[1:])
        self.inner: list[dict[str, Any]] = inner  # the codecs of one (inner) chunk, as zarr.json names them
        self.strict = any(
            (c.get("name") == "zstd" and (c.get("configuration") or {}).get("checksum")) or c.get("name") == "crc32c"
            for c in inner
        )

    def n_shards(self) -> int:
        return math.ceil(self.shape[0] / self.shard) if self.shape[0] else 0

    def shard_file(self, s: int) -> Path:
        key = "c" + self.sep + self.sep.join(str(i) for i in (s, *([0] * (len(self.shape) - 1))))
        return self.dir / key

    def frames_of_shard(self, s: int) -> tuple[int, int]:
        return s * self.shard, min((s + 1) * self.shard, self.shape[0])


def shard_index(layout: ArrayLayout, s: int) -> tuple[np.ndarray | None, str | None]:
    """Shard ``s``'s chunk index, ``(chunks, 2)`` uint64 offsets and sizes in its file, or why the shard
    is damaged (missing, truncated, bad index, chunk missing): ``(index, None)`` or ``(None, why)``.
    ``(None, None)``: no index to give and nothing wrong (a non-strict array's missing shard reads
    as fill values; an unsharded array's chunk file)."""
    path = layout.shard_file(s)
    a, b = layout.frames_of_shard(s)
    where = f"frames {a}-{b - 1}"
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return None, (f"{where}: shard file {path.name} is missing" if layout.strict else None)
    if not layout.sharded:
        return None, (None if size > 0 or not layout.strict else f"{where}: chunk file {path.name} is empty")
    n_chunks = layout.shard // layout.chunk
    index_bytes = 16 * n_chunks + (4 if layout.index_crc else 0)
    if size < index_bytes:
        return None, f"{where}: shard file {path.name} is truncated ({size} bytes)"
    with open(path, "rb") as f:
        f.seek(size - index_bytes if layout.index_at_end else 0)
        raw = f.read(index_bytes)
    if layout.index_crc:
        try:
            import google_crc32c  # zarr's own dependency for its crc32c codec
        except ImportError:  # pragma: no cover - zarr 3 always brings it
            google_crc32c = None  # type: ignore[assignment]
        if google_crc32c is not None and google_crc32c.value(raw[:-4]) != int.from_bytes(raw[-4:], "little"):
            return (
                None,
                f"{where}: shard file {path.name} is damaged (its chunk index fails its checksum: truncated or overwritten)",
            )
    entries = np.frombuffer(raw[: 16 * n_chunks], "<u8").reshape(n_chunks, 2)
    data_end = size - index_bytes if layout.index_at_end else size
    data_start = 0 if layout.index_at_end else index_bytes
    for c in range(n_chunks):
        c0 = a + c * layout.chunk
        if c0 >= layout.shape[0]:
            break  # beyond the array: never written
        off, n = entries[c]
        if off == MISSING and n == MISSING:
            if layout.strict:
                return None, f"frames {c0}-{min(c0 + layout.chunk, b) - 1}: chunk missing in shard {path.name}"
            continue
        if off < data_start or off + n > data_end:
            return (
                None,
                f"frames {c0}-{min(c0 + layout.chunk, b) - 1}: chunk lies outside shard {path.name} (truncated file)",
            )
    return entries, None


def _shard_problem(layout: ArrayLayout, s: int) -> str | None:
    """Why shard ``s`` is damaged (missing, truncated, bad index, chunk missing), or None."""
    return shard_index(layout, s)[1]


def _decode_problem(array: Any, layout: ArrayLayout, a: int, b: int) -> str | None:
    """Decompress frames a:b chunk by chunk; the first chunk that fails, by its frames."""
    for c0 in range(a - a % layout.chunk, b, layout.chunk):
        c1 = min(c0 + layout.chunk, layout.shape[0])
        try:
            array[c0:c1]
        except Exception as e:  # zstd checksum mismatch, corrupt frame, short read, ...
            return f"frames {c0}-{c1 - 1}: chunk cannot be decoded ({type(e).__name__}: {e})"
    return None


def array_problems(array_dir: Path, expected: int | None, full: bool = False) -> list[str]:
    """Problems of one array (empty list = sound).  ``expected``: its length per the video's attributes."""
    try:
        layout = ArrayLayout(array_dir)
    except StoreError as e:
        return [str(e).split(": ", 1)[-1]]
    problems = []
    if expected is not None and layout.shape[0] != expected:
        problems.append(f"shape {layout.shape} disagrees with the video's frame count {expected}")
        return problems  # which frames exist is unknowable; reading would return fill values
    for s in range(layout.n_shards()):
        why = _shard_problem(layout, s)
        if why:
            problems.append(why)
    if full and not problems:
        import zarr

        try:
            array = zarr.open_array(str(array_dir), mode="r")
        except Exception as e:
            return [f"cannot be opened ({type(e).__name__}: {e})"]
        for s in range(layout.n_shards()):
            why = _decode_problem(array, layout, *layout.frames_of_shard(s))
            if why:
                problems.append(why)
    return problems


def shard_files(video_dir: Path) -> list[str]:
    """Every shard file a video's arrays need, as ``<array>/<file>`` relative to the video's folder."""
    out = []
    for name, _ in ARRAYS:
        layout = ArrayLayout(Path(video_dir) / name)
        out += [f"{name}/{layout.shard_file(s).name}" for s in range(layout.n_shards())]
    return out


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def shard_digests(video_dir: Path) -> dict[str, dict[str, Any]]:
    """``{"rgb/c.0.0.0.0": {"bytes": n, "sha256": hex}, ...}`` of a written video's shard files: the
    writer records it in the video's attributes, ``video_problems`` checks it."""
    return {
        rel: {"bytes": (Path(video_dir) / rel).stat().st_size, "sha256": _sha256(Path(video_dir) / rel)}
        for rel in shard_files(video_dir)
    }


def _digest_problems(video_dir: Path, recorded: Any, full: bool) -> list[str]:
    if not isinstance(recorded, dict):
        return []  # written before digests were recorded
    problems = []
    for rel, want in sorted(recorded.items()):
        path = Path(video_dir) / rel
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            continue  # reported by the shard check
        if not isinstance(want, dict) or size != want.get("bytes"):
            problems.append(
                f"{rel.replace('/', ': shard file ', 1)} has {size} bytes, {want.get('bytes') if isinstance(want, dict) else '?'} "
                "recorded at commit (replaced or rewritten)"
            )
        elif full and _sha256(path) != want.get("sha256"):
            problems.append(
                f"{rel.replace('/', ': shard file ', 1)} differs from the digest recorded at commit "
                "(swapped with another video's or rewritten)"
            )
    return problems


def video_attrs(video_dir: Path) -> dict[str, Any]:
    try:
        meta = json.loads((Path(video_dir) / "zarr.json").read_text())
        return dict(meta["attributes"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise StoreError(f"{Path(video_dir).name}: group metadata unreadable ({type(e).__name__}: {e})") from None


def video_problems(video_dir: Path, full: bool = False) -> list[str]:
    """Every problem of one video as ``"<array>: <what>, frames a-b"`` lines; empty = sound."""
    try:
        attrs = video_attrs(video_dir)
    except StoreError as e:
        return [str(e).split(": ", 1)[-1]]
    problems = []
    for name, count in ARRAYS:
        n = attrs.get(count)
        if not isinstance(n, int):
            problems.append(f"attribute {count!r} is missing or not an integer")
            n = None
        problems += [f"{name}: {p}" for p in array_problems(Path(video_dir) / name, n, full)]
    return problems + _digest_problems(Path(video_dir), attrs.get("shard_digests"), full)


def check_shape(video_id: str, name: str, layout: ArrayLayout, expected: int) -> None:
    """Raise StoreError if the array's length disagrees with the video's count (``expected``)."""
    if layout.shape[0] != expected:
        raise StoreError(
            f"video {video_id!r}: {name} array has shape {layout.shape} but the video has {expected} "
            f"{'frames' if name == 'rgb' else 'flow fields'}: the store is damaged (flowprep verify; run --repair)"
        )


def check_read(video_id: str, name: str, layout: ArrayLayout, expected: int, start: int, stop: int) -> None:
    """Before a read of frames start:stop: raise StoreError if the array or a shard it needs is damaged."""
    check_shape(video_id, name, layout, expected)
    if stop <= start:
        return
    for s in range(start // layout.shard, (stop - 1) // layout.shard + 1):
        why = _shard_problem(layout, s)
        if why:
            raise StoreError(f"video {video_id!r}: {name} {why} (flowprep verify; run --repair)")


def decode_error(
    video_id: str, name: str, array: Any, layout: ArrayLayout, start: int, stop: int, e: Exception
) -> StoreError:
    """A read failed inside zarr: name the first chunk that does not decode."""
    why = _decode_problem(array, layout, start, stop) or f"frames {start}-{stop - 1}: {type(e).__name__}: {e}"
    return StoreError(f"video {video_id!r}: {name} {why} (flowprep verify; run --repair)")


def verify_store(store_path: str | Path, full: bool = True, ids: list[str] | None = None) -> dict[str, list[str]]:
    """Damaged videos of a store: ``{video_id: [problem, ...]}`` (sound ones are left out); a video
    made with other content settings than the root records is damaged too."""
    from flowprep.store import fingerprint

    settings = fingerprint.root_settings(store_path)
    videos = Path(store_path) / "videos"
    if ids is None:
        ids = sorted(e.name for e in os.scandir(videos) if e.is_dir()) if videos.is_dir() else []
    damaged = {}
    for vid in ids:
        if not (videos / vid / "zarr.json").exists():
            continue  # not complete: not the store's, the ledger's concern
        problems = video_problems(videos / vid, full)
        if settings is not None and not problems:
            diff = fingerprint.differences(settings, fingerprint.video_settings(video_attrs(videos / vid)))
            if diff:
                problems = [
                    "made with other settings than the store's: "
                    + "; ".join(d.replace(", this run ", ", video ") for d in diff)
                ]
        if problems:
            damaged[vid] = problems
    return damaged
