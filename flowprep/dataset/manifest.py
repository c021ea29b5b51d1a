"""Manifests: CSV files that name the videos of a dataset, parsed into validated rows.

A manifest is a CSV with a header.  Known columns:

``id``          optional video id (else derived, see below)
``path``        a local video file (relative paths are relative to the manifest's folder;
                ``package:<pkg>/<rel>`` names a file inside an installed Python package;
                ``synthetic:<name>`` a generated clip with known motion, see flowprep.dataset.demo)
``youtube_id``  an 11-character YouTube id (Kinetics); one of path / youtube_id is required
``label``       class name (free text: it becomes an attribute, never a path)
``split``       train, val, test or unused (``validate``/``validation`` read as val)
``time_start``, ``time_end``  seconds; trim to this range (both or neither; end > start)
``is_cc``       Kinetics' Creative-Commons flag, read and ignored

A malformed row becomes a ``RowError`` (file:line, column, message) and does not stop the
other rows.  Video ids are the only manifest field that becomes part of a path (the store's
group name), and only after ``check_video_id``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

KNOWN_COLUMNS = ("id", "path", "youtube_id", "label", "split", "time_start", "time_end", "is_cc")
SPLITS = ("train", "val", "test", "unused")
_SPLIT_ALIASES = {"validate": "val", "validation": "val"}
YOUTUBE_ID = re.compile(r"[A-Za-z0-9_-]{11}")
# YouTube ids may start with "-" or "_"; a leading "." (hidden, "..") is refused.
VIDEO_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# Names a video id must not take: zarr's metadata files (an id "zarr.json" would be the videos
# group's own metadata), the suffixes of flowprep's own
# temporary entries, and names Windows / SMB shares cannot hold.  Compared case-insensitively.
_RESERVED = {"zarr.json", "zarr.json.tmp", "videos", "zarray", "zgroup", "zattrs", "zmetadata"}
_RESERVED_SUFFIXES = (".tmp", ".old", ".stale", ".creating", ".zarray", ".zgroup", ".zattrs", ".zmetadata")
_WINDOWS = re.compile(r"(con|prn|aux|nul|com[0-9]|lpt[0-9])(\..*)?", re.IGNORECASE)


@dataclass(frozen=True)
class ManifestRow:
    line: int  # 1-based line in the manifest file (the header is line 1)
    video_id: str
    path: str | None = None
    youtube_id: str | None = None
    label: str | None = None
    split: str | None = None
    time_start: float | None = None
    time_end: float | None = None


@dataclass(frozen=True)
class RowError:
    file: str
    line: int
    column: str | None
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}"
        return f"{where}: column {self.column!r}: {self.message}" if self.column else f"{where}: {self.message}"


class ManifestError(ValueError):
    """The manifest as a whole cannot be read (missing file, bad header)."""


def check_video_id(video_id: str) -> str | None:
    """None if ``video_id`` is safe as a single path component and group name, else why not."""
    if not VIDEO_ID.fullmatch(video_id):
        return (
            f"bad video id {video_id!r}: must be 1-128 characters of letters, digits, '_', '-', '.',"
            " not starting with '.'"
        )
    if ".." in video_id:
        return f"bad video id {video_id!r}: must not contain '..'"
    low = video_id.lower()
    if low in _RESERVED or low.endswith(_RESERVED_SUFFIXES) or _WINDOWS.fullmatch(low):
        return f"bad video id {video_id!r}: a name the store or file systems reserve; give the row another id"
    return None


_UNSAFE_RUN = re.compile(r"[^A-Za-z0-9_.-]+|\.{2,}")


def _safe_part(part: str) -> str:
    ascii_ = "".join(c for c in unicodedata.normalize("NFKD", part) if not unicodedata.combining(c))
    return _UNSAFE_RUN.sub("_", ascii_)


def safe_video_id(rel_path: str, force_hash: bool = False) -> str:
    """A store-safe, readable, unique video id from a file's path relative to its folder.

    The rule (``flowprep run DIR`` / ``flowprep run VIDEO``): drop the extension; per path
    component, fold accents to ASCII (NFKD, ``é`` -> ``e``) and replace each run of other
    characters, or of two or more dots, by ``_``; join the components with ``__``
    (``walking/0001.mp4`` -> ``walking__0001``).  When that was not lossless (a character was
    replaced, a component is empty, starts or ends with ``_`` or holds ``__``, a leading ``.``)
    or gives more than 128 characters, or ``force_hash``, the id is cut to 119 characters and
    ``-`` plus the first 8 hex digits of the SHA-1 of the whole relative path (extension
    included) is appended: ``my clip (1).mp4`` -> ``my_clip_1_-5c2e...``.  So an id depends only on
    its own path, and two paths give the same id only if the SHA-1 prefixes collide.  The result
    always passes ``check_video_id``.
    """
    p = PurePosixPath(rel_path)
    parts = [*p.parent.parts, p.stem] if str(p.parent) != "." else [p.stem]
    safe_parts = [_safe_part(x) for x in parts]
    lossy = force_hash or any(
        s != x or not s or s.startswith("_") or s.endswith("_") or "__" in s
        for s, x in zip(safe_parts, parts, strict=True)
    )
    text = "__".join(safe_parts)
    if text.startswith("."):
        text, lossy = "_" + text[1:], True
    if lossy or len(text) > 128:
        text = f"{text[:119] or 'v'}-{hashlib.sha1(rel_path.encode()).hexdigest()[:8]}"
    assert check_video_id(text) is None, text
    return text


def kinetics_video_id(youtube_id: str, start: float, end: float) -> str:
    """The Kinetics crawlers' clip name: ``{youtube_id}_{start:06d}_{end:06d}``."""
    return f"{youtube_id}_{int(start):06d}_{int(end):06d}"


