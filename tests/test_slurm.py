"""Job arrays against a real SLURM: ``flowprep slurm submit`` over one shared store.

Needs a running SLURM whose nodes see this file system: ``scripts/slurm-up.sh`` starts a
one-node cluster in a container (root); without one these tests are skipped, saying so.
Jobs run ``sys.executable -m flowprep``, i.e. this test run's virtualenv.
"""

import functools
import json
import shutil
import subprocess
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import Clip, write_dataset

from flowprep import open_store
from flowprep.cli.main import main
from flowprep.dataset.demo import Motion, render, write_lossless
from flowprep.run.lease import live_owner
from flowprep.run.pipeline import run
from flowprep.run.recipe import load_recipe
from flowprep.run.slurm import queued, read_jobs
from flowprep.run.state import lease_path, run_dir
from flowprep.run.status import complete_ids, store_status

JOB_TIMEOUT_S = 120  # a whole array here takes ~15 s; this only bounds a hung cluster


@functools.cache  # one sinfo per session: with no controller it takes seconds to give up
def _slurm_reason() -> str | None:
    """None when SLURM answers and has a usable node, else why the tests are skipped."""
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return "SLURM is not installed here; start a one-node cluster with scripts/slurm-up.sh (as root)"
    try:
        proc = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=10, check=False)
    except subprocess.TimeoutExpired:
        return "sinfo did not answer within 10 s; is slurmctld running? (scripts/slurm-up.sh)"
    if proc.returncode != 0:
        return f"sinfo failed: {proc.stderr.strip()[:200]}; start SLURM with scripts/slurm-up.sh"
    if not any(s.strip().rstrip("*~#") in ("idle", "mix", "alloc") for s in proc.stdout.split()):
        return f"no SLURM node is up (sinfo states: {proc.stdout.split()}); see /var/log/slurm/"
    return None


@pytest.fixture(scope="module")
def slurm() -> None:
    reason = _slurm_reason()
    if reason:
        pytest.skip(reason)


# Task i of 3 owns manifest items i, i+3, ...: "long" opens task 1's share, so task 1 is
# certainly inside a video while "long" is in its staging area.
ITEMS = ["c0", "long", "c2", "c3", "c4", "missing", "c6", "c7", "bad"]
LONG_FRAMES = 160  # ~4 s of flow here: a wide window to kill task 1 mid-video


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("slurm")
    special = {
        "missing": "vids/missing.mkv,gone,train",
        "bad": ",no path,train",
    }  # source failure (not retryable), malformed row
    write_dataset(
        root,
        [
            special.get(name)
            or Clip(
                name,
                Motion(dx=0.5 if name == "long" else 1 + i % 3, dy=1),
                LONG_FRAMES if name == "long" else 6 + i,
                f"l{i % 2}",
                seed=i,
            )
            for i, name in enumerate(ITEMS)
        ],
    )
    recipe = root / "tiny.toml"
    recipe.write_text(
        'dataset = "tiny"\nmanifest = "m.csv"\n[decode]\nshort_side = 64\n'
        '[flow]\nbackend = "opencv"\n[flow.params]\nwarps = 1\nouter_iterations = 2\n'
    )
    reference = load_recipe(recipe, out=str(root / "local.zarr"), progress=False)
    run(reference)
    return {"root": root, "recipe": recipe, "reference": Path(reference.out)}


def _wait(store: Path, timeout: float = JOB_TIMEOUT_S) -> None:
    """Until none of this store's jobs (arrays and finalize) is in the queue."""
    deadline = time.monotonic() + timeout
    while queued(store, include_finalize=True):
        assert time.monotonic() < deadline, (
            f"jobs still queued after {timeout} s: {queued(store, include_finalize=True)}"
        )
        time.sleep(0.2)


def _submit(capsys, *args: str) -> dict:
    assert main(["slurm", "submit", *args]) == 0
    out = capsys.readouterr().out
    assert "submitted array job" in out
    return read_jobs(Path(args[args.index("--out") + 1]))[-1]


def _status(store: Path) -> dict:
    cfg = load_recipe(json.loads((run_dir(store) / "run.json").read_text())["recipe"], out=str(store))
    return store_status(cfg, num_tasks=3).to_json()


