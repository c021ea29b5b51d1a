"""Data: samples of RGB and flow from one or more stores, as PyTorch tensors.

The room between the store and the trainer.  It reads stores (never writes) and holds no
zarr handle across a fork: stores are opened lazily, once per process, so DataLoader workers
each open their own.  *Where* a sample lies (its views in time, its crop and flip) is the
sampler's business (``flowprep.train.sampling``: dense clips, TSN segments, two-stream stacked
snippets, SlowFast's two rates, each for training and evaluation); this room reads what the
sampler asks for.

* **alignment of RGB and flow**: flow has one field fewer than frames, ``flow[t]`` moves frame t
  to frame t+1.  A view of time steps ``t0 .. t0+L-1`` is RGB frames ``t0 .. t0+L-1`` and flow
  fields ``t0 .. t0+L-1`` (the motion leaving each of those frames; the last one lands on frame
  ``t0+L``).  When a sample reads flow, views are drawn over its ``n_flow`` steps, so RGB never
  uses the last frame; an RGB-only sample uses all ``n_frames``.  A video shorter than a view
  loops (indices modulo its length).
* **crop and flip**: one crop and one flip per sample, identical for every view and stream;
  flipping flow mirrors it *and negates u* (a motion to the right seen in a mirror goes to the left).
* **hand-over**: a worker reads only the steps' chunks and only the crop's rows and columns
  (``Store.read_*(..., ys=, xs=)``) and hands over the raw crop, uint8 RGB / int8 flow
  (N, T, crop, crop, C) for N views of T steps, unflipped, with its ``flip`` flag: a quarter of
  float32's bytes to collate and to move between processes.  ``clips_to_model(batch, stream,
  device)`` then flips (negating u), converts and scales on the training device (``x / 127.5 - 1``
  for RGB, ``q / 127`` for flow, as the store's reader does) into (B*N, C, T, H, W) float32 with
  channels-last memory; the sampler's ``model_input`` shapes that for the model.
  Where a step's time goes against rawframes normalised in the workers: FORMAT.md, loader
  (``make bench-store``).

Each sample is an index into ``items`` (for a training sampler: one per video), optionally paired
with a seed, ``(index, seed)`` (``TrainSampler`` makes them): the augmentation of a sample depends
on its seed only, not on the worker or the order, so a resumed run draws the same clips.  A plain
int index to a random sampler (``DataLoader(dataset, shuffle=True)``) draws the seed from torch's
generator, which the DataLoader seeds per worker from its base seed; evaluation samplers ignore seeds.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, cast

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler, Sampler, default_collate

from flowprep.flow.api import dequantize_rgb_
from flowprep.store.zarr_store import Store, WriteConfig, open_store
from flowprep.train.sampling import (  # noqa: F401  (their old home: predict.py, scripts)
    CHANNELS,
    ClipSampler,
    DenseTrain,
    centre_crop,
    sample_crop,
    sample_start,
    window_indices,
)

STREAMS = tuple(CHANNELS)
_MERGE_GAP = WriteConfig().chunk_frames  # steps this close share a chunk of a default store


# --- pure functions ---------------------------------------------------------------------------


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


def flow_thw2_to_cthw(
    raw_thw2: np.ndarray, y: int, x: int, size: int, flip: bool, bound_px: float = FLOW_UNIT_PX
) -> torch.Tensor:
    """int8 flow (T, H, W, 2) -> float32 (2, T, size, size), 1.0 = 20 px ([-1, 1] for the usual bound
    of 20 px); ``bound_px``: the video's own bound.  A flip mirrors and negates u."""
    out = thwc_to_cthw_float(crop_flip_thwc(raw_thw2, y, x, size, flip)).mul_(float(bound_px) / FLOW_UNIT_PX / 127)
    if flip:
        out[0].neg_()
    return out


# --- the dataset ------------------------------------------------------------------------------


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


