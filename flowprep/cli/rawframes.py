"""``flowprep export rawframes`` and ``flowprep import rawframes``: a store to and from mmaction2 /
denseflow JPEG folders (flowprep/store/rawframes.py does the work).

Exit status: 0 done, 1 some folders failed to import (listed), 2 bad usage or input.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from flowprep.console import usage_error


def _add_export(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "format",
        choices=("rawframes",),
        help="rawframes: mmaction2 img_%%05d.jpg, flow_x/flow_y_%%05d.jpg + list files",
    )
    p.add_argument("store", help="a flowprep store, e.g. out/ucf101.zarr")
    p.add_argument("out", help="folder to write (one sub-folder per video); complete folders are kept on a rerun")
    p.add_argument("--video", action="append", help="only this video (repeatable)")
    p.add_argument("--quality", type=int, default=95, help="JPEG quality (default 95, as mmaction2 / denseflow)")
    p.add_argument("--no-flow", action="store_true", help="RGB frames only")


def cmd_export(args: argparse.Namespace) -> int:
    from flowprep.store.rawframes import export_rawframes
    from flowprep.store.zarr_store import StoreError, open_store

    try:
        store = open_store(args.store)
    except StoreError as e:
        return usage_error(str(e))
    missing = [v for v in args.video or [] if v not in store]
    if missing:
        return usage_error(f"video(s) not in {args.store}: {', '.join(missing)}")
    if not 1 <= args.quality <= 100:
        return usage_error(f"--quality {args.quality}: must be in [1, 100]")
    try:
        counts = export_rawframes(store, args.out, video_ids=args.video, quality=args.quality, flow=not args.no_flow)
    except OSError as e:  # a read-only or full output folder: one line naming the path
        return usage_error(f"cannot write {e.filename or args.out}: {e.strerror or e}")
    lists = sorted(str(p) for p in Path(args.out).glob("*_list_rawframes*.txt"))
    print(
        f"{args.out}: {counts['videos']} video(s) ({counts['written']} written, {counts['skipped']} already complete); "
        f"lists {', '.join(lists) or 'none'}; classes {Path(args.out) / 'classes.txt'}"
    )
    return 0


def _add_import(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "format",
        choices=("rawframes",),
        help="rawframes: mmaction2 / denseflow folders of img_, flow_x_, flow_y_ JPEGs",
    )
    p.add_argument("root", help="folder of rawframes folders (<root>/<video>/ or <root>/<label>/<video>/)")
    p.add_argument("store", help="store to write into (created if absent), e.g. out/imported.zarr")
    p.add_argument(
        "--list",
        dest="list_file",
        help="mmaction2 list file '<dir> <frames> <label>' (default: every folder with img_00001.jpg)",
    )
    p.add_argument("--classes", help="label names, one per line: the list file's label indices map through it")
    p.add_argument(
        "--split",
        help="split recorded for these videos (default: train, val or test when the --list file's "
        "name says so, as mmaction2's ucf101_val_split_1_rawframes.txt; else none)",
    )
    p.add_argument("--dataset", help="dataset name of a new store (default: the store's file name)")
    p.add_argument(
        "--bound", type=float, default=20.0, help="px that flow value 0 / 255 stands for (default 20, as denseflow)"
    )
    p.add_argument("--fps", type=float, default=25.0, help="frame rate the frames were extracted at (default 25)")
    p.add_argument("--rgb-codec", default="jpeg", help="jpeg (default), jpegxl or lossless")
    p.add_argument("--overwrite", action="store_true", help="redo videos that are already in the store")


def _split_of_list(list_file: str | None) -> str | None:
    """``train`` / ``val`` / ``test`` when a list file's name holds it as a word (``ucf101_val_split_1_rawframes``)."""
    import re

    if not list_file:
        return None
    found = re.findall(r"(?:^|[_.-])(train|val|test)(?=[_.-]|$)", Path(list_file).stem.lower())
    return found[0] if len(set(found)) == 1 else None


def cmd_import(args: argparse.Namespace) -> int:
    from flowprep.run.state import clean_staging, staging_entry
    from flowprep.store.rawframes import find_videos, import_rawframes
    from flowprep.store.zarr_store import StoreError, WriteConfig, create_store

    try:
        cfg = WriteConfig(rgb_codec=args.rgb_codec)
        split = args.split or _split_of_list(args.list_file)
        videos = find_videos(args.root, list_file=args.list_file, classes_file=args.classes, split=split)  # type: ignore[arg-type]
        create_store(args.store, args.dataset or Path(args.store).stem)
    except (StoreError, ValueError, OSError) as e:
        return usage_error(str(e))
    clean_staging(args.store, "import")  # debris of a killed import
    res = import_rawframes(
        videos,
        args.store,
        lambda vid: staging_entry(args.store, "import", vid),
        cfg,
        bound_px=args.bound,
        fps=args.fps,
        overwrite=args.overwrite,
    )
    print(
        f"{args.store}: {len(videos)} folder(s): {res['done']} imported, {res['skipped']} already complete, "
        f"{len(res['failed'])} failed"
    )
    for vid, reason in res["failed"].items():
        print(f"failed {vid}: {reason}", file=sys.stderr)
    return 1 if res["failed"] else 0
