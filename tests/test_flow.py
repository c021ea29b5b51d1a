"""TV-L1 through flowprep.flow.api on synthetic motion with a known field: u right / v down, time
direction, rotation, the pyramid for large motion, quantization, and the checked parameters."""

import functools

import numpy as np
import pytest

from flowprep.dataset.demo import Motion, render, true_flow
from flowprep.flow import api
from flowprep.flow.api import (
    DEFAULT_TVL1_PARAMS,
    FLOW_BOUND,
    dequantize_flow,
    quantize_flow,
    rgb_to_gray,
)

# These tests pin down the reference backend (OpenCV); compute_flow's default is now "auto"
# (torch here), which tests/test_flow_torch.py checks against this reference.
compute_flow = functools.partial(api.compute_flow, backend="opencv")


def _gray(motion, n=3, h=64, w=80):
    return rgb_to_gray(render(motion, n, h, w))


@pytest.mark.parametrize("dx,dy", [(3, 0), (0, 2), (2, -1), (-4, 3)])
def test_translation_gives_u_right_v_down(dx, dy):
    flow = compute_flow(_gray(Motion(dx=dx, dy=dy)))
    assert flow.shape == (2, 64, 80, 2) and flow.dtype == np.float32
    inner = flow[:, 8:-8, 8:-8]
    np.testing.assert_allclose(inner[..., 0].mean(), dx, atol=0.1)
    np.testing.assert_allclose(inner[..., 1].mean(), dy, atol=0.1)


def test_flow_t_maps_frame_t_to_t_plus_1_for_reversed_time():
    gray = _gray(Motion(dx=3, dy=0), n=2)
    forward = compute_flow(gray)[0, 8:-8, 8:-8, 0].mean()
    backward = compute_flow(gray[::-1].copy())[0, 8:-8, 8:-8, 0].mean()
    assert forward == pytest.approx(3, abs=0.1) and backward == pytest.approx(-3, abs=0.1)


def test_rotation_matches_true_field():
    m = Motion(rot_deg=2.0)
    flow = compute_flow(_gray(m, n=2, h=96, w=96))[0]
    err = np.hypot(*(flow - true_flow(m, 96, 96))[12:-12, 12:-12].transpose(2, 0, 1))
    assert err.mean() < 0.25


def test_zero_motion_gives_zero_flow():
    flow = compute_flow(_gray(Motion(), n=3))
    assert np.abs(flow).max() < 0.05


def test_large_motion_needs_the_coarse_pyramid():
    # 12 px: the project default (scale_step 0.5) follows it, OpenCV's 0.8 does not.
    gray = _gray(Motion(dx=12, dy=0), n=2, h=128, w=160)
    good = compute_flow(gray)[0, 20:-20, 20:-20, 0].mean()
    bad = compute_flow(gray, scale_step=0.8)[0, 20:-20, 20:-20, 0].mean()
    assert good == pytest.approx(12, abs=0.3)
    assert abs(bad - 12) > 1.0


def test_quantization_round_trip_and_zero():
    px = np.linspace(-25, 25, 2001, dtype=np.float32)
    q = quantize_flow(px)
    assert q.dtype == np.int8 and q.min() == -127 and q.max() == 127
    back = dequantize_flow(q) * FLOW_BOUND
    inside = np.abs(px) <= FLOW_BOUND
    step = FLOW_BOUND / 127
    assert np.abs(back[inside] - px[inside]).max() <= step / 2 + 1e-5
    assert np.all(back[~inside] == np.sign(px[~inside]) * FLOW_BOUND)
    assert quantize_flow(np.zeros(3))[0] == 0 and dequantize_flow(np.zeros(1, np.int8))[0] == 0.0
    assert quantize_flow(np.array([0.05]))[0] == 0  # under half a step rounds to exact zero


def test_unknown_backend_and_param_are_listed():
    g = np.zeros((2, 16, 16), np.uint8)
    with pytest.raises(ValueError, match="allowed: .*opencv"):
        compute_flow(g, backend="nope")
    with pytest.raises(ValueError, match="allowed: .*scale_step"):
        compute_flow(g, scalestep=0.5)
    with pytest.raises(ValueError, match="scale_step=1.5"):
        compute_flow(g, scale_step=1.5)
    with pytest.raises(ValueError, match="at least 2 frames"):
        compute_flow(g[:1])
    with pytest.raises(ValueError, match="uint8"):
        compute_flow(g.astype(np.float32))


def test_defaults_are_documented_values():
    assert DEFAULT_TVL1_PARAMS["scale_step"] == 0.5 and DEFAULT_TVL1_PARAMS["nscales"] == 5
    assert DEFAULT_TVL1_PARAMS["tau"] == 0.25 and DEFAULT_TVL1_PARAMS["lambda_"] == 0.15


def test_gray_is_bt601_luma():
    rgb = np.array([[[[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255]]]], np.uint8)
    assert rgb_to_gray(rgb).tolist() == [[[76, 150, 29, 255]]]
