"""Inception-v1 I3D (Carreira & Zisserman 2017), a PyTorch port of DeepMind's kinetics-i3d ``i3d.py``.

The room for the network itself: pure ``torch.nn`` modules, no I/O, no weights (those live in
``flowprep.models.weights``).  One dataclass, ``I3DConfig``, configures it.

Conventions, all DeepMind's:

* input ``x_bcthw``: (B, C, T, H, W), values in [-1, 1]; C = 3 for RGB, 2 for flow (u, v);
* TensorFlow ``"SAME"`` padding for every conv and max-pool, worked out from the input size at
  call time; when the total padding is odd the extra cell goes *after* (``tf_same_pad``);
  max-pools pad with -inf so padding never wins the max;
* BatchNorm has an offset (beta) but no scale (gamma is fixed at 1), eps 1e-3;
* the two first max-pools are 1x3x3 with stride 1x2x2 (no temporal downsampling);
* logits: 2x7x7 average pool (stride 1, VALID), dropout, 1x1x1 conv with bias (no BN, no ReLU),
  squeezed over H, W and averaged over the remaining time steps.

Module names mirror DeepMind's endpoint names so that a state-dict key reads like a TF variable
path: ``blocks.Mixed_4b.branch_1b.conv.weight`` is ``Mixed_4b/Branch_1/Conv3d_0b_3x3/conv_3d/w``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

ENDPOINTS: tuple[str, ...] = (
    "Conv3d_1a_7x7",
    "MaxPool3d_2a_3x3",
    "Conv3d_2b_1x1",
    "Conv3d_2c_3x3",
    "MaxPool3d_3a_3x3",
    "Mixed_3b",
    "Mixed_3c",
    "MaxPool3d_4a_3x3",
    "Mixed_4b",
    "Mixed_4c",
    "Mixed_4d",
    "Mixed_4e",
    "Mixed_4f",
    "MaxPool3d_5a_2x2",
    "Mixed_5b",
    "Mixed_5c",
    "Logits",
)

# Output channels of the Inception blocks, in DeepMind's order:
# (branch_0 1x1, branch_1 1x1, branch_1 3x3, branch_2 1x1, branch_2 3x3, branch_3 pool-1x1).
INCEPTION_CHANNELS: dict[str, tuple[int, int, int, int, int, int]] = {
    "Mixed_3b": (64, 96, 128, 16, 32, 32),
    "Mixed_3c": (128, 128, 192, 32, 96, 64),
    "Mixed_4b": (192, 96, 208, 16, 48, 64),
    "Mixed_4c": (160, 112, 224, 24, 64, 64),
    "Mixed_4d": (128, 128, 256, 24, 64, 64),
    "Mixed_4e": (112, 144, 288, 32, 64, 64),
    "Mixed_4f": (256, 160, 320, 32, 128, 128),
    "Mixed_5b": (256, 160, 320, 32, 128, 128),
    "Mixed_5c": (384, 192, 384, 48, 128, 128),
}

# Max-pools: (kernel_thw, stride_thw).
MAXPOOLS: dict[str, tuple[tuple[int, int, int], tuple[int, int, int]]] = {
    "MaxPool3d_2a_3x3": ((1, 3, 3), (1, 2, 2)),
    "MaxPool3d_3a_3x3": ((1, 3, 3), (1, 2, 2)),
    "MaxPool3d_4a_3x3": ((3, 3, 3), (2, 2, 2)),
    "MaxPool3d_5a_2x2": ((2, 2, 2), (2, 2, 2)),
}

BN_EPS = 1e-3


@dataclasses.dataclass(frozen=True, kw_only=True)
class I3DConfig:
    """Everything that shapes an I3D; checkpoints store it with ``dataclasses.asdict``."""

    num_classes: int = 400
    in_channels: int = 3  # 3 for RGB, 2 for flow (u, v)
    dropout: float = 0.5  # drop *probability* before the logits conv; DeepMind trained with 0.5
    final_endpoint: str = "Logits"  # build (and run) the network only up to here
    spatial_squeeze: bool = True  # logits (B, N) instead of (B, N, H', W')
    # Torch momentum is 1 - TF decay: DeepMind's Sonnet BatchNorm decays the running statistics
    # by 0.999, so 0.001 reproduces their training.  Raise it (e.g. 0.01) when fine-tuning on a
    # small data set, where 0.001 takes thousands of steps to move the running statistics.
    bn_momentum: float = 0.001

    def __post_init__(self) -> None:
        if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int) or self.num_classes < 1:
            raise ValueError(f"I3DConfig.num_classes={self.num_classes!r}: must be an integer >= 1")
        if isinstance(self.in_channels, bool) or not isinstance(self.in_channels, int) or self.in_channels < 1:
            raise ValueError(f"I3DConfig.in_channels={self.in_channels!r}: must be an integer >= 1 (3 RGB, 2 flow)")
        if not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"I3DConfig.dropout={self.dropout!r}: must be a drop probability in [0, 1)")
        if self.final_endpoint not in ENDPOINTS:
            raise ValueError(f"I3DConfig.final_endpoint={self.final_endpoint!r}: must be one of {list(ENDPOINTS)}")
        if not isinstance(self.spatial_squeeze, bool):
            raise TypeError(f"I3DConfig.spatial_squeeze={self.spatial_squeeze!r}: must be a bool")
        if not isinstance(self.bn_momentum, (int, float)) or not 0.0 < self.bn_momentum <= 1.0:
            raise ValueError(f"I3DConfig.bn_momentum={self.bn_momentum!r}: must be in (0, 1]")


def tf_same_pad(size: Sequence[int], kernel: Sequence[int], stride: Sequence[int]) -> tuple[tuple[int, int], ...]:
    """TensorFlow ``"SAME"`` padding: ``(before, after)`` for each dimension.

    The output has ``ceil(size / stride)`` cells; the total padding is the least that gives it,
    ``max((out - 1) * stride + kernel - size, 0)``, and TF puts the odd cell after.
    """
    pads = []
    for n, k, s in zip(size, kernel, stride, strict=True):
        out = -(-n // s)
        total = max((out - 1) * s + k - n, 0)
        pads.append((total // 2, total - total // 2))
    return tuple(pads)


def _flat_pad_thw(pads_thw: tuple[tuple[int, int], ...]) -> tuple[int, ...]:
    """``F.pad`` wants the last dimension first: (W_before, W_after, H_before, H_after, T_...)."""
    return tuple(p for before_after in reversed(pads_thw) for p in before_after)


def max_pool3d_same(x_bcthw: torch.Tensor, kernel_thw: Sequence[int], stride_thw: Sequence[int]) -> torch.Tensor:
    """3D max-pool with TF ``"SAME"`` padding (padded cells never win: they are -inf)."""
    pads = tf_same_pad(x_bcthw.shape[2:], kernel_thw, stride_thw)
    kernel, stride = _thw(kernel_thw), _thw(stride_thw)
    if all(b == a for b, a in pads):
        # torch pads max-pools with -inf itself; symmetric padding needs no copy of the input.
        return F.max_pool3d(x_bcthw, kernel, stride, padding=_thw([b for b, _ in pads]))
    x_bcthw = F.pad(x_bcthw, _flat_pad_thw(pads), value=float("-inf"))
    return F.max_pool3d(x_bcthw, kernel, stride)


def _thw(values: Sequence[int]) -> tuple[int, int, int]:
    """(t, h, w) of a 3-element sequence: the shape torch's 3D layers take."""
    t, h, w = values
    return t, h, w


