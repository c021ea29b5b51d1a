"""ffmpeg decoding (flowprep.dataset.decode): exact lossless frames, 25 fps resampling, short side
256 with the display aspect, trims, shard-sized blocks, and one-line errors for bad files."""

from pathlib import Path

import numpy as np
import pytest
from conftest import ffmpeg, make_clip

from flowprep.dataset.decode import DecodeConfig, DecodeError, decode_blocks, decode_video
from flowprep.dataset.demo import Motion, render, write_lossless


def test_lossless_clip_decodes_exactly(tmp_path):
    frames = make_clip(tmp_path / "a.mkv", n=5, h=64, w=80)
    out = decode_video(str(tmp_path / "a.mkv"), DecodeConfig(short_side=64))
    assert out.dtype == np.uint8 and out.shape == (5, 64, 80, 3)
    np.testing.assert_array_equal(out, frames)


def test_30fps_resampled_to_25(tmp_path):
    # 2 s written at 30 fps -> 60 frames; at 25 fps: 50.
    write_lossless(render(Motion(dx=1), 60, 64, 80), tmp_path / "b.mkv", fps=30)
    out = decode_video(str(tmp_path / "b.mkv"), DecodeConfig(short_side=64))
    assert out.shape[0] == 50


@pytest.mark.parametrize("h,w,expect", [(128, 160, (256, 320)), (160, 96, (426, 256)), (100, 100, (256, 256))])
def test_short_side_256_aspect_kept_even(tmp_path, h, w, expect):
    write_lossless(render(Motion(), 2, h, w), tmp_path / "c.mkv")
    out = decode_video(str(tmp_path / "c.mkv"))
    assert out.shape[1:3] == expect
    assert min(out.shape[1:3]) == 256 and out.shape[1] % 2 == 0 and out.shape[2] % 2 == 0


def test_anamorphic_video_uses_display_aspect(tmp_path):
    # 80x64 pixels with SAR 2:1 display as 160x64 -> 640x256.
    src = tmp_path / "sq.mkv"
    write_lossless(render(Motion(), 2, 64, 80), src)
    ffmpeg("-i", str(src), "-vf", "setsar=2/1", "-c:v", "ffv1", str(tmp_path / "ana.mkv"))
    out = decode_video(str(tmp_path / "ana.mkv"))
    assert out.shape[1:3] == (256, 640)


def test_trim_by_time(tmp_path):
    # frame t has a constant brightness that encodes t, so trimming can be checked exactly
    frames = np.stack([np.full((64, 80, 3), 4 * t, np.uint8) for t in range(50)])
    write_lossless(frames, tmp_path / "d.mkv")
    out = decode_video(str(tmp_path / "d.mkv"), DecodeConfig(short_side=64), start=0.4, end=1.2)
    assert out.shape[0] == 20
    assert out[0, 0, 0, 0] == 4 * 10 and out[-1, 0, 0, 0] == 4 * 29


def test_blocks_stream_in_shard_sized_pieces(tmp_path):
    write_lossless(render(Motion(dx=1), 21, 64, 80), tmp_path / "e.mkv")
    sizes = [len(b) for b in decode_blocks(str(tmp_path / "e.mkv"), DecodeConfig(short_side=64, block_frames=8))]
    assert sizes == [8, 8, 5]


def _bad_files(tmp: Path) -> dict[str, Path]:
    good = tmp / "good.mp4"
    ffmpeg(
        "-f",
        "lavfi",
        "-i",
        "testsrc=size=128x96:rate=25:duration=2",
        "-c:v",
        "libx264",
        "-pix_fmt",
        "yuv420p",
        str(good),
    )
    files = {
        "missing": tmp / "missing.mp4",
        "zero": tmp / "zero.mp4",
        "text": tmp / "text.mp4",
        "truncated": tmp / "trunc.mp4",
        "audio": tmp / "audio.m4a",
    }
    files["zero"].write_bytes(b"")
    files["text"].write_text("this is not a video\n" * 20)
    files["truncated"].write_bytes(good.read_bytes()[: good.stat().st_size // 3])
    ffmpeg("-f", "lavfi", "-i", "sine=frequency=440:duration=1", "-c:a", "aac", str(files["audio"]))
    return files


def test_bad_files_give_clear_errors(tmp_path):
    files = _bad_files(tmp_path)
    expect = {
        "missing": "file not found",
        "zero": "empty file",
        "text": "could not read",
        "truncated": "could not read",
        "audio": "no video stream",
    }
    for name, path in files.items():
        with pytest.raises(DecodeError, match=expect[name]):
            decode_video(str(path))


def test_name_is_never_a_protocol_or_option(tmp_path):
    # a file literally named like an option / a protocol URL is read as a local file
    frames = make_clip(tmp_path / "-i.mkv", n=2)
    out = decode_video(str(tmp_path / "-i.mkv"), DecodeConfig(short_side=64))
    np.testing.assert_array_equal(out, frames)
    with pytest.raises(DecodeError, match="file not found"):
        decode_video("http://127.0.0.1:9/x.mp4")
