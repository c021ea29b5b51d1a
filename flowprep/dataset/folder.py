"""Your own videos as a manifest: a folder of videos (``flowprep run DIR``) or one video
(``flowprep run VIDEO``) -> ``id,path,label,split`` rows.

Folder layouts understood, decided per video by its path under ``DIR``:

* ``DIR/<class>/.../<video>``: label = the first folder's name (UCF-101 / Kinetics style);
* ``DIR/<video>`` (a flat folder): no label;
* ``DIR/<split>/<class>/<video>`` when the first folder is ``train``, ``val`` (``validate``,
  ``validation``) or ``test``: split = that folder, label = the next one (``DIR/train/x.mp4``:
  split train, no label).  ``split`` (``--split``) sets the split of every video that has no
  split folder.  ``flowprep run DIR`` gives a folder with no split folders at all and no
  ``split`` a deterministic, stratified train/val split by video id (``assign_splits``, 20% val;
  ``scan_folder`` itself leaves such videos without a split), so ``train`` and ``evaluate`` work
  with their defaults.

Videos are files with a known video extension (``VIDEO_EXTENSIONS``, any case); hidden files and
folders (``.name``) are skipped; the order is sorted by relative path, so the manifest is the same
on every run.  Ids follow ``manifest.safe_video_id`` (from the relative path, so
``a/0001.mp4`` and ``b/0001.mp4`` differ); videos whose ids would be equal ignoring case (same
name, other extension; ``Clip.mp4`` and ``clip.mp4``) all get the hash suffix.  Symlinks are
followed, each real file once; symlink loops are skipped and named in one warning line.  The ``path`` column holds the absolute path of the original file, which the store
keeps as the video's ``source`` attribute.

This module touches only the folder it lists and the manifest file it writes.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import os
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath

from flowprep.atomic import write_text
from flowprep.dataset.manifest import SPLITS, ManifestError, safe_video_id

VIDEO_EXTENSIONS = frozenset(
    ".mp4 .m4v .mov .avi .mkv .webm .mpg .mpeg .mpe .ts .m2ts .mts .flv .wmv .asf .3gp .3g2 .ogv .vob .mxf .y4m".split()
)
log = logging.getLogger("flowprep")
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


def _walk(root: Path) -> tuple[list[str], list[str]]:
    """(video paths relative to ``root``, symlinked folders skipped as loops).

    Symlinks are followed, but a folder already on the way down (a loop such as ``cls/up -> ..``)
    is not entered again, and a file reached by several paths is listed once, by its own path if
    it has one without symlinks, else its first in sorted order: each real file is one video."""
    found: list[tuple[str, str]] = []
    loops: list[str] = []
    entered: set[str] = set()  # real folders walked: a symlink to one of them is not followed again
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        here = os.path.realpath(dirpath)
        entered.add(here)
        keep = []
        for d in sorted(x for x in dirnames if not x.startswith(".")):
            target = os.path.realpath(os.path.join(dirpath, d))
            if not os.path.islink(os.path.join(dirpath, d)):
                keep.append(d)
            elif here == target or here.startswith(target + os.sep):
                loops.append(Path(dirpath, d).relative_to(root).as_posix())
            elif target not in entered:
                entered.add(target)
                keep.append(d)
        dirnames[:] = keep
        for f in filenames:
            if not f.startswith(".") and is_video_file(Path(f)):
                found.append(
                    (Path(dirpath, f).relative_to(root).as_posix(), os.path.realpath(os.path.join(dirpath, f)))
                )
    out, seen = [], set()
    real_root = os.path.realpath(root)
    # a file's own path (no symlink on the way) first, so its label is its real folder's
    for rel, real in sorted(found, key=lambda f: (f[1] != os.path.join(real_root, f[0]), f[0])):
        if real not in seen:
            seen.add(real)
            out.append(rel)
    return sorted(out), sorted(loops)


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
    rels, loops = _walk(root)
    if loops:
        log.warning(
            "%s: %d symlink loop(s) not followed: %s",
            root,
            len(loops),
            ", ".join(loops[:5]) + (" ..." if len(loops) > 5 else ""),
        )
    if not rels:
        raise ManifestError(f"no videos under {root} (files ending in {', '.join(sorted(VIDEO_EXTENSIONS))})")
    # Ids that would collide case-insensitively (same name, other extension; Clip.mp4 and
    # clip.mp4) all get the hash suffix: one folder on a case-folding file system otherwise.
    plain = {rel: safe_video_id(rel) for rel in rels}
    folded = Counter(v.casefold() for v in plain.values())
    videos = []
    for rel in rels:
        label, sp = _label_split(rel, split)
        vid = safe_video_id(rel, force_hash=True) if folded[plain[rel].casefold()] > 1 else plain[rel]
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


# Folder runs without split folders: a fifth of each class for validation (the usual hold-out of
# UCF-101-sized sets; at least one video of each class with two or more).
VAL_FRACTION = 0.2


def _unit_hash(video_id: str) -> float:
    """A number in [0, 1) fixed by the id alone (SHA-1), so adding files never moves old ones."""
    return int(hashlib.sha1(video_id.encode("utf-8")).hexdigest()[:12], 16) / 16**12


def assign_splits(videos: list[FolderVideo], val_fraction: float = VAL_FRACTION) -> list[FolderVideo]:
    """Deterministic, stratified train/val for videos that have no split.

    A video goes to ``val`` when ``_unit_hash(id) < val_fraction``, else ``train``: a function of
    its id alone.  Per label (unlabelled videos form one group) two corrections keep small classes
    usable: a class of two or more videos with none in val sends its lowest-hash video there, one
    with none in train keeps its highest-hash video in train, and a class of one video is train.
    Only these corrections can move an old video when files are added.  Videos that already have
    a split keep it.
    """
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction={val_fraction!r}: must be in (0, 1)")
    groups: dict[str | None, list[FolderVideo]] = {}
    for v in videos:
        if v.split is None:
            groups.setdefault(v.label, []).append(v)
    split: dict[str, str] = {}
    for members in groups.values():
        ranked = sorted(members, key=lambda v: (_unit_hash(v.video_id), v.video_id))
        for v in ranked:
            split[v.video_id] = "val" if _unit_hash(v.video_id) < val_fraction else "train"
        if len(ranked) == 1:
            split[ranked[0].video_id] = "train"
        elif not any(split[v.video_id] == "val" for v in ranked):
            split[ranked[0].video_id] = "val"
        elif not any(split[v.video_id] == "train" for v in ranked):
            split[ranked[-1].video_id] = "train"
    return [replace(v, split=split[v.video_id]) if v.video_id in split else v for v in videos]


def _check_unique(videos: list[FolderVideo]) -> None:
    seen: dict[str, str] = {}
    for v in videos:
        key = v.video_id.casefold()
        if key in seen:  # only if two SHA-1 prefixes collide, or a name mimics a hashed id
            raise ManifestError(
                f"{v.rel_path} and {seen[key]} both map to video id {v.video_id!r} (ignoring case); rename one"
            )
        seen[key] = v.rel_path


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
