"""``flowprep verify STORE``: read every chunk of every video and list the damaged ones.

Exit 0 when every video is sound, 1 when some are damaged (each printed with the array and
frames at fault), 2 when the store itself cannot be opened.  ``flowprep run RECIPE --out STORE
--repair`` redoes exactly the damaged videos.
"""

from __future__ import annotations

import argparse

from flowprep.console import usage_error


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("store", help="a store built by `flowprep run`, e.g. out/demo.zarr")
    p.add_argument(
        "--quick", action="store_true", help="check files, shard indexes and shapes only; do not decode chunks"
    )


def command(args: argparse.Namespace) -> int:
    from flowprep.store.verify import verify_store
    from flowprep.store.zarr_store import StoreError, open_store

    try:
        store = open_store(args.store)
        damaged = verify_store(store.path, full=not args.quick)
    except StoreError as e:
        return usage_error(str(e))
    for vid, problems in sorted(damaged.items()):
        print(f"damaged {vid}: {'; '.join(problems)}")
    print(f"{args.store}: {len(store)} video(s) checked{' (quick)' if args.quick else ''}, {len(damaged)} damaged")
    if damaged:
        print(f"redo them: flowprep run RECIPE --out {args.store} --repair")
        return 1
    return 0
