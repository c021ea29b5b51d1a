"""flowprep.train.sampling: each sampler's indices against its paper's protocol (exact for
evaluation, ranges and coverage for training with seeded generators), what a sample holds when
VideoClips reads it from a real store, and the shapes the model receives."""

import numpy as np
import pytest
import torch
from conftest import Clip
from synthetic_store import build_store

from flowprep import open_store
from flowprep.dataset.demo import Motion
from flowprep.train.data import VideoClips, clips_to_model, collate_clips
from flowprep.train.sampling import (
    DenseEval,
    DenseTrain,
    SlowFastEval,
    SlowFastTrain,
    StackedEval,
    StackedTrain,
    TSNEval,
    TSNTrain,
    consensus,
    eval_sampler,
    train_sampler,
    tsn_test_offsets,
    tsn_train_offsets,
    uniform_clip_starts,
)


def _starts(sampler, length, streams=("rgb", "flow"), item=0, seed=None):
    rng = np.random.default_rng(seed) if seed is not None else None
    return sampler.starts(length, sampler.span(streams), item, rng)


# --- indices: the papers' protocols ---------------------------------------------------------------


def test_tsn_test_offsets_are_the_middles_of_equal_segments():
    # tsn-pytorch _get_test_indices: tick = avail / K, offsets int(tick / 2 + tick * k)
    assert tsn_test_offsets(100, 25).tolist() == list(range(2, 100, 4))
    assert tsn_test_offsets(10, 3).tolist() == [1, 5, 8]
    # a 10 s clip at 25 fps: 249 flow fields, snippets of 5 -> 245 possible starts
    got = _starts(TSNEval(), 249).tolist()
    assert got == [
        4,
        14,
        24,
        34,
        44,
        53,
        63,
        73,
        83,
        93,
        102,
        112,
        122,
        132,
        142,
        151,
        161,
        171,
        181,
        191,
        200,
        210,
        220,
        230,
        240,
    ]
    assert got[-1] + 4 <= 248  # the last snippet's fields are inside the video
    # RGB alone: 250 frames, one-frame snippets -> 250 starts, tick 10
    assert _starts(TSNEval(), 250, ("rgb",)).tolist() == list(range(5, 250, 10))
    # fewer starts than segments: the same formula repeats offsets, never leaves the video
    assert _starts(TSNEval(), 13).tolist() == [int(9 / 25 / 2 + 9 / 25 * k) for k in range(25)]
    assert max(_starts(TSNEval(), 13)) <= 8


def test_tsn_training_draws_one_snippet_inside_each_segment():
    s = TSNTrain()  # K = 3, flow snippets of 5
    assert (s.segments, s.clip_len, s.views) == (3, 5, 3)
    seen = [set(), set(), set()]
    for seed in range(300):
        offs = _starts(s, 34, seed=seed)  # 34 fields, span 5 -> 30 starts, segments of 10
        for k in range(3):
            assert 10 * k <= offs[k] <= 10 * k + 9
            seen[k].add(int(offs[k]))
    assert seen == [set(range(0, 10)), set(range(10, 20)), set(range(20, 30))]  # uniform inside each segment
    # fewer starts than segments: sorted draws over all starts (tsn-pytorch's second branch)
    for seed in range(20):
        offs = tsn_train_offsets(2, 3, np.random.default_rng(seed))
        assert offs.tolist() == sorted(offs.tolist()) and set(offs.tolist()) <= {0, 1}
    np.testing.assert_array_equal(_starts(s, 34, seed=5), _starts(s, 34, seed=5))  # a seed is a draw


def test_two_stream_takes_one_frame_and_ten_stacked_fields():
    train, test = StackedTrain(), StackedEval()
    assert (train.clip_len, train.views, test.samples, test.views) == (10, 1, 25, 25)
    assert train.in_channels("flow") == 20 and train.in_channels("rgb") == 3  # 2L channels
    # test: 60 frames = 59 fields, L = 10 -> 50 starts, 25 evenly spaced samples
    starts = _starts(test, 59)
    assert starts.tolist() == list(range(1, 50, 2))
    flow = test.indices(starts, "flow", 59)
    assert (
        flow.shape == (25, 10) and flow[0].tolist() == list(range(1, 11)) and flow[-1].tolist() == list(range(49, 59))
    )
    assert test.indices(starts, "rgb", 59).tolist() == [[t] for t in range(1, 50, 2)]  # the frame the stack leaves from
    # train: one uniform start, every start possible
    got = {int(_starts(train, 59, seed=seed)[0]) for seed in range(600)}
    assert got == set(range(50))


