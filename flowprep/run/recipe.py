"""Recipes: one TOML file per dataset (shipped ones in pipelines/, the package flowprep.recipes), read into a frozen, checked RunConfig.

``manifest`` is a path relative to the recipe file, or ``data:<dataset>/<file>`` for a file in
the manifests folder that ``flowprep manifests fetch/build`` writes (flowprep.dataset.manifests).

Config flows one way: command line -> recipe -> RunConfig -> each stage gets its own part.
Unknown keys are errors that list the known ones; every value is checked before work starts.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from flowprep.dataset.decode import DecodeConfig
from flowprep.flow.api import BACKENDS, resolve_params
from flowprep.flow.presets import get_preset, preset_params
from flowprep.run.shard import task_tag
from flowprep.store.zarr_store import WriteConfig

EXECUTORS = ("local", "dask")


class RecipeError(ValueError):
    """A recipe or option is invalid; the message names the field, the value and what is allowed."""


@dataclass(frozen=True)
class FlowConfig:
    backend: str = "auto"  # "auto" picks the fastest backend available here (see flow.pick_backend)
    device: str | None = None  # None: CUDA when available, else CPU (torch backend)
    batch: int = 0  # frame pairs per compute_flow call; 0 = backend's choice
    bound: float = 20.0  # px; flow is clipped to [-bound, bound] and stored as round(f / bound * 127)
    # flow workers (flowprep.run.flow_worker): None = one per visible GPU when the torch backend
    # runs on CUDA, else none (each worker computes its own flow); "off"; or "cpu" / "cuda:0,cuda:1"
    devices: str | None = None
    # a named TV-L1 parameter set (flowprep.flow.presets: i3d, opencv-cuda, preview); None = the
    # defaults.  ``params`` holds the preset's parameters with the recipe's [flow.params] on top.
    preset: str | None = None
    params: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        try:
            params = preset_params(self.preset, self.params)  # idempotent: replace() may run this again
        except ValueError as e:
            raise RecipeError(f"flow.preset: {e}") from None
        object.__setattr__(self, "params", params)
        allowed = ["auto", *sorted(BACKENDS)]
        if self.backend not in allowed:
            raise RecipeError(f"flow.backend={self.backend!r}: allowed: {', '.join(allowed)}")
        if self.device is not None and not re.fullmatch(r"cpu|cuda(:\d+)?", self.device):
            raise RecipeError(f"flow.device={self.device!r}: allowed: cpu, cuda, cuda:N")
        if self.devices is not None and not re.fullmatch(r"off|(cpu|cuda(:\d+)?)(,(cpu|cuda(:\d+)?))*", self.devices):
            raise RecipeError(f"flow.devices={self.devices!r}: allowed: off, or a comma list of cpu, cuda, cuda:N")
        if self.devices not in (None, "off") and self.backend == "opencv":
            raise RecipeError(f"flow.devices={self.devices!r}: flow workers run the torch backend, not opencv")
        if not (isinstance(self.batch, int) and 0 <= self.batch <= 4096):
            raise RecipeError(f"flow.batch={self.batch!r}: must be an integer in [0, 4096]")
        if not (isinstance(self.bound, (int, float)) and 0 < self.bound <= 1000):
            raise RecipeError(f"flow.bound={self.bound!r}: must be a number in (0, 1000]")
        try:
            resolve_params(self.params)
        except ValueError as e:
            raise RecipeError(f"flow.params: {e}") from None
        object.__setattr__(self, "params", MappingProxyType(dict(self.params)))


@dataclass(frozen=True)
class RunConfig:
    dataset: str
    manifest: Path
    out: Path
    cache_dir: Path
    decode: DecodeConfig = DecodeConfig()
    flow: FlowConfig = FlowConfig()
    write: WriteConfig = WriteConfig()
    jobs: int = 1
    overwrite: bool = False
    limit: int | None = None
    task: str = "local"  # tag of this run's ledger and staging entries (one per cluster task)
    progress: bool = True
    fetch: Mapping[str, Any] | None = None  # fetch stage options; None = rows must name local files
    retry_failed: bool = False  # redo only failures of a retryable class (state.is_retryable), keep the others
    repair: bool = False  # redo exactly the videos `flowprep verify` finds damaged
    # Cluster: this run does manifest items i with i % num_tasks == task_index (flowprep.run.shard).
    num_tasks: int = 1
    task_index: int = 0
    only_keys: frozenset[str] | None = None  # do only these video ids (a retry's list); None = all
    executor: str = "local"  # where videos run in parallel: "local" (joblib/loky) or "dask"
    scheduler: str | None = None  # dask scheduler address (executor "dask")


_TOP_KEYS = {"dataset", "description", "manifest", "decode", "flow", "write", "fetch", "unsupported"}


def _section(data: Mapping[str, Any], name: str, cls: type, src: Path) -> Any:
    section = data.get(name, {})
    if not isinstance(section, dict):
        raise RecipeError(f"{src}: [{name}] must be a table")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(section) - known)
    if unknown:
        raise RecipeError(f"{src}: unknown key(s) in [{name}]: {unknown}; known: {sorted(known)}")
    try:
        return cls(**section)
    except (TypeError, ValueError) as e:
        raise RecipeError(f"{src}: [{name}] {e}") from None


def _manifest_path(recipe: Path, value: Any) -> Path:
    if not isinstance(value, str) or not value:
        raise RecipeError(f"{recipe}: manifest={value!r}: a path relative to the recipe, or data:<dataset>/<file>")
    if value.startswith("data:"):
        from flowprep.dataset.manifests import DATA_MANIFESTS

        return (DATA_MANIFESTS / value[len("data:") :]).resolve()
    return (recipe.parent / value).resolve()


def check_cluster_overrides(overrides: Mapping[str, Any]) -> tuple[int, int, str, str | None]:
    """Checked (num_tasks, task_index, executor, scheduler) from load_recipe's overrides."""
    num_tasks = 1 if overrides.get("num_tasks") is None else overrides["num_tasks"]
    task_index = 0 if overrides.get("task_index") is None else overrides["task_index"]
    if not isinstance(num_tasks, int) or not 1 <= num_tasks <= 100_000:
        raise RecipeError(f"--num-tasks {num_tasks!r}: must be an integer in [1, 100000]")
    if not isinstance(task_index, int) or not 0 <= task_index < num_tasks:
        raise RecipeError(
            f"--task-index {task_index!r}: must be an integer in [0, {num_tasks - 1}] (--num-tasks {num_tasks})"
        )
    executor = overrides.get("executor") or "local"
    if executor not in EXECUTORS:
        raise RecipeError(f"--executor {executor!r}: allowed: {', '.join(EXECUTORS)}")
    scheduler = overrides.get("scheduler")
    if executor == "dask" and not scheduler:
        raise RecipeError("--executor dask needs --scheduler ADDRESS (e.g. tcp://head-node:8786)")
    if executor != "dask" and scheduler:
        raise RecipeError(f"--scheduler {scheduler!r} is only used with --executor dask")
    return num_tasks, task_index, executor, scheduler


