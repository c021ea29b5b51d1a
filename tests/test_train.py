"""Trainer, evaluator, checkpoints: steps lower the loss, resume is exact, two processes agree,
and a two-stream I3D learns motion direction from flow that single RGB frames cannot give."""

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import Clip
from synthetic_store import build_store
from torch import nn

from flowprep.cli.main import main as cli
from flowprep.dataset.demo import Motion
from flowprep.models.i3d import I3D, I3DConfig
from flowprep.train.classifier import Classifier, initialise, load_checkpoint
from flowprep.train.data import VideoClips, clips_to_model, collate_clips
from flowprep.train.sampling import DenseTrain
from flowprep.train.train import train_step

TINY = ["--endpoint", "Conv3d_2c_3x3", "--init", "none", "--workers", "0", "--device", "cpu"]


@pytest.fixture(scope="module")
def small_store(tmp_path_factory):
    folder = tmp_path_factory.mktemp("train")
    videos = [Clip(f"v{i}", Motion(dy=2 if i % 2 else -2), 10, "down" if i % 2 else "up", "train", i) for i in range(4)]
    return build_store(folder, videos)


def _log(folder):
    return [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]


def test_clamped_head_is_deepminds_at_224_and_takes_small_clips():
    torch.manual_seed(0)
    ref = I3D(I3DConfig(num_classes=7)).eval()
    ours = Classifier(I3DConfig(num_classes=7)).eval()
    ours.load_state_dict(ref.state_dict())  # same keys: a Classifier state dict is an I3D state dict
    x = torch.randn(1, 3, 16, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-5)
        assert ours(torch.randn(2, 3, 1, 56, 56)).shape == (2, 7)
    tiny = Classifier(I3DConfig(num_classes=3, in_channels=2, final_endpoint="Mixed_3c"))
    assert tiny.logits.conv.in_channels == 480
    note = initialise(tiny, "none")
    assert note == "random initialisation"


def test_initialise_from_an_rgb_file_makes_a_flow_stream(tmp_path):
    torch.manual_seed(0)
    rgb = Classifier(I3DConfig(num_classes=5, final_endpoint="Mixed_3b"))
    torch.save({"model": rgb.state_dict()}, tmp_path / "rgb.pt")
    flow = Classifier(I3DConfig(num_classes=2, in_channels=2, final_endpoint="Mixed_3b"))
    note = initialise(flow, str(tmp_path / "rgb.pt"))
    assert "new logits for 2 classes" in note
    w = rgb.state_dict()["blocks.Conv3d_1a_7x7.conv.weight"]
    torch.testing.assert_close(
        flow.state_dict()["blocks.Conv3d_1a_7x7.conv.weight"], w.mean(1, keepdim=True).repeat(1, 2, 1, 1, 1)
    )
    torch.testing.assert_close(
        flow.state_dict()["blocks.Mixed_3b.branch_0.conv.weight"],
        rgb.state_dict()["blocks.Mixed_3b.branch_0.conv.weight"],
    )


