"""predict (RGB and two-stream) and the UCF-101 reproduction commands in miniature, with DeepMind-
format checkpoints of random weights written and imported by the real importer."""

import json

import numpy as np
import pytest
import torch
from conftest import FAST_FLOW, Clip
from synthetic_store import build_store
from tf_checkpoints import write_synthetic

from flowprep.cli.main import main as cli
from flowprep.dataset.decode import DecodeConfig, decode_video
from flowprep.dataset.demo import Motion, synthetic_clip
from flowprep.flow.api import compute_flow, quantize_flow, rgb_to_gray
from flowprep.models import I3DConfig, load_i3d
from flowprep.models.weights import FIRST_CONV, flow_state_dict_from_rgb, kinetics400_labels
from flowprep.train.classifier import Classifier, initialise, load_checkpoint
from flowprep.train.predict import load_stream_model, parse_flow_params, two_stream

FLOW_ARGS = [a for k, v in FAST_FLOW.items() for a in ("--flow-param", f"{k}={v}")]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """kinetics400-{rgb,flow}-imagenet imported from real-format files of random weights."""
    root = tmp_path_factory.mktemp("kinetics-i3d")
    write_synthetic(root, "kinetics400-rgb-imagenet", seed=1)
    write_synthetic(root, "kinetics400-flow-imagenet", seed=2)
    cache = root / "cache"
    assert cli(["weights", "import", str(root / "data" / "checkpoints"), "--cache-dir", str(cache), "--unpinned"]) == 0
    return cache


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return synthetic_clip("translate", tmp_path_factory.mktemp("demo"))  # the demo's clip, 256x320