def test_slowfast_clips_and_pathways():
    test = SlowFastEval()
    assert (test.clip_len, test.stride, test.alpha, test.clips) == (32, 2, 8, 10)
    # PySlowFast: clip k of 10 starts at delta * k / 10, delta = length - 63 steps
    starts = _starts(test, 100)
    assert starts.tolist() == [0, 3, 7, 11, 14, 18, 22, 25, 29, 33]
    assert uniform_clip_starts(100, 63, 1).tolist() == [0]
    fast = test.indices(starts, "rgb", 100)
    assert fast.shape == (10, 32) and fast[1].tolist() == list(range(3, 67, 2)) and fast.max() == 33 + 62
    x = torch.arange(32, dtype=torch.float32).view(1, 1, 32, 1, 1).expand(2, 3, 32, 4, 4)
    slow, fast_in = test.model_input(x)
    assert slow.shape == (2, 3, 4, 4, 4) and fast_in.shape == (2, 3, 32, 4, 4)
    assert slow[0, 0, :, 0, 0].tolist() == [0, 8, 16, 24]  # every alpha = 8th fast frame
    train = SlowFastTrain()
    got = {int(_starts(train, 100, seed=seed)[0]) for seed in range(500)}
    assert got == set(range(38))  # uniform over 0 .. 100 - 63
    assert _starts(train, 40, seed=1).tolist() == [0]  # shorter than a clip: loops from 0
    assert train.indices(np.array([0]), "flow", 40)[0, -5:].tolist() == [(2 * t) % 40 for t in range(27, 32)]


def test_dense_clips_as_before():
    train = DenseTrain(clip_len=16)
    assert {int(_starts(train, 20, seed=s)[0]) for s in range(200)} == set(range(5))
    assert train.indices(np.array([3]), "rgb", 20).tolist() == [list(range(3, 19))]
    windows = DenseEval(clip_len=4)
    assert windows.items_per_video(13) == 3 and [int(_starts(windows, 13, item=k)[0]) for k in range(3)] == [0, 4, 8]
    assert DenseEval().items_per_video(13) == 1 and DenseEval().steps("rgb") == 0  # whole video


def test_samplers_by_name_and_their_evaluation_sides():
    s = train_sampler("tsn", crop=112, segments=None, clip_len=None, flip=False)
    assert s == TSNTrain(crop=112, flip=False)
    ev = eval_sampler(s.to_dict())
    assert ev == TSNEval(crop=112) and ev.views == 25  # the test protocol's count, the training crop
    assert eval_sampler(s.to_dict(), segments=5).views == 5
    assert eval_sampler(SlowFastTrain(clip_len=16, alpha=4).to_dict()) == SlowFastEval(clip_len=16, alpha=4)
    assert eval_sampler(DenseTrain(clip_len=16, crop=112).to_dict()) == DenseEval(crop=112)  # whole videos
    with pytest.raises(ValueError, match="--sampling stacked has no segments"):
        train_sampler("stacked", segments=3)
    with pytest.raises(ValueError, match="choose from dense, tsn, stacked, slowfast"):
        train_sampler("c3d")
    with pytest.raises(ValueError, match="segments=0 must be an integer >= 1"):
        TSNTrain(segments=0)


def test_consensus_averages_each_samples_views():
    logits = torch.tensor([[1.0, 0.0], [3.0, 2.0], [0.0, 0.0], [10.0, -4.0]])  # 2 samples x 2 views
    torch.testing.assert_close(consensus(logits, 2), torch.tensor([[2.0, 1.0], [5.0, -2.0]]))