def _read_recipe(path: Path) -> dict[str, Any]:
    """The recipe's TOML table, its top-level keys checked."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RecipeError(f"recipe {path} not found") from None
    except tomllib.TOMLDecodeError as e:
        raise RecipeError(f"{path}: not valid TOML: {e}") from None
    except UnicodeDecodeError:
        raise RecipeError(f"{path} is not a recipe (not UTF-8 text; a recipe is a TOML file)") from None
    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        raise RecipeError(f"{path}: unknown key(s) {unknown}; known: {sorted(_TOP_KEYS)}")
    if "unsupported" in data:
        raise RecipeError(f"{path}: {data['unsupported']}")
    return data


def _stage_configs(
    data: Mapping[str, Any], path: Path, overrides: Mapping[str, Any]
) -> tuple[DecodeConfig, FlowConfig, WriteConfig]:
    """[decode], [flow] (the command line's backend / device / devices over the file's) and [write],
    checked and made consistent with each other."""
    decode = _section(data, "decode", DecodeConfig, path)
    flow_section = dict(data.get("flow", {}))
    for key in ("backend", "device", "devices"):
        if overrides.get(key) is not None:
            flow_section[key] = overrides[key]
    flow = _section({"flow": flow_section}, "flow", FlowConfig, path)
    write = _section(data, "write", WriteConfig, path)
    preset_side = get_preset(flow.preset).short_side if flow.preset else None
    if preset_side is not None and "short_side" not in (data.get("decode") or {}):
        decode = replace(decode, short_side=preset_side)  # the preset's size unless the recipe names one
    if overrides.get("allow_partial"):
        decode = replace(decode, allow_partial=True)
    if decode.block_frames != write.shard_frames:
        decode = replace(decode, block_frames=write.shard_frames)  # one decoded block = one shard
    return decode, flow, write


def _check_jobs_and_limit(overrides: Mapping[str, Any]) -> tuple[int, int | None]:
    jobs = overrides.get("jobs") or 1
    if not isinstance(jobs, int) or jobs < 1:
        raise RecipeError(f"--jobs {jobs!r}: must be an integer >= 1")
    limit = overrides.get("limit")
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise RecipeError(f"--limit {limit!r}: must be an integer >= 1")
    return jobs, limit


def _fetch_section(data: Mapping[str, Any], path: Path, overrides: Mapping[str, Any]) -> dict[str, Any] | None:
    """[fetch] with the command line's fetch keys over it (None: no fetch stage), every key checked."""
    fetch = data.get("fetch")
    if fetch is not None and not isinstance(fetch, dict):
        raise RecipeError(f"{path}: [fetch] must be a table")
    fetch_overrides = {k: v for k, v in (overrides.get("fetch") or {}).items() if v is not None}
    if fetch_overrides:  # e.g. --url-template: also turns the fetch stage on
        fetch = {**(fetch or {}), **fetch_overrides}
    if fetch is not None:
        from flowprep.dataset.fetch import FetchConfig

        _section({"fetch": fetch}, "fetch", FetchConfig, path)  # check every key now, not per row
    return fetch


