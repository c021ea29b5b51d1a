"""flowprep.train.data: flip and crop conventions on values, RGB/flow alignment, looping, samplers, workers."""

from itertools import islice

import numpy as np
import pytest
import torch
from conftest import Clip
from synthetic_store import build_store
from torch.utils.data import DataLoader

from flowprep import open_store
from flowprep.dataset.demo import Motion
from flowprep.train.data import (
    TrainSampler,
    VideoClips,
    clips_to_model,
    collate_clips,
    flow_thw2_to_cthw,
    raw_to_model,
    rgb_thwc_to_cthw,
)
from flowprep.train.sampling import DenseEval, DenseTrain, window_indices


def model_input(item, stream):
    """What the trainer feeds the model for one single-view item: its raw crop finished by raw_to_model."""
    assert item[stream].shape[0] == 1  # one view
    return raw_to_model(item[stream], stream, torch.tensor([item["flip"]]))[0]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    return build_store(
        folder,
        [
            Clip("long", Motion(dx=2, dy=1), 14, "b", "train", 1),
            Clip("short", Motion(dx=-1, dy=2), 5, "a", "train", 2),
            Clip("other", Motion(dy=-2), 6, "c", "val", 3),
        ],
    )


def test_flip_mirrors_the_image_and_negates_u():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (2, 6, 8, 3), dtype=np.uint8)
    rgb[0, 1, 2] = (0, 255, 51)
    flow = rng.integers(-127, 128, (2, 6, 8, 2), dtype=np.int8)
    flow[0, 1, 2] = (127, -127)
    plain = rgb_thwc_to_cthw(rgb, 1, 2, 4, flip=False)
    flipped = rgb_thwc_to_cthw(rgb, 1, 2, 4, flip=True)
    assert plain.shape == (3, 2, 4, 4) and plain.dtype == torch.float32
    assert plain[:, 0, 0, 0].tolist() == pytest.approx([-1.0, 1.0, 51 / 127.5 - 1])
    torch.testing.assert_close(flipped, plain.flip(-1), rtol=0, atol=0)
    assert flipped[:, 0, 0, 3].tolist() == pytest.approx([-1.0, 1.0, 51 / 127.5 - 1])  # the pixel moved right
    f_plain = flow_thw2_to_cthw(flow, 1, 2, 4, flip=False)
    f_flip = flow_thw2_to_cthw(flow, 1, 2, 4, flip=True)
    assert f_plain[:, 0, 0, 0].tolist() == [1.0, -1.0]
    assert f_flip[:, 0, 0, 3].tolist() == [-1.0, -1.0]  # mirrored; u negated, v kept
    torch.testing.assert_close(f_flip[0], -f_plain[0].flip(-1), rtol=0, atol=0)
    torch.testing.assert_close(f_flip[1], f_plain[1].flip(-1), rtol=0, atol=0)
    expect = flow[:, 1:5, 2:6].astype(np.float32).transpose(3, 0, 1, 2) / 127
    np.testing.assert_allclose(f_plain.numpy(), expect, rtol=0, atol=1e-7)


def test_window_indices_loop_short_videos():
    assert window_indices(10, 4, 3).tolist() == [3, 4, 5, 6]
    assert window_indices(4, 10, 0).tolist() == [0, 1, 2, 3, 0, 1, 2, 3, 0, 1]