class MaxPool3dSame(nn.Module):
    def __init__(self, kernel_thw: Sequence[int], stride_thw: Sequence[int]) -> None:
        super().__init__()
        self.kernel_thw = _thw(kernel_thw)
        self.stride_thw = _thw(stride_thw)

    def forward(self, x_bcthw: torch.Tensor) -> torch.Tensor:
        return max_pool3d_same(x_bcthw, self.kernel_thw, self.stride_thw)

    def extra_repr(self) -> str:
        return f"kernel_thw={self.kernel_thw}, stride_thw={self.stride_thw}, padding=SAME"


class BatchNorm3dNoScale(nn.BatchNorm3d):
    """Sonnet v1's default BatchNorm: learned offset (``bias``), no scale (gamma is 1).

    Registered without ``weight`` so that the parameter count and the state dict match
    DeepMind's variables exactly and an optimizer cannot drift a scale that was never trained.
    """

    def __init__(self, num_features: int, *, eps: float = BN_EPS, momentum: float = 0.001) -> None:
        super().__init__(num_features, eps=eps, momentum=momentum, affine=False)
        self.bias = nn.Parameter(torch.zeros(num_features))


class Unit3D(nn.Module):
    """Conv3d (TF SAME padding) + optional BatchNorm + optional ReLU, DeepMind's ``Unit3D``."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_thw: Sequence[int] = (1, 1, 1),
        stride_thw: Sequence[int] = (1, 1, 1),
        *,
        use_batch_norm: bool = True,
        use_relu: bool = True,
        use_bias: bool = False,
        bn_momentum: float = 0.001,
    ) -> None:
        super().__init__()
        self.kernel_thw = _thw(kernel_thw)
        self.stride_thw = _thw(stride_thw)
        self.conv = nn.Conv3d(in_channels, out_channels, self.kernel_thw, self.stride_thw, bias=use_bias)
        self.bn = BatchNorm3dNoScale(out_channels, momentum=bn_momentum) if use_batch_norm else None
        self.use_relu = use_relu

    def forward(self, x_bcthw: torch.Tensor) -> torch.Tensor:
        pads = tf_same_pad(x_bcthw.shape[2:], self.kernel_thw, self.stride_thw)
        if all(b == a for b, a in pads):
            padding = tuple(b for b, _ in pads)
        else:
            x_bcthw = F.pad(x_bcthw, _flat_pad_thw(pads))
            padding = (0, 0, 0)
        x_bcthw = F.conv3d(x_bcthw, self.conv.weight, self.conv.bias, self.stride_thw, padding)
        if self.bn is not None:
            x_bcthw = self.bn(x_bcthw)
        if self.use_relu:
            x_bcthw = F.relu(x_bcthw, inplace=True)
        return x_bcthw


class InceptionBlock(nn.Module):
    """Four branches concatenated on channels: 1x1 | 1x1-3x3 | 1x1-3x3 | maxpool 3x3x3-1x1."""

    def __init__(self, in_channels: int, channels: Sequence[int], *, bn_momentum: float = 0.001) -> None:
        super().__init__()
        c0, c1a, c1b, c2a, c2b, c3b = channels

        def unit(cin, cout, k):
            return Unit3D(cin, cout, k, bn_momentum=bn_momentum)

        self.branch_0 = unit(in_channels, c0, (1, 1, 1))
        self.branch_1a = unit(in_channels, c1a, (1, 1, 1))
        self.branch_1b = unit(c1a, c1b, (3, 3, 3))
        self.branch_2a = unit(in_channels, c2a, (1, 1, 1))
        self.branch_2b = unit(c2a, c2b, (3, 3, 3))
        self.branch_3b = unit(in_channels, c3b, (1, 1, 1))
        self.out_channels = c0 + c1b + c2b + c3b

    def forward(self, x_bcthw: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            [
                self.branch_0(x_bcthw),
                self.branch_1b(self.branch_1a(x_bcthw)),
                self.branch_2b(self.branch_2a(x_bcthw)),
                self.branch_3b(max_pool3d_same(x_bcthw, (3, 3, 3), (1, 1, 1))),
            ],
            dim=1,
        )


class LogitsHead(nn.Module):
    """2x7x7 average pool (VALID, stride 1), dropout, 1x1x1 conv with bias, mean over time."""

    def __init__(self, in_channels: int, num_classes: int, *, dropout: float, spatial_squeeze: bool) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.conv = nn.Conv3d(in_channels, num_classes, kernel_size=1, bias=True)
        self.spatial_squeeze = spatial_squeeze

    def forward(self, x_bcthw: torch.Tensor) -> torch.Tensor:
        x_bcthw = F.avg_pool3d(x_bcthw, kernel_size=(2, 7, 7), stride=1)
        logits_bnthw = self.conv(self.dropout(x_bcthw))
        if self.spatial_squeeze:
            h, w = logits_bnthw.shape[3:]
            if (h, w) != (1, 1):
                raise ValueError(
                    f"spatial_squeeze needs 1x1 logits but got {h}x{w}: the input must be "
                    "224x224 (or use I3DConfig(spatial_squeeze=False))"
                )
            return logits_bnthw[:, :, :, 0, 0].mean(dim=2)
        return logits_bnthw.mean(dim=2)


class I3D(nn.Module):
    """Inception-v1 I3D up to ``config.final_endpoint``; ``forward`` returns that endpoint.

    With the default ``final_endpoint="Logits"`` the output is (B, num_classes) logits averaged
    over time (no softmax).  ``forward_endpoints`` returns every endpoint on the way.
    """

    def __init__(self, config: I3DConfig | None = None) -> None:
        super().__init__()
        self.config = config = config if config is not None else I3DConfig()
        momentum = config.bn_momentum
        stop = ENDPOINTS.index(config.final_endpoint)
        blocks: dict[str, nn.Module] = {}
        channels = config.in_channels
        for name in ENDPOINTS[: stop + 1]:
            if name == "Conv3d_1a_7x7":
                blocks[name] = Unit3D(channels, 64, (7, 7, 7), (2, 2, 2), bn_momentum=momentum)
                channels = 64
            elif name == "Conv3d_2b_1x1":
                blocks[name] = Unit3D(channels, 64, (1, 1, 1), bn_momentum=momentum)
                channels = 64
            elif name == "Conv3d_2c_3x3":
                blocks[name] = Unit3D(channels, 192, (3, 3, 3), bn_momentum=momentum)
                channels = 192
            elif name in MAXPOOLS:
                blocks[name] = MaxPool3dSame(*MAXPOOLS[name])
            elif name in INCEPTION_CHANNELS:
                block = InceptionBlock(channels, INCEPTION_CHANNELS[name], bn_momentum=momentum)
                blocks[name] = block
                channels = block.out_channels
        self.blocks = nn.ModuleDict(blocks)
        self.out_channels = channels  # of the last block before the logits
        self.logits: LogitsHead | None = None
        if config.final_endpoint == "Logits":
            self.logits = LogitsHead(
                channels,
                config.num_classes,
                dropout=config.dropout,
                spatial_squeeze=config.spatial_squeeze,
            )

    def forward_endpoints(self, x_bcthw: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every endpoint up to ``config.final_endpoint``, in network order."""
        if x_bcthw.ndim != 5 or x_bcthw.shape[1] != self.config.in_channels:
            raise ValueError(f"I3D expects (B, {self.config.in_channels}, T, H, W) input, got {tuple(x_bcthw.shape)}")
        out: dict[str, torch.Tensor] = {}
        for name, block in self.blocks.items():
            x_bcthw = block(x_bcthw)
            out[name] = x_bcthw
        if self.logits is not None:
            out["Logits"] = self.logits(x_bcthw)
        return out

    def forward(self, x_bcthw: torch.Tensor) -> torch.Tensor:
        return self.forward_endpoints(x_bcthw)[self.config.final_endpoint]

    def replace_logits(self, num_classes: int) -> None:
        """New, freshly initialised logits conv for ``num_classes`` (fine-tuning)."""
        if self.logits is None:
            raise ValueError(f"this I3D stops at {self.config.final_endpoint!r} and has no logits to replace")
        self.config = dataclasses.replace(self.config, num_classes=num_classes)
        self.logits.conv = nn.Conv3d(self.out_channels, num_classes, kernel_size=1, bias=True).to(
            self.logits.conv.weight.device
        )
