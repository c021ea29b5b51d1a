"""Many tasks, one store: the shard rule, per-task files, finalize, status, the dask executor
and the sbatch script (without SLURM; tests/test_slurm.py runs a real one)."""

import json
import multiprocessing
from pathlib import Path

import numpy as np
import pytest
from conftest import Clip, write_dataset, write_recipe

from flowprep import open_store
from flowprep.cli.main import main
from flowprep.dataset.demo import Motion
from flowprep.dataset.manifest import parse_manifest
from flowprep.run.pipeline import run
from flowprep.run.recipe import RecipeError, load_recipe
from flowprep.run.shard import shard_manifest, task_from_env, task_of_keys
from flowprep.run.slurm import SlurmOptions, array_spec, render_script
from flowprep.run.state import NON_RETRYABLE, LedgerWriter, finalize, is_retryable, read_index, run_dir
from flowprep.run.status import store_status
from flowprep.store.zarr_store import StoreError, create_store


def _dataset(tmp_path: Path, n: int = 5) -> Path:
    rows: list[Clip | str] = [Clip(f"c{i}", Motion(dx=1 + i % 3, dy=1), 5 + i, f"l{i % 2}", seed=i) for i in range(n)]
    rows.insert(2, "vids/missing.mkv,x,train")  # source failure
    rows.insert(4, ",no path,train")  # malformed row
    return write_recipe(tmp_path, write_dataset(tmp_path, rows))


def _assert_same_store(a: Path, b: Path) -> None:
    sa, sb = open_store(a), open_store(b)
    assert sa.video_ids == sb.video_ids and len(sa) > 0
    for vid in sa.video_ids:
        np.testing.assert_array_equal(sa.read_rgb_uint8(vid), sb.read_rgb_uint8(vid))
        np.testing.assert_array_equal(sa.read_flow_int8(vid), sb.read_flow_int8(vid))
        ia, ib = sa.info(vid), sb.info(vid)
        assert {k: v for k, v in ia.items() if k != "created"} == {k: v for k, v in ib.items() if k != "created"}


def test_shard_rule_is_a_partition_by_position_modulo_n(tmp_path):
    rows, errors = parse_manifest(_dataset(tmp_path).parent / "m.csv")
    items = sorted([*rows, *errors], key=lambda x: x.line)
    assert len(items) == 7 and len(errors) == 1
    for n in (1, 2, 3, 7, 10):
        seen = []
        for i in range(n):
            r, e = shard_manifest(rows, errors, n, i)
            mine = sorted([*r, *e], key=lambda x: x.line)
            assert mine == [x for k, x in enumerate(items) if k % n == i]
            seen += mine
        assert sorted(seen, key=lambda x: x.line) == items  # every item once
    owner = task_of_keys(rows, errors, 3)
    assert owner == {"c0": 0, "c1": 1, "missing": 2, "c2": 0, "line:6": 1, "c3": 2, "c4": 0}


def test_task_tag_and_options_are_checked(tmp_path):
    recipe = _dataset(tmp_path, n=1)
    cfg = load_recipe(recipe, num_tasks=12, task_index=3)
    assert (cfg.task, cfg.num_tasks, cfg.task_index) == ("t0003", 12, 3)
    assert load_recipe(recipe).task == "local"
    with pytest.raises(RecipeError, match=r"--task-index 3: must be an integer in \[0, 2\]"):
        load_recipe(recipe, num_tasks=3, task_index=3)
    with pytest.raises(RecipeError, match="--num-tasks 0"):
        load_recipe(recipe, num_tasks=0)
    with pytest.raises(RecipeError, match="--executor dask needs --scheduler"):
        load_recipe(recipe, executor="dask")
    with pytest.raises(RecipeError, match="--executor 'ray': allowed: local, dask"):
        load_recipe(recipe, executor="ray")


def test_slurm_array_variables_are_defaults_only():
    env = {"SLURM_ARRAY_TASK_ID": "4", "SLURM_ARRAY_TASK_COUNT": "10"}
    assert task_from_env(None, None, env) == (10, 4)
    assert task_from_env(3, 1, env) == (3, 1)  # flags win
    assert task_from_env(None, None, {}) == (None, None)
    with pytest.raises(ValueError, match="SLURM_ARRAY_TASK_COUNT is missing"):
        task_from_env(None, None, {"SLURM_ARRAY_TASK_ID": "1"})