def test_rgb_and_flow_get_the_same_window_crop_and_flip(store):
    s = open_store(store)
    ds = VideoClips([store], streams=("rgb", "flow"), sampler=DenseTrain(clip_len=6, crop=48), split="train")
    assert ds.classes == ["a", "b"] and [v.video_id for v in ds.videos] == ["long", "short"]
    v = 0  # "long": 14 frames, 13 flow fields
    seen = set()
    for seed in range(12):
        item = ds[v, seed]
        (t0,), y, x, flip = item["start"].tolist(), item["y"], item["x"], item["flip"]
        seen.add((t0, y, x, flip))
        assert 0 <= t0 <= 13 - 6 and 0 <= y <= 64 - 48 and 0 <= x <= 80 - 48
        # workers hand over raw crops; the device finishes them
        assert item["rgb"].dtype == torch.uint8 and item["rgb"].shape == (1, 6, 48, 48, 3)  # one view of 6 steps
        assert item["flow"].dtype == torch.int8 and item["flow"].shape == (1, 6, 48, 48, 2)
        item = {**item, "rgb": model_input(item, "rgb"), "flow": model_input(item, "flow")}
        assert item["label"] == 1 and item["rgb"].shape == (3, 6, 48, 48) and item["flow"].shape == (2, 6, 48, 48)
        rgb = s.read_rgb("long", t0, t0 + 6)[:, y : y + 48, x : x + 48]
        flow = s.read_flow("long", t0, t0 + 6)[:, y : y + 48, x : x + 48]
        if flip:
            rgb, flow = rgb[:, :, ::-1], flow[:, :, ::-1] * np.array([-1, 1], np.float32)
        np.testing.assert_allclose(item["rgb"].permute(1, 2, 3, 0).numpy(), rgb, rtol=0, atol=1e-6)
        np.testing.assert_allclose(item["flow"].permute(1, 2, 3, 0).numpy(), flow, rtol=0, atol=1e-6)
        if flip:  # the scene moves right (dx=2): mirrored, the flow points left
            assert item["flow"][0, :, 8:-8, 8:-8].mean() * 20 == pytest.approx(-2, abs=0.3)
        else:
            assert item["flow"][0, :, 8:-8, 8:-8].mean() * 20 == pytest.approx(2, abs=0.3)
    assert {f for *_, f in seen} == {True, False} and len({(y, x) for _, y, x, _ in seen}) > 6
    torch.testing.assert_close(ds[v, 3]["rgb"], ds[v, 3]["rgb"])  # a seed is a sample


def test_short_videos_loop_and_streams_stay_aligned(store):
    s = open_store(store)
    both = VideoClips(
        [store], streams=("rgb", "flow"), sampler=DenseTrain(clip_len=10, crop=64, flip=False), split="train"
    )
    item = both[1, 0]  # "short": 5 frames, 4 flow fields
    item = {**item, "rgb": model_input(item, "rgb"), "flow": model_input(item, "flow")}
    assert item["start"].tolist() == [0]
    steps = [0, 1, 2, 3, 0, 1, 2, 3, 0, 1]
    x = item["x"]
    np.testing.assert_allclose(
        item["rgb"].permute(1, 2, 3, 0).numpy(), s.read_rgb("short")[steps][:, :, x : x + 64], atol=1e-6
    )
    np.testing.assert_allclose(
        item["flow"].permute(1, 2, 3, 0).numpy(), s.read_flow("short")[steps][:, :, x : x + 64], atol=1e-6
    )
    rgb_only = VideoClips([store], streams=("rgb",), sampler=DenseTrain(clip_len=7, crop=64, flip=False), split="train")
    item = rgb_only[1, 0]
    item = {**item, "rgb": model_input(item, "rgb")}
    np.testing.assert_allclose(
        item["rgb"].permute(1, 2, 3, 0).numpy(),
        s.read_rgb("short")[[0, 1, 2, 3, 4, 0, 1]][:, :, item["x"] : item["x"] + 64],
        atol=1e-6,
    )


def test_evaluation_reads_whole_videos_or_windows_with_a_centre_crop(store):
    s = open_store(store)
    whole = VideoClips(
        [store], streams=("rgb", "flow"), sampler=DenseEval(clip_len=0, crop=48), split="val", classes=["a", "b", "c"]
    )
    assert len(whole) == 1
    item = whole[0]
    item = {**item, "rgb": model_input(item, "rgb"), "flow": model_input(item, "flow")}
    assert (item["y"], item["x"], item["flip"], item["label"]) == (8, 16, False, 2)
    assert item["rgb"].shape == (3, 6, 48, 48) and item["flow"].shape == (2, 5, 48, 48)
    np.testing.assert_allclose(item["rgb"].permute(1, 2, 3, 0).numpy(), s.read_rgb("other")[:, 8:56, 16:64], atol=1e-6)
    windows = VideoClips([store], streams=("flow",), sampler=DenseEval(clip_len=4, crop=48), split="train")
    assert windows.items == [(0, 0), (0, 1), (0, 2), (1, 0)]  # 13 fields: 3 windows; 4 fields: 1
    assert [windows[i]["start"].tolist() for i in range(4)] == [[0], [4], [8], [0]]
    assert len(windows) == 4 and windows[1, 99]["start"].tolist() == [4]  # evaluation ignores seeds
    with pytest.raises(ValueError, match="label 'c'"):
        VideoClips([store], sampler=DenseTrain(crop=48), split="val", classes=["a", "b"])
    train = VideoClips([store], sampler=DenseTrain(clip_len=4, crop=48), split="train")
    assert len(train) == 2 and train.items == [(0, 0), (1, 0)]  # training: one sample per video
    with pytest.raises(ValueError, match="crop 100 is larger"):
        VideoClips([store], sampler=DenseTrain(crop=100))