def empty_split_message(paths: Sequence[str | Path], split: str | None) -> str:
    """Why no video was selected, with the splits the stores do have and what to do."""
    from collections import Counter

    where = ", ".join(str(p) for p in paths)
    have = Counter(str(info.get("split") or "none") for _, _, info in scan_stores(paths))
    if not have:
        return f"no complete videos in {where}: build them with `flowprep run` (see `flowprep status {paths[0]}`)"
    counts = ", ".join(f"{k}: {n}" for k, n in sorted(have.items()))
    hint = ""
    if "none" in have:  # e.g. built by `run DIR` before folder runs assigned train/val
        hint = (
            "; videos without a split get train/val when `flowprep run DIR` runs again with --overwrite, "
            "or from DIR/train/<class>/ and DIR/val/<class>/ folders"
        )
    return f"no videos of split {split!r} in {where} (its videos by split: {counts}); choose one with --split, or --split all{hint}"


def class_list(videos: Sequence[StoredVideo]) -> list[str]:
    """Sorted label names: stable across runs and machines for the same videos."""
    missing = [v.video_id for v in videos if not v.info.get("label")]
    if missing:
        raise ValueError(
            f"videos without a label: {', '.join(missing[:10])}; labels are class folders: put the videos in "
            "DIR/<class>/ and rerun `flowprep run DIR` (or fill the label column of your manifest)"
        )
    return sorted({str(v.info["label"]) for v in videos})