# --- what VideoClips hands over -----------------------------------------------------------------


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sampling")
    return build_store(
        folder, [Clip("right", Motion(dx=2), 24, "r", "train", 1), Clip("tiny", Motion(dy=1), 4, "d", "train", 2)]
    )


def _mirror(flow_thw2):
    return flow_thw2[:, :, ::-1] * np.array([-1, 1], np.float32)


@pytest.mark.parametrize(
    "sampler, rgb_shape, flow_shape, model_shape",
    [
        (TSNTrain(crop=48), (3, 1, 48, 48, 3), (3, 5, 48, 48, 2), {"rgb": (6, 3, 48, 48), "flow": (6, 10, 48, 48)}),
        (
            StackedTrain(crop=48),
            (1, 1, 48, 48, 3),
            (1, 10, 48, 48, 2),
            {"rgb": (2, 3, 48, 48), "flow": (2, 20, 48, 48)},
        ),
        (
            SlowFastTrain(crop=48, clip_len=8, alpha=4),
            (1, 8, 48, 48, 3),
            (1, 8, 48, 48, 2),
            {"rgb": [(2, 3, 2, 48, 48), (2, 3, 8, 48, 48)], "flow": [(2, 2, 2, 48, 48), (2, 2, 8, 48, 48)]},
        ),
        (
            DenseTrain(crop=48, clip_len=6),
            (1, 6, 48, 48, 3),
            (1, 6, 48, 48, 2),
            {"rgb": (2, 3, 6, 48, 48), "flow": (2, 2, 6, 48, 48)},
        ),
    ],
)
def test_each_sampler_reads_its_views_with_one_crop_and_flip(store, sampler, rgb_shape, flow_shape, model_shape):
    s = open_store(store)
    ds = VideoClips([store], streams=("rgb", "flow"), sampler=sampler, split="train")
    assert len(ds) == 2 and ds.videos[0].video_id == "right"
    flips = set()
    for seed in range(6):
        item = ds[0, seed]
        assert item["rgb"].shape == rgb_shape and item["flow"].shape == flow_shape
        assert item["rgb"].dtype == torch.uint8 and item["flow"].dtype == torch.int8
        y, x, flip = item["y"], item["x"], item["flip"]
        flips.add(flip)
        starts = item["start"].numpy()
        assert starts.shape == (rgb_shape[0],)
        batch = collate_clips([item])
        for stream, read in (("rgb", s.read_rgb), ("flow", s.read_flow)):
            steps = sampler.indices(starts, stream, 23)  # 23 flow fields: views drawn over the flow steps
            model = clips_to_model(batch, stream, "cpu")  # (N, C, T, H, W): flipped and scaled
            for n in range(len(starts)):
                want = read("right")[steps[n]][:, y : y + 48, x : x + 48]
                if flip:
                    want = want[:, :, ::-1] if stream == "rgb" else _mirror(want)
                np.testing.assert_allclose(model[n].permute(1, 2, 3, 0).numpy(), want, rtol=0, atol=1e-6)
            if stream == "flow":  # the scene moves right by 2 px: mirrored it moves left
                assert model[0, 0, :, 8:-8, 8:-8].mean().item() * 20 == pytest.approx(-2 if flip else 2, abs=0.3)
        # what the model receives: two items of the batch, views adjacent
        pair = collate_clips([ds[0, seed], ds[1, seed]])
        for stream in ("rgb", "flow"):
            got = sampler.model_input(clips_to_model(pair, stream, "cpu"))
            shapes = [tuple(t.shape) for t in got] if isinstance(got, list) else tuple(got.shape)
            assert shapes == model_shape[stream]
    assert flips == {True, False}


def test_stacked_flow_channels_are_u_v_per_field_in_order(store):
    ds = VideoClips([store], streams=("flow",), sampler=StackedTrain(crop=48, flip=False), split="train")
    item = ds[0, 3]
    x5 = clips_to_model(collate_clips([item]), "flow", "cpu")  # (1, 2, 10, 48, 48)
    x4 = ds.sampler.model_input(x5)  # (1, 20, 48, 48)
    for t in range(10):
        torch.testing.assert_close(x4[0, 2 * t], x5[0, 0, t], rtol=0, atol=0)  # u of field t
        torch.testing.assert_close(x4[0, 2 * t + 1], x5[0, 1, t], rtol=0, atol=0)  # v of field t


