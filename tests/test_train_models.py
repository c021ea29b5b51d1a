"""Any model in the trainer: tiny in-test models of each input shape (3D clip, 2D frames with
stacked steps, SlowFast's two pathways) trained for a few steps by `flowprep train --model
test_train_models:FACTORY --sampling ...` on a real store, the shapes each received, evaluation
fusing both streams with views averaged per video, and one-line errors for bad factories."""

import json

import pytest
import torch
from conftest import Clip
from synthetic_store import build_store
from torch import nn
from torch.utils.data import DataLoader

from flowprep.cli.main import main as cli
from flowprep.dataset.demo import Motion
from flowprep.train.classifier import load_checkpoint
from flowprep.train.data import VideoClips, clips_to_model, collate_clips
from flowprep.train.evaluate import evaluate
from flowprep.train.plugins import build_model, load_factory
from flowprep.train.sampling import TSNEval, consensus

RECEIVED: list[tuple[str, object]] = []  # (model kind, input shape(s)), appended by every forward
COMMON = ["--crop", "48", "--batch-size", "2", "--steps", "2", "--lr-drops", "--workers", "0", "--device", "cpu"]


class Frames2D(nn.Module):
    """TSN / two-stream: (B, C, H, W) frames, C = channels x stacked steps."""

    def __init__(self, num_classes: int, in_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 8, 3, stride=2)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x):
        RECEIVED.append(("frames", tuple(x.shape)))
        return self.fc(self.conv(x).relu().mean((2, 3)))


class Clip3D(nn.Module):
    """C3D / R(2+1)D-like: (B, C, T, H, W) clips."""

    def __init__(self, num_classes: int, in_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv3d(in_channels, 8, 3, stride=(1, 2, 2))
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x):
        RECEIVED.append(("clip", tuple(x.shape)))
        return self.fc(self.conv(x).relu().mean((2, 3, 4)))


class TwoPathways(nn.Module):
    """SlowFast-like: [slow (B, C, T/alpha, H, W), fast (B, C, T, H, W)]."""

    def __init__(self, num_classes: int, in_channels: int) -> None:
        super().__init__()
        self.slow = nn.Conv3d(in_channels, 8, (1, 3, 3), stride=(1, 2, 2))
        self.fast = nn.Conv3d(in_channels, 4, (3, 3, 3), stride=(1, 2, 2), padding=(1, 0, 0))
        self.fc = nn.Linear(12, num_classes)

    def forward(self, x):
        slow, fast = x
        RECEIVED.append(("pathways", (tuple(slow.shape), tuple(fast.shape))))
        return self.fc(torch.cat([self.slow(slow).relu().mean((2, 3, 4)), self.fast(fast).relu().mean((2, 3, 4))], 1))


def bad_signature(num_classes):
    return Frames2D(num_classes, 3)


def not_a_module(num_classes, in_channels):
    return "a string"


def raises(num_classes, in_channels):
    raise RuntimeError("weights file\nmissing")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    videos = [Clip(f"v{i}", Motion(dy=2 if i % 2 else -2), 12, "down" if i % 2 else "up", "train", i) for i in range(4)]
    return build_store(folder, videos)


# family: (--model, extra train options, training shapes per stream, evaluation shapes per stream (one video a batch))
FAMILIES = {
    "tsn": (
        "Frames2D",
        [],
        {"rgb": ("frames", (6, 3, 48, 48)), "flow": ("frames", (6, 10, 48, 48))},
        {"rgb": ("frames", (25, 3, 48, 48)), "flow": ("frames", (25, 10, 48, 48))},
    ),
    "stacked": (
        "Frames2D",
        [],
        {"rgb": ("frames", (2, 3, 48, 48)), "flow": ("frames", (2, 20, 48, 48))},
        {"rgb": ("frames", (25, 3, 48, 48)), "flow": ("frames", (25, 20, 48, 48))},
    ),
    "slowfast": (
        "TwoPathways",
        ["--clip-len", "8", "--stride", "1", "--alpha", "4"],
        {
            "rgb": ("pathways", ((2, 3, 2, 48, 48), (2, 3, 8, 48, 48))),
            "flow": ("pathways", ((2, 2, 2, 48, 48), (2, 2, 8, 48, 48))),
        },
        {
            "rgb": ("pathways", ((10, 3, 2, 48, 48), (10, 3, 8, 48, 48))),
            "flow": ("pathways", ((10, 2, 2, 48, 48), (10, 2, 8, 48, 48))),
        },
    ),
    "dense": (
        "Clip3D",
        ["--clip-len", "4"],
        {"rgb": ("clip", (2, 3, 4, 48, 48)), "flow": ("clip", (2, 2, 4, 48, 48))},
        {"rgb": ("clip", (1, 3, 12, 48, 48)), "flow": ("clip", (1, 2, 11, 48, 48))},
    ),  # whole videos
}