def _assert_same_as(reference: Path, store: Path) -> None:
    ref, got = open_store(reference), open_store(store)
    assert got.video_ids == ref.video_ids == sorted(set(ITEMS) - {"missing", "bad"})
    for vid in ref.video_ids:
        np.testing.assert_array_equal(got.read_rgb_uint8(vid), ref.read_rgb_uint8(vid))
        np.testing.assert_array_equal(got.read_flow_int8(vid), ref.read_flow_int8(vid))


def _done_records(store: Path) -> Counter:
    n: Counter = Counter()
    for path in (run_dir(store) / "ledger").glob("*.jsonl"):
        for line in path.read_text().splitlines():
            rec = json.loads(line)
            if rec["status"] == "done":
                n[rec["key"]] += 1
    return n


def test_array_of_three_tasks_matches_a_local_run(slurm, dataset, capsys, monkeypatch):
    monkeypatch.chdir(dataset["root"])
    store = dataset["root"] / "array.zarr"
    job = _submit(capsys, str(dataset["recipe"]), "--out", str(store), "--tasks", "3", "--cpus", "1")
    assert job["array"] == "0-2" and job["num_tasks"] == 3 and job.get("finalize_job_id")
    script = Path(job["script"]).read_text()
    assert f"--chdir={dataset['root']}" in script and "-m flowprep run" in script
    _wait(store)
    _assert_same_as(dataset["reference"], store)
    rdir = run_dir(store)
    assert sorted(p.name for p in (rdir / "logs").glob(f"{job['job_id']}_*.out")) == [
        f"{job['job_id']}_{i}.out" for i in range(3)
    ]
    assert sorted(p.name for p in (rdir / "ledger").iterdir()) == ["t0000.jsonl", "t0001.jsonl", "t0002.jsonl"]
    # the finalize job wrote the whole index from the three tasks' ledgers
    index = json.loads((rdir / "index.json").read_text())
    assert index["counts"] == {"done": 7, "failed": 2, "pending": 0}
    st = _status(store)
    assert (st["rows"], st["done"], st["failed"], st["pending"]) == (9, 7, 2, 0)
    assert st["failed_by_reason"] == {"manifest": 1, "source": 1} and st["retry_keys"] == []
    assert _done_records(store) == Counter({v: 1 for v in open_store(store).video_ids})


@pytest.mark.slow
def test_killed_task_then_retry_failed_completes_the_store_once(slurm, dataset, capsys, monkeypatch):
    monkeypatch.chdir(dataset["root"])
    store = dataset["root"] / "killed.zarr"
    staging = run_dir(store) / "staging"
    job = _submit(capsys, str(dataset["recipe"]), "--out", str(store), "--tasks", "3")

    deadline = time.monotonic() + JOB_TIMEOUT_S
    while not (staging.is_dir() and list(staging.glob("t0001--long--*"))):
        assert time.monotonic() < deadline, "task 1 never started on 'long'"
        time.sleep(0.05)
    # status while tasks run: every row counted once, done = complete videos in the store
    before = len(complete_ids(store))
    st = _status(store)
    assert before <= st["done"] <= len(complete_ids(store))
    assert st["done"] + st["failed"] + st["pending"] == st["rows"] == 9
    assert st["per_task"]["t0001"]["pending"] == 3  # 'long' is its first row, and not done
    # while the array runs, a retry would run a task twice at once: refused
    assert main(["slurm", "submit", str(dataset["recipe"]), "--out", str(store), "--retry-failed"]) == 2
    assert "still queued or running" in capsys.readouterr().err

    subprocess.run(["scancel", f"{job['job_id']}_1"], check=True)  # as a preemption would
    _wait(store)
    assert "long" not in open_store(store)
    # killed mid-video: its partial video is staging debris of a dead owner, never in the store;
    # the next task to start (t0002, once t0001's CPU is free) may already have removed it
    assert live_owner(lease_path(store, "t0001")) is None
    st = _status(store)
    assert (st["done"], st["failed"], st["pending"]) == (4, 2, 3)
    assert st["retry_keys"] == ["long", "c4", "c7"] and st["retry_tasks"] == [1]
    assert main(["status", str(store)]) == 0
    text = capsys.readouterr().out
    assert "pending         3" in text and "pending in t0001 (3)" in text

    retry = _submit(capsys, str(dataset["recipe"]), "--out", str(store), "--retry-failed")
    assert retry["array"] == "1" and retry["num_tasks"] == 3 and retry["retry"] is True
    assert Path(retry["ids_file"]).read_text().split() == ["long", "c4", "c7"]
    _wait(store)
    _assert_same_as(dataset["reference"], store)
    st = _status(store)
    assert (st["rows"], st["done"], st["failed"], st["pending"]) == (9, 7, 2, 0)
    # no video written twice (one "done" record each), none lost, no debris left
    assert _done_records(store) == Counter({v: 1 for v in open_store(store).video_ids})
    assert list(staging.iterdir()) == []
    assert json.loads((run_dir(store) / "index.json").read_text())["counts"] == {"done": 7, "failed": 2, "pending": 0}
    assert main(["slurm", "submit", str(dataset["recipe"]), "--out", str(store), "--retry-failed"]) == 0
    assert "nothing to retry" in capsys.readouterr().out  # only non-retryable failures remain