def test_a_few_steps_lower_the_loss(small_store):
    torch.manual_seed(0)
    ds = VideoClips([small_store], streams=("flow",), sampler=DenseTrain(clip_len=4, crop=48))
    batch = collate_clips([ds[i, i] for i in range(4)])
    x = clips_to_model(batch, "flow", "cpu")  # as the trainer feeds it
    y = batch["label"]
    model = Classifier(
        I3DConfig(num_classes=2, in_channels=2, dropout=0.0, final_endpoint="Conv3d_2c_3x3", bn_momentum=0.1)
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses = [train_step(model, nn.CrossEntropyLoss(), opt, x, y, amp=False)[0].item() for _ in range(6)]
    assert losses[-1] < 0.5 * losses[0], losses


def test_resume_continues_exactly(small_store, tmp_path):
    args = [
        "train",
        "--store",
        str(small_store),
        "--stream",
        "flow",
        "--clip-len",
        "4",
        "--crop",
        "48",
        "--batch-size",
        "2",
        "--steps",
        "4",
        "--lr-drops",
        "0.5",
        *TINY,
    ]
    assert cli([*args, "--out", str(tmp_path / "a")]) == 0
    assert cli([*args, "--out", str(tmp_path / "b"), "--stop-after", "2"]) == 0
    assert load_checkpoint(tmp_path / "b" / "checkpoint.pt")["step"] == 2
    assert cli([*args, "--out", str(tmp_path / "b")]) == 2  # a checkpoint is never overwritten silently
    assert cli([*args, "--out", str(tmp_path / "b"), "--resume"]) == 0
    a, b = _log(tmp_path / "a"), _log(tmp_path / "b")
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    assert [r["loss"] for r in b] == [r["loss"] for r in a]  # dropout 0.5: the RNG state came back too
    assert [r["lr"] for r in b] == [0.01, 0.01, 0.001, 0.001]
    ca, cb = load_checkpoint(tmp_path / "a" / "checkpoint.pt"), load_checkpoint(tmp_path / "b" / "checkpoint.pt")
    assert ca["step"] == cb["step"] == 4 and ca["classes"] == ["down", "up"] and ca["stream"] == "flow"
    assert ca["model_config"]["final_endpoint"] == "Conv3d_2c_3x3" and ca["clip"]["crop"] == 48
    for k, v in ca["model"].items():
        torch.testing.assert_close(cb["model"][k], v, rtol=0, atol=0)
    assert (tmp_path / "a" / "curves.png").stat().st_size > 1000
    assert not [p for p in (tmp_path / "b").iterdir() if p.name.startswith(".")]  # no temporary files left


@pytest.mark.slow
def test_two_processes_with_torchrun_gloo(small_store, tmp_path):
    out = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "flowprep",
        "train",
        "--store",
        str(small_store),
        "--stream",
        "rgb",
        "--clip-len",
        "2",
        "--crop",
        "48",
        "--batch-size",
        "2",
        "--steps",
        "2",
        "--out",
        str(out),
        *TINY,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = _log(out)
    assert [r["step"] for r in log] == [1, 2] and all(r["clips"] == 4 for r in log)  # 2 processes x 2 clips
    assert load_checkpoint(out / "checkpoint.pt")["step"] == 2
    assert proc.stdout.count("checkpoint:") == 1  # rank 0 writes


@pytest.mark.slow
def test_flow_learns_direction_that_single_rgb_frames_cannot(tmp_path):
    """Up vs down: same random textures, only the motion differs.  Horizontal flips keep the
    classes (v is unchanged), so training augments as usual."""
    videos = []
    for split, n, seed0 in (("train", 10, 0), ("val", 10, 1000)):
        for c, dy in (("up", -2.0), ("down", 2.0)):
            for i in range(n):
                seed = seed0 + 2 * i + (c == "down")
                videos.append(Clip(f"{split}_{c}_{i}", Motion(dy=dy), 12, c, split, seed))
    store = build_store(tmp_path, videos, jobs=2)
    common = [
        "--store",
        str(store),
        "--crop",
        "56",
        "--batch-size",
        "8",
        "--steps",
        "30",
        "--lr",
        "0.05",
        "--lr-drops",
        "--dropout",
        "0",
        "--bn-momentum",
        "0.1",
        *TINY,
    ]
    assert cli(["train", *common, "--stream", "flow", "--clip-len", "8", "--out", str(tmp_path / "flow")]) == 0
    assert cli(["train", *common, "--stream", "rgb", "--clip-len", "1", "--out", str(tmp_path / "rgb")]) == 0
    assert (
        cli(
            [
                "evaluate",
                "--store",
                str(store),
                "--rgb",
                str(tmp_path / "rgb" / "checkpoint.pt"),
                "--flow",
                str(tmp_path / "flow" / "checkpoint.pt"),
                "--rgb-clip-len",
                "1",
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
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    acc = {s: m["top1"] for s, m in report["streams"].items()}
    print("learning test: top-1 on 20 val videos", acc, "chance", report["chance"])
    assert report["videos"] == 20 and report["chance"] == 0.5
    assert acc["flow"] >= 0.9
    assert 0.2 <= acc["rgb"] <= 0.75
    assert acc["fused"] >= max(acc["flow"], acc["rgb"])
    assert report["streams"]["flow"]["per_class"]["up"] >= 0.8 and report["streams"]["flow"]["per_class"]["down"] >= 0.8
    assert sum(map(sum, report["streams"]["fused"]["confusion"])) == 20
    assert (tmp_path / "eval" / "confusion.png").stat().st_size > 1000
