"""What ``flowprep run TARGET`` runs: a recipe file, a shipped recipe by name, a folder of videos
or one video; and ``flowprep recipes``, the list of shipped recipes.

Shipped recipes are package data in ``flowprep/recipes/`` (``RECIPES_DIR``), so a name works from
any folder and from a wheel.  A folder or a video gets a generated recipe and manifest in the
store's ``<name>.run/input/`` (flowprep.run.state.input_dir): settings from
``flowprep/recipes/_videos.toml``, rows from flowprep.dataset.folder; a rerun regenerates them
(the same ids, so complete videos are skipped).
"""

from __future__ import annotations

import argparse
import json
import re
import tomllib
from pathlib import Path

from flowprep.atomic import write_text
from flowprep.console import usage_error

RECIPES_DIR = Path(__file__).resolve().parents[1] / "recipes"
ALIASES = {"kinetics": "kinetics400"}
FOLDER_DEFAULTS = RECIPES_DIR / "_videos.toml"  # settings of `run DIR` / `run VIDEO`; not a dataset


def shipped_recipes() -> dict[str, Path]:
    """Name -> recipe file of every shipped recipe (``_*.toml`` are templates, not datasets)."""
    return {f.stem: f for f in sorted(RECIPES_DIR.glob("*.toml")) if not f.name.startswith("_")}


def _not_a_recipe(p: Path) -> SystemExit:
    from flowprep.dataset.folder import is_video_file

    if p.is_dir() or is_video_file(p):
        kind = "a folder" if p.is_dir() else "a video"
        return SystemExit(usage_error(f"{p} is {kind}, not a recipe: `flowprep run {p}` builds a store from it first"))
    return SystemExit(usage_error(f"{p} is not a recipe (a .toml file), a folder of videos or a video file"))


def find_recipe(name_or_path: str) -> Path:
    """A recipe file, or a shipped recipe by name (``kinetics`` = ``kinetics400``)."""
    p = Path(name_or_path)
    if p.is_dir() or (p.is_file() and p.suffix.lower() != ".toml"):
        raise _not_a_recipe(p)
    if p.is_file():
        return p
    if p.suffix == ".toml" or len(p.parts) > 1:
        raise SystemExit(usage_error(f"recipe {p} not found"))
    known = shipped_recipes()
    name = ALIASES.get(name_or_path, name_or_path)
    if name in known:
        return known[name]
    names = ", ".join(sorted({*known, *ALIASES}))
    raise SystemExit(usage_error(
        f"unknown dataset {name_or_path!r}; known: {names} (or give a recipe file, a folder of videos or a video)"
    ))


def _toml_str(s: str) -> str:
    return json.dumps(s, ensure_ascii=False)  # a JSON string is a valid TOML basic string


def prepare_target(target: str, out: str | None, split: str | None) -> tuple[Path, str | None]:
    """(recipe to run, --out) for ``flowprep run TARGET``.

    A folder or a video: writes ``<out>.run/input/{recipe.toml,manifest.csv}`` (``out`` defaults to
    ``out/<folder or file name>.zarr``) and returns that recipe.  Anything else goes to
    ``find_recipe``; ``split`` is then an error (a recipe's manifest has its own splits).
    """
    from flowprep.dataset.folder import dataset_name, is_video_file, scan_folder, single_video, write_manifest
    from flowprep.dataset.manifest import ManifestError
    from flowprep.run.state import input_dir

    p = Path(target)
    if not (p.is_dir() or (p.is_file() and is_video_file(p))):
        recipe = find_recipe(target)
        if split is not None:
            raise SystemExit(usage_error("--split is for a folder of videos or a video; a recipe's manifest has the splits"))
        return recipe, out
    try:
        videos = scan_folder(p, split) if p.is_dir() else single_video(p, split)
    except ManifestError as e:
        raise SystemExit(usage_error(str(e))) from None
    name = dataset_name(p.resolve(), "videos" if p.is_dir() else "video")
    out = out or f"out/{name}.zarr"
    what = f"videos under {p.resolve()}" if p.is_dir() else f"the video {p.resolve()}"
    folder = input_dir(out)
    recipe = folder / "recipe.toml"
    if recipe.is_file():  # one store per source: never mix two folders' videos in one index
        try:
            before = tomllib.loads(recipe.read_text(encoding="utf-8")).get("description")
        except (tomllib.TOMLDecodeError, UnicodeDecodeError):
            before = None
        if before != what:
            raise SystemExit(usage_error(f"{out} was built from {before or 'another source'}, not {what}; give another --out"))
    write_manifest(videos, folder / "manifest.csv")
    text = (
        f"# Written by `flowprep run {target}`, rewritten by each such run (edit a copy, not this file).\n"
        f"dataset = {_toml_str(name)}\ndescription = {_toml_str(what)}\nmanifest = \"manifest.csv\"\n\n"
        + FOLDER_DEFAULTS.read_text(encoding="utf-8")
    )
    if not recipe.is_file() or recipe.read_text(encoding="utf-8") != text:
        write_text(recipe, text)
    labels = {v.label for v in videos if v.label}
    print(f"{what}: {len(videos)} video(s), {len(labels) or 'no'} label(s); manifest {folder / 'manifest.csv'}")
    return recipe, out


# -- flowprep recipes ---------------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", nargs="?", help="print this recipe (its manifest path made absolute): save it to make your own")


def command(args: argparse.Namespace) -> int:
    from flowprep.run.recipe import RecipeError, load_recipe

    if args.name:
        path = find_recipe(args.name)
        text = path.read_text(encoding="utf-8")

        def absolute(m: re.Match) -> str:  # so a copy saved anywhere still finds its manifest
            value = m.group(2)
            return m.group(0) if value.startswith("data:") else m.group(1) + _toml_str(str((path.parent / value).resolve()))

        print(re.sub(r'(?m)^(manifest\s*=\s*)"([^"]*)"', absolute, text, count=1), end="")
        return 0
    print(f"shipped recipes ({RECIPES_DIR}); run one with `flowprep run NAME`:")
    for name, path in shipped_recipes().items():
        try:
            cfg = load_recipe(path)
        except RecipeError as e:
            print(f"  {name:<18} broken: {e}")
            continue
        data = tomllib.loads(path.read_text(encoding="utf-8"))
        if cfg.manifest.exists():
            state = "ready"
        else:
            from flowprep.dataset.manifests import missing_manifest_hint

            state = f"needs its manifest ({missing_manifest_hint(cfg.manifest) or cfg.manifest})"
        print(f"  {name:<18} {data.get('description', '')}\n  {'':<18} {state}")
    aliases = ", ".join(f"{a} = {b}" for a, b in ALIASES.items())
    print(f"aliases: {aliases}.  Your own: flowprep run my.toml | flowprep run DIR | flowprep run VIDEO")
    return 0