def test_three_tasks_equal_one_local_run_and_finalize_merges(tmp_path):
    recipe = _dataset(tmp_path)
    local = load_recipe(recipe, out=str(tmp_path / "local.zarr"), progress=False)
    run(local)
    out = tmp_path / "shared.zarr"
    summaries = [run(load_recipe(recipe, out=str(out), progress=False, num_tasks=3, task_index=i)) for i in range(3)]
    assert [(s.rows, s.done, s.failed) for s in summaries] == [(3, 3, 0), (2, 1, 1), (2, 1, 1)]
    _assert_same_store(local.out, out)
    rdir = run_dir(out)
    assert sorted(p.name for p in (rdir / "ledger").iterdir()) == ["t0000.jsonl", "t0001.jsonl", "t0002.jsonl"]
    assert sorted(p.name for p in (rdir / "index").iterdir()) == ["t0000.json", "t0001.json", "t0002.json"]
    assert not (rdir / "index.json").exists()  # tasks never write the shared file
    merged = read_index(rdir)
    assert merged["counts"] == {"done": 5, "failed": 2, "pending": 0}
    index = finalize(load_recipe(recipe, out=str(out)))
    local_index = json.loads((run_dir(local.out) / "index.json").read_text())
    strip = [{k: v for k, v in x.items() if k != "reason"} for x in local_index["videos"]]
    assert [{k: v for k, v in x.items() if k != "reason"} for x in index["videos"]] == strip
    assert json.loads((rdir / "index.json").read_text())["counts"] == {"done": 5, "failed": 2, "pending": 0}


def test_ids_from_does_only_those_rows_and_the_part_still_covers_the_shard(tmp_path):
    recipe = _dataset(tmp_path)
    out = tmp_path / "s.zarr"
    s = run(load_recipe(recipe, out=str(out), progress=False, num_tasks=3, task_index=0, only_keys=["c2", "c1"]))
    assert (s.rows, s.done) == (1, 1)  # c1 is task 1's: only c2 is task 0's and listed
    assert open_store(out).video_ids == ["c2"]
    part = json.loads((run_dir(out) / "index" / "t0000.json").read_text())
    assert [(v["id"], v["status"]) for v in part["videos"]] == [("c0", "pending"), ("c2", "done"), ("c4", "pending")]


def _create(path: str, barrier) -> str:
    barrier.wait()
    try:
        create_store(path, "t")
        return "ok"
    except Exception as e:  # noqa: BLE001 - reported to the test
        return repr(e)


def test_create_store_is_race_safe(tmp_path):
    path = str(tmp_path / "race.zarr")
    n = 8
    ctx = multiprocessing.get_context("fork")
    with ctx.Manager() as m:
        barrier = m.Barrier(n)
        with ctx.Pool(n) as pool:
            results = pool.starmap(_create, [(path, barrier)] * n)
    assert results == ["ok"] * n
    assert open_store(path).meta["dataset"] == "t"
    assert [p.name for p in tmp_path.iterdir()] == ["race.zarr"]  # no temporary roots left
    other = tmp_path / "other"
    other.mkdir()
    (other / "x").write_text("x")
    with pytest.raises(StoreError, match="is not a flowprep store"):
        create_store(other, "t")


def test_status_counts_reasons_rate_and_retry_selection(tmp_path):
    lines = ["path,label,split"] + [f"vids/v{i}.mkv,a,train" for i in range(7)] + [",bad,train"]
    (tmp_path / "m.csv").write_text("\n".join(lines) + "\n")
    recipe = write_recipe(tmp_path, tmp_path / "m.csv")
    cfg = load_recipe(recipe, out=str(tmp_path / "s.zarr"))
    create_store(cfg.out, "t")
    for vid in ("v0", "v1"):  # complete videos: status trusts the store, not the ledger
        (cfg.out / "videos" / vid).mkdir()
        (cfg.out / "videos" / vid / "zarr.json").write_text("{}")
    with LedgerWriter(run_dir(cfg.out), "t0000") as w:
        w.write({"key": "v0", "status": "done", "n_frames": 50, "time": 100.0})
        w.write({"key": "v2", "status": "failed", "reason_class": "decode", "reason": "x", "time": 101.0})
        w.write({"key": "v3", "status": "failed", "reason_class": "internal", "reason": "x", "time": 102.0})
    with LedgerWriter(run_dir(cfg.out), "t0001") as w:
        w.write({"key": "v1", "status": "done", "n_frames": 30, "time": 110.0})
        w.write({"key": "v4", "status": "failed", "reason_class": "unavailable", "reason": "x", "time": 111.0})
        w.write({"key": "v5", "status": "failed", "reason_class": "http_503", "reason": "x", "time": 112.0})
        w.write({"key": "v5", "status": "failed", "reason_class": "private", "reason": "x", "time": 90.0})  # older
        w.write({"key": "v6", "status": "done", "n_frames": 40, "time": 120.0})  # ledger says done, store does not
    st = store_status(cfg, num_tasks=3)
    assert (st.rows, st.done, st.failed, st.pending) == (8, 2, 5, 1)
    assert st.done + st.failed + st.pending == st.rows
    assert st.failed_by_reason == {"decode": 1, "http_503": 1, "internal": 1, "manifest": 1, "unavailable": 1}
    assert st.retryable_failed == 2
    assert st.retry_keys == ("v3", "v5", "v6")
    # items: v0..v6 then the bad row; owner = position % 3
    assert st.retry_tasks == (0, 2)
    assert [(c.done, c.failed, c.pending) for c in st.per_task] == [(1, 1, 1), (1, 2, 0), (0, 2, 0)]
    assert st.videos_per_s == pytest.approx(2 / 20)  # 3 videos done from t=100 to t=120
    assert st.frames_per_s == pytest.approx(70 / 20)
    assert st.eta_s == pytest.approx(3 / 0.1)  # 1 pending + 2 retryable failures
    assert not any(is_retryable(c) for c in NON_RETRYABLE) and is_retryable("internal") and is_retryable(None)


