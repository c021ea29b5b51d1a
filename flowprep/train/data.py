"""Data: clips of RGB and flow from one or more stores, as PyTorch tensors (C, T, H, W).

The room between the store and the trainer.  It reads stores (never writes) and holds no
zarr handle across a fork: stores are opened lazily, once per process, so DataLoader workers
each open their own.

Sampling (pure functions first, ``VideoClips`` after):

* **window**: ``clip_len`` consecutive time steps starting at ``start``; a video shorter than
  that loops (indices modulo its length).  Training draws ``start`` uniformly; evaluation reads
  the whole video (``clip_len=0``) or consecutive non-overlapping windows from frame 0.
* **alignment of RGB and flow**: flow has one field fewer than frames, ``flow[t]`` moves frame t
  to frame t+1.  A window of time steps ``t0 .. t0+L-1`` is RGB frames ``t0 .. t0+L-1`` and flow
  fields ``t0 .. t0+L-1`` (the motion leaving each of those frames; the last one lands on frame
  ``t0+L``).  When a sample reads flow, windows are drawn over its ``n_flow`` steps, so RGB never
  uses the last frame; an RGB-only sample uses all ``n_frames``.
* **crop and flip**: one random crop (training) or centre crop (evaluation) and one random
  horizontal flip per sample, identical for RGB and flow; flipping flow mirrors it *and
  negates u* (a motion to the right seen in a mirror goes to the left).
* **hand-over**: a worker reads only the window's chunks and only the crop's rows and columns
  (``Store.read_*(..., ys=, xs=)``) and hands over the raw crop, uint8 RGB / int8 flow
  (T, crop, crop, C), unflipped, with its ``flip`` flag: a quarter of float32's bytes to collate
  and to move between processes.  ``clips_to_model(batch, stream, device)`` then flips (negating
  u), converts and scales on the training device (``x / 127.5 - 1`` for RGB, ``q / 127`` for
  flow, as the store's reader does) into (B, C, T, H, W) float32 with channels-last memory.
  Measured (``make bench-store``, FORMAT.md): against rawframes normalised in the workers this
  gains 1.1-1.2x for RGB; decoding the window (JPEG for both, FFV1 or zstd for flow) is the rest.

Each training index is a pair ``(video_index, seed)`` (``TrainSampler`` makes them): the
augmentation of a sample depends on its seed only, not on the worker or the order, so a resumed
run draws the same clips.  A plain int index (``DataLoader(dataset, shuffle=True)``) draws the
seed from torch's generator, which the DataLoader seeds per worker from its base seed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler, Sampler, default_collate

from flowprep.flow.api import dequantize_rgb_
from flowprep.store.zarr_store import Store, open_store

STREAMS = ("rgb", "flow")
CHANNELS = {"rgb": 3, "flow": 2}


# --- pure functions ---------------------------------------------------------------------------


def window_indices(length: int, clip_len: int, start: int) -> np.ndarray:
    """Time indices ``start .. start+clip_len-1`` modulo ``length`` (short videos loop)."""
    if length < 1:
        raise ValueError(f"length={length}: a video needs at least one time step")
    return (start + np.arange(clip_len)) % length


def sample_start(length: int, clip_len: int, rng: np.random.Generator) -> int:
    """Uniform start of a ``clip_len`` window inside ``length`` steps (0 when the video is shorter)."""
    return int(rng.integers(0, max(length - clip_len, 0) + 1))


def sample_crop(height: int, width: int, size: int, rng: np.random.Generator) -> tuple[int, int]:
    """Uniform top-left corner (y, x) of a ``size`` x ``size`` crop."""
    return int(rng.integers(0, height - size + 1)), int(rng.integers(0, width - size + 1))


def centre_crop(height: int, width: int, size: int) -> tuple[int, int]:
    return (height - size) // 2, (width - size) // 2


def crop_flip_thwc(raw_thwc: np.ndarray, y: int, x: int, size: int, flip: bool) -> np.ndarray:
    """A view: the crop, mirrored left-right when ``flip`` (no copy yet)."""
    crop = raw_thwc[:, y : y + size, x : x + size]
    return crop[:, :, ::-1] if flip else crop


def thwc_to_cthw_float(crop_thwc: np.ndarray) -> torch.Tensor:
    """float32 copy of (T, H, W, C) values, returned as a (C, T, H, W) view: channels-last memory.

    Keeping channels last makes the conversion one contiguous pass (moving channels first in
    the same copy doubled the time of a whole RGB sample), and cuDNN's 3D convolutions prefer it
    under bf16.  ``.contiguous()`` gives the classic layout.  (Per-sample path, e.g. ``predict``;
    batches go through ``raw_to_model``.)
    """
    return torch.from_numpy(crop_thwc.astype(np.float32)).permute(3, 0, 1, 2)


def rgb_thwc_to_cthw(raw_thwc: np.ndarray, y: int, x: int, size: int, flip: bool) -> torch.Tensor:
    """uint8 frames (T, H, W, 3) -> float32 (3, T, size, size) in [-1, 1], cropped then flipped."""
    out = thwc_to_cthw_float(crop_flip_thwc(raw_thwc, y, x, size, flip))
    return dequantize_rgb_(out)


# Model input units: 1.0 = 20 px, I3D's convention.  A video stored with another flow.bound_px is
# rescaled to these units (q / 127 * bound_px / 20), so stores of different bounds never mix scales.
FLOW_UNIT_PX = 20.0


def flow_thw2_to_cthw(raw_thw2: np.ndarray, y: int, x: int, size: int, flip: bool, bound_px: float = FLOW_UNIT_PX) -> torch.Tensor:
    """int8 flow (T, H, W, 2) -> float32 (2, T, size, size), 1.0 = 20 px ([-1, 1] for the usual bound
    of 20 px); ``bound_px``: the video's own bound.  A flip mirrors and negates u."""
    out = thwc_to_cthw_float(crop_flip_thwc(raw_thw2, y, x, size, flip)).mul_(float(bound_px) / FLOW_UNIT_PX / 127)
    if flip:
        out[0].neg_()
    return out


