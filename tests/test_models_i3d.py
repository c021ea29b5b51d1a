"""flowprep.models.i3d: TF SAME padding by hand, endpoint shapes, parameter counts, config checks."""

import pytest
import torch

from flowprep.models.i3d import (
    ENDPOINTS,
    I3D,
    I3DConfig,
    Unit3D,
    max_pool3d_same,
    tf_same_pad,
)

# DeepMind's RGB I3D: 12,279,984 weights below the logits plus a 1024 x 400 conv with bias.
RGB_PARAMS = 12_689_984
BACKBONE_PARAMS = 12_279_984


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    ("size", "kernel", "stride", "expected"),
    [
        (5, 3, 2, ((1, 1),)),  # out 3; total (3-1)*2+3-5 = 2
        (6, 3, 2, ((0, 1),)),  # out 3; total 1: the odd cell goes after
        (7, 3, 2, ((1, 1),)),  # out 4; total 3*2+3-7 = 2
        (8, 7, 2, ((2, 3),)),  # out 4; total 3*2+7-8 = 5
        (224, 7, 2, ((2, 3),)),  # Conv3d_1a_7x7 on a 224 image: out 112; total 111*2+7-224 = 5
        (3, 2, 2, ((0, 1),)),  # MaxPool3d_5a_2x2 in time on 3 steps: out 2; total 1
        (4, 1, 1, ((0, 0),)),
        (2, 7, 2, ((2, 3),)),  # kernel larger than input: out 1; total 0*2+7-2 = 5
    ],
)
def test_tf_same_pad_by_hand(size, kernel, stride, expected):
    assert tf_same_pad((size,), (kernel,), (stride,)) == expected


def test_same_conv_pads_odd_cell_after():
    unit = Unit3D(1, 1, (1, 1, 3), (1, 1, 2), use_batch_norm=False, use_relu=False)
    with torch.no_grad():
        unit.conv.weight.fill_(1.0)
    # W = 6, kernel 3, stride 2: pads (0, 1) -> windows [1 2 3] [3 4 5] [5 6 0]
    x = torch.arange(1.0, 7.0).reshape(1, 1, 1, 1, 6)
    assert unit(x).flatten().tolist() == [6.0, 12.0, 11.0]
    # W = 8, kernel 7, stride 2: pads (2, 3) -> [0 0 1 2 3 4 5] [1..7] [3..8 0] [5 6 7 8 0 0 0]
    unit7 = Unit3D(1, 1, (1, 1, 7), (1, 1, 2), use_batch_norm=False, use_relu=False)
    with torch.no_grad():
        unit7.conv.weight.fill_(1.0)
    x = torch.arange(1.0, 9.0).reshape(1, 1, 1, 1, 8)
    assert unit7(x).flatten().tolist() == [15.0, 28.0, 33.0, 26.0]


def test_same_max_pool_pads_with_minus_infinity_after():
    # W = 6, kernel 3, stride 2: pads (0, 1).  Padding before instead would give -4 first;
    # zero padding would give 0 last.
    x = torch.tensor([-4.0, -5.0, -2.0, -7.0, -3.0, -9.0]).reshape(1, 1, 1, 1, 6)
    assert max_pool3d_same(x, (1, 1, 3), (1, 1, 2)).flatten().tolist() == [-2.0, -2.0, -3.0]
    # W = 5: symmetric (1, 1), still -inf padded.
    x = torch.tensor([-4.0, -5.0, -2.0, -7.0, -3.0]).reshape(1, 1, 1, 1, 5)
    assert max_pool3d_same(x, (1, 1, 3), (1, 1, 2)).flatten().tolist() == [-4.0, -2.0, -3.0]


EXPECTED_SHAPES_16x224 = {
    "Conv3d_1a_7x7": (64, 8, 112, 112),
    "MaxPool3d_2a_3x3": (64, 8, 56, 56),
    "Conv3d_2b_1x1": (64, 8, 56, 56),
    "Conv3d_2c_3x3": (192, 8, 56, 56),
    "MaxPool3d_3a_3x3": (192, 8, 28, 28),
    "Mixed_3b": (256, 8, 28, 28),
    "Mixed_3c": (480, 8, 28, 28),
    "MaxPool3d_4a_3x3": (480, 4, 14, 14),
    "Mixed_4b": (512, 4, 14, 14),
    "Mixed_4c": (512, 4, 14, 14),
    "Mixed_4d": (512, 4, 14, 14),
    "Mixed_4e": (528, 4, 14, 14),
    "Mixed_4f": (832, 4, 14, 14),
    "MaxPool3d_5a_2x2": (832, 2, 7, 7),
    "Mixed_5b": (832, 2, 7, 7),
    "Mixed_5c": (1024, 2, 7, 7),
    "Logits": (400,),
}


