"""How the bookkeeping scales: ``open_store``, ``status`` and ``finalize`` over a store of 100k+
videos written by many cluster tasks, and the file count of a Kinetics-400 store.

    .venv/bin/python benchmarks/bench_scale.py [--videos 100000] [--tasks 100] [--dir /tmp/...]
    make bench-scale

The synthetic store is made directly, for speed: per video only ``videos/<id>/zarr.json`` (a
real group's metadata: the one file that makes a video complete, and all that ``open_store`` and
``status`` look at), plus one ledger line per row spread over ``--tasks`` task ledgers (97% done,
1% failed, 2% pending).  No arrays are written, so the figures are the bookkeeping's cost, not
reading pixels.  Timings are with a warm page cache (the files were just written).

Files per video come from one real 250-frame video (10 s at 25 fps, the Kinetics clip length)
written by the store's own writer with the default layout; they do not depend on frame size.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from flowprep import open_store
from flowprep.dataset.manifest import parse_manifest
from flowprep.run.recipe import load_recipe
from flowprep.run.shard import task_of_keys
from flowprep.run.state import finalize, read_latest, record_run, run_dir, staging_entry
from flowprep.run.status import store_status
from flowprep.store.zarr_store import VideoWriter, WriteConfig, create_store

# Kinetics-400 as published: train 246,534 + val 19,906 + test 38,685 rows (shared/manifests/README.md)
K400_CLIPS = 246_534 + 19_906 + 38_685
CLIP_FRAMES = 250  # 10 s at 25 fps


def files_per_video(tmp: Path) -> tuple[int, int, dict]:
    """(files, folders) of one complete 250-frame video in the default layout, and its group's zarr.json."""
    store = tmp / "one.zarr"
    create_store(store, "one")
    w = VideoWriter(store, "v", 8, 8, WriteConfig(), staging_entry(store, "", "v"))
    rng = np.random.default_rng(0)  # not zeros: zarr does not write chunks equal to the fill value
    rgb = rng.integers(0, 255, (CLIP_FRAMES, 8, 8, 3), dtype=np.uint8)
    flow = rng.integers(-127, 127, (CLIP_FRAMES - 1, 8, 8, 2), dtype=np.int8)
    for i in range(0, CLIP_FRAMES, 64):
        w.append(rgb[i : i + 64], flow[max(0, i - 1) : i + 63])
    w.commit({"video_id": "v"})
    files = dirs = 0
    for _, dnames, fnames in os.walk(store / "videos" / "v"):
        files += len(fnames)
        dirs += len(dnames)
    return files, dirs + 1, json.loads((store / "videos" / "v" / "zarr.json").read_text())


def make_store(root: Path, n: int, tasks: int, group_meta: dict) -> Path:
    ids = [f"{i:011d}_{i % 300:06d}_{i % 300 + 10:06d}" for i in range(n)]
    (root / "m.csv").write_text(
        "id,path,label,split\n" + "".join(f"{v},vids/{v}.mp4,class {i % 400},train\n" for i, v in enumerate(ids))
    )
    recipe = root / "scale.toml"
    recipe.write_text('dataset = "scale"\nmanifest = "m.csv"\n[flow]\nbackend = "opencv"\n')
    store = root / "scale.zarr"
    create_store(store, "scale")
    rows, errors = parse_manifest(root / "m.csv")
    owner = task_of_keys(rows, errors, tasks)
    rng = random.Random(0)
    meta = json.dumps(group_meta)
    (run_dir(store) / "ledger").mkdir(parents=True)
    ledgers = {t: open(run_dir(store) / "ledger" / f"t{t:04d}.jsonl", "w") for t in range(tasks)}  # noqa: SIM115
    t0 = 1.7e9
    for i, v in enumerate(ids):
        r = rng.random()
        rec = {"key": v, "line": i + 2, "task": f"t{owner[v]:04d}", "time": t0 + i * 0.05}
        if r < 0.97:
            d = store / "videos" / v
            d.mkdir()
            (d / "zarr.json").write_text(meta)
            rec.update(status="done", n_frames=CLIP_FRAMES, height=256, width=340, seconds=30.0)
        elif r < 0.98:
            rec.update(status="failed", reason_class=rng.choice(["unavailable", "decode", "http_503"]), reason="x")
        else:
            continue  # pending
        ledgers[owner[v]].write(json.dumps(rec, sort_keys=True) + "\n")
    for f in ledgers.values():
        f.close()
    return recipe


def timed(fn, repeat: int = 3):
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--videos", type=int, default=100_000)
    ap.add_argument("--tasks", type=int, default=100, help="cluster tasks (ledger files) the rows are spread over")
    ap.add_argument("--dir", help="work folder (default: a temporary one, removed after)")
    args = ap.parse_args()
    root = Path(args.dir or tempfile.mkdtemp(prefix="flowprep-bench-scale-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        files, dirs, group_meta = files_per_video(root)
        print(f"one {CLIP_FRAMES}-frame video, default layout (shards of 64 frames): {files} files, {dirs} folders")
        print(
            f"Kinetics-400 ({K400_CLIPS:,} clips): {files * K400_CLIPS:,} files, {dirs * K400_CLIPS:,} folders "
            f"(+ {args.tasks} ledgers, {args.tasks} index parts, index.json)"
        )

        t = time.perf_counter()
        recipe = make_store(root, args.videos, args.tasks, group_meta)
        print(
            f"\nsynthetic store: {args.videos:,} rows over {args.tasks} task ledgers, made in {time.perf_counter() - t:.1f} s"
        )
        cfg = load_recipe(recipe, out=str(root / "scale.zarr"), num_tasks=args.tasks)
        record_run(run_dir(cfg.out), recipe, cfg)  # what `flowprep run` leaves for `flowprep status STORE`
        cfg = load_recipe(recipe, out=str(root / "scale.zarr"))

        s, store = timed(lambda: open_store(cfg.out))
        print(f"open_store            {s:7.3f} s   ({len(store):,} complete videos)")
        s, latest = timed(lambda: read_latest(run_dir(cfg.out)))
        print(f"read_latest (ledgers) {s:7.3f} s   ({len(latest):,} keys)")
        s, st = timed(lambda: store_status(cfg, num_tasks=args.tasks))
        print(
            f"status                {s:7.3f} s   ({st.done:,} done, {st.failed:,} failed, {st.pending:,} pending; "
            f"{len(st.retry_keys):,} to retry in {len(st.retry_tasks)} tasks)"
        )
        s, index = timed(lambda: finalize(cfg), repeat=1)
        size = (run_dir(cfg.out) / "index.json").stat().st_size
        print(f"finalize              {s:7.3f} s   (index.json {size / 1e6:.1f} MB, counts {index['counts']})")
        t = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "flowprep", "status", str(cfg.out)], capture_output=True, text=True, check=False
        )
        print(
            f"`flowprep status`     {time.perf_counter() - t:7.3f} s   (whole command: interpreter start, imports; exit {proc.returncode})"
        )
    finally:
        if not args.dir:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
