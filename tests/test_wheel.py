"""`pip install flowprep` as a stranger: the wheel carries its recipes and demo manifest, asks for
a torch range (the exact pin lives in constraints.txt), and works from an empty folder in a fresh
venv (no clone on sys.path, the user data folder under a temporary HOME)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # a copy of the source tree: an in-tree build/ left by an older build could add stale files
    src = out / "src"
    shutil.copytree(
        ROOT,
        src,
        ignore=shutil.ignore_patterns(
            ".git",
            ".venv",
            "build",
            "dist",
            "*.egg-info",
            "out",
            "__pycache__",
            ".pytest_cache",
            ".ruff_cache",
            "weights",
        ),
    )
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", ".", "--no-deps", "-w", str(out)],
        check=True,
        capture_output=True,
        text=True,
        cwd=src,
    )
    (whl,) = out.glob("flowprep-*.whl")
    return whl


@pytest.mark.slow
def test_wheel_metadata_has_a_torch_range_and_the_package_data(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        meta = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    torch_reqs = [ln for ln in meta.splitlines() if re.match(r"Requires-Dist: torch\b", ln)]
    assert torch_reqs == ["Requires-Dist: torch>=2.13"]  # a range: a user's CUDA torch is kept
    assert not any("==" in ln for ln in torch_reqs)
    assert re.search(r'Requires-Dist: scikit-video==1\.1\.11; extra == "demo"', meta)
    assert re.search(r'Requires-Dist: distributed>=2024\.1; extra == "dask"', meta)
    assert "Requires-Python: >=3.11" in meta
    for f in (
        "flowprep/recipes/demo.toml",
        "flowprep/recipes/demo.csv",
        "flowprep/recipes/kinetics400.toml",
        "flowprep/recipes/_videos.toml",
        "flowprep/recipes/samples/local_generic.csv",
        "flowprep/recipes/samples/ucf101/classInd.txt",
        "flowprep/models/kinetics400_labels.txt",
    ):
        assert f in names, f
    assert not any(n.startswith(("data_manifests/", "pipelines/", "tests/")) for n in names)
    # pipelines/ of the clone is flowprep/recipes/ of the wheel; setup.cfg lists the packages, so
    # every module of the source tree must be there (a new subpackage not listed would be missing)
    modules = {f"flowprep/{p.relative_to(ROOT / 'flowprep').as_posix()}" for p in (ROOT / "flowprep").rglob("*.py")}
    modules |= {
        f"flowprep/recipes/{p.relative_to(ROOT / 'pipelines').as_posix()}"
        for p in (ROOT / "pipelines").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    assert modules - names == set()
    # CI and `make install` keep the exact pin, through the constraints file
    assert "torch==2.13.0" in (ROOT / "constraints.txt").read_text().split()
    make = (ROOT / "Makefile").read_text()
    pip_lines = [ln for ln in make.splitlines() if "pip install" in ln and "--upgrade pip" not in ln]
    assert pip_lines and all("-c constraints.txt" in ln for ln in pip_lines)


@pytest.mark.slow
def test_pip_install_then_demo_and_a_folder_from_an_empty_folder(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", "-c", str(ROOT / "constraints.txt"), f"{wheel}[demo]"],
        capture_output=True,
        text=True,
    )
    assert pip.returncode == 0, pip.stderr[-2000:]
    work = tmp_path / "empty"
    work.mkdir()
    env = {
        k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "FLOWPREP_DATA", "XDG_DATA_HOME", "VIRTUAL_ENV")
    }
    env["HOME"] = str(tmp_path / "home")
    exe = str(venv / "bin" / "flowprep")

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([exe, *args], capture_output=True, text=True, cwd=work, env=env, timeout=900)

    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import flowprep; print(flowprep.__file__)"],
        capture_output=True,
        text=True,
        cwd=work,
        env=env,
        check=True,
    ).stdout
    assert where.startswith(str(venv)), where  # the installed wheel, not this clone
    # opencv here: what is under test is the install; on a 2-core machine shared with other jobs the
    # torch backend's threads make one video take minutes (backend auto is tested in test_api.py)
    demo = run("run", "demo", "--limit", "1", "--no-progress", "--backend", "opencv")
    assert demo.returncode == 0, demo.stderr[-2000:]
    assert (
        "demo: 1 rows: 1 done, 0 failed" in demo.stdout and (work / "out" / "demo.zarr" / "videos" / "bikes").is_dir()
    )
    listed = run("manifests", "list")
    assert (
        listed.returncode == 0
        and f"manifests folder: {tmp_path / 'home' / '.local/share/flowprep/manifests'}" in listed.stdout
    )
    assert run("recipes").returncode == 0

    from flowprep.dataset.demo import Motion, render, write_lossless

    for rel in ("vids/walk/0001.mp4", "vids/run/0001.mp4"):
        write_lossless(render(Motion(dx=2.0), 3, 256, 320), work / rel)
    folder = run("run", "vids", "--no-progress", "--backend", "opencv")
    assert folder.returncode == 0, folder.stderr[-2000:]
    assert "2 video(s), 2 label(s)" in folder.stdout and "2 done, 0 failed" in folder.stdout
    assert sorted(p.name for p in (work / "out" / "vids.zarr" / "videos").iterdir() if p.is_dir()) == [
        "run__0001",
        "walk__0001",
    ]
    assert not any(venv.rglob("site-packages/flowprep/recipes/*/SHA256SUMS"))  # nothing written into the package