def load_recipe(path: str | Path, **overrides: Any) -> RunConfig:
    """Read a recipe; ``overrides`` (from the command line) win over the file.

    Recognised overrides: out, cache_dir, jobs, overwrite, limit, task, progress, backend, device, devices,
    retry_failed, repair, allow_partial, fetch (a dict of [fetch] keys; None values are ignored),
    num_tasks, task_index, only_keys, executor, scheduler.
    """
    path = Path(path)
    data = _read_recipe(path)
    dataset = data.get("dataset", path.stem)
    if not isinstance(dataset, str) or not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", dataset):
        raise RecipeError(f"{path}: dataset={dataset!r}: 1-64 characters of letters, digits, '_', '-'")
    if "manifest" not in data:
        raise RecipeError(f"{path}: missing key 'manifest' (path of the manifest CSV, relative to the recipe)")
    manifest = _manifest_path(path, data["manifest"])
    decode, flow, write = _stage_configs(data, path, overrides)
    out = Path(overrides.get("out") or f"out/{dataset}.zarr")
    cache_dir = Path(overrides.get("cache_dir") or out.parent / "cache")
    jobs, limit = _check_jobs_and_limit(overrides)
    num_tasks, task_index, executor, scheduler = check_cluster_overrides(overrides)
    task = overrides.get("task") or (task_tag(task_index) if num_tasks > 1 else "local")
    if not re.fullmatch(r"[A-Za-z0-9_]{1,32}", task):
        raise RecipeError(f"task tag {task!r}: 1-32 characters of letters, digits, '_'")
    fetch = _fetch_section(data, path, overrides)
    return RunConfig(
        dataset=dataset,
        manifest=manifest,
        out=out,
        cache_dir=cache_dir,
        decode=decode,
        flow=flow,
        write=write,
        jobs=jobs,
        overwrite=bool(overrides.get("overwrite", False)),
        limit=limit,
        task=task,
        progress=bool(overrides.get("progress", True)),
        fetch=MappingProxyType(dict(fetch)) if fetch is not None else None,
        retry_failed=bool(overrides.get("retry_failed", False)),
        repair=bool(overrides.get("repair", False)),
        num_tasks=num_tasks,
        task_index=task_index,
        only_keys=frozenset(overrides["only_keys"]) if overrides.get("only_keys") is not None else None,
        executor=executor,
        scheduler=scheduler,
    )
