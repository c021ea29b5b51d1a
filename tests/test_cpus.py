"""flowprep.run.cpus: the CPUs a process may use (affinity, cgroup v1/v2 quota, from fake cgroup
trees and a real ``taskset``), ``--jobs`` parsing and thread pools that never oversubscribe."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from flowprep.run import cpus


def _v2(tmp_path: Path, limits: dict[str, str]) -> tuple[Path, Path]:
    root = tmp_path / "cgroup"
    for rel, cpu_max in limits.items():
        d = root / rel
        d.mkdir(parents=True, exist_ok=True)
        (d / "cpu.max").write_text(cpu_max + "\n")
    proc = tmp_path / "proc_self_cgroup"
    proc.write_text("0::/system.slice/job_42/step_0\n")
    (root / "system.slice/job_42/step_0").mkdir(parents=True, exist_ok=True)
    return proc, root


def test_cgroup_v2_quota_caps_the_affinity(tmp_path):
    proc, root = _v2(tmp_path, {"system.slice/job_42/step_0": "max 100000", "system.slice/job_42": "250000 100000"})
    assert cpus.cgroup_cpu_quota(proc, root) == 2.5  # a parent's limit applies to its children
    assert cpus.available_cpus(16, proc, root) == 2  # rounded down: never more threads than quota
    assert cpus.available_cpus(1, proc, root) == 1  # affinity smaller than the quota


def test_cgroup_v2_without_quota_and_tiny_quota(tmp_path):
    proc, root = _v2(tmp_path, {"system.slice/job_42/step_0": "max 100000"})
    assert cpus.cgroup_cpu_quota(proc, root) is None
    assert cpus.available_cpus(8, proc, root) == 8
    proc, root = _v2(tmp_path / "b", {"system.slice": "50000 100000"})
    assert cpus.available_cpus(8, proc, root) == 1  # half a CPU: still one job


def test_cgroup_v1_cfs_quota(tmp_path):
    root = tmp_path / "cgroup"
    d = root / "cpu,cpuacct" / "slurm" / "uid_0" / "job_7"
    d.mkdir(parents=True)
    (d / "cpu.cfs_quota_us").write_text("300000\n")
    (d / "cpu.cfs_period_us").write_text("100000\n")
    proc = tmp_path / "cgroup_file"
    proc.write_text("12:memory:/slurm/uid_0/job_7\n4:cpu,cpuacct:/slurm/uid_0/job_7\n")
    assert cpus.cgroup_cpu_quota(proc, root) == 3.0
    assert cpus.available_cpus(64, proc, root) == 3
    (d / "cpu.cfs_quota_us").write_text("-1\n")  # no quota
    assert cpus.available_cpus(64, proc, root) == 64


def test_missing_cgroup_files_mean_no_quota(tmp_path):
    assert cpus.cgroup_cpu_quota(tmp_path / "nope", tmp_path) is None
    assert cpus.available_cpus(5, tmp_path / "nope", tmp_path) == 5


@pytest.mark.skipif(shutil.which("taskset") is None, reason="needs taskset (util-linux)")
def test_affinity_of_a_real_process_under_taskset():
    code = "from flowprep.run.cpus import available_cpus, parse_jobs; print(available_cpus(), parse_jobs('auto'))"
    out = subprocess.run(["taskset", "-c", "0", sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["1", "1"]


def test_parse_jobs():
    assert cpus.parse_jobs("auto") == cpus.available_cpus() >= 1
    assert cpus.parse_jobs("3") == 3
    for bad in ("0", "-3", "x", "2.5", ""):
        with pytest.raises(ValueError, match="must be 'auto' or an integer >= 1"):
            cpus.parse_jobs(bad)


def test_threads_per_job_never_oversubscribes():
    for n_cpus in (1, 2, 7, 64):
        for jobs in (1, 2, 3, 8, 100):
            t = cpus.threads_per_job(jobs, n_cpus)
            assert t >= 1
            assert jobs * t <= n_cpus or t == 1
    assert cpus.threads_per_job(2, 8) == 4


def test_solver_threads_are_set_in_every_pool():
    code = (
        "import os; from flowprep.run import cpus; cpus.quiet_openmp(); cpus.set_solver_threads(1); "
        "import cv2, torch, numba; print(os.environ['OMP_WAIT_POLICY'], cv2.getNumThreads(), torch.get_num_threads(), "
        "numba.get_num_threads())"
    )
    env = {k: v for k, v in __import__("os").environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.split() == ["PASSIVE", "1", "1", "1"]


def test_cli_rejects_zero_and_negative_jobs_in_one_line(tmp_path):
    for bad in ("0", "-3"):
        out = subprocess.run(
            [
                sys.executable,
                "-c",
                "from flowprep.cli.main import main; raise SystemExit(main())",
                "run",
                "demo",
                f"--jobs={bad}",
                "--out",
                str(tmp_path / "s.zarr"),
            ],
            capture_output=True,
            text=True,
        )
        assert out.returncode == 2
        assert out.stderr.strip().splitlines() == [f"flowprep: error: --jobs {bad}: must be 'auto' or an integer >= 1"]
    assert not (tmp_path / "s.zarr").exists()