def test_train_sampler_resumes_the_same_stream_and_splits_ranks():
    full = list(islice(TrainSampler(5, batch_size=2, seed=3), 40))
    resumed = list(islice(TrainSampler(5, batch_size=2, seed=3, start_step=7), 26))
    assert resumed == full[14:]
    assert sorted(i for i, _ in full[:5]) == [0, 1, 2, 3, 4]  # an epoch is a permutation
    assert len({s for _, s in full}) == 40  # every sample its own augmentation seed
    r0 = [i for i, _ in islice(TrainSampler(6, batch_size=1, seed=0, rank=0, world_size=2), 3)]
    r1 = [i for i, _ in islice(TrainSampler(6, batch_size=1, seed=0, rank=1, world_size=2), 3)]
    assert sorted(r0 + r1) == [0, 1, 2, 3, 4, 5]


def test_workers_open_their_own_stores_and_draw_the_same_clips(store):
    ds = VideoClips([store], streams=("rgb", "flow"), sampler=DenseTrain(clip_len=4, crop=48), split="train")
    ds[0, 0]  # the parent has a store open before the fork
    batches = {}
    for workers in (0, 2):
        loader = DataLoader(ds, batch_size=2, sampler=TrainSampler(2, batch_size=2, seed=5), num_workers=workers)
        batches[workers] = list(islice(iter(loader), 3))
    for a, b in zip(batches[0], batches[2], strict=True):
        torch.testing.assert_close(a["rgb"], b["rgb"], rtol=0, atol=0)
        torch.testing.assert_close(a["flow"], b["flow"], rtol=0, atol=0)
        assert a["rgb"].shape == (2, 1, 4, 48, 48, 3) and a["rgb"].dtype == torch.uint8


def test_device_conversion_matches_the_per_sample_reference():
    """raw_to_model on a batch (mixed flips) = the per-sample float conversion of the same crops."""
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (3, 4, 6, 6, 3), dtype=np.uint8)
    flow = rng.integers(-127, 128, (3, 4, 6, 6, 2), dtype=np.int8)
    flips = [True, False, True]
    batch = {
        "rgb": torch.from_numpy(rgb)[:, None],
        "flow": torch.from_numpy(flow)[:, None],
        "flip": torch.tensor(flips),
    }
    for stream, raw, ref in (("rgb", rgb, rgb_thwc_to_cthw), ("flow", flow, flow_thw2_to_cthw)):
        x = clips_to_model(batch, stream, "cpu")
        assert x.dtype == torch.float32 and x.shape == (3, raw.shape[-1], 4, 6, 6)
        assert x.permute(0, 2, 3, 4, 1).is_contiguous()  # channels-last memory
        for b in range(3):  # the whole 6 x 6 frame as the crop
            torch.testing.assert_close(x[b], ref(raw[b], 0, 0, 6, flips[b]), rtol=0, atol=1e-6)
    assert clips_to_model(batch, "flow", "cpu")[0, 0, 0, 0, 0] == -flow[0, 0, 0, 5, 0] / 127  # mirrored, u negated


def test_a_plain_shuffled_dataloader_with_workers_trains(store):
    """VideoClips without TrainSampler: int indices, shuffle=True, 2 workers; seeds from torch's generator."""
    ds = VideoClips([store], streams=("rgb", "flow"), sampler=DenseTrain(clip_len=4, crop=48), split="train")
    runs = []
    for _ in range(2):
        loader = DataLoader(ds, batch_size=2, shuffle=True, num_workers=2, generator=torch.Generator().manual_seed(7))
        runs.append(list(islice(loader, 3)))
    for a, b in zip(*runs, strict=True):  # same base seed: the same clips
        assert a["rgb"].shape == (2, 1, 4, 48, 48, 3) and a["flow"].dtype == torch.int8
        torch.testing.assert_close(a["rgb"], b["rgb"], rtol=0, atol=0)
        assert a["label"].tolist() == b["label"].tolist()
    starts = {(int(s[0]), int(y), int(x)) for b in runs[0] for s, y, x in zip(b["start"], b["y"], b["x"], strict=True)}
    assert len(starts) > 1  # not one fixed sample
    x = clips_to_model(runs[0][0], "flow", "cpu")
    assert x.shape == (2, 2, 4, 48, 48) and x.abs().max() <= 1
    assert collate_clips([ds[0], ds[1]])["rgb"].shape == (2, 1, 4, 48, 48, 3)
