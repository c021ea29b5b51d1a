"""SLURM: a job array whose tasks each run ``flowprep run`` on their share of the manifest.

``submit`` writes a plain sbatch script into ``<store>.run/slurm/`` (readable, and reusable by
hand with ``sbatch``), submits it with ``sbatch --parsable``, queues a dependent ``flowprep
finalize`` job, and appends the job ids to ``<store>.run/slurm/jobs.jsonl``.  Task logs go to
``<store>.run/logs/<array job id>_<task index>.out``.

Tasks run the same command as a local run (``--num-tasks N --task-index $SLURM_ARRAY_TASK_ID``),
so a killed, preempted or requeued task just reruns it: complete videos are skipped, its own
staging debris is removed, nothing is written twice.  Everything here talks to SLURM through
its commands (sbatch, squeue), with list arguments.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flowprep.atomic import write_text
from flowprep.run.state import logs_dir, run_dir, slurm_dir


class SlurmError(RuntimeError):
    """sbatch / squeue failed or are missing; the message carries their stderr."""


_NAME = re.compile(r"[A-Za-z0-9_.,+-]{1,128}")
_MEM = re.compile(r"\d+[KMGT]?")
_TIME = re.compile(r"(\d+-)?\d+(:\d+){0,2}|\d+-\d+")


@dataclass(frozen=True)
class SlurmOptions:
    """What each array task asks SLURM for.  ``gpus_per_task`` None: 1 when the recipe or the
    command asks for CUDA (``device = "cuda"``, ``--device cuda``), else 0 (CPU-only partitions
    need nothing else)."""

    partition: str | None = None
    gpus_per_task: int | None = None
    cpus: int = 1  # per task; also the task's --jobs when it has no GPU
    mem: str | None = None  # per task, sbatch syntax: 16G
    time: str | None = None  # per task, sbatch syntax: 4:00:00, 1-00:00:00
    account: str | None = None
    max_running: int | None = None  # at most this many tasks at once (--array=...%K)
    extra: tuple[str, ...] = ()  # verbatim "#SBATCH ..." lines
    finalize: bool = True  # queue `flowprep finalize` after the array

    def __post_init__(self) -> None:
        for name in ("partition", "account"):
            v = getattr(self, name)
            if v is not None and not _NAME.fullmatch(v):
                raise ValueError(f"--{name} {v!r}: letters, digits and _ . , + - only")
        if self.gpus_per_task is not None and not (
            isinstance(self.gpus_per_task, int) and 0 <= self.gpus_per_task <= 16
        ):
            raise ValueError(f"--gpus-per-task {self.gpus_per_task!r}: must be an integer in [0, 16]")
        if not (isinstance(self.cpus, int) and 1 <= self.cpus <= 512):
            raise ValueError(f"--cpus {self.cpus!r}: must be an integer in [1, 512]")
        if self.mem is not None and not _MEM.fullmatch(self.mem):
            raise ValueError(f"--mem {self.mem!r}: a number with an optional K/M/G/T suffix, e.g. 16G")
        if self.time is not None and not _TIME.fullmatch(self.time):
            raise ValueError(f"--time {self.time!r}: sbatch syntax, e.g. 30:00, 4:00:00 or 1-00:00:00")
        if self.max_running is not None and not (isinstance(self.max_running, int) and self.max_running >= 1):
            raise ValueError(f"--max-running {self.max_running!r}: must be an integer >= 1")
        for line in self.extra:
            if not line.startswith("#SBATCH ") or "\n" in line or "\r" in line:
                raise ValueError(f"--extra {line!r}: must be one line starting with '#SBATCH '")


def uses_gpu(cfg: Any) -> bool:
    """Whether the recipe (or ``--device``) asks for CUDA.

    Only an explicit ``cuda``/``cuda:N`` device counts: ``auto`` / no device means "CUDA if the
    node has one", which is no reason to request a GPU (the submit host often has none, and
    the README says CPU partitions need no flag); ``--gpus-per-task N`` asks for GPUs outright.
    """
    device = cfg.flow.device
    return device is not None and device.startswith("cuda")


def array_spec(task_indices: list[int], max_running: int | None = None) -> str:
    """``--array`` value: ``0-99`` for a full range, else ``1,4,7-9``; ``%K`` throttles."""
    idx = sorted(set(task_indices))
    parts: list[str] = []
    start = prev = idx[0]
    for i in [*idx[1:], None]:
        if i is not None and i == prev + 1:
            prev = i
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if i is not None:
            start = prev = i
    return ",".join(parts) + (f"%{max_running}" if max_running else "")


def render_script(
    cfg: Any,
    recipe: Path,
    num_tasks: int,
    task_indices: list[int],
    opts: SlurmOptions,
    *,
    python: str | None = None,
    workdir: Path | None = None,
    ids_file: Path | None = None,
    backend: str | None = None,
    device: str | None = None,
) -> str:
    """The sbatch script of a job array over ``task_indices`` (of ``num_tasks`` shards).
    ``backend`` / ``device``: command-line overrides to pass on (the recipe's own are read by
    each task, so the script stays right when only the recipe changes)."""
    python = python or sys.executable
    workdir = (workdir or Path.cwd()).resolve()
    _refuse_control_characters(
        ("--out", cfg.out),
        ("--cache-dir", cfg.cache_dir),
        ("recipe", recipe),
        ("working directory", workdir),
        ("python", python),
        ("--ids-from", ids_file or ""),
    )
    gpus = opts.gpus_per_task if opts.gpus_per_task is not None else int(uses_gpu(cfg))
    cmd = _task_command(
        cfg, recipe, num_tasks, python, jobs=1 if gpus else opts.cpus, backend=backend, device=device, ids_file=ids_file
    )
    sb = _sbatch_options(cfg, task_indices, opts, gpus, workdir)
    lines = [
        "#!/bin/bash",
        f"# flowprep: {cfg.dataset} -> {Path(cfg.out).resolve()}, task(s) {array_spec(task_indices)} of {num_tasks}",
        f"# written by `flowprep slurm submit` on {time.strftime('%Y-%m-%d %H:%M:%S')}; resubmit as is: sbatch <this file>",
        *(f"#SBATCH {s}" for s in sb),
        *opts.extra,
        "set -euo pipefail",
        f"cd {shlex.quote(str(workdir))}",
        'echo "flowprep task ${SLURM_ARRAY_TASK_ID} of ' + str(num_tasks) + ' on $(hostname), job ${SLURM_JOB_ID}"',
        f'exec {shlex.join(cmd)} --task-index "$SLURM_ARRAY_TASK_ID"',
        "",
    ]
    return "\n".join(lines)


def _refuse_control_characters(*named_values: tuple[str, Any]) -> None:
    # #SBATCH lines cannot be quoted, and a newline in a path would start a new shell line: refuse
    for what, value in named_values:
        if re.search(r"[\x00-\x1f\x7f]", str(value)):
            raise ValueError(
                f"{what} {str(value)!r}: a path with a newline or control character cannot go into an sbatch script"
            )


def _task_command(
    cfg: Any,
    recipe: Path,
    num_tasks: int,
    python: str,
    *,
    jobs: int,
    backend: str | None,
    device: str | None,
    ids_file: Path | None,
) -> list[str]:
    """The ``flowprep run`` each array task runs (its --task-index comes from SLURM)."""
    cmd = [
        python,
        "-m",
        "flowprep",
        "run",
        str(recipe.resolve()),
        "--out",
        str(Path(cfg.out).resolve()),
        "--cache-dir",
        str(Path(cfg.cache_dir).resolve()),
        "--num-tasks",
        str(num_tasks),
        # a GPU task feeds one GPU from one process; a CPU task uses all its cores
        "--jobs",
        str(jobs),
        "--no-progress",
    ]
    if backend is not None:
        cmd += ["--backend", backend]
    if device is not None:
        cmd += ["--device", device]
    if cfg.limit is not None:
        cmd += ["--limit", str(cfg.limit)]
    if ids_file is not None:
        cmd += ["--ids-from", str(ids_file.resolve())]
    return cmd


def _sbatch_options(cfg: Any, task_indices: list[int], opts: SlurmOptions, gpus: int, workdir: Path) -> list[str]:
    """The #SBATCH options of the array."""
    rdir = run_dir(Path(cfg.out).resolve())
    sb = [
        f"--job-name=flowprep-{cfg.dataset}",
        f"--array={array_spec(task_indices, opts.max_running)}",
        "--ntasks=1",
        f"--cpus-per-task={opts.cpus}",
        f"--output={rdir / 'logs' / '%A_%a.out'}",
        "--open-mode=append",  # a requeued task appends to its log
        f"--chdir={workdir}",
        "--requeue",  # preempted or failed nodes: SLURM reruns the task, which resumes
    ]
    if gpus:
        sb.append(f"--gpus-per-task={gpus}")
    for flag in ("partition", "account", "mem", "time"):
        value = getattr(opts, flag)
        if value is not None:
            sb.append(f"--{flag}={value}")
    return sb