def _parse_time(value: str) -> float:
    t = float(value)
    if not math.isfinite(t) or t < 0:
        raise ValueError(f"{value!r} is not a finite number >= 0")
    return t


def _parse_row(rec: dict[str, str], line: int, file: str) -> tuple[ManifestRow | None, RowError | None]:
    def err(column: str | None, message: str) -> tuple[None, RowError]:
        return None, RowError(file, line, column, message)

    if None in rec:  # more fields than header columns
        return err(None, f"{len(rec) - 1 + len(rec[None])} fields, header has {len(rec) - 1}")  # type: ignore[index]  # DictReader's restkey
    missing = [c for c, v in rec.items() if v is None]
    if missing:
        return err(missing[0], "missing (row has fewer fields than the header)")
    get = {k: v.strip() for k, v in rec.items()}

    path = get.get("path") or None
    youtube_id = get.get("youtube_id") or None
    if path is None and youtube_id is None:
        return err("path" if "path" in get else "youtube_id", "empty: a row needs a path or a youtube_id")
    if path is not None and "\x00" in path:
        return err("path", "contains a NUL byte")
    if youtube_id is not None and not YOUTUBE_ID.fullmatch(youtube_id):
        return err("youtube_id", f"{youtube_id!r} is not 11 characters of [A-Za-z0-9_-]")

    times: list[float | None] = []
    for col in ("time_start", "time_end"):
        raw = get.get(col) or ""
        if raw == "":
            times.append(None)
            continue
        try:
            times.append(_parse_time(raw))
        except ValueError:
            return err(col, f"{raw!r} is not a finite number >= 0")
    start, end = times
    if (start is None) != (end is None):
        return err("time_end" if end is None else "time_start", "time_start and time_end go together")
    if start is not None and end is not None and end <= start:
        return err("time_end", f"end {end:g} <= start {start:g}")
    if youtube_id is not None and path is None and start is None:
        return err("time_start", "a youtube_id row needs time_start and time_end")

    split = get.get("split") or None
    if split is not None:
        split = _SPLIT_ALIASES.get(split, split)
        if split not in SPLITS:
            return err("split", f"{split!r} is not one of {', '.join(SPLITS)}")

    label = get.get("label") or None
    if label is not None and (_CONTROL.search(label) or len(label) > 200):
        return err("label", f"{label[:40]!r}...: control characters or longer than 200")

    video_id = get.get("id") or None
    if video_id is None:
        if youtube_id is not None and start is not None and end is not None:
            video_id = kinetics_video_id(youtube_id, start, end)
        elif path is not None:
            video_id = Path(path.split(":", 1)[1] if path.startswith(("package:", "synthetic:")) else path).stem
        else:
            video_id = youtube_id
    assert video_id is not None
    why = check_video_id(video_id)
    if why:
        return err("id", why)
    row = ManifestRow(line, video_id, path, youtube_id, label, split, start, end)
    return row, None


