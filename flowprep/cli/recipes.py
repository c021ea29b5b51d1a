"""Recipes by name: a TOML file, or a dataset name looked up in ``pipelines/``."""

from __future__ import annotations

from pathlib import Path

from flowprep.console import usage_error

PIPELINES_DIRS = (Path.cwd() / "pipelines", Path(__file__).resolve().parents[2] / "pipelines")
ALIASES = {"kinetics": "kinetics400"}


def find_recipe(name_or_path: str) -> Path:
    """A recipe file, or a dataset name looked up in pipelines/ (``kinetics`` = ``kinetics400``)."""
    p = Path(name_or_path)
    if p.suffix == ".toml" or p.exists():
        if not p.is_file():
            raise SystemExit(usage_error(f"recipe {p} not found"))
        return p
    name = ALIASES.get(name_or_path, name_or_path)
    known: set[str] = set(ALIASES)
    for d in PIPELINES_DIRS:
        if (d / f"{name}.toml").is_file():
            return d / f"{name}.toml"
        known |= {f.stem for f in d.glob("*.toml")}
    raise SystemExit(usage_error(f"unknown dataset {name_or_path!r}; known: {', '.join(sorted(known))}"))