def test_status_of_a_queued_array_and_its_jobs(slurm, dataset, capsys, monkeypatch):
    monkeypatch.chdir(dataset["root"])
    store = dataset["root"] / "held.zarr"
    job = _submit(
        capsys,
        str(dataset["recipe"]),
        "--out",
        str(store),
        "--tasks",
        "3",
        "--extra",
        "#SBATCH --hold",
        "--no-finalize",
    )
    try:
        assert main(["status", str(store)]) == 0  # submit recorded the recipe: a store path is enough
        text = capsys.readouterr().out
        assert "done            0" in text and "pending         8" in text and f"job {job['job_id']}: 3 pending" in text
    finally:
        subprocess.run(["scancel", job["job_id"]], check=True)
    _wait(store)


def test_submit_a_folder_and_retry_with_the_first_resources_dry_run(tmp_path, monkeypatch, capsys):
    """No SLURM needed: `slurm submit DIR` writes the folder's recipe and manifest into the store's
    run folder; a retry's script keeps the first script's resources, numbered like its ids file."""
    monkeypatch.chdir(tmp_path)
    for i in range(4):
        write_lossless(render(Motion(dx=1 + i), 5, 40, 48, seed=i), tmp_path / "vids" / f"c{i % 2}" / f"v{i}.mkv")
    fast = ["--short-side", "32", "--flow-param", "nscales=1", "--flow-param", "warps=1"]
    assert (
        main(
            [
                "slurm",
                "submit",
                "vids",
                "--tasks",
                "2",
                "--partition",
                "p1",
                "--mem",
                "4G",
                "--time",
                "1:00:00",
                "--cpus",
                "3",
                "--max-running",
                "1",
                *fast,
                "--dry-run",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    recipe = tmp_path / "out" / "vids.run" / "input" / "recipe.toml"
    assert f"-m flowprep run {recipe} " in out and "short_side = 32" in recipe.read_text()
    assert "`flowprep finalize" in out and "is queued only by `flowprep slurm submit`" in out
    # task 0 runs here; task 1's rows stay pending
    assert main(["run", "vids", *fast, "--num-tasks", "2", "--task-index", "0", "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["slurm", "submit", "out/vids.zarr", "--retry-failed", "--dry-run"]) == 0
    out = capsys.readouterr().out
    for line in (
        "#SBATCH --array=1%1",
        "#SBATCH --cpus-per-task=3",
        "#SBATCH --partition=p1",
        "#SBATCH --mem=4G",
        "#SBATCH --time=1:00:00",
    ):
        assert line in out
    assert "retry keeps the recorded --cpus, --max-running, --mem, --partition, --time" in out
    slurm_files = sorted(p.name for p in (tmp_path / "out" / "vids.run" / "slurm").iterdir())
    assert slurm_files == ["array-001.sbatch", "options.json", "retry-001.ids", "retry-001.sbatch"]
    # given again, an option wins
    assert main(["slurm", "submit", "out/vids.zarr", "--retry-failed", "--dry-run", "--cpus", "2"]) == 0
    out = capsys.readouterr().out
    assert "#SBATCH --cpus-per-task=2" in out and "#SBATCH --partition=p1" in out and "retry-002.sbatch" in out