def test_status_and_finalize_commands_take_a_store_or_a_recipe(tmp_path, capsys):
    recipe = _dataset(tmp_path, n=2)
    out = tmp_path / "s.zarr"
    assert main(["run", str(recipe), "--out", str(out), "--num-tasks", "2", "--task-index", "1", "--no-progress"]) == 1
    capsys.readouterr()
    assert main(["status", str(out), "--json"]) == 0
    st = json.loads(capsys.readouterr().out)
    assert (st["rows"], st["done"], st["failed"], st["pending"], st["num_tasks"]) == (4, 1, 1, 2, 2)
    assert st["per_task"] == {
        "t0000": {"done": 0, "failed": 0, "pending": 2},
        "t0001": {"done": 1, "failed": 1, "pending": 0},
    }
    assert main(["status", str(recipe), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "pending         2" in text and "(manifest: 1; 0 retryable)" in text and "t0000 (2)" in text
    assert main(["finalize", str(out)]) == 0
    assert "1 done, 1 failed, 2 pending" in capsys.readouterr().out
    assert main(["status", str(tmp_path / "nothing.zarr")]) == 2


def test_sbatch_script(tmp_path):
    recipe = _dataset(tmp_path, n=1)
    cfg = load_recipe(recipe, out=str(tmp_path / "s.zarr"))
    assert array_spec([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8" and array_spec([3], 2) == "3%2"
    cpu = render_script(
        cfg, recipe, 4, [0, 1, 2, 3], SlurmOptions(cpus=4, partition="cpu"), python="/v/bin/python", workdir=tmp_path
    )
    assert (
        "#SBATCH --array=0-3\n" in cpu and "#SBATCH --cpus-per-task=4\n" in cpu and "#SBATCH --partition=cpu\n" in cpu
    )
    assert "gpus" not in cpu  # the recipe's backend is opencv: a CPU-only partition needs nothing else
    assert f"#SBATCH --output={tmp_path}/s.run/logs/%A_%a.out\n" in cpu and f"cd {tmp_path}\n" in cpu
    assert "exec /v/bin/python -m flowprep run " in cpu and "--num-tasks 4 --jobs 4" in cpu
    assert cpu.rstrip().endswith('--task-index "$SLURM_ARRAY_TASK_ID"')
    gpu = render_script(
        cfg,
        recipe,
        4,
        [1, 3],
        SlurmOptions(gpus_per_task=1, cpus=8, mem="32G", time="4:00:00", account="lab", extra=("#SBATCH --qos=low",)),
        ids_file=tmp_path / "r.ids",
        device="cuda",
    )
    for line in ("--array=1,3", "--gpus-per-task=1", "--mem=32G", "--time=4:00:00", "--account=lab"):
        assert f"#SBATCH {line}\n" in gpu
    assert (
        "#SBATCH --qos=low\n" in gpu
        and "--jobs 1" in gpu
        and "--device cuda" in gpu
        and f"--ids-from {tmp_path}/r.ids" in gpu
    )
    for bad in ({"extra": ("--qos=low",)}, {"mem": "lots"}, {"partition": "a b"}, {"time": "soon"}, {"cpus": 0}):
        with pytest.raises(ValueError):
            SlurmOptions(**bad)


def test_slurm_submit_dry_run_writes_and_prints_the_script(tmp_path, capsys):
    recipe = _dataset(tmp_path, n=1)
    out = tmp_path / "s.zarr"
    assert main(["slurm", "submit", str(recipe), "--out", str(out), "--tasks", "3", "--dry-run"]) == 0
    text = capsys.readouterr().out
    script = run_dir(out) / "slurm" / "array-001.sbatch"
    assert text.startswith(script.read_text()) and "not submitted" in text
    assert (run_dir(out) / "logs").is_dir()
    assert main(["slurm", "submit", str(recipe), "--out", str(out), "--dry-run"]) == 2  # --tasks missing


@pytest.mark.slow
def test_dask_executor_matches_local_run(tmp_path):
    distributed = pytest.importorskip("distributed")
    recipe = _dataset(tmp_path, n=3)
    local = load_recipe(recipe, out=str(tmp_path / "local.zarr"), progress=False)
    run(local)
    with distributed.LocalCluster(
        n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None
    ) as cluster:
        cfg = load_recipe(
            recipe,
            out=str(tmp_path / "dask.zarr"),
            progress=False,
            executor="dask",
            scheduler=cluster.scheduler_address,
        )
        s = run(cfg)
    assert (s.rows, s.done, s.failed) == (5, 3, 2)
    _assert_same_store(local.out, cfg.out)
