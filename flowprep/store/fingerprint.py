"""Settings fingerprint: the settings that change a store's content, recorded in its root.

``attributes.flowprep.settings`` of the root group (FORMAT.md) holds what a rerun must share
with the run that built the store: format version, decode (fps, short side, interpolation),
flow (algorithm, backend family, every TV-L1 parameter, bound, quantization).  A run whose
settings differ refuses (``check``) and names the differing fields, so a store never mixes
videos of two settings; ``--overwrite`` redoes every video and records the new settings.

Stores from before the fingerprint have none in the root: their settings are read from a
complete video's attributes (the same fields), and written to the root by the next run.
"""

from __future__ import annotations

import json
import os
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
    return normal({
        "format_version": attrs.get("format_version"),
        "decode": {"fps": dec.get("fps", attrs.get("fps")), "short_side": dec.get("short_side"),
                   "interpolation": dec.get("interpolation")},
        "flow": {"algorithm": flow.get("algorithm"), "backend": flow.get("backend"), "params": flow.get("params"),
                 "bound_px": flow.get("bound_px"), "quantization": {"dtype": q.get("dtype"), "scale": q.get("scale")}},
        "codecs": attrs.get("codecs"),
    })


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


def check(store_path: str | Path, settings: dict[str, Any], overwrite: bool) -> None:
    """Refuse (StoreError) a run whose content settings differ from the store's, unless ``overwrite``."""
    stored = recorded(store_path)
    diff = differences(stored, settings) if stored is not None else []
    if diff and not overwrite:
        raise StoreError(
            f"{store_path} was built with other settings ({'; '.join(diff)}): its videos would mix with "
            "this run's; use a new store (--out) or --overwrite to redo every video with these settings"
        )
    record(store_path, settings)
