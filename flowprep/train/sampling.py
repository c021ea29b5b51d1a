"""Samplers: where in a video the views of one sample lie, and how the model receives them.

The room between ``VideoClips`` (which reads what a sampler asks for) and the trainer (which
feeds the model what a sampler shapes).  Pure functions over lengths and generators first, the
sampler classes after; nothing here reads a store.  One sampler per family of the two-stream
literature, a ``...Train`` (random: its draws follow a seeded ``numpy`` generator) and a
``...Eval`` (deterministic: the papers' test protocols), as torchvision's presets:

========  ===========================================  ===========================================
name      train (one sample)                           eval (one video)
========  ===========================================  ===========================================
dense     one window of ``clip_len`` steps (I3D, S3D,  consecutive windows from step 0, or the
          X3D, C3D, R(2+1)D)                           whole video (``clip_len=0``)
tsn       ``segments=3`` segments, one snippet in      ``segments=25`` snippets, each in the
          each (TSN: random inside its segment)        middle of its segment (TSN's test code)
stacked   one random snippet (two-stream, Simonyan     ``samples=25`` snippets at TSN's evenly
          & Zisserman 2014)                            spaced offsets
slowfast  one clip of ``clip_len`` fast frames every   ``clips=10`` clips spread over the video
          ``stride`` steps; slow = every ``alpha``-th  (PySlowFast: start = delta * k / clips)
========  ===========================================  ===========================================

A snippet (tsn, stacked) is one RGB frame and ``clip_len`` consecutive flow fields (5 for TSN,
L = 10 for two-stream) starting at the same step.  Every sampler gives N views of T steps per
stream; ``VideoClips`` hands them over as (N, T, crop, crop, C) and ``model_input`` shapes a
(B*N, C, T, H, W) batch for the model: a clip (dense), frames with the T steps stacked into
channels (B*N, T*C, H, W) as (u0, v0, u1, v1, ...) (tsn, stacked), or the two pathways
``[slow, fast]`` (slowfast).  The model returns (B*N, classes); ``consensus`` averages the N
views of each sample (TSN's segment consensus, the papers' test-time averaging).

Crops: a training sampler draws one crop and one flip for the whole sample (all views and
streams), an evaluation sampler takes the centre crop without flip (one crop, not the papers'
ten: noted in the README).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import numpy as np
import torch

CHANNELS = {"rgb": 3, "flow": 2}


# --- pure functions ---------------------------------------------------------------------------


def window_indices(length: int, clip_len: int, start: int, stride: int = 1) -> np.ndarray:
    """Time indices ``start, start+stride, ...`` (``clip_len`` of them) modulo ``length`` (short videos loop)."""
    if length < 1:
        raise ValueError(f"length={length}: a video needs at least one time step")
    return (start + stride * np.arange(clip_len)) % length


def sample_start(length: int, span: int, rng: np.random.Generator) -> int:
    """Uniform start of a window covering ``span`` steps inside ``length`` (0 when the video is shorter)."""
    return int(rng.integers(0, max(length - span, 0) + 1))


def tsn_train_offsets(avail: int, segments: int, rng: np.random.Generator) -> np.ndarray:
    """TSN's training offsets (``_sample_indices`` of tsn-pytorch): ``avail`` possible snippet
    starts cut into ``segments`` equal segments, one uniform start in each; fewer starts than
    segments: sorted uniform draws over all of them."""
    avail = max(avail, 1)
    width = avail // segments
    if width > 0:
        return np.arange(segments) * width + rng.integers(0, width, size=segments)
    return np.sort(rng.integers(0, avail, size=segments))


def tsn_test_offsets(avail: int, segments: int) -> np.ndarray:
    """TSN's test offsets (``_get_test_indices``): the middle of each of ``segments`` equal parts
    of the ``avail`` possible starts, ``int(tick / 2 + tick * k)`` with ``tick = avail / segments``."""
    tick = max(avail, 1) / segments
    return np.array([int(tick / 2 + tick * k) for k in range(segments)], dtype=np.int64)


def uniform_clip_starts(length: int, span: int, clips: int) -> np.ndarray:
    """PySlowFast's test clips: clip ``k`` of ``clips`` starts at ``floor(delta * k / clips)``,
    ``delta = max(length - span, 0)`` (``decoder.get_start_end_idx``, no offset)."""
    delta = max(length - span, 0)
    return np.array([delta * k // clips for k in range(clips)], dtype=np.int64)


def sample_crop(height: int, width: int, size: int, rng: np.random.Generator) -> tuple[int, int]:
    """Uniform top-left corner (y, x) of a ``size`` x ``size`` crop."""
    return int(rng.integers(0, height - size + 1)), int(rng.integers(0, width - size + 1))


def centre_crop(height: int, width: int, size: int) -> tuple[int, int]:
    return (height - size) // 2, (width - size) // 2


def frames_from_clips(x_bcthw: torch.Tensor) -> torch.Tensor:
    """(B, C, T, H, W) -> (B, T*C, H, W): the T steps stacked into channels, step-major
    ((u0, v0, u1, v1, ...) for flow, as Simonyan & Zisserman and mmaction2's ``NCHW_Flow``)."""
    b, c, t, h, w = x_bcthw.shape
    return x_bcthw.transpose(1, 2).reshape(b, t * c, h, w)


def pathways(x_bcthw: torch.Tensor, alpha: int) -> list[torch.Tensor]:
    """SlowFast's two pathways ``[slow, fast]``: slow takes every ``alpha``-th fast step from the first."""
    return [x_bcthw[:, :, ::alpha], x_bcthw]


def consensus(logits: torch.Tensor, views: int) -> torch.Tensor:
    """(B*N, K) -> (B, K): the mean over each sample's N views (TSN's average consensus)."""
    return logits.unflatten(0, (-1, views)).mean(1)


def to_memory_format(x: torch.Tensor | list[torch.Tensor], channels_last: bool) -> Any:
    """Channels-last memory for 4D (``channels_last``) and 5D (``channels_last_3d``) inputs; a list: each."""
    if isinstance(x, list):
        return [to_memory_format(t, channels_last) for t in x]
    if not channels_last:
        return x.contiguous()
    return x.contiguous(memory_format=torch.channels_last if x.ndim == 4 else torch.channels_last_3d)


# --- what a sampler draws -----------------------------------------------------------------------


class ClipInfo(NamedTuple):
    """Where one sample lies: ``starts`` (N,) the first time step of each view, the crop's
    top-left corner (``y``, ``x``) and whether it is mirrored (``flip``)."""

    starts: np.ndarray
    y: int
    x: int
    flip: bool


@dataclass(frozen=True, kw_only=True)
class ClipSampler:
    """What every sampler has: a square ``crop``; subclasses say where views lie in time.

    ``random`` samplers draw from the generator they are given (training), the others ignore
    it (evaluation).  ``layout``: what the model receives ("clip", "frames" or "pathways").
    """

    name: ClassVar[str]
    random: ClassVar[bool]
    layout: ClassVar[str] = "clip"
    crop: int = 224  # square crop side, px

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            low = 0 if f.name == "clip_len" and not self.random and self.name == "dense" else 1
            if f.type in ("int", int) and not (isinstance(v, int) and not isinstance(v, bool) and v >= low):
                raise ValueError(f"{type(self).__name__}: {f.name}={v!r} must be an integer >= {low}")

    # time ---------------------------------------------------------------------------------
    def steps(self, stream: str) -> int:
        """Time steps of one view of ``stream`` (0: the whole video)."""
        raise NotImplementedError

    @property
    def stride(self) -> int:
        return 1

    @property
    def views(self) -> int:
        """N: views per sample."""
        return 1

    def span(self, streams: Sequence[str]) -> int:
        """Steps from a view's first to its last, over the streams read together."""
        return max((self.steps(s) - 1) * self.stride + 1 for s in streams)

    def items_per_video(self, length: int) -> int:
        """Samples a video gives (evaluation may cut it into several; training: one)."""
        return 1

    def starts(self, length: int, span: int, item: int, rng: np.random.Generator | None) -> np.ndarray:
        """(N,) first steps of the views of sample ``item`` of a video of ``length`` steps."""
        raise NotImplementedError

    def indices(self, starts: np.ndarray, stream: str, length: int) -> np.ndarray:
        """(N, T) time steps of ``stream`` to read, modulo ``length`` (short videos loop)."""
        return np.stack([window_indices(length, self.steps(stream), int(s), self.stride) for s in starts])

    # space --------------------------------------------------------------------------------
    def place(self, height: int, width: int, rng: np.random.Generator | None) -> tuple[int, int, bool]:
        """(y, x, flip) of the sample's crop: random crop and flip to train, centre crop to evaluate."""
        if self.random:
            if rng is None:
                raise ValueError(f"{type(self).__name__} crops at random: place() needs an rng")
            y, x = sample_crop(height, width, self.crop, rng)
            return y, x, bool(getattr(self, "flip", False) and rng.random() < 0.5)
        y, x = centre_crop(height, width, self.crop)
        return y, x, False

    def draw(
        self, length: int, span: int, item: int, height: int, width: int, rng: np.random.Generator | None
    ) -> ClipInfo:
        # time first, then space: a sample's seed fixes both, in this order
        starts = self.starts(length, span, item, rng)
        return ClipInfo(starts, *self.place(height, width, rng))

    # the model's side ---------------------------------------------------------------------
    def in_channels(self, stream: str) -> int:
        """Input channels of a model fed by this sampler: C, or T*C when steps become channels."""
        return CHANNELS[stream] * (self.steps(stream) if self.layout == "frames" else 1)

    def model_input(self, x_bcthw: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """A (B*N, C, T, H, W) batch of views in the shape the model takes."""
        return x_bcthw

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **dataclasses.asdict(self)}

    def describe(self, stream: str) -> str:
        raise NotImplementedError


# --- dense clips: I3D, S3D, X3D, C3D, R(2+1)D ------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class DenseTrain(ClipSampler):
    """One window of ``clip_len`` consecutive steps (every ``stride``-th), uniform over the video."""

    name: ClassVar[str] = "dense"
    random: ClassVar[bool] = True
    clip_len: int = 64  # time steps per clip (I3D: 64; C3D / R(2+1)D: 16)
    stride: int = 1  # steps between the clip's frames
    flip: bool = True  # random horizontal flip (off for direction-labelled classes)

    def steps(self, stream: str) -> int:
        return self.clip_len

    def starts(self, length, span, item, rng):
        return np.array([sample_start(length, span, rng)])

    def describe(self, stream: str) -> str:
        return f"{self.clip_len}-step clips" + (f" every {self.stride} steps" if self.stride > 1 else "")


@dataclass(frozen=True, kw_only=True)
class DenseEval(ClipSampler):
    """The whole video (``clip_len=0``: I3D is fully convolutional in time), or consecutive
    non-overlapping windows from step 0, one sample each (their logits are averaged per video)."""

    name: ClassVar[str] = "dense"
    random: ClassVar[bool] = False
    clip_len: int = 0  # 0: the whole video; N: windows of N steps
    stride: int = 1

    def steps(self, stream: str) -> int:
        return self.clip_len

    def span(self, streams: Sequence[str]) -> int:
        return max(self.clip_len - 1, 0) * self.stride + 1

    def items_per_video(self, length: int) -> int:
        return 1 if self.clip_len == 0 else max(1, length // self.span(()))

    def starts(self, length, span, item, rng):
        return np.array([item * span])

    def describe(self, stream: str) -> str:
        if self.clip_len == 0:
            return "whole videos"
        return f"{self.clip_len}-step windows" + (f" every {self.stride} steps" if self.stride > 1 else "")


# --- snippets: TSN, two-stream ------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class _Snippets(ClipSampler):
    """One RGB frame, or ``clip_len`` consecutive flow fields, per view; the model sees 2D frames."""

    layout: ClassVar[str] = "frames"
    clip_len: int = 5  # flow fields stacked per snippet (RGB: one frame)

    def steps(self, stream: str) -> int:
        return 1 if stream == "rgb" else self.clip_len

    def model_input(self, x_bcthw: torch.Tensor) -> torch.Tensor:
        return frames_from_clips(x_bcthw)

    def describe(self, stream: str) -> str:
        one = "1 frame" if stream == "rgb" else f"{self.clip_len} stacked fields"
        return f"{self.views} x {one}"


@dataclass(frozen=True, kw_only=True)
class TSNTrain(_Snippets):
    """TSN (Wang et al. 2016): ``segments`` equal segments, one snippet at a random place in each."""

    name: ClassVar[str] = "tsn"
    random: ClassVar[bool] = True
    segments: int = 3  # K to train
    clip_len: int = 5  # flow fields per snippet (TSN: 5)
    flip: bool = True

    @property
    def views(self) -> int:
        return self.segments

    def starts(self, length, span, item, rng):
        return tsn_train_offsets(length - span + 1, self.segments, rng)


@dataclass(frozen=True, kw_only=True)
class TSNEval(_Snippets):
    """TSN's test protocol: ``segments=25`` snippets, each in the middle of its segment, averaged."""

    name: ClassVar[str] = "tsn"
    random: ClassVar[bool] = False
    segments: int = 25
    clip_len: int = 5

    @property
    def views(self) -> int:
        return self.segments

    def starts(self, length, span, item, rng):
        return tsn_test_offsets(length - span + 1, self.segments)


@dataclass(frozen=True, kw_only=True)
class StackedTrain(_Snippets):
    """Two-stream (Simonyan & Zisserman 2014): one snippet at a uniform random step, flow of
    L = ``clip_len`` fields stacked as 2L channels."""

    name: ClassVar[str] = "stacked"
    random: ClassVar[bool] = True
    clip_len: int = 10  # L
    flip: bool = True

    def starts(self, length, span, item, rng):
        return np.array([sample_start(length, span, rng)])


@dataclass(frozen=True, kw_only=True)
class StackedEval(_Snippets):
    """Two-stream's test protocol: ``samples=25`` snippets with equal spacing (TSN's test offsets), averaged."""

    name: ClassVar[str] = "stacked"
    random: ClassVar[bool] = False
    samples: int = 25
    clip_len: int = 10

    @property
    def views(self) -> int:
        return self.samples

    def starts(self, length, span, item, rng):
        return tsn_test_offsets(length - span + 1, self.samples)


# --- SlowFast -------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class _TwoRates(ClipSampler):
    layout: ClassVar[str] = "pathways"
    clip_len: int = 32  # fast pathway frames
    stride: int = 2  # steps between fast frames (SlowFast 4x16: 32 fast frames of a 64-frame clip)
    alpha: int = 8  # slow pathway: every alpha-th fast frame

    def steps(self, stream: str) -> int:
        return self.clip_len

    def model_input(self, x_bcthw: torch.Tensor) -> list[torch.Tensor]:
        return pathways(x_bcthw, self.alpha)

    def describe(self, stream: str) -> str:
        slow = len(range(0, self.clip_len, self.alpha))
        return f"{self.views} x ({slow} slow + {self.clip_len} fast frames, every {self.stride} steps)"


@dataclass(frozen=True, kw_only=True)
class SlowFastTrain(_TwoRates):
    """SlowFast (Feichtenhofer et al. 2019): one clip at a uniform random start."""

    name: ClassVar[str] = "slowfast"
    random: ClassVar[bool] = True
    flip: bool = True

    def starts(self, length, span, item, rng):
        return np.array([sample_start(length, span, rng)])


@dataclass(frozen=True, kw_only=True)
class SlowFastEval(_TwoRates):
    """SlowFast's test protocol in time: ``clips=10`` clips spread evenly over the video, averaged."""

    name: ClassVar[str] = "slowfast"
    random: ClassVar[bool] = False
    clips: int = 10

    @property
    def views(self) -> int:
        return self.clips

    def starts(self, length, span, item, rng):
        return uniform_clip_starts(length, span, self.clips)


# --- by name ------------------------------------------------------------------------------------

SAMPLINGS: dict[str, tuple[type[ClipSampler], type[ClipSampler]]] = {
    "dense": (DenseTrain, DenseEval),
    "tsn": (TSNTrain, TSNEval),
    "stacked": (StackedTrain, StackedEval),
    "slowfast": (SlowFastTrain, SlowFastEval),
}
# what carries over from a training sampler to its evaluation (not the number of views)
SHARED_FIELDS = ("crop", "clip_len", "stride", "alpha")


def field_names(cls: type[ClipSampler]) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def _cls(name: str, train: bool) -> type[ClipSampler]:
    if name not in SAMPLINGS:
        raise ValueError(f"sampling {name!r}: choose from {', '.join(SAMPLINGS)}")
    return SAMPLINGS[name][0 if train else 1]


def train_sampler(name: str, **settings: Any) -> ClipSampler:
    """The training sampler ``name`` with ``settings`` (None: its default); a setting it does not have is an error."""
    cls = _cls(name, True)
    given = {k: v for k, v in settings.items() if v is not None}
    extra = sorted(set(given) - field_names(cls))
    if extra:
        raise ValueError(
            f"--sampling {name} has no {', '.join(extra)} (its settings: {', '.join(sorted(field_names(cls)))})"
        )
    return cls(**given)


def eval_sampler(trained: dict[str, Any], **overrides: Any) -> ClipSampler:
    """The evaluation sampler matching a training sampler's ``to_dict()`` (a checkpoint's
    ``sampling``): the same crop and view length, the test protocol's number of views;
    ``overrides`` (None: keep) replace fields, a field it does not have is an error."""
    cls = _cls(trained.get("name", "dense"), False)
    names = field_names(cls)
    kw = {k: v for k, v in trained.items() if k in SHARED_FIELDS and k in names}
    if cls is DenseEval:
        kw.pop("clip_len", None)  # dense evaluation defaults to whole videos, not the training window
    given = {k: v for k, v in overrides.items() if v is not None}
    extra = sorted(set(given) - names)
    if extra:
        raise ValueError(
            f"sampling {cls.name} has no {', '.join(extra)} at evaluation (its settings: {', '.join(sorted(names))})"
        )
    return cls(**(kw | given))
