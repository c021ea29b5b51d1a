"""Settings fingerprint: the settings that change a store's content, recorded in its root.

``attributes.flowprep.settings`` of the root group (FORMAT.md) holds what a rerun must share
with the run that built the store: format version, decode (fps, short side, interpolation),
flow (algorithm, backend family, every TV-L1 parameter, bound, quantization).  A run whose
settings differ refuses (``check``) and names the differing fields, so a store never mixes
videos of two settings; ``--overwrite`` redoes every video and records the new settings.

Every video records its own settings (attribute ``settings``; older videos: the same fields
of their attributes), and a video is **current** only when they equal the root's
(``is_current``): a run skips only current videos, and ``verify`` reports the others as
damaged.  ``--overwrite`` with new settings first takes every video of other settings out of
the store (``check``'s ``invalidate``, whatever ``--limit``, ``--repair`` or the task split say),
then records the new settings, so a killed overwrite is resumed by running it again.

Stores from before the fingerprint have none in the root: their settings are read from a
complete video's attributes (the same fields), and written to the root by the next run.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flowprep.atomic import write_json
from flowprep.store.errors import StoreError


def normal(settings: dict[str, Any]) -> dict[str, Any]:
    """JSON round trip, numbers as floats: 20 and 20.0 are the same bound."""

    def fix(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: fix(x) for k, x in v.items()}
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return v
        return float(v)

    return fix(json.loads(json.dumps(settings)))


def from_video_attrs(attrs: dict[str, Any]) -> dict[str, Any]:
    """The fingerprint fields of a video's attributes (for stores without a recorded fingerprint)."""
    flow = attrs.get("flow") or {}
    dec = attrs.get("decode") or {}
    q = flow.get("quantization") or {}
    return normal(
        {
            "format_version": attrs.get("format_version"),
            "decode": {
                "fps": dec.get("fps", attrs.get("fps")),
                "short_side": dec.get("short_side"),
                "interpolation": dec.get("interpolation"),
            },
            "flow": {
                "algorithm": flow.get("algorithm"),
                "backend": flow.get("backend"),
                "params": flow.get("params"),
                "bound_px": flow.get("bound_px"),
                "quantization": {"dtype": q.get("dtype"), "scale": q.get("scale")},
            },
            "codecs": attrs.get("codecs"),
        }
    )


def digest(settings: dict[str, Any]) -> str:
    """A short, stable name of a settings record (leases carry it: flowprep.run.state.live_leases)."""
    return hashlib.sha256(json.dumps(normal(settings), sort_keys=True).encode()).hexdigest()[:16]


def video_settings(attrs: dict[str, Any]) -> dict[str, Any]:
    """The settings a video was made with: its ``settings`` attribute, else the same fields of its attributes."""
    own = attrs.get("settings")
    return normal(own) if isinstance(own, dict) else from_video_attrs(attrs)


def _video_attrs(video_dir: Path) -> dict[str, Any] | None:
    try:
        attrs = json.loads((video_dir / "zarr.json").read_text()).get("attributes")
    except (OSError, ValueError, AttributeError):
        return None
    return attrs if isinstance(attrs, dict) else None


def is_current(store_path: str | Path, video_id: str, settings: dict[str, Any]) -> bool:
    """Is ``video_id`` complete in the store and made with ``settings``?"""
    attrs = _video_attrs(Path(store_path) / "videos" / video_id)
    return attrs is not None and video_settings(attrs) == normal(settings)


def stale_videos(store_path: str | Path, settings: dict[str, Any]) -> list[str]:
    """The complete videos of the store made with other settings than ``settings``."""
    videos = Path(store_path) / "videos"
    want = normal(settings)
    stale = []
    for entry in sorted(os.scandir(videos), key=lambda e: e.name) if videos.is_dir() else []:
        attrs = _video_attrs(Path(entry.path))
        if attrs is not None and video_settings(attrs) != want:
            stale.append(entry.name)
    return stale


def root_settings(store_path: str | Path) -> dict[str, Any] | None:
    """The fingerprint recorded in the root only (None: an imported or pre-fingerprint store)."""
    info = (_root(Path(store_path)).get("attributes") or {}).get("flowprep") or {}
    return info.get("settings")


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def differences(stored: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    """``"decode.short_side: store 64, this run 96"`` for each field that differs."""
    a, b = _flat(normal(stored)), _flat(normal(wanted))
    return [f"{k}: store {a.get(k)!r}, this run {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def _root(path: Path) -> dict[str, Any]:
    try:
        return json.loads((path / "zarr.json").read_text())
    except (OSError, ValueError) as e:
        raise StoreError(f"{path}: cannot read zarr.json ({e})") from None


def recorded(store_path: str | Path) -> dict[str, Any] | None:
    """The fingerprint recorded in the root, else one complete video's, else None (an empty store)."""
    path = Path(store_path)
    info = (_root(path).get("attributes") or {}).get("flowprep") or {}
    if info.get("settings") is not None:
        return info["settings"]
    videos = path / "videos"
    for entry in sorted(os.scandir(videos), key=lambda e: e.name) if videos.is_dir() else []:
        try:
            meta = json.loads(Path(entry.path, "zarr.json").read_text())
        except (OSError, ValueError):
            continue
        return from_video_attrs(meta.get("attributes") or {})
    return None


def record(store_path: str | Path, settings: dict[str, Any]) -> None:
    """Write the fingerprint into the root's attributes (atomic replace; equal content is left alone)."""
    path = Path(store_path)
    meta = _root(path)
    info = meta.setdefault("attributes", {}).setdefault("flowprep", {})
    if info.get("settings") == normal(settings):
        return
    info["settings"] = normal(settings)
    write_json(path / "zarr.json", meta, indent=2)


def check(
    store_path: str | Path,
    settings: dict[str, Any],
    overwrite: bool,
    invalidate: Callable[[list[str]], None] | None = None,
) -> list[str]:
    """Refuse (StoreError) a run whose content settings differ from the store's, unless ``overwrite``;
    returns the differing fields.  With ``overwrite`` and a difference, ``invalidate`` first gets
    every video of other settings (it takes them out of the store), then the new settings are
    recorded: a kill in between leaves the old settings recorded, so the same run redoes it."""
    stored = recorded(store_path)
    diff = differences(stored, settings) if stored is not None else []
    if diff and not overwrite:
        raise StoreError(
            f"{store_path} was built with other settings ({'; '.join(diff)}): its videos would mix with "
            "this run's; use a new store (--out) or --overwrite to redo every video with these settings"
        )
    if diff and invalidate is not None:
        invalidate(stale_videos(store_path, settings))
    record(store_path, settings)
    return diff
