"""Builds real stores for the trainer's tests: synthetic clips -> manifest -> flowprep.run.pipeline.run."""

from __future__ import annotations

from pathlib import Path

from conftest import make_clip, write_recipe

from flowprep.dataset.demo import Motion
from flowprep.run.pipeline import run
from flowprep.run.recipe import load_recipe


def build_store(
    folder: Path, videos: list[tuple[str, Motion, int, str, str, int]], *, h: int = 64, w: int = 80, jobs: int = 1
) -> Path:
    """``videos``: (id, motion, frames, label, split, texture seed).  Returns the store's path."""
    lines = ["id,path,label,split"]
    for vid, motion, n, label, split, seed in videos:
        make_clip(folder / "clips" / f"{vid}.mkv", motion, n=n, h=h, w=w, seed=seed)
        lines.append(f"{vid},clips/{vid}.mkv,{label},{split}")
    manifest = folder / "manifest.csv"
    manifest.write_text("\n".join(lines) + "\n")
    recipe = write_recipe(folder, manifest, short_side=min(h, w))
    cfg = load_recipe(recipe, out=str(folder / "s.zarr"), progress=False, jobs=jobs)
    summary = run(cfg)
    assert summary.done == len(videos), summary
    return cfg.out
