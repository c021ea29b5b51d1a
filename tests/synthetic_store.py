"""Builds real stores for the trainer's tests: synthetic clips -> manifest -> flowprep.run.pipeline.run."""

from __future__ import annotations

from pathlib import Path

from conftest import Clip, write_dataset, write_recipe

from flowprep.run.pipeline import run
from flowprep.run.recipe import load_recipe


def build_store(folder: Path, videos: list[Clip], *, h: int = 64, w: int = 80, jobs: int = 1) -> Path:
    """``videos``: one ``Clip`` each (its name is the video id; ``h``, ``w`` here win).  Returns the store's path."""
    manifest = write_dataset(
        folder, [v._replace(h=h, w=w) for v in videos], manifest="manifest.csv", clips="clips", ids=True
    )
    recipe = write_recipe(folder, manifest, short_side=min(h, w))
    cfg = load_recipe(recipe, out=str(folder / "s.zarr"), progress=False, jobs=jobs)
    summary = run(cfg)
    assert summary.done == len(videos), summary
    return cfg.out