@pytest.mark.slow
def test_two_stream_is_both_models_on_frames_and_their_flow_and_the_sum(cache, clip):
    # 9 time steps: the fewest DeepMind's 2x7x7 logits pool takes (the trainer's head takes fewer)
    frames = decode_video(str(clip), DecodeConfig(fps=25.0, short_side=256))[:10]
    rgb_model, labels, _ = load_stream_model("kinetics400-rgb-imagenet", "rgb", cache)
    flow_model, _, _ = load_stream_model("kinetics400-flow-imagenet", "flow", cache)
    result = two_stream(rgb_model, flow_model, frames, labels, flow_backend="opencv", **FAST_FLOW)
    assert result.frames == 9 and labels == kinetics400_labels()
    assert torch.equal(result.logits["fused"], result.logits["rgb"] + result.logits["flow"])
    torch.testing.assert_close(result.probabilities("fused").sum(), torch.tensor(1.0))
    # the same numbers another way: DeepMind's I3D (not the trainer's Classifier), own preprocessing
    y, x = (256 - 224) // 2, (320 - 224) // 2
    rgb_in = torch.from_numpy(frames[:9, y : y + 224, x : x + 224].astype(np.float32) / 127.5 - 1).permute(3, 0, 1, 2)[
        None
    ]
    q = quantize_flow(compute_flow(rgb_to_gray(frames), backend="opencv", **FAST_FLOW))
    flow_in = torch.from_numpy(q[:, y : y + 224, x : x + 224].astype(np.float32) / 127).permute(3, 0, 1, 2)[None]
    with torch.no_grad():
        rgb_ref = load_i3d("kinetics400-rgb-imagenet", cache_dir=cache)(rgb_in)[0]
        flow_ref = load_i3d("kinetics400-flow-imagenet", cache_dir=cache)(flow_in)[0]
    torch.testing.assert_close(result.logits["rgb"], rgb_ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(result.logits["flow"], flow_ref, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(result.logits["rgb"], result.logits["flow"])


def _sections(out):
    sections, current = {}, None
    for line in out.splitlines():
        if line.split(" ")[0] in ("rgb", "flow", "fused") and "norm of logits" in line:
            current = line.split(" ")[0]
            sections[current] = []
        elif current and line.startswith("  ") and "prob" not in line:
            prob, logit, name = line.split(maxsplit=2)
            sections[current].append((float(prob), float(logit), name))
    return sections


@pytest.mark.slow
def test_predict_two_stream_command(cache, clip, capsys):
    # the default flow backend (auto: torch TV-L1, on the GPU when there is one)
    args = [
        "predict",
        str(clip),
        "--two-stream",
        "--frames",
        "4",
        "--cache-dir",
        str(cache),
        "--device",
        "cpu",
        *FLOW_ARGS,
    ]
    assert cli(args) == 0
    out = capsys.readouterr().out
    assert "TV-L1 flow (torch backend) of 4 frame pairs" in out
    s = _sections(out)
    assert list(s) == ["rgb", "flow", "fused"] and all(len(v) == 5 for v in s.values())
    for rows in s.values():
        assert [r[0] for r in rows] == sorted((r[0] for r in rows), reverse=True)
    frames = decode_video(str(clip), DecodeConfig(fps=25.0, short_side=256))[:5]
    rgb_model, labels, _ = load_stream_model("kinetics400-rgb-imagenet", "rgb", cache)
    flow_model, _, _ = load_stream_model("kinetics400-flow-imagenet", "flow", cache)
    fused = two_stream(rgb_model, flow_model, frames, labels, flow_backend="torch", **FAST_FLOW).logits["fused"]
    top = fused.topk(5).indices.tolist()
    assert [r[2] for r in s["fused"]] == [labels[i] for i in top]
    np.testing.assert_allclose([r[1] for r in s["fused"]], fused[top].numpy(), atol=1e-3)
    # RGB alone: the old output, one section
    assert (
        cli(["predict", str(clip), "--weights", "kinetics400-rgb-imagenet", "--frames", "4", "--cache-dir", str(cache)])
        == 0
    )
    assert list(_sections(capsys.readouterr().out)) == ["rgb"]


def test_predict_errors(cache, clip, capsys, tmp_path):
    base = ["predict", str(clip), "--frames", "4", "--cache-dir", str(cache)]
    assert cli([*base, "--flow-weights", "kinetics400-flow-imagenet"]) == 2
    assert "--flow-weights is for --two-stream" in capsys.readouterr().err
    assert cli([*base, "--weights", "kinetics400-flow-imagenet"]) == 2
    assert "kinetics400-flow-imagenet is a flow model; it cannot run the rgb stream" in capsys.readouterr().err
    assert cli([*base, "--two-stream", "--flow-weights", "kinetics400-flow", *FLOW_ARGS]) == 2
    assert "flowprep weights import <kinetics-i3d clone>/data/checkpoints" in capsys.readouterr().err
    assert cli([*base, "--two-stream", "--flow-param", "warps"]) == 2
    assert "expected KEY=VALUE" in capsys.readouterr().err
    assert parse_flow_params(["warps=2", "scale_step=0.5", "compile=false"]) == {
        "warps": 2,
        "scale_step": 0.5,
        "compile": False,
    }


@pytest.mark.slow
def test_ucf101_recipe_commands_in_miniature(cache, tmp_path, capsys):
    """README's UCF-101 commands on a tiny store: train each stream from its Kinetics checkpoint
    (flow from the real flow weights, not averaged RGB), then evaluate fuses them."""
    videos = [
        Clip(f"v{i}", Motion(dx=2 if i % 2 else -2), 10, "right" if i % 2 else "left", "train" if i < 4 else "test", i)
        for i in range(6)
    ]
    store = str(build_store(tmp_path, videos))
    common = [
        "--store",
        store,
        "--split",
        "train",
        "--clip-len",
        "8",
        "--crop",
        "56",
        "--batch-size",
        "2",
        "--steps",
        "2",
        "--save-every",
        "2",
        "--workers",
        "0",
        "--device",
        "cpu",
        "--no-flip",
        "--cache-dir",
        str(cache),
    ]
    runs = tmp_path / "runs"
    assert (
        cli(["train", *common, "--stream", "rgb", "--init", "kinetics400-rgb-imagenet", "--out", str(runs / "rgb")])
        == 0
    )
    assert (
        cli(["train", *common, "--stream", "flow", "--init", "kinetics400-flow-imagenet", "--out", str(runs / "flow")])
        == 0
    )
    out = capsys.readouterr().out
    assert "initialised from kinetics400-flow-imagenet; new logits for 2 classes" in out
    assert "initialised from kinetics400-rgb-imagenet; new logits for 2 classes" in out
    # the flow stream starts from DeepMind's flow weights exactly, not from RGB averaged over R, G, B
    imported = load_i3d("kinetics400-flow-imagenet", cache_dir=cache).state_dict()
    fresh = Classifier(I3DConfig(num_classes=2, in_channels=2))
    initialise(fresh, "kinetics400-flow-imagenet", cache)
    for key, value in imported.items():
        if not key.startswith("logits."):
            assert torch.equal(fresh.state_dict()[key], value), key
    averaged = flow_state_dict_from_rgb(load_i3d("kinetics400-rgb-imagenet", cache_dir=cache).state_dict())[FIRST_CONV]
    assert not torch.allclose(imported[FIRST_CONV], averaged)
    blob = load_checkpoint(runs / "flow" / "checkpoint.pt")
    assert blob["stream"] == "flow" and blob["step"] == 2 and blob["model"][FIRST_CONV].shape == (64, 2, 7, 7, 7)
    assert (
        cli(
            [
                "evaluate",
                "--store",
                store,
                "--split",
                "test",
                "--rgb",
                str(runs / "rgb" / "checkpoint.pt"),
                "--flow",
                str(runs / "flow" / "checkpoint.pt"),
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
    assert set(report["streams"]) == {"rgb", "flow", "fused"} and report["videos"] == 2