def test_endpoint_shapes_and_parameter_count():
    torch.manual_seed(0)
    model = I3D().eval()
    assert _count(model) == RGB_PARAMS
    assert _count(model) - _count(model.logits) == BACKBONE_PARAMS
    with torch.no_grad():
        endpoints = model.forward_endpoints(torch.rand(1, 3, 16, 224, 224) * 2 - 1)
    assert list(endpoints) == list(ENDPOINTS)
    assert {k: tuple(v.shape) for k, v in endpoints.items()} == {
        k: (1, *shape) for k, shape in EXPECTED_SHAPES_16x224.items()
    }


def test_flow_stream_and_fine_tuning_head_counts():
    flow = I3D(I3DConfig(in_channels=2, num_classes=51))
    # One input channel fewer in the 7x7x7 conv; a 1024 x 51 head instead of 1024 x 400.
    assert _count(flow) == BACKBONE_PARAMS - 64 * 7 * 7 * 7 + 1024 * 51 + 51
    with torch.no_grad():
        assert flow.eval()(torch.zeros(1, 2, 9, 224, 224)).shape == (1, 51)


def test_batch_norm_has_offset_but_no_scale():
    bn = I3D().blocks["Conv3d_1a_7x7"].bn
    assert bn.weight is None and bn.bias.shape == (64,)
    assert bn.eps == 1e-3 and bn.momentum == 0.001
    with torch.no_grad():
        bn.running_mean.fill_(2.0)
        bn.running_var.fill_(4.0 - 1e-3)
        bn.bias.fill_(0.5)
    bn.eval()
    x = torch.full((1, 64, 1, 1, 1), 6.0)
    assert torch.allclose(bn(x), torch.full_like(x, (6.0 - 2.0) / 2.0 + 0.5))


def test_batch_norm_training_step_uses_deepminds_decay():
    bn = I3D().blocks["Conv3d_2b_1x1"].bn.train()
    x = torch.randn(2, 64, 3, 4, 4) + torch.arange(64.0).reshape(1, 64, 1, 1, 1)
    bn(x).sum().backward()
    # Running mean moves by 1 - 0.999 of the batch mean; the offset gets a gradient.
    torch.testing.assert_close(bn.running_mean, 0.001 * x.mean(dim=(0, 2, 3, 4)))
    assert bn.bias.grad is not None and torch.all(bn.bias.grad == 2 * 3 * 4 * 4)


def test_final_endpoint_truncates_the_network():
    model = I3D(I3DConfig(final_endpoint="Mixed_4f")).eval()
    assert model.logits is None and "Mixed_5b" not in model.blocks
    with torch.no_grad():
        out = model(torch.zeros(1, 3, 8, 112, 112))
    assert out.shape == (1, 832, 2, 7, 7)
    with pytest.raises(ValueError, match="no logits to replace"):
        model.replace_logits(10)


@pytest.mark.slow
def test_logits_average_over_time_and_spatial_squeeze():
    torch.manual_seed(0)
    model = I3D(I3DConfig(final_endpoint="Logits", spatial_squeeze=False)).eval()
    x = torch.rand(1, 3, 9, 256, 256) * 2 - 1
    with torch.no_grad():
        ends = model.forward_endpoints(x)
        # 256 -> Mixed_5c is 8x8, the 7x7 VALID pool leaves 2x2; time 9 -> 2 -> 1 step.
        assert ends["Mixed_5c"].shape == (1, 1024, 2, 8, 8)
        assert ends["Logits"].shape == (1, 400, 2, 2)
        pooled = torch.nn.functional.avg_pool3d(ends["Mixed_5c"], (2, 7, 7), stride=1)
        expected = model.logits.conv(pooled).mean(dim=2)
    assert torch.allclose(ends["Logits"], expected, atol=1e-6)
    squeezing = I3D(I3DConfig()).eval()
    with torch.no_grad(), pytest.raises(ValueError, match="spatial_squeeze needs 1x1"):
        squeezing(x)


def test_replace_logits():
    model = I3D()
    model.replace_logits(101)
    assert model.config.num_classes == 101
    assert model.logits.conv.weight.shape == (101, 1024, 1, 1, 1)
    assert _count(model) == BACKBONE_PARAMS + 1024 * 101 + 101


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("num_classes", 0, "num_classes=0"),
        ("in_channels", True, "in_channels=True"),
        ("dropout", 1.0, "drop probability"),
        ("final_endpoint", "Mixed_6a", "Mixed_6a.*Conv3d_1a_7x7"),
        ("bn_momentum", 0.0, "bn_momentum=0.0"),
    ],
)
def test_config_errors_name_the_field(field, value, message):
    with pytest.raises(ValueError, match=message):
        I3DConfig(**{field: value})


def test_wrong_input_channels_is_an_error():
    with pytest.raises(ValueError, match=r"expects \(B, 2, T, H, W\)"):
        I3D(I3DConfig(in_channels=2))(torch.zeros(1, 3, 8, 224, 224))
