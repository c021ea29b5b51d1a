"""Flow presets (flowprep.flow.presets): the table, recipes naming one, the fingerprint, and the
opencv-cuda preset's parity with OpenCV given the same parameters."""

from __future__ import annotations

import json

import numpy as np
import pytest

from flowprep.flow import evaluation as flow_eval
from flowprep.flow.api import DEFAULT_TVL1_PARAMS, compute_flow, resolve_params
from flowprep.flow.presets import PRESETS, get_preset, parse_flow_params, preset_params
from flowprep.run.recipe import RecipeError, load_recipe


def test_table():
    assert PRESETS["i3d"].resolved() == dict(DEFAULT_TVL1_PARAMS)  # i3d is the default table
    cuda = PRESETS["opencv-cuda"].resolved()
    # cv::cuda::OpticalFlowDual_TVL1::create's defaults; 300 iterations = 10 x 30, no median filter
    assert {k: cuda[k] for k in ("tau", "lambda_", "theta", "nscales", "warps", "epsilon", "scale_step", "gamma")} == {
        "tau": 0.25,
        "lambda_": 0.15,
        "theta": 0.3,
        "nscales": 5,
        "warps": 5,
        "epsilon": 0.01,
        "scale_step": 0.8,
        "gamma": 0.0,
    }
    assert cuda["inner_iterations"] * cuda["outer_iterations"] == 300 and cuda["median_filtering"] == 1
    preview = PRESETS["preview"]
    assert preview.short_side == 128 and preview.resolved()["nscales"] < DEFAULT_TVL1_PARAMS["nscales"]
    assert preset_params("preview", {"warps": 4})["warps"] == 4  # explicit parameters on top
    with pytest.raises(ValueError, match=r"unknown flow preset 'fast'; known: i3d, opencv-cuda, preview"):
        get_preset("fast")
    assert parse_flow_params(["warps=2", "scale_step=0.5"]) == {"warps": 2, "scale_step": 0.5}
    with pytest.raises(ValueError, match="expected KEY=VALUE"):
        parse_flow_params(["warps"])


def test_opencv_cuda_preset_agrees_with_opencv_given_the_same_parameters():
    # the tolerance of test_flow_torch's test_agrees_with_opencv_on_real_consecutive_frames, smaller frames
    gray = flow_eval.center_crop(flow_eval.bikes_gray(3, short_side=72, start=40), 64, 96)
    params = PRESETS["opencv-cuda"].resolved()
    cv = compute_flow(gray, backend="opencv", **params)
    th = compute_flow(gray, backend="torch", device="cpu", **params)
    assert np.abs(cv).mean() > 0.5  # there is motion to agree on
    assert flow_eval.epe(th, cv) < 0.05
    # and the preset changes the result: it is not the default under another name
    default = compute_flow(gray, backend="opencv")
    assert flow_eval.epe(default, cv) > 0.01


def _recipe(tmp_path, flow: str, decode: str = "") -> str:
    (tmp_path / "m.csv").write_text("id,path,label,split\n")
    p = tmp_path / "r.toml"
    p.write_text(f'dataset = "x"\nmanifest = "m.csv"\n[decode]\n{decode}\n[flow]\n{flow}\n')
    return str(p)


def test_recipe_preset_params_on_top_and_short_side(tmp_path):
    cfg = load_recipe(_recipe(tmp_path, 'preset = "preview"\n[flow.params]\nwarps = 4'))
    assert cfg.flow.preset == "preview"
    assert resolve_params(cfg.flow.params) == {**PRESETS["preview"].resolved(), "warps": 4}
    assert cfg.decode.short_side == 128  # the preset's size when the recipe names none
    cfg = load_recipe(_recipe(tmp_path, 'preset = "preview"', "short_side = 96"))
    assert cfg.decode.short_side == 96  # the recipe's wins
    cfg = load_recipe(_recipe(tmp_path, 'preset = "opencv-cuda"'))
    assert cfg.decode.short_side == 256 and resolve_params(cfg.flow.params)["scale_step"] == 0.8
    with pytest.raises(RecipeError, match="flow.preset: unknown flow preset 'fast'"):
        load_recipe(_recipe(tmp_path, 'preset = "fast"'))


def test_preset_is_in_the_fingerprint_and_absent_without_one(tmp_path):
    from flowprep.run.pipeline import content_settings
    from flowprep.store import fingerprint

    plain = content_settings(load_recipe(_recipe(tmp_path, "")), "torch")
    assert "preset" not in plain["flow"]  # stores built before presets keep matching
    named = content_settings(load_recipe(_recipe(tmp_path, 'preset = "i3d"')), "torch")
    assert named["flow"]["preset"] == "i3d" and named["flow"]["params"] == plain["flow"]["params"]
    assert fingerprint.differences(plain, named) == ["flow.preset: store None, this run 'i3d'"]
    json.dumps(named)  # recorded as JSON in the root
