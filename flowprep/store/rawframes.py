"""Rawframes: a store to and from mmaction2 / denseflow JPEG folders, so users move either way.

    <root>/<video_id>/img_00001.jpg ...      RGB frames, 1-based, JPEG (OpenCV, quality 95)
    <root>/<video_id>/flow_x_00001.jpg ...   u, v of flow[t] (frame t -> t+1), 8-bit gray JPEG,
    <root>/<video_id>/flow_y_00001.jpg ...   v8 = round((px / bound + 1) * 127.5), bound 20 px
    <root>/<split>_list_rawframes.txt        mmaction2 annotation lines "<video_id> <frames> <label index>"
    <root>/<split>_list_rawframes_flow.txt   the same with the flow image count (frames - 1)
    <root>/classes.txt                       label names, line i = label index i

Export reads a store (never writes it); import writes each video through ``VideoWriter`` into
the staging folder the caller hands it (the run state owns those), so an imported video appears
complete or not at all.  Flow images are 8-bit: importing maps v8 to int8 as
``q = round((v8 / 127.5 - 1) * 127)``, the store's step is then the images' step (exact to the
image; the JPEG loss happened when they were written).
"""

from __future__ import annotations

import errno
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from flowprep.store.zarr_store import FORMAT_VERSION, Store, StoreError, VideoWriter, WriteConfig, is_complete


def flow_q_to_u8(q: np.ndarray) -> np.ndarray:
    """int8 q (q / 127 in [-1, 1]) -> denseflow's 8-bit value round((q / 127 + 1) * 127.5)."""
    return np.clip(np.round((q.astype(np.float32) / 127 + 1) * 127.5), 0, 255).astype(np.uint8)


def flow_u8_to_q(v8: np.ndarray) -> np.ndarray:
    """denseflow's 8-bit value -> int8 q = round((v8 / 127.5 - 1) * 127), in [-127, 127]."""
    return np.clip(np.round((v8.astype(np.float32) / 127.5 - 1) * 127), -127, 127).astype(np.int8)


def _imwrite(path: Path, img: np.ndarray, params: list[int]) -> None:
    # OpenCV only returns False (read-only folder, full disk): never mark such a folder complete
    if not cv2.imwrite(str(path), img, params):
        raise OSError(errno.EIO, "OpenCV could not write the JPEG (read-only folder or full disk?)", str(path))


