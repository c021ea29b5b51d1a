"""What ``flowprep run TARGET`` runs: a recipe file, a shipped recipe by name, a folder of videos
or one video; and ``flowprep recipes``, the list of shipped recipes.

Shipped recipes are package data, the package ``flowprep.recipes`` (``RECIPES_DIR``): the
top-level ``pipelines/`` folder of a clone, ``flowprep/recipes/`` in a wheel (setup.cfg maps one to
the other), so a name works from any folder, a clone or a wheel.  A folder or a video gets a
generated recipe and manifest in the store's ``<name>.run/input/`` (flowprep.run.state.input_dir):
settings from ``pipelines/_videos.toml``, rows from flowprep.dataset.folder; a rerun regenerates them
(the same ids, so complete videos are skipped).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import sys
import tomllib
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flowprep.atomic import write_text
from flowprep.console import usage_error


def recipes_dir() -> Path:
    """Where the package ``flowprep.recipes`` is: found by the import system, not beside this file,
    because in a clone it is ``pipelines/`` (an editable install maps it there)."""
    spec = importlib.util.find_spec("flowprep.recipes")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "flowprep's shipped recipes (package flowprep.recipes) are missing: install flowprep (make install, pip install -e . or the wheel)"
        )
    return Path(next(iter(spec.submodule_search_locations))).resolve()


RECIPES_DIR = recipes_dir()
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
    if name_or_path.endswith(("/", os.sep)):  # meant as a folder: not a dataset name
        raise SystemExit(usage_error(f"no folder {name_or_path}" + _near_miss(p)))
    if p.suffix == ".toml" or len(p.parts) > 1:
        raise SystemExit(usage_error(f"recipe {p} not found" + _near_miss(p)))
    known = shipped_recipes()
    name = ALIASES.get(name_or_path, name_or_path)
    if name in known:
        return known[name]
    names = ", ".join(sorted({*known, *ALIASES}))
    near = _near_miss(p)
    raise SystemExit(
        usage_error(
            f"unknown dataset {name_or_path!r}; known: {names} (or give a recipe file, a folder of videos or a video)"
            if not near
            else f"no file or folder {name_or_path!r} and no dataset of that name{near}"
        )
    )


def _near_miss(p: Path) -> str:
    """``"; did you mean myvids/?"`` when a file or folder beside ``p`` has a close name, else ``""``."""
    import difflib

    parent = p.parent if str(p.parent) else Path(".")
    try:
        names = [e.name + ("/" if e.is_dir() else "") for e in parent.iterdir() if not e.name.startswith(".")]
    except OSError:
        return ""
    close = difflib.get_close_matches(p.name, [n.rstrip("/") for n in names], n=1, cutoff=0.75)
    if not close:
        return ""
    match = next(n for n in names if n.rstrip("/") == close[0])
    return f"; did you mean {parent / match if str(parent) != '.' else match}?"


def _toml_str(s: str) -> str:
    return json.dumps(s, ensure_ascii=False)  # a JSON string is a valid TOML basic string


@dataclass(frozen=True, kw_only=True)
class FolderSettings:
    """The options of ``run DIR`` / ``run VIDEO`` / ``recipes --from DIR`` that shape the content."""

    fps: float | None = None  # None: the template's 25
    short_side: int | None = None  # None: the preset's, else the template's 256
    preset: str | None = None  # flowprep.flow.presets; None: the defaults (i3d)
    flow_params: Mapping[str, Any] = field(default_factory=dict)  # --flow-param NAME=VALUE, over the preset

    def check(self) -> None:
        """Raise ValueError naming the option, before any file is written."""
        from flowprep.dataset.decode import DecodeConfig
        from flowprep.flow.api import resolve_params
        from flowprep.flow.presets import get_preset, preset_params

        side = self.short_side
        if self.preset is not None:
            side = side or get_preset(self.preset).short_side
        try:
            DecodeConfig(fps=25.0 if self.fps is None else self.fps, short_side=256 if side is None else side)
        except ValueError as e:
            raise ValueError(
                str(e).replace("decode.fps=", "--fps ").replace("decode.short_side=", "--short-side ")
            ) from None
        resolve_params(preset_params(self.preset, self.flow_params))

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> FolderSettings:
        from flowprep.flow.presets import parse_flow_params

        return cls(
            fps=args.fps,
            short_side=args.short_side,
            preset=args.preset,
            flow_params=parse_flow_params(args.flow_param or []),
        )

    def given(self) -> bool:
        return any(v is not None for v in (self.fps, self.short_side, self.preset)) or bool(self.flow_params)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return _toml_str(v) if isinstance(v, str) else repr(v)


def folder_recipe_text(name: str, what: str, manifest: str, settings: FolderSettings, header: str) -> str:
    """The recipe of a folder or a video: the template ``_videos.toml`` with ``settings`` written in."""
    from flowprep.flow.presets import get_preset

    text = FOLDER_DEFAULTS.read_text(encoding="utf-8")
    side = settings.short_side or (get_preset(settings.preset).short_side if settings.preset else None)
    if settings.fps is not None:
        text = re.sub(
            r"(?m)^fps = .*$", f"fps = {settings.fps:g}".ljust(20) + "# frames per second (I3D: 25)", text, count=1
        )
    if side is not None:
        text = re.sub(
            r"(?m)^short_side = .*$",
            f"short_side = {side}".ljust(20) + f"# smallest side to {side}, bilinear, aspect kept (I3D: 256)",
            text,
            count=1,
        )
    if settings.preset is not None:
        preset = f"preset = {_toml_str(settings.preset)}"
        text = re.sub(r"(?m)^# preset = .*$", preset + f"  # {get_preset(settings.preset).summary}", text, count=1)
    params = "".join(f"{k} = {_toml_value(v)}\n" for k, v in settings.flow_params.items())
    text = re.sub(r"(?m)^(\[flow\.params\].*\n)", lambda m: m.group(1) + params, text, count=1)
    return (
        f"# {header}\n"
        f"dataset = {_toml_str(name)}\ndescription = {_toml_str(what)}\nmanifest = {_toml_str(manifest)}\n\n" + text
    )


def scan_target(p: Path, split: str | None) -> tuple[list, str, str]:
    """(videos with their splits, dataset name, description) of a folder or one video.

    A folder with no train/val/test folders and no ``--split`` gets the stratified train/val split
    of ``folder.assign_splits``; one video gets ``split`` (default none)."""
    from flowprep.dataset.folder import assign_splits, dataset_name, scan_folder, single_video
    from flowprep.dataset.manifest import ManifestError

    try:
        videos = scan_folder(p, split) if p.is_dir() else single_video(p, split)
    except ManifestError as e:
        raise SystemExit(usage_error(str(e))) from None
    if p.is_dir() and split is None and not any(v.split for v in videos):
        videos = assign_splits(videos)
    name = dataset_name(p.resolve(), "videos" if p.is_dir() else "video")
    what = f"videos under {p.resolve()}" if p.is_dir() else f"the video {p.resolve()}"
    return videos, name, what


def describe_videos(videos: list) -> str:
    """``9 video(s), 3 label(s); split train 7, val 2`` for the console."""
    from flowprep.dataset.folder import VAL_FRACTION

    labels = {v.label for v in videos if v.label}
    splits = Counter(v.split or "none" for v in videos)
    how = ", ".join(f"{k} {n}" for k, n in sorted(splits.items()))
    auto = (
        f" (val: about {VAL_FRACTION:.0%} of each class and at least one, fixed by each video's id)"
        if set(splits) == {"train", "val"}
        else ""
    )
    return f"{len(videos)} video(s), {len(labels) or 'no'} label(s); split {how}{auto}"


def prepare_target(
    target: str, out: str | None, split: str | None, settings: FolderSettings | None = None
) -> tuple[Path, str | None]:
    """(recipe to run, --out) for ``flowprep run TARGET``.

    A folder or a video: writes ``<out>.run/input/{recipe.toml,manifest.csv}`` (``out`` defaults to
    ``out/<folder or file name>.zarr``) with ``settings`` written into the recipe, and returns
    that recipe.  Anything else goes to ``find_recipe``; ``split`` and ``settings`` are then
    errors (a recipe's manifest has its own splits, its file its own settings).
    """
    from flowprep.dataset.folder import is_video_file, write_manifest
    from flowprep.run.state import input_dir

    settings = settings or FolderSettings()
    p = Path(target)
    if not (p.is_dir() or (p.is_file() and is_video_file(p))):
        recipe = find_recipe(target)
        if split is not None:
            raise SystemExit(
                usage_error("--split is for a folder of videos or a video; a recipe's manifest has the splits")
            )
        if settings.given():
            raise SystemExit(
                usage_error(
                    "--fps, --short-side, --preset and --flow-param are for a folder of videos or a video; "
                    f"a recipe has its own: edit a copy ([decode], [flow] preset, [flow.params]) of {recipe}"
                )
            )
        return recipe, out
    try:
        settings.check()
    except ValueError as e:
        raise SystemExit(usage_error(str(e))) from None
    videos, name, what = scan_target(p, split)
    out = out or f"out/{name}.zarr"
    folder = input_dir(out)
    recipe = folder / "recipe.toml"
    if recipe.is_file():  # one store per source: never mix two folders' videos in one index
        try:
            before = tomllib.loads(recipe.read_text(encoding="utf-8")).get("description")
        except (tomllib.TOMLDecodeError, UnicodeDecodeError):
            before = None
        if before != what:
            raise SystemExit(
                usage_error(f"{out} was built from {before or 'another source'}, not {what}; give another --out")
            )
    write_manifest(videos, folder / "manifest.csv")
    header = f"Written by `flowprep run {target}`, rewritten by each such run (edit a copy, not this file)."
    text = folder_recipe_text(name, what, "manifest.csv", settings, header)
    if not recipe.is_file() or recipe.read_text(encoding="utf-8") != text:
        write_text(recipe, text)
    print(f"{what}: {describe_videos(videos)}; manifest {folder / 'manifest.csv'}")
    return recipe, out


def add_folder_options(p: argparse.ArgumentParser) -> None:
    """The settings of a folder / video run (``run DIR``, ``recipes --from DIR``, ``slurm submit DIR``)."""
    from flowprep.flow.presets import PRESETS

    g = p.add_argument_group("folder or video settings (written into the generated recipe)")
    g.add_argument(
        "--split",
        help="the split of videos not under a train/val/test folder (default: a folder without such "
        "folders gets about 20%% of each class as val, the rest train, fixed by each video's id; one video: none)",
    )
    g.add_argument("--fps", type=float, metavar="FPS", help="decode frame rate (default: 25)")
    g.add_argument(
        "--short-side",
        type=int,
        metavar="N",
        help="decode the smallest side to N px, even (default: 256; preview: 128)",
    )
    g.add_argument(
        "--preset",
        choices=tuple(PRESETS),
        metavar="NAME",
        help="named TV-L1 parameters, one of "
        + ", ".join(PRESETS)
        + " (default: i3d): "
        + "; ".join(f"{n}: {pr.summary}" for n, pr in PRESETS.items()),
    )
    g.add_argument(
        "--flow-param",
        action="append",
        metavar="KEY=VALUE",
        help="one TV-L1 parameter over the preset (repeat), e.g. warps=3 nscales=4 (names: tau, lambda_, theta, "
        "nscales, scale_step, warps, epsilon, inner_iterations, outer_iterations, gamma, median_filtering)",
    )


# -- flowprep recipes ---------------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "name", nargs="?", help="print this recipe (its manifest path made absolute): save it to make your own"
    )
    p.add_argument(
        "--from",
        dest="source",
        metavar="DIR",
        help="print the recipe `flowprep run DIR` would run (a folder "
        "of videos or one video) and write its manifest (--manifest): `flowprep recipes --from myvids/ > my.toml`",
    )
    p.add_argument(
        "--manifest",
        metavar="CSV",
        help="with --from: where to write the manifest (default: <folder name>.csv "
        "in the current folder); the recipe names it by its absolute path",
    )
    add_folder_options(p)


def recipe_from(args: argparse.Namespace) -> int:
    """``recipes --from DIR``: the manifest into a file, the recipe on stdout (the settings as for ``run DIR``)."""
    from flowprep.dataset.folder import is_video_file, write_manifest

    p = Path(args.source)
    if not (p.is_dir() or (p.is_file() and is_video_file(p))):
        return usage_error(f"--from {p}: not a folder of videos or a video file" + _near_miss(p))
    try:
        settings = FolderSettings.from_args(args)
        settings.check()
    except ValueError as e:
        return usage_error(str(e))
    videos, name, what = scan_target(p, args.split)
    manifest = Path(args.manifest or f"{name}.csv").resolve()
    if manifest.suffix.lower() == ".toml":
        return usage_error(f"--manifest {manifest}: a manifest is a .csv file (the recipe goes to stdout)")
    write_manifest(videos, manifest)
    print(f"# {what}: {describe_videos(videos)}", file=sys.stderr)
    print(f"# manifest written to {manifest}; run the recipe with: flowprep run my.toml", file=sys.stderr)
    header = f"Written by `flowprep recipes --from {args.source}`: yours to edit (run it with `flowprep run my.toml`)."
    print(folder_recipe_text(name, what, str(manifest), settings, header), end="")
    return 0


def command(args: argparse.Namespace) -> int:
    from flowprep.run.recipe import RecipeError, load_recipe

    if args.source:
        if args.name:
            return usage_error("give a recipe NAME or --from DIR, not both")
        return recipe_from(args)
    if FolderSettings.from_args(args).given() or args.split or args.manifest:
        return usage_error("--split, --fps, --short-side, --preset, --flow-param and --manifest go with --from DIR")
    if args.name:
        path = find_recipe(args.name)
        text = path.read_text(encoding="utf-8")

        def absolute(m: re.Match) -> str:  # so a copy saved anywhere still finds its manifest
            value = m.group(2)
            return (
                m.group(0)
                if value.startswith("data:")
                else m.group(1) + _toml_str(str((path.parent / value).resolve()))
            )

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
