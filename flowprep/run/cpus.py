"""How many CPUs this process may use, and solver thread pools sized so that jobs x threads never
exceeds them (a shared node, a SLURM allocation, a container: oversubscribed OpenMP threads spin
against each other and a run can take 25x longer).

``available_cpus`` reads the CPU affinity mask and the cgroup CPU quota (v2 ``cpu.max``, v1
``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``), as SLURM and container runtimes set them; it is a
pure function of the paths it reads, so tests hand it fake cgroup trees.  ``parse_jobs`` is the
``--jobs`` argument ("auto" = those CPUs); ``set_solver_threads`` sizes torch's, OpenCV's and
numba's pools; ``quiet_openmp`` makes idle OpenMP threads sleep instead of spinning.  Touches
only environment variables and thread-pool settings of this process.
"""

from __future__ import annotations

import math
import os
from pathlib import Path


def _cgroup_v2_quota(root: Path, rel: str) -> float | None:
    """Smallest ``cpu.max`` quota / period (CPUs) on the path from the cgroup to the root."""
    best = None
    path = root / rel.lstrip("/")
    while True:
        try:
            quota, period = (path / "cpu.max").read_text().split()[:2]
            if quota != "max":
                cpus = int(quota) / int(period)
                best = cpus if best is None else min(best, cpus)
        except (OSError, ValueError):
            pass
        if path == root or root not in path.parents:
            return best
        path = path.parent


def _cgroup_v1_quota(root: Path, controllers: str, rel: str) -> float | None:
    for name in (controllers, "cpu", "cpu,cpuacct"):
        base = root / name / rel.lstrip("/")
        try:
            quota = int((base / "cpu.cfs_quota_us").read_text())
            period = int((base / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            continue
        return quota / period if quota > 0 and period > 0 else None
    return None


def cgroup_cpu_quota(
    proc_cgroup: Path = Path("/proc/self/cgroup"), cgroup_root: Path = Path("/sys/fs/cgroup")
) -> float | None:
    """CPUs the cgroup quota allows this process (e.g. 2.5), or None when there is no quota."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    quotas = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, rel = parts
        if controllers == "":  # cgroup v2: "0::/path"
            quotas.append(_cgroup_v2_quota(cgroup_root, rel))
        elif "cpu" in controllers.split(","):
            quotas.append(_cgroup_v1_quota(cgroup_root, controllers, rel))
    found = [q for q in quotas if q is not None]
    return min(found) if found else None


def available_cpus(
    affinity: int | None = None,
    proc_cgroup: Path = Path("/proc/self/cgroup"),
    cgroup_root: Path = Path("/sys/fs/cgroup"),
) -> int:
    """CPUs this process may use: the affinity mask's size (``affinity``; None = read it), capped
    by the cgroup quota rounded down (a quota of 1.5 CPUs runs one busy thread without throttling),
    at least 1."""
    if affinity is None:
        try:
            affinity = len(os.sched_getaffinity(0))
        except AttributeError:  # not Linux
            affinity = os.cpu_count() or 1
    quota = cgroup_cpu_quota(proc_cgroup, cgroup_root)
    n = affinity if quota is None else min(affinity, math.floor(quota))
    return max(1, n)


def parse_jobs(text: str) -> int:
    """``--jobs``: "auto" (the CPUs this process may use) or an integer >= 1; ValueError else."""
    if text.strip().lower() == "auto":
        return available_cpus()
    try:
        jobs = int(text)
    except ValueError:
        jobs = 0
    if jobs < 1 or str(jobs) != text.strip():
        raise ValueError(f"--jobs {text}: must be 'auto' or an integer >= 1")
    return jobs


def threads_per_job(jobs: int, cpus: int | None = None) -> int:
    """Solver threads for each of ``jobs`` processes: jobs x threads <= CPUs, at least 1."""
    return max(1, (available_cpus() if cpus is None else cpus) // max(1, jobs))


def set_solver_threads(n: int) -> None:
    """Size torch's, OpenCV's and numba's thread pools in this process to ``n`` threads."""
    import cv2

    cv2.setNumThreads(n)
    try:
        import torch

        torch.set_num_threads(n)
    except ImportError:
        pass
    try:
        import numba
    except ImportError:
        return
    # numba.config defines its settings inside a function (from the environment), out of mypy's sight
    numba.set_num_threads(max(1, min(n, numba.config.NUMBA_NUM_THREADS)))  # type: ignore[attr-defined]


def quiet_openmp() -> None:
    """Idle OpenMP threads sleep instead of spinning (GNU's default spins for a while, which on a
    shared node burns the CPUs other processes need).  Read when the OpenMP runtime loads: call it
    before torch or numba's threads start; child processes inherit it.  A user's own setting wins."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