# --- the dataset ------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ClipConfig:
    """How clips are cut; checkpoints store it, evaluation reuses its ``crop``."""

    clip_len: int = 64  # time steps per clip; 0 = the whole video (evaluation only)
    crop: int = 224  # square crop side, px
    train: bool = True  # random window / crop / flip; False: centre crop, windows from frame 0
    flip: bool = True  # random horizontal flip when training (off for direction-labelled classes)

    def __post_init__(self) -> None:
        if not (isinstance(self.clip_len, int) and self.clip_len >= 0):
            raise ValueError(f"clip_len={self.clip_len!r}: must be an integer >= 0 (0 = whole video)")
        if self.train and self.clip_len == 0:
            raise ValueError("clip_len=0 (whole videos) is for evaluation; training needs a clip length >= 1")
        if not (isinstance(self.crop, int) and self.crop >= 1):
            raise ValueError(f"crop={self.crop!r}: must be an integer >= 1")


@dataclass(frozen=True)
class VideoRef:
    store: int  # index into VideoClips.store_paths
    video_id: str
    label: int
    n_frames: int
    height: int
    width: int
    bound_px: float = FLOW_UNIT_PX  # the video's flow bound (its attributes' flow.bound_px)


class StoredVideo(NamedTuple):
    """A complete video found in one of several stores, before it becomes a ``VideoRef``."""

    store: int  # index into the list of store paths scanned
    video_id: str
    info: dict[str, Any]  # the video's attributes (Store.info)


def scan_stores(paths: Sequence[str | Path], split: str | None = None) -> list[StoredVideo]:
    """Every complete video of ``paths``, optionally of one split."""
    out = []
    for i, path in enumerate(paths):
        store = open_store(path)
        for vid in store.video_ids:
            info = store.info(vid)
            if split is None or info.get("split") == split:
                out.append(StoredVideo(i, vid, info))
    return out


def class_list(videos: Sequence[StoredVideo]) -> list[str]:
    """Sorted label names: stable across runs and machines for the same videos."""
    missing = [v.video_id for v in videos if not v.info.get("label")]
    if missing:
        raise ValueError(f"videos without a label: {', '.join(missing[:10])}; give every manifest row a label")
    return sorted({str(v.info["label"]) for v in videos})