class VideoClips(Dataset):
    """Samples of one or more streams from the videos of one or more stores.

    ``streams``: ``("rgb",)``, ``("flow",)`` or ``("rgb", "flow")`` (read with the same views,
    crop and flip).  ``sampler``: where a sample's views lie and how it is cropped
    (``flowprep.train.sampling``; default: ``DenseTrain()``).  ``classes``: label names in logit
    order (default: sorted labels of the selected videos); a video whose label is not among them
    is an error.

    A sample is a dict:

    ==============  ===========================================================================
    ``rgb``         uint8 (N, T, crop, crop, 3): N views of T frames, unflipped
    ``flow``        int8 (N, T, crop, crop, 2): u, v in steps of bound/127, unflipped
    ``label``       int, the class index
    ``video``       int, index into ``videos`` (to pool predictions per video)
    ``start``       int64 (N,), each view's first time step
    ``y``, ``x``    int, the crop's top-left corner
    ``flip``        bool: ``clips_to_model`` mirrors the sample (negating u)
    ``flow_scale``  float (flow only): this video's bound in model units (bound_px / 20)
    ==============  ===========================================================================

    N and T come from the sampler (dense training: N = 1, T = ``clip_len``; TSN: N = segments,
    T = 1 RGB frame / ``clip_len`` flow fields; ...); whole-video evaluation gives each stream all
    of its own steps (T = n_frames for RGB, n_frames - 1 for flow).
    """

    def __init__(
        self,
        stores: Sequence[str | Path],
        *,
        streams: Sequence[str] = ("rgb",),
        sampler: ClipSampler = DenseTrain(),
        split: str | None = None,
        classes: Sequence[str] | None = None,
    ) -> None:
        if not stores:
            raise ValueError("no store given")
        bad = [s for s in streams if s not in STREAMS]
        if bad or not streams:
            raise ValueError(f"streams={list(streams)!r}: choose from {list(STREAMS)}")
        if not isinstance(sampler, ClipSampler):
            raise TypeError(f"sampler={sampler!r}: expected a flowprep.train.sampling.ClipSampler")
        self.store_paths = [str(p) for p in stores]
        self.streams = tuple(streams)
        self.sampler = sampler
        self.span = sampler.span(self.streams)  # steps a view covers, over the streams read
        found = scan_stores(self.store_paths, split)
        if not found:
            raise ValueError(empty_split_message(self.store_paths, split))
        self.classes = list(classes) if classes is not None else class_list(found)
        index = {c: i for i, c in enumerate(self.classes)}
        self.videos: list[VideoRef] = []
        for s, vid, info in found:
            label = str(info.get("label"))
            if label not in index:
                raise ValueError(
                    f"video {vid} has label {label!r}, not among the {len(self.classes)} classes of the model"
                )
            bound = float((info.get("flow") or {}).get("bound_px", FLOW_UNIT_PX))
            ref = VideoRef(s, vid, index[label], int(info["n_frames"]), int(info["height"]), int(info["width"]), bound)
            if min(ref.height, ref.width) < sampler.crop:
                raise ValueError(
                    f"crop {sampler.crop} is larger than video {vid} ({ref.height}x{ref.width}); use a crop <= {min(ref.height, ref.width)}"
                )
            self.videos.append(ref)
        # one item per sample: (video, k), k-th sample of that video (evaluation windows; else 0)
        self.items: list[tuple[int, int]] = [
            (v, k) for v, ref in enumerate(self.videos) for k in range(sampler.items_per_video(self.length(ref)))
        ]
        self._stores: list[Store] | None = None  # opened lazily, per process
        self._pid = -1

    def length(self, ref: VideoRef) -> int:
        """Time steps views are drawn from: flow fields when flow is read, else frames."""
        return ref.n_frames - 1 if "flow" in self.streams else ref.n_frames

    def __len__(self) -> int:
        return len(self.items)

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
        s = self.sampler.crop
        return read(ref.video_id, start, stop, ys=slice(y, y + s), xs=slice(x, x + s))

    def read_steps(self, stream: str, ref: VideoRef, steps_nt: np.ndarray, y: int, x: int) -> np.ndarray:
        """Raw (N, T, crop, crop, C) at the steps (N, T).  Steps less than a chunk apart are read as
        one span (zarr decodes whole chunks: reading them apart would decode a shared chunk twice);
        each step is read once however many views take it."""
        flat = steps_nt.ravel()
        uniq = np.unique(flat)
        runs = np.split(uniq, np.flatnonzero(np.diff(uniq) > _MERGE_GAP) + 1)
        lo = np.array([int(r[0]) for r in runs])
        hi = np.array([int(r[-1]) + 1 for r in runs])
        parts = [self.read_raw(stream, ref, int(a), int(b), y, x) for a, b in zip(lo, hi, strict=True)]
        raw = parts[0] if len(parts) == 1 else np.concatenate(parts)
        k = np.searchsorted(lo, flat, side="right") - 1  # the span of each step
        pos = (np.cumsum(hi - lo) - (hi - lo))[k] + flat - lo[k]
        if len(pos) != len(raw) or not np.array_equal(pos, np.arange(len(raw))):  # looped, sparse or repeated steps
            raw = raw[pos]
        return raw.reshape(*steps_nt.shape, *raw.shape[1:])

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        if isinstance(key, (tuple, list)):
            i, seed = int(key[0]), int(key[1])
        else:
            i, seed = int(key), None
        v, k = self.items[i]
        ref = self.videos[v]
        rng = None
        if self.sampler.random:
            if seed is None:  # a plain sampler: torch's generator, seeded per DataLoader worker, draws the augmentation
                seed = int(torch.randint(0, 2**62, ()).item())
            rng = np.random.default_rng(seed)
        length = self.length(ref)
        info = self.sampler.draw(length, self.span, k, ref.height, ref.width, rng)
        out: dict[str, Any] = {
            "label": ref.label,
            "video": v,
            "start": torch.from_numpy(np.asarray(info.starts, np.int64)),
            "y": info.y,
            "x": info.x,
            "flip": info.flip,
        }
        if "flow" in self.streams:  # model units per int8 step / (1 / 127): this video's own bound
            out["flow_scale"] = ref.bound_px / FLOW_UNIT_PX
        for stream in self.streams:
            if self.sampler.steps(stream) == 0:  # whole video: each stream all of its own time steps
                steps = np.arange(ref.n_frames if stream == "rgb" else ref.n_frames - 1)[None]
            else:
                steps = self.sampler.indices(info.starts, stream, length)
            out[stream] = torch.from_numpy(np.ascontiguousarray(self.read_steps(stream, ref, steps, info.y, info.x)))
        return out


