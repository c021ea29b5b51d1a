"""Your own videos as a manifest: a folder of videos (``flowprep run DIR``) or one video
(``flowprep run VIDEO``) -> ``id,path,label,split`` rows.

Folder layouts understood, decided per video by its path under ``DIR``:

* ``DIR/<class>/.../<video>``: label = the first folder's name (UCF-101 / Kinetics style);
* ``DIR/<video>`` (a flat folder): no label;
* ``DIR/<split>/<class>/<video>`` when the first folder is ``train``, ``val`` (``validate``,
  ``validation``) or ``test``: split = that folder, label = the next one (``DIR/train/x.mp4``:
  split train, no label).  ``split`` (``--split``) sets the split of every video that has no
  split folder.

Videos are files with a known video extension (``VIDEO_EXTENSIONS``, any case); hidden files and
folders (``.name``) are skipped; the order is sorted by relative path, so the manifest is the same
on every run.  Ids follow ``manifest.safe_video_id`` (from the relative path, so
``a/0001.mp4`` and ``b/0001.mp4`` differ); two videos that differ only by extension both get the
hash suffix.  The ``path`` column holds the absolute path of the original file, which the store
keeps as the video's ``source`` attribute.

This module touches only the folder it lists and the manifest file it writes.
"""

from __future__ import annotations

import csv
import io
import os
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from flowprep.atomic import write_text
from flowprep.dataset.manifest import SPLITS, ManifestError, safe_video_id

VIDEO_EXTENSIONS = frozenset(
    ".mp4 .m4v .mov .avi .mkv .webm .mpg .mpeg .mpe .ts .m2ts .mts .flv .wmv .asf .3gp .3g2 .ogv .vob .mxf .y4m".split()
)
_SPLIT_FOLDERS = {"train": "train", "val": "val", "validate": "val", "validation": "val", "test": "test"}


@dataclass(frozen=True)
class FolderVideo:
    video_id: str
    path: Path  # absolute
    rel_path: str  # relative to the folder, '/'-separated
    label: str | None
    split: str | None


def is_video_file(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_EXTENSIONS


def dataset_name(path: Path, fallback: str) -> str:
    """A recipe dataset name (``[A-Za-z0-9_-]{1,64}``) from a folder or file name."""
    stem = path.name if path.is_dir() else path.stem
    ascii_ = "".join(c for c in unicodedata.normalize("NFKD", stem) if not unicodedata.combining(c))
    name = re.sub(r"[^A-Za-z0-9_-]+", "_", ascii_).strip("_")[:64]
    return name or fallback


def _walk(root: Path) -> list[str]:
    out: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in filenames:
            if not f.startswith(".") and is_video_file(Path(f)):
                out.append(Path(dirpath, f).relative_to(root).as_posix())
    return sorted(out)


def _label_split(rel: str, split: str | None) -> tuple[str | None, str | None]:
    folders = PurePosixPath(rel).parts[:-1]
    if folders and folders[0].lower() in _SPLIT_FOLDERS:
        return (folders[1] if len(folders) > 1 else None), _SPLIT_FOLDERS[folders[0].lower()]
    return (folders[0] if folders else None), split


def scan_folder(root: str | Path, split: str | None = None) -> list[FolderVideo]:
    """The videos under ``root`` with their ids, labels and splits (see the module docstring).

    Raises ManifestError when ``root`` is not a folder, holds no video, or ``split`` is unknown.
    """
    root = Path(root).resolve()
    if split is not None and split not in SPLITS:
        raise ManifestError(f"--split {split!r}: allowed: {', '.join(SPLITS)}")
    if not root.is_dir():
        raise ManifestError(f"{root} is not a folder")
    rels = _walk(root)
    if not rels:
        raise ManifestError(f"no videos under {root} (files ending in {', '.join(sorted(VIDEO_EXTENSIONS))})")
    stems = Counter(r.rsplit(".", 1)[0] for r in rels)  # same name, other extension: hash both
    videos = []
    for rel in rels:
        label, sp = _label_split(rel, split)
        vid = safe_video_id(rel, force_hash=stems[rel.rsplit(".", 1)[0]] > 1)
        videos.append(FolderVideo(vid, root / rel, rel, label, sp))
    _check_unique(videos)
    return videos


def single_video(path: str | Path, split: str | None = None) -> list[FolderVideo]:
    """``path`` as a one-video list: id from its file name, no label."""
    path = Path(path).resolve()
    if split is not None and split not in SPLITS:
        raise ManifestError(f"--split {split!r}: allowed: {', '.join(SPLITS)}")
    if not path.is_file():
        raise ManifestError(f"{path}: no such video file")
    return [FolderVideo(safe_video_id(path.name), path, path.name, None, split)]


def _check_unique(videos: list[FolderVideo]) -> None:
    seen: dict[str, str] = {}
    for v in videos:
        if v.video_id in seen:  # only if two SHA-1 prefixes collide, or a name mimics a hashed id
            raise ManifestError(f"{v.rel_path} and {seen[v.video_id]} both map to video id {v.video_id!r}; rename one")
        seen[v.video_id] = v.rel_path


def manifest_text(videos: list[FolderVideo]) -> str:
    """The ``id,path,label,split`` CSV of ``videos`` (what ``manifest.parse_manifest`` reads)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["id", "path", "label", "split"])
    for v in videos:
        w.writerow([v.video_id, str(v.path), v.label or "", v.split or ""])
    return buf.getvalue()


def write_manifest(videos: list[FolderVideo], out: str | Path) -> Path:
    """Write ``manifest_text(videos)`` to ``out`` atomically (unchanged files are not rewritten)."""
    out = Path(out)
    text = manifest_text(videos)
    if out.is_file() and out.read_text(encoding="utf-8") == text:
        return out
    write_text(out, text)
    return out