def export_rawframes(
    store: Store,
    root: str | Path,
    *,
    video_ids: list[str] | None = None,
    quality: int = 95,
    flow: bool = True,
    progress: Callable[[str], None] | None = None,
) -> dict[str, int]:
    """Write each video's rawframes folder (skipping complete ones) and the list files.  Returns counts."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    ids = video_ids or store.video_ids
    infos = {v: store.info(v) for v in ids}
    classes = sorted({str(i.get("label") or "") for i in infos.values()})
    params = [cv2.IMWRITE_JPEG_QUALITY, quality]
    written = 0
    for vid in ids:
        d = root / vid
        done = d / ".complete"
        if done.exists():
            continue
        d.mkdir(parents=True, exist_ok=True)
        n = int(infos[vid]["n_frames"])
        for start in range(0, n, 64):  # a shard at a time: memory stays small for long videos
            for t, frame in enumerate(store.read_rgb_uint8(vid, start, start + 64), start):
                _imwrite(d / f"img_{t + 1:05d}.jpg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), params)
            if flow:
                for t, f in enumerate(flow_q_to_u8(store.read_flow_int8(vid, start, start + 64)), start):
                    _imwrite(d / f"flow_x_{t + 1:05d}.jpg", f[..., 0], params)
                    _imwrite(d / f"flow_y_{t + 1:05d}.jpg", f[..., 1], params)
        done.write_text("")  # a rerun after a kill redoes only the folders without it
        written += 1
        if progress:
            progress(vid)
    splits: dict[str, list[str]] = {}
    for vid in ids:
        splits.setdefault(str(infos[vid].get("split") or "all"), []).append(vid)
    index = {c: i for i, c in enumerate(classes)}
    for split, vids in splits.items():
        rgb = [f"{v} {infos[v]['n_frames']} {index[str(infos[v].get('label') or '')]}" for v in vids]
        (root / f"{split}_list_rawframes.txt").write_text("\n".join(rgb) + "\n")
        if flow:
            fl = [f"{v} {infos[v]['n_flow']} {index[str(infos[v].get('label') or '')]}" for v in vids]
            (root / f"{split}_list_rawframes_flow.txt").write_text("\n".join(fl) + "\n")
    (root / "classes.txt").write_text("\n".join(classes) + "\n")
    return {"videos": len(ids), "written": written, "skipped": len(ids) - written}


@dataclass(frozen=True)
class RawframesVideo:
    """One rawframes folder to import, with its label and split."""

    folder: Path
    video_id: str
    label: str
    split: str


def find_videos(
    root: str | Path,
    *,
    list_file: str | Path | None = None,
    classes_file: str | Path | None = None,
    split: str = "train",
) -> list[RawframesVideo]:
    """The folders to import: those named by an mmaction2 list file (``<dir> <frames> <label>``; label
    indices mapped through ``classes_file`` when given), else every folder under ``root`` holding
    ``img_*.jpg`` (label: its parent folder's name below ``root``, as in ``<label>/<video>/``)."""
    root = Path(root)
    if not root.is_dir():
        raise StoreError(f"{root}: no such folder")
    names = _read_text(classes_file, "--classes").splitlines() if classes_file else None
    out = []
    if list_file:
        for n, line in enumerate(_read_text(list_file, "--list").splitlines(), 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) < 3:
                raise StoreError(f"{list_file}:{n}: expected '<frame dir> <total frames> <label>', got {line!r}")
            label = parts[2]
            if names is not None:
                if not label.isdigit() or int(label) >= len(names):
                    raise StoreError(
                        f"{list_file}:{n}: label {label!r} is not an index into {classes_file} ({len(names)} classes)"
                    )
                label = names[int(label)]
            folder = root / parts[0]
            out.append(RawframesVideo(folder, _video_id(parts[0]), label, split))
    else:
        for img in sorted(root.rglob("img_00001.jpg")):
            rel = img.parent.relative_to(root)
            label = rel.parent.name if len(rel.parts) > 1 else ""
            name = rel.name or root.resolve().name  # root is itself one video's folder
            out.append(RawframesVideo(img.parent, _video_id(name), label, split))
    if not out:
        raise StoreError(
            f"{root}: no rawframes folders (no img_00001.jpg below it{', none listed' if list_file else ''})"
        )
    return out


def _video_id(name: str) -> str:
    vid = re.sub(r"[^A-Za-z0-9_.-]", "_", Path(name).name)[:128]
    return "_" + vid[1:] if vid.startswith(".") else vid


def _frames(folder: Path, prefix: str) -> list[Path]:
    pat = re.compile(rf"{prefix}_(\d{{5,}})\.jpg")
    found = sorted((int(m.group(1)), p) for p in folder.iterdir() if (m := pat.fullmatch(p.name)))
    if [i for i, _ in found] != list(range(1, len(found) + 1)):
        raise StoreError(f"{folder}: {prefix}_*.jpg are not numbered 1..{len(found)} without gaps")
    return [p for _, p in found]


def _read(path: Path, flags: int, size: tuple[int, int] | None = None) -> np.ndarray:
    """A frame; ``size`` (h, w): the video's, and a frame of another size is an error naming it."""
    img = cv2.imread(str(path), flags)
    if img is None:
        raise StoreError(f"{path}: not a readable JPEG")
    if size is not None and img.shape[:2] != size:
        raise StoreError(
            f"{path}: frame of {img.shape[1]}x{img.shape[0]}, the video's first frame is {size[1]}x{size[0]}"
        )
    return img


def _read_text(path: str | Path, what: str) -> str:
    """A list or classes file as text; missing or binary is one line naming it."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise StoreError(f"{what} {path}: no such file") from None
    except IsADirectoryError:
        raise StoreError(f"{what} {path}: is a folder, not a text file") from None
    except UnicodeDecodeError as e:
        raise StoreError(
            f"{what} {path}: not a text file (byte 0x{e.object[e.start]:02x} at offset {e.start})"
        ) from None


def _blocks(paths: list[Path], n: int, read: Callable[[Path], np.ndarray]) -> Iterator[np.ndarray]:
    for i in range(0, n, 64):
        yield np.stack([read(p) for p in paths[i : min(i + 64, n)]])


def import_video(
    video: RawframesVideo,
    store_path: str | Path,
    staging: Path,
    cfg: WriteConfig,
    *,
    bound_px: float = 20.0,
    fps: float = 25.0,
    overwrite: bool = False,
) -> int:
    """Write one rawframes folder as a store video (frames and flow from its JPEGs).  Returns frames."""
    imgs = _frames(video.folder, "img")
    fx, fy = _frames(video.folder, "flow_x"), _frames(video.folder, "flow_y")
    n = len(imgs)
    if n < 2:
        raise StoreError(f"{video.folder}: {n} frame(s); a store video needs at least 2")
    if len(fx) != len(fy) or len(fx) not in (n - 1, n):  # some tools write a last, duplicated field
        raise StoreError(
            f"{video.folder}: {n} img, {len(fx)} flow_x and {len(fy)} flow_y files; need {n - 1} flow pairs"
        )
    first = _read(imgs[0], cv2.IMREAD_COLOR)
    h, w = first.shape[:2]
    writer = VideoWriter(store_path, video.video_id, h, w, cfg, staging)
    try:
        rgb = _blocks(imgs, n, lambda p: cv2.cvtColor(_read(p, cv2.IMREAD_COLOR, (h, w)), cv2.COLOR_BGR2RGB))
        u = _blocks(fx, n - 1, lambda p: _read(p, cv2.IMREAD_GRAYSCALE, (h, w)))
        v = _blocks(fy, n - 1, lambda p: _read(p, cv2.IMREAD_GRAYSCALE, (h, w)))
        for block in rgb:
            if block.shape[1:3] != (h, w):
                raise StoreError(f"{video.folder}: frames of different sizes ({block.shape[1:3]} and {(h, w)})")
            fu, fv = next(u, None), next(v, None)
            flow = np.zeros((0, h, w, 2), np.int8) if fu is None or fv is None else flow_u8_to_q(np.stack([fu, fv], -1))
            writer.append(block, flow)
        writer.commit(_attrs(video, h, w, bound_px, fps), overwrite=overwrite)
    except BaseException:
        writer.abort()
        raise
    return n


def _attrs(video: RawframesVideo, h: int, w: int, bound_px: float, fps: float) -> dict[str, Any]:
    return {
        "video_id": video.video_id,
        "label": video.label,
        "split": video.split,
        "source": f"rawframes:{video.folder}",
        "manifest_line": None,
        "time_start": None,
        "time_end": None,
        "fps": fps,
        "height": h,
        "width": w,
        "rgb": {"dtype": "uint8", "to_float": "x / 127.5 - 1", "range": [-1, 1]},
        "flow": {
            "algorithm": "imported from rawframes",
            "bound_px": bound_px,
            "quantization": {
                "dtype": "int8",
                "scale": 127,
                "encode": "q = round((v8 / 127.5 - 1) * 127) of the 8-bit flow images",
                "decode": "q / 127 (in [-1, 1]); x bound for pixels",
            },
            "channels": ["u (right)", "v (down)"],
            "pairing": "flow[t] maps frame t to frame t+1",
        },
        "format_version": FORMAT_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def import_rawframes(
    videos: list[RawframesVideo],
    store_path: str | Path,
    staging: Callable[[str], Path],
    cfg: WriteConfig = WriteConfig(),
    *,
    bound_px: float = 20.0,
    fps: float = 25.0,
    overwrite: bool = False,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Import folders into a store (created beforehand); complete videos are skipped.  A folder that
    cannot be read is reported in ``failed`` (id -> reason) and does not stop the others."""
    done, skipped, failed = 0, 0, {}
    seen: dict[str, Path] = {}
    for video in videos:
        if video.video_id in seen:
            failed[video.video_id] = f"{video.folder}: same video id as {seen[video.video_id]}"
            continue
        seen[video.video_id] = video.folder
        if not overwrite and is_complete(store_path, video.video_id):
            skipped += 1
            continue
        try:
            import_video(
                video, store_path, staging(video.video_id), cfg, bound_px=bound_px, fps=fps, overwrite=overwrite
            )
            done += 1
        except (StoreError, OSError, ValueError) as e:
            failed[video.video_id] = str(e)
        if progress:
            progress(video.video_id)
    return {"done": done, "skipped": skipped, "failed": failed}