def test_evaluation_samplers_are_deterministic_and_loop_short_videos(store):
    s = open_store(store)
    ds = VideoClips([store], streams=("rgb", "flow"), sampler=TSNEval(crop=48), split="train")
    assert len(ds) == 2
    a, b = ds[0], ds[0, 7]
    torch.testing.assert_close(a["flow"], b["flow"], rtol=0, atol=0)
    assert (a["y"], a["x"], a["flip"]) == (8, 16, False)  # centre crop of 64 x 80
    assert a["start"].tolist() == tsn_test_offsets(23 - 5 + 1, 25).tolist()
    tiny = ds[1]  # 4 frames, 3 fields: a 5-field snippet loops
    assert tiny["flow"].shape == (25, 5, 48, 48, 2) and tiny["start"].tolist() == [0] * 25
    np.testing.assert_array_equal(tiny["flow"][0].numpy(), s.read_flow_int8("tiny")[[0, 1, 2, 0, 1], 8:56, 16:64])
    sf = VideoClips(
        [store], streams=("rgb",), sampler=SlowFastEval(crop=48, clip_len=4, stride=2, alpha=2, clips=3), split="train"
    )
    item = sf[0]  # 24 frames, span 7: delta 17, starts 0, 5, 11
    assert item["start"].tolist() == [0, 5, 11] and item["rgb"].shape == (3, 4, 48, 48, 3)
    np.testing.assert_array_equal(item["rgb"][2].numpy(), s.read_rgb_uint8("right")[[11, 13, 15, 17], 8:56, 16:64])


def test_flow_scale_and_flip_apply_to_every_view():
    rng = np.random.default_rng(0)
    flow = torch.from_numpy(rng.integers(-127, 128, (2, 3, 2, 4, 4, 2), dtype=np.int8))  # B=2, N=3 views
    batch = {
        "flow": flow,
        "flip": torch.tensor([True, False]),
        "flow_scale": torch.tensor([1.0, 0.5], dtype=torch.float64),
    }
    x = clips_to_model(batch, "flow", "cpu")
    assert x.shape == (6, 2, 2, 4, 4)
    for b in range(2):
        for n in range(3):
            want = flow[b, n].float().permute(3, 0, 1, 2) / 127 * (1.0, 0.5)[b]
            if b == 0:
                want = want.flip(-1)
                want[0] = -want[0]
            torch.testing.assert_close(x[3 * b + n], want, rtol=0, atol=1e-6)


def _count_reads(ds, reads):
    read_raw = ds.read_raw
    ds.read_raw = lambda stream, ref, a, b, y=0, x=0: reads.append((a, b)) or read_raw(stream, ref, a, b, y, x)


def test_views_read_each_chunk_once(store):
    """Steps less than a chunk (8) apart are read as one span, farther ones apart; values as stored."""
    s = open_store(store)
    ds = VideoClips([store], streams=("flow",), sampler=TSNEval(crop=48, segments=2, clip_len=2), split="train")
    reads = []
    _count_reads(ds, reads)
    item = ds[0]  # 23 fields, snippets of 2: 22 starts, offsets 5 and 16
    assert item["start"].tolist() == [5, 16] and reads == [(5, 7), (16, 18)]
    np.testing.assert_array_equal(item["flow"].numpy(), s.read_flow_int8("right")[[[5, 6], [16, 17]], 8:56, 16:64])
    reads.clear()
    ds = VideoClips([store], streams=("flow",), sampler=TSNEval(crop=48), split="train")
    _count_reads(ds, reads)
    item = ds[0]  # 25 snippets of 5 over 19 starts: one span
    assert reads == [(0, 23)]
    want = s.read_flow_int8("right")[ds.sampler.indices(item["start"].numpy(), "flow", 23)][:, :, 8:56, 16:64]
    np.testing.assert_array_equal(item["flow"].numpy(), want)