def next_number(store: Path, kind: str) -> int:
    """The next free NNN of ``<kind>-NNN.*`` in the slurm folder: a retry's ``.ids`` and
    ``.sbatch`` share it (``retry-001.ids`` goes with ``retry-001.sbatch``)."""
    folder = slurm_dir(store)
    used = [int(m.group(1)) for f in folder.glob(f"{kind}-*") if (m := re.fullmatch(rf"{kind}-(\d+)\.\w+", f.name))]
    return max(used, default=0) + 1


def write_script(store: Path, text: str, kind: str = "array", number: int | None = None) -> Path:
    """``<store>.run/slurm/<kind>-NNN.sbatch``, numbered per kind in submission order (``number``:
    that of the retry's ids file), never overwritten."""
    folder = slurm_dir(store)
    folder.mkdir(parents=True, exist_ok=True)
    logs_dir(store).mkdir(parents=True, exist_ok=True)  # SLURM does not create it
    n = number or next_number(store, kind)
    while True:
        path = folder / f"{kind}-{n:03d}.sbatch"
        try:
            with open(path, "x", encoding="utf-8") as f:
                f.write(text)
            return path
        except FileExistsError:
            n += 1


def _sbatch(args: list[str]) -> str:
    exe = shutil.which("sbatch")
    if exe is None:
        raise SlurmError("sbatch not found: run this on a SLURM login node (or --dry-run to only write the script)")
    proc = subprocess.run([exe, "--parsable", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SlurmError(f"sbatch {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()[-800:]}")
    return proc.stdout.strip().split(";")[0]  # "<job id>[;<cluster>]"


def submit(
    cfg: Any,
    script: Path,
    num_tasks: int,
    task_indices: list[int],
    opts: SlurmOptions,
    *,
    python: str | None = None,
    workdir: Path | None = None,
    ids_file: Path | None = None,
) -> dict[str, Any]:
    """Submit ``script``, queue ``flowprep finalize`` after it, and record both ids."""
    store = Path(cfg.out).resolve()
    job_id = _sbatch([str(script)])
    record: dict[str, Any] = {
        "time": time.time(),
        "job_id": job_id,
        "array": array_spec(task_indices, opts.max_running),
        "num_tasks": num_tasks,
        "script": str(script),
        "retry": ids_file is not None,
        "ids_file": str(ids_file) if ids_file else None,
        "options": options_record(opts),
    }
    if opts.finalize:
        cmd = [python or sys.executable, "-m", "flowprep", "finalize", str(store)]
        fin = [
            f"--dependency=afterany:{job_id}",
            f"--job-name=flowprep-{cfg.dataset}-finalize",
            f"--output={logs_dir(store) / 'finalize-%j.out'}",
            "--ntasks=1",
            "--cpus-per-task=1",
            f"--chdir={(workdir or Path.cwd()).resolve()}",
        ]
        fin += [f"--{k}={getattr(opts, k)}" for k in ("partition", "account") if getattr(opts, k)]
        record["finalize_job_id"] = _sbatch([*fin, f"--wrap={shlex.join(cmd)}"])
    with open(slurm_dir(store) / "jobs.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")
    return record


# what a retry reuses unless the command line says otherwise (`finalize` is per submission)
_KEPT = ("partition", "gpus_per_task", "cpus", "mem", "time", "account", "max_running", "extra")


def options_record(opts: SlurmOptions) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(opts).items() if k in _KEPT}


def record_options(store: Path, opts: SlurmOptions) -> None:
    """``slurm/options.json``: the resources of the last script written (submitted or a dry run), for retries."""
    folder = slurm_dir(store)
    folder.mkdir(parents=True, exist_ok=True)
    write_text(folder / "options.json", json.dumps(options_record(opts), indent=1, sort_keys=True))


def recorded_options(store: Path) -> dict[str, Any]:
    """The last script's resources (``record_options``; else the last submission's), or {}."""
    path = slurm_dir(store) / "options.json"
    try:
        return {k: v for k, v in json.loads(path.read_text(encoding="utf-8")).items() if k in _KEPT}
    except (OSError, ValueError):
        pass
    jobs = read_jobs(store)
    return dict(jobs[-1].get("options") or {}) if jobs else {}


def merge_options(given: dict[str, Any], recorded: dict[str, Any], finalize: bool) -> SlurmOptions:
    """The command line's options (None = not given) over the recorded ones, over the defaults."""
    # values checked by SlurmOptions.__post_init__ (recorded ones come from JSON)
    merged: dict[str, Any] = {k: given[k] if given.get(k) is not None else recorded.get(k) for k in _KEPT}
    merged["extra"] = tuple(merged["extra"] or ())
    if merged["cpus"] is None:
        merged["cpus"] = 1
    return SlurmOptions(**merged, finalize=finalize)


def read_jobs(store: Path) -> list[dict[str, Any]]:
    path = slurm_dir(store) / "jobs.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def queued(store: Path, include_finalize: bool = False) -> dict[str, dict[str, int]]:
    """This store's jobs still in SLURM's queue: array job id -> {state: number of tasks}."""
    ids = set()
    for j in read_jobs(store):
        ids.add(j["job_id"])
        if include_finalize and j.get("finalize_job_id"):
            ids.add(j["finalize_job_id"])
    if not ids:
        return {}
    exe = shutil.which("squeue")
    if exe is None:
        raise SlurmError("squeue not found: cannot tell whether this store's jobs are still queued")
    # %F: the array job id (the job id itself for a plain job); --array: one line per task
    proc = subprocess.run([exe, "-h", "--array", "-o", "%F|%T"], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SlurmError(f"squeue failed ({proc.returncode}): {proc.stderr.strip()[-800:]}")
    out: dict[str, dict[str, int]] = {}
    for line in proc.stdout.splitlines():
        job, _, state = line.strip().partition("|")
        if job in ids:
            out.setdefault(job, {})
            out[job][state] = out[job].get(state, 0) + 1
    return out


def write_ids_file(store: Path, keys: tuple[str, ...] | list[str]) -> Path:
    """``retry-NNN.ids`` (one video id a line); its script is ``retry-NNN.sbatch`` (``write_script``)."""
    folder = slurm_dir(store)
    folder.mkdir(parents=True, exist_ok=True)
    n = next_number(store, "retry")
    path = folder / f"retry-{n:03d}.ids"
    write_text(path, "".join(f"{k}\n" for k in keys))
    return path