class VideoClips(Dataset):
    """Clips of one or more streams from the videos of one or more stores.

    ``streams``: ``("rgb",)``, ``("flow",)`` or ``("rgb", "flow")`` (read with the same window,
    crop and flip).  ``classes``: label names in logit order (default: sorted labels of the
    selected videos); a video whose label is not among them is an error.

    Item: a dict with one raw (T, crop, crop, C) tensor per stream (uint8 RGB, int8 flow,
    unflipped; ``clips_to_model`` finishes it on the device), ``label``, ``video`` (index into
    ``videos``, to pool clip predictions per video), and the sampling (``start``, ``y``, ``x``,
    ``flip``).  Training items are indexed by ``(video_index, seed)`` (``TrainSampler``) or by a
    plain video index (any sampler, e.g. ``shuffle=True``); evaluation items by int.
    """

    def __init__(
        self,
        stores: Sequence[str | Path],
        *,
        streams: Sequence[str] = ("rgb",),
        clip: ClipConfig = ClipConfig(),
        split: str | None = None,
        classes: Sequence[str] | None = None,
    ) -> None:
        if not stores:
            raise ValueError("no store given")
        bad = [s for s in streams if s not in STREAMS]
        if bad or not streams:
            raise ValueError(f"streams={list(streams)!r}: choose from {list(STREAMS)}")
        self.store_paths = [str(p) for p in stores]
        self.streams = tuple(streams)
        self.clip = clip
        found = scan_stores(self.store_paths, split)
        if not found:
            raise ValueError(f"no videos{' of split ' + repr(split) if split else ''} in {', '.join(self.store_paths)}")
        self.classes = list(classes) if classes is not None else class_list(found)
        index = {c: i for i, c in enumerate(self.classes)}
        self.videos: list[VideoRef] = []
        for s, vid, info in found:
            label = str(info.get("label"))
            if label not in index:
                raise ValueError(f"video {vid} has label {label!r}, not among the {len(self.classes)} classes of the model")
            bound = float((info.get("flow") or {}).get("bound_px", FLOW_UNIT_PX))
            ref = VideoRef(s, vid, index[label], int(info["n_frames"]), int(info["height"]), int(info["width"]), bound)
            if min(ref.height, ref.width) < clip.crop:
                raise ValueError(
                    f"crop {clip.crop} is larger than video {vid} ({ref.height}x{ref.width}); use a crop <= {min(ref.height, ref.width)}"
                )
            self.videos.append(ref)
        # Evaluation with fixed windows: one item per (video, start), consecutive windows from 0.
        self.items: list[tuple[int, int]] = []
        for v, ref in enumerate(self.videos):
            length = self.length(ref)
            n = 1 if clip.clip_len == 0 else max(1, length // clip.clip_len)
            self.items += [(v, k * clip.clip_len) for k in range(n)]
        self._stores: list[Store] | None = None  # opened lazily, per process
        self._pid = -1

    def length(self, ref: VideoRef) -> int:
        """Time steps a window is drawn from: flow fields when flow is read, else frames."""
        return ref.n_frames - 1 if "flow" in self.streams else ref.n_frames

    def __len__(self) -> int:
        return len(self.videos) if self.clip.train else len(self.items)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_stores": None, "_pid": -1}

    def _store(self, i: int) -> Store:
        if self._stores is None or self._pid != os.getpid():
            self._stores = [open_store(p) for p in self.store_paths]
            self._pid = os.getpid()
        return self._stores[i]

    def read_raw(self, stream: str, ref: VideoRef, start: int, stop: int, y: int = 0, x: int = 0) -> np.ndarray:
        """Raw time steps ``start:stop`` of a stream, the crop at (y, x) only: uint8 (T, crop, crop, 3)
        RGB or int8 (T, crop, crop, 2) flow.  Only the chunks of those steps are read."""
        store = self._store(ref.store)
        read = store.read_rgb_uint8 if stream == "rgb" else store.read_flow_int8
        s = self.clip.crop
        return read(ref.video_id, start, stop, ys=slice(y, y + s), xs=slice(x, x + s))

    def convert(self, stream: str, raw: np.ndarray) -> torch.Tensor:
        """The raw crop as handed over: a contiguous (T, crop, crop, C) uint8 / int8 tensor."""
        return torch.from_numpy(np.ascontiguousarray(raw))

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        if self.clip.train:
            if isinstance(key, (tuple, list)):
                v, seed = int(key[0]), int(key[1])
            else:  # a plain sampler: torch's generator, seeded per DataLoader worker, draws the augmentation
                v, seed = int(key), int(torch.randint(0, 2**62, ()).item())
            ref = self.videos[v]
            rng = np.random.default_rng(seed)
            length = self.length(ref)
            start = sample_start(length, self.clip.clip_len, rng)
            y, x = sample_crop(ref.height, ref.width, self.clip.crop, rng)
            flip = bool(self.clip.flip and rng.random() < 0.5)
            clip_len = self.clip.clip_len
        else:
            v, start = self.items[int(key)]
            ref = self.videos[v]
            y, x = centre_crop(ref.height, ref.width, self.clip.crop)
            flip = False
            clip_len = self.clip.clip_len
        out: dict[str, Any] = {"label": ref.label, "video": v, "start": start, "y": y, "x": x, "flip": flip}
        if "flow" in self.streams:  # model units per int8 step / (1 / 127): this video's own bound
            out["flow_scale"] = ref.bound_px / FLOW_UNIT_PX
        for stream in self.streams:
            n = ref.n_frames if stream == "rgb" else ref.n_frames - 1
            if clip_len == 0:  # whole video: each stream all of its own time steps
                t = np.arange(n)
            else:
                t = window_indices(self.length(ref), clip_len, start)
            lo, hi = int(t.min()), int(t.max()) + 1
            raw = self.read_raw(stream, ref, lo, hi, y, x)
            if len(t) != hi - lo or t[0] != lo:  # looped: pick the steps out of the span read
                raw = raw[t - lo]
            out[stream] = self.convert(stream, raw)
        return out


def collate_clips(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """``default_collate`` (kept as a name for callers): raw crops stack to (B, T, H, W, C)."""
    return default_collate(batch)


def raw_to_model(
    raw_bthwc: torch.Tensor, stream: str, flip_b: torch.Tensor | None = None, scale_b: torch.Tensor | None = None
) -> torch.Tensor:
    """Raw crops (B, T, H, W, C) uint8 RGB / int8 flow -> float32 (B, C, T, H, W) in [-1, 1].

    Pure and device-agnostic (runs where ``raw_bthwc`` is).  ``flip_b``: bool (B,), mirror those
    samples left-right, and for flow negate their u.  ``scale_b`` (flow): float (B,), each video's
    ``bound_px / 20``, so flow of stores with other bounds arrives in the same units (1.0 = 20 px).  The result is a
    (B, C, T, H, W) view of
    channels-last memory (``torch.channels_last_3d``), as cuDNN's 3D convolutions prefer.
    """
    x = raw_bthwc.float()
    if stream == "rgb":
        dequantize_rgb_(x)
    else:
        x.mul_(1 / 127)
        if scale_b is not None:
            x.mul_(scale_b.to(x.device, x.dtype).view(-1, 1, 1, 1, 1))
    if flip_b is not None and bool(flip_b.any()):
        f = flip_b.to(x.device).view(-1, 1, 1, 1)
        x = torch.where(f[..., None], x.flip(3), x)  # W is dim 3 of (B, T, H, W, C)
        if stream == "flow":  # a motion to the right seen in a mirror goes to the left
            x[..., 0] = torch.where(f, -x[..., 0], x[..., 0])
    return x.permute(0, 4, 1, 2, 3)


def clips_to_model(batch: dict[str, Any], stream: str, device: torch.device | str) -> torch.Tensor:
    """A collated batch's stream on ``device``, ready for the model: moved raw (a quarter of float32's
    bytes), then flipped, converted and scaled there (``raw_to_model``)."""
    raw = batch[stream].to(device, non_blocking=True)
    flip = batch.get("flip")
    scale = batch.get("flow_scale") if stream == "flow" else None
    return raw_to_model(
        raw, stream, flip if isinstance(flip, torch.Tensor) else None, scale if isinstance(scale, torch.Tensor) else None
    )


# --- sampling for training --------------------------------------------------------------------


def sample_seed(seed: int, epoch: int, rank: int, position: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, rank, position]).generate_state(1, np.uint64)[0] >> 1)