def _not_utf8(rec: dict) -> tuple[str | None, str] | None:
    """(column, "byte 0xff") of the first field holding a byte that was not UTF-8, else None."""
    for k, v in rec.items():
        for value in v if isinstance(v, list) else [v]:
            if value is None:
                continue
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as e:
                byte = ord(value[e.start]) - 0xDC00  # surrogateescape keeps the byte in the low 8 bits
                return (k if isinstance(k, str) else None), f"byte 0x{byte:02x}"
    return None


def parse_manifest(path: str | Path) -> tuple[list[ManifestRow], list[RowError]]:
    """Read a manifest CSV.  Raises ManifestError only when the file as a whole is unusable."""
    path = Path(path)
    reader = _open_csv(path)
    rows: list[ManifestRow] = []
    errors: list[RowError] = []
    seen: dict[str, int] = {}
    # Ids that differ only in case are one folder on a case-folding file system (macOS, Windows,
    # SMB, some NFS exports) and a store may be copied to one later: refused everywhere.
    folded: dict[str, tuple[str, int]] = {}
    for line, rec in _records(reader, path, errors):
        row, error = _parse_row(rec, line, str(path))  # a row or an error, never both
        if row is not None:
            error = _id_clash(row.video_id, line, seen, folded, path)
        if error is not None:
            errors.append(error)
            continue
        if row is None:
            raise RuntimeError(f"{path}:{line}: _parse_row gave neither a row nor an error")
        seen[row.video_id] = line
        folded[row.video_id.casefold()] = (row.video_id, line)
        rows.append(row)
    return rows, errors


def _open_csv(path: Path) -> csv.DictReader:
    """A reader over the manifest's rows, its header checked (ManifestError when unusable)."""
    try:
        # bytes that are not UTF-8 become lone surrogates here and fail only their own row (_not_utf8)
        text = path.read_bytes().decode("utf-8-sig", errors="surrogateescape")
    except FileNotFoundError:
        raise ManifestError(f"manifest {path} not found") from None
    except IsADirectoryError:
        raise ManifestError(f"manifest {path} is a folder, not a CSV file") from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        fieldnames = reader.fieldnames or []
    except csv.Error as e:
        raise ManifestError(f"{path}:1: header is not a CSV line ({e})") from None
    bad = _not_utf8({h: h for h in fieldnames})
    if bad:
        raise ManifestError(f"{path}:1: header is not UTF-8 text ({bad[1]}); save the manifest as UTF-8")
    header = [h.strip() for h in fieldnames]
    if not header:
        raise ManifestError(f"manifest {path} is empty (no header line)")
    unknown = [h for h in header if h not in KNOWN_COLUMNS]
    if unknown:
        raise ManifestError(f"{path}:1: unknown column(s) {unknown}; known columns: {', '.join(KNOWN_COLUMNS)}")
    if "path" not in header and "youtube_id" not in header:
        raise ManifestError(f"{path}:1: header needs a 'path' or a 'youtube_id' column, got {header}")
    reader.fieldnames = header
    return reader


def _records(reader: csv.DictReader, path: Path, errors: list[RowError]) -> Iterator[tuple[int, dict]]:
    """(line, record) of each non-blank row; rows that are not CSV or not UTF-8 go to ``errors``."""
    while True:
        before = reader.line_num
        try:
            rec = next(reader)
        except StopIteration:
            return
        except csv.Error as e:  # e.g. a field over csv's limit of 131,072 characters: this row only
            errors.append(RowError(str(path), before + 1, None, f"not a CSV row: {e}"))
            continue
        line = reader.line_num
        if not any((v or "").strip() for k, v in rec.items() if k is not None) and None not in rec:
            continue  # blank line
        bad = _not_utf8(rec)
        if bad:
            errors.append(RowError(str(path), line, bad[0], f"not UTF-8 text ({bad[1]}); save the manifest as UTF-8"))
            continue
        yield line, rec


def _id_clash(
    video_id: str, line: int, seen: dict[str, int], folded: dict[str, tuple[str, int]], path: Path
) -> RowError | None:
    """The row's error when an earlier row has its id, or its id up to case."""
    if video_id in seen:
        return RowError(str(path), line, "id", f"duplicate video id {video_id!r} (first on line {seen[video_id]})")
    other = folded.get(video_id.casefold())
    if other is not None:
        return RowError(
            str(path),
            line,
            "id",
            f"video id {video_id!r} differs from {other[0]!r} (line {other[1]}) only in case: one folder "
            "on a case-insensitive file system; give one of them another id",
        )
    return None