def collate_clips(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """``default_collate`` (kept as a name for callers): raw crops stack to (B, N, T, H, W, C)."""
    return default_collate(batch)


def _float32(raw: torch.Tensor) -> torch.Tensor:
    """A float32 copy.  On the CPU through numpy's cast, several times faster than torch's uint8 / int8
    -> float32 (the bulk of a training step's conversion when no GPU does it; FORMAT.md, loader)."""
    if raw.device.type == "cpu":
        return torch.from_numpy(raw.numpy().astype(np.float32))
    return raw.float()


def _mirror(raw_bthwc: torch.Tensor, flips: list[bool]) -> torch.Tensor:
    """The samples with ``flips[b]`` mirrored left-right (W: dim 2 of each (T, H, W, C)), the others as they are.

    Raw bytes (a quarter of float32's), one sample at a time: on a CPU, torch's advanced indexing
    and flipping float32 cost 10x a uint8 flip.  A flow pixel's two int8 channels move as one
    int16, which torch flips several times faster than 2 channels of int8 (FORMAT.md, loader)."""
    pixel = raw_bthwc.shape[-1] * raw_bthwc.element_size()
    as_int = {2: torch.int16, 4: torch.int32, 8: torch.int64}.get(pixel)
    pixels = raw_bthwc.view(as_int) if as_int is not None and raw_bthwc.is_contiguous() else raw_bthwc
    out = torch.empty_like(pixels)  # written sample by sample: torch.stack of uint8 crops cost 3x the flips
    for r, o, f in zip(pixels, out, flips, strict=True):
        o.copy_(r.flip(2) if f else r)
    return out.view(raw_bthwc.dtype)


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
    flips = [bool(f) for f in flip_b.tolist()] if flip_b is not None else []
    if any(flips):
        raw_bthwc = _mirror(raw_bthwc, flips)
    if stream == "rgb":
        x = dequantize_rgb_(_float32(raw_bthwc))
    else:
        x = _float32(raw_bthwc)
        if scale_b is None:
            x.mul_(1 / 127)
        else:  # q / 127 and the video's scale in one pass
            x.mul_(scale_b.to(x.device, x.dtype).view(-1, 1, 1, 1, 1) / 127)
        for i in (i for i, f in enumerate(flips) if f):  # a motion to the right seen in a mirror goes to the left
            x[i, ..., 0].neg_()
    return x.permute(0, 4, 1, 2, 3)


def clips_to_model(batch: dict[str, Any], stream: str, device: torch.device | str) -> torch.Tensor:
    """A collated batch's stream on ``device``: raw (B, N, T, H, W, C) moved as it is (a quarter of
    float32's bytes), then flipped, converted and scaled there (``raw_to_model``) into
    (B*N, C, T, H, W), views of a sample adjacent (``sampling.consensus`` averages them back)."""
    raw = batch[stream].to(device, non_blocking=True)
    b, n = raw.shape[:2]
    flip = batch.get("flip")
    scale = batch.get("flow_scale") if stream == "flow" else None
    flip = flip.repeat_interleave(n) if isinstance(flip, torch.Tensor) else None
    scale = scale.repeat_interleave(n) if isinstance(scale, torch.Tensor) else None
    return raw_to_model(raw.flatten(0, 1), stream, flip, scale)


# --- sampling for training --------------------------------------------------------------------


def sample_seed(seed: int, epoch: int, rank: int, position: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, rank, position]).generate_state(1, np.uint64)[0] >> 1)


class TrainSampler(Sampler):
    """An endless stream of ``(item, seed)`` (a training sampler's items are the videos) for one rank, starting at ``start_step``.

    Epoch after epoch, each rank takes ``DistributedSampler``'s shard of a fresh permutation
    (seeded by ``seed`` and the epoch); batches are cut from that stream every ``batch_size``
    items and may straddle two epochs.  Position ``p`` of epoch ``e`` always gets the same seed,
    so resuming at step ``s`` continues with exactly the clips an uninterrupted run would draw.
    """

    def __init__(
        self, n_videos: int, *, batch_size: int, seed: int = 0, start_step: int = 0, rank: int = 0, world_size: int = 1
    ):
        self.n = n_videos
        self.batch_size = batch_size
        self.seed = seed
        self.start_step = start_step
        self.rank = rank
        self.world_size = world_size

    def _epoch(self, epoch: int) -> list[int]:
        # DistributedSampler only takes len() of its dataset; torch types it as a Dataset
        indices = cast("Dataset[int]", range(self.n))
        ds: DistributedSampler[int] = DistributedSampler(
            indices, num_replicas=self.world_size, rank=self.rank, shuffle=True, seed=self.seed
        )
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