class TrainSampler(Sampler):
    """An endless stream of ``(video_index, seed)`` for one rank, starting at ``start_step``.

    Epoch after epoch, each rank takes ``DistributedSampler``'s shard of a fresh permutation
    (seeded by ``seed`` and the epoch); batches are cut from that stream every ``batch_size``
    items and may straddle two epochs.  Position ``p`` of epoch ``e`` always gets the same seed,
    so resuming at step ``s`` continues with exactly the clips an uninterrupted run would draw.
    """

    def __init__(self, n_videos: int, *, batch_size: int, seed: int = 0, start_step: int = 0, rank: int = 0, world_size: int = 1):
        self.n = n_videos
        self.batch_size = batch_size
        self.seed = seed
        self.start_step = start_step
        self.rank = rank
        self.world_size = world_size

    def _epoch(self, epoch: int) -> list[int]:
        ds = DistributedSampler(range(self.n), num_replicas=self.world_size, rank=self.rank, shuffle=True, seed=self.seed)
        ds.set_epoch(epoch)
        return list(ds)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = self._epoch(0)
        epoch, pos = divmod(self.start_step * self.batch_size, len(order))
        while True:
            order = self._epoch(epoch)
            for p in range(pos, len(order)):
                yield order[p], sample_seed(self.seed, epoch, self.rank, p)
            epoch, pos = epoch + 1, 0