@pytest.mark.parametrize("sampling", list(FAMILIES))
def test_each_family_trains_and_evaluates_fused(store, tmp_path, sampling):
    factory, extra, train_shapes, eval_shapes = FAMILIES[sampling]
    for stream in ("rgb", "flow"):
        RECEIVED.clear()
        args = [
            "train",
            "--store",
            str(store),
            "--stream",
            stream,
            "--model",
            f"test_train_models:{factory}",
            "--sampling",
            sampling,
            *extra,
            *COMMON,
            "--out",
            str(tmp_path / stream),
        ]
        assert cli(args) == 0
        assert RECEIVED == [train_shapes[stream]] * 2  # two steps, each batch in the family's shape
        ckpt = load_checkpoint(tmp_path / stream / "checkpoint.pt")
        assert ckpt["model_factory"] == f"test_train_models:{factory}" and ckpt["sampling"]["name"] == sampling
        assert ckpt["model_config"] == {"num_classes": 2, "in_channels": _channels(train_shapes[stream])}
    RECEIVED.clear()
    assert (
        cli(
            [
                "evaluate",
                "--store",
                str(store),
                "--split",
                "all",
                "--rgb",
                str(tmp_path / "rgb" / "checkpoint.pt"),
                "--flow",
                str(tmp_path / "flow" / "checkpoint.pt"),
                "--workers",
                "0",
                "--device",
                "cpu",
                "--out",
                str(tmp_path / "eval"),
            ]
        )
        == 0
    )
    # each stream read once per video (the two share their reads), views together in one forward
    assert sorted(RECEIVED, key=str) == sorted([eval_shapes["rgb"], eval_shapes["flow"]] * 4, key=str)
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert report["videos"] == 4 and set(report["streams"]) == {"rgb", "flow", "fused"}
    assert report["sampling"]["flow"]["name"] == sampling
    assert sum(map(sum, report["streams"]["fused"]["confusion"])) == 4
    if sampling != "dense":  # the view length is the model's: only dense evaluation takes --clip-len
        assert (
            cli(
                ["evaluate", "--store", str(store), "--rgb", str(tmp_path / "rgb" / "checkpoint.pt"), "--clip-len", "4"]
            )
            == 2
        )


def _channels(record):
    kind, shape = record
    return shape[0][1] if kind == "pathways" else shape[1]


def test_evaluation_averages_each_videos_views(store):
    """evaluate() = the mean of the model's logits over a video's 4 TSN segments, computed by hand."""
    torch.manual_seed(0)
    model = Frames2D(2, 10).eval()
    sampler = TSNEval(crop=48, segments=4)
    ds = VideoClips([store], streams=("flow",), sampler=sampler)
    loader = DataLoader(ds, batch_size=2, collate_fn=collate_clips)  # two videos of 4 views a batch
    got = evaluate({"flow": model}, loader, len(ds.videos), 2, device=torch.device("cpu"), amp=False)["flow"]
    with torch.no_grad():
        for v in range(len(ds.videos)):
            x = sampler.model_input(clips_to_model(collate_clips([ds[v]]), "flow", "cpu"))
            per_view = model(x)
            assert per_view.shape == (4, 2)
            torch.testing.assert_close(got[v].float(), per_view.mean(0), rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(consensus(per_view, 4)[0], per_view.mean(0))
    assert not torch.allclose(got[0], got[1])  # different videos, different logits


@pytest.mark.parametrize(
    "spec, message",
    [
        ("no_such_module_xyz:make", "--model no_such_module_xyz:make: no module named 'no_such_module_xyz'"),
        (
            "test_train_models:bad_signature",
            "--model test_train_models:bad_signature: factory(num_classes) cannot be called as factory(num_classes, in_channels)",
        ),
        (
            "test_train_models:missing",
            "--model test_train_models:missing: test_train_models has no attribute 'missing'",
        ),
        ("test_train_models:not_a_module", "factory returned a str, not a torch.nn.Module"),
        ("test_train_models:raises", "factory(2, 3) raised RuntimeError: weights file"),
        ("torchvision.models", "give i3d or package.module:factory"),
    ],
)
def test_bad_models_are_one_line_and_exit_2(store, tmp_path, capsys, spec, message):
    code = cli(
        [
            "train",
            "--store",
            str(store),
            "--stream",
            "rgb",
            "--model",
            spec,
            "--sampling",
            "tsn",
            *COMMON,
            "--out",
            str(tmp_path / "x"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "x").exists()  # nothing written


def test_mismatched_options_are_one_line_and_exit_2(store, tmp_path, capsys):
    base = ["train", "--store", str(store), "--stream", "rgb", *COMMON, "--out", str(tmp_path / "x")]
    for extra, message in (
        (["--sampling", "tsn"], "--model i3d takes dense clips; --sampling tsn needs"),
        (
            ["--model", "test_train_models:Frames2D", "--sampling", "tsn", "--init", "kinetics400-rgb"],
            "--init is for --model i3d",
        ),
        (
            ["--model", "test_train_models:Frames2D", "--sampling", "stacked", "--segments", "3"],
            "--sampling stacked has no segments",
        ),
        (["--model", "test_train_models:Frames2D", "--sampling", "tsn", "--alpha", "0"], "--alpha=0: must be >= 1"),
    ):
        assert cli([*base, *extra]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err


def test_the_loader_checks_what_it_builds():
    assert load_factory("test_train_models:Clip3D") is Clip3D
    model = build_model("test_train_models:TwoPathways", 5, 2)
    assert isinstance(model, TwoPathways) and model.fc.out_features == 5 and model.slow.in_channels == 2
