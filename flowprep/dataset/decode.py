"""Decode: a video file to RGB uint8 frames at a fixed rate and size, streamed in blocks.

ffmpeg (through ffmpeg-python) does all the work in one process per video:
``-ss start -t duration`` (input-side, frame-accurate) → ``fps=25`` → scale so the smallest
*displayed* side is ``short_side`` (bilinear; sample aspect ratio applied, both sides even) →
``rgb24`` raw frames on a pipe.  Frames arrive in blocks so a long video is never whole in
memory.  The ffmpeg binary is the one on PATH, else imageio-ffmpeg's static build.

Errors become ``DecodeError`` carrying ffmpeg's last stderr lines, for the ledger.  An ffmpeg
ended by a signal (the OOM killer, ``kill -9``, a SIGINT that reached only the child: ffmpeg
then says "received signal") raises ``DecodeInterrupted``: the file is not at fault, a rerun
may succeed (a retryable failure, ``flowprep.run.state.is_retryable``).

**Completeness.** ffmpeg exits 0 on many damaged files (a faststart mp4 cut in half decodes to
a third of its frames and prints "partial file").  A decode is *partial* when ffmpeg printed
such an error line, or when it yielded clearly fewer frames than the container's duration
says for the requested range (fewer than 90% of them, and at least 3 fewer).  A partial decode
raises ``DecodeError`` with ffmpeg's words, unless ``DecodeConfig.allow_partial`` (``run
--allow-partial``) keeps it; then ``report["partial"]`` says why, for the ledger.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO

import ffmpeg
import numpy as np


class DecodeError(RuntimeError):
    """The video could not be decoded; the message is meant for a person (ledger, console)."""


class DecodeInterrupted(DecodeError):
    """ffmpeg was ended by a signal: the decode was interrupted, not refused by the file."""


@dataclass(frozen=True)
class DecodeConfig:
    fps: float = 25.0
    short_side: int = 256
    block_frames: int = 64  # frames per yielded block (the writer's shard length)
    allow_partial: bool = False  # keep a partial decode (recorded in the ledger) instead of failing it

    def __post_init__(self) -> None:
        if not (0 < self.fps <= 240):
            raise ValueError(f"decode.fps={self.fps!r}: must be in (0, 240]")
        if not (isinstance(self.short_side, int) and 16 <= self.short_side <= 4096 and self.short_side % 2 == 0):
            raise ValueError(f"decode.short_side={self.short_side!r}: must be an even integer in [16, 4096]")
        if not (isinstance(self.block_frames, int) and self.block_frames >= 2):
            raise ValueError(f"decode.block_frames={self.block_frames!r}: must be an integer >= 2")


def ffmpeg_exe() -> str:
    """ffmpeg on PATH if any, else the static binary shipped by imageio-ffmpeg."""
    found = shutil.which("ffmpeg")
    if found:
        return found
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


# "Stream #0:0: Video: rawvideo (RGB[24] / 0x18424752), rgb24(pc, ...), 454x256 [SAR 1:1 ...]"
_OUT_STREAM = re.compile(r"Stream #0:\d+.*?: Video: rawvideo\b.*?, (\d{2,5})x(\d{2,5})\b")
# "  Duration: 00:00:03.00, start: 0.000000, bitrate: ..." of the input
_DURATION = re.compile(r"^\s*Duration: (\d+):(\d{2}):(\d{2}(?:\.\d+)?)")
# lines by which ffmpeg says the input is damaged although it may still exit 0
_DAMAGE = re.compile(r"partial file|Invalid data found|error while decoding|corrupt|truncat", re.IGNORECASE)
# ffmpeg's own words when it caught SIGINT / SIGTERM and stopped early (it then exits 255)
_SIGNALLED = re.compile(r"received signal \d+|Exiting normally, received signal")


def _check_signal(returncode: int | None, tail: deque[str]) -> None:
    """Raise DecodeInterrupted if ffmpeg was ended (or stopped itself) because of a signal."""
    if returncode is not None and returncode < 0:
        import signal

        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        raise DecodeInterrupted(f"ffmpeg was killed by {name} (out of memory? interrupted?); a rerun redoes this video")
    if returncode and any(_SIGNALLED.search(ln) for ln in tail):
        raise DecodeInterrupted(
            _explain(returncode, tail, "ffmpeg was interrupted by a signal") + "; a rerun redoes this video"
        )


def _build_command(path: str, cfg: DecodeConfig, start: float | None, end: float | None, exe: str) -> list[str]:
    in_kwargs = {}
    if start is not None and end is not None:
        in_kwargs = {"ss": f"{start:.6f}", "t": f"{end - start:.6f}"}
    # "file:" makes ffmpeg treat the name as a local file whatever it looks like
    # ("-x.mp4", "http:...", "concat:..."): manifest paths never select a protocol.
    stream = ffmpeg.input("file:" + os.path.abspath(path), **in_kwargs).video
    stream = stream.filter("fps", fps=cfg.fps)
    s = cfg.short_side
    # dar = iw/ih*sar, so anamorphic video is resized to its displayed shape.
    stream = stream.filter(
        "scale",
        w=f"if(gte(dar,1),2*trunc({s}*dar/2+0.5),{s})",
        h=f"if(gte(dar,1),{s},2*trunc({s}/dar/2+0.5))",
        flags="bilinear",
    ).filter("setsar", "1")
    out = stream.output("pipe:", format="rawvideo", pix_fmt="rgb24").global_args(
        "-nostdin", "-hide_banner", "-nostats", "-an", "-sn", "-dn"
    )
    return out.compile(cmd=exe)


def expected_frames(duration: float | None, fps: float, start: float | None, end: float | None) -> float | None:
    """Frames the container's duration promises for the requested range (None: unknown)."""
    if duration is None:
        return None
    lo = start or 0.0
    hi = duration if end is None else min(end, duration)
    return max(0.0, hi - lo) * fps


@dataclass
class _FfmpegLog:
    """What ``decode_blocks`` learns from ffmpeg's stderr, read on a thread while frames stream in."""

    tail: deque[str] = field(default_factory=lambda: deque(maxlen=400))
    size: tuple[int, int] | None = None  # (width, height) of the output stream
    duration: float | None = None  # the container's, in seconds
    damage: list[str] = field(default_factory=list)  # the first 3 lines reporting damage
    size_known: threading.Event = field(default_factory=threading.Event)  # set at the size or at EOF

    def read(self, stderr: IO[bytes]) -> None:
        for raw in stderr:
            line = raw.decode("utf-8", "replace").rstrip()
            self.tail.append(line)
            if self.duration is None and (d := _DURATION.match(line)):
                self.duration = int(d.group(1)) * 3600 + int(d.group(2)) * 60 + float(d.group(3))
            if _DAMAGE.search(line) and len(self.damage) < 3:
                self.damage.append(line.strip())
            if self.size is None and (m := _OUT_STREAM.search(line)):
                self.size = (int(m.group(1)), int(m.group(2)))
                self.size_known.set()
        self.size_known.set()  # EOF: unblock the reader whatever happened


def decode_blocks(
    path: str,
    cfg: DecodeConfig = DecodeConfig(),
    start: float | None = None,
    end: float | None = None,
    report: dict | None = None,
) -> Iterator[np.ndarray]:
    """Yield uint8 blocks (n, H, W, 3) of the video at ``cfg.fps`` with smallest side ``cfg.short_side``.

    Raises DecodeError (with ffmpeg's last stderr lines) if the file cannot be decoded, has no
    video frames, or decodes only partly (module docstring; ``cfg.allow_partial`` keeps it and
    writes the reason to ``report["partial"]``, before the last block).  The ffmpeg process is
    always reaped, also when the caller stops early.
    """
    _check_file(path)
    cmd = _build_command(path, cfg, start, end, ffmpeg_exe())
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None  # both PIPE
    log = _FfmpegLog()
    reader = threading.Thread(target=log.read, args=(proc.stderr,), daemon=True)
    reader.start()
    n_total = 0
    try:
        log.size_known.wait()
        if log.size is None:
            proc.wait()
            reader.join()
            raise _no_output_error(proc.returncode, log.tail)
        block: list[np.ndarray] = []
        for frame in _raw_frames(proc.stdout, *log.size):
            block.append(frame)
            if len(block) == cfg.block_frames:
                n_total += len(block)
                yield np.stack(block)
                block = []
        proc.wait()
        reader.join()
        _check_signal(proc.returncode, log.tail)
        if proc.returncode != 0:
            raise DecodeError(_explain(proc.returncode, log.tail, "ffmpeg failed"))
        partial = _check_whole(log, n_total + len(block), cfg, start, end)
        if partial and report is not None:
            report["partial"] = partial
        if block:
            n_total += len(block)
            yield np.stack(block)
        if n_total == 0:
            raise DecodeError(_explain(proc.returncode, log.tail, "no video frames decoded"))
    finally:
        _reap(proc)


def _check_file(path: str) -> None:
    if not os.path.exists(path):
        raise DecodeError(f"file not found: {path}")
    if os.path.isdir(path):
        raise DecodeError(f"is a directory, not a video file: {path}")
    if os.path.getsize(path) == 0:
        raise DecodeError(f"empty file (0 bytes): {path}")


def _raw_frames(stdout: IO[bytes], width: int, height: int) -> Iterator[np.ndarray]:
    """uint8 (H, W, 3) frames of ffmpeg's rawvideo output, up to the first short read."""
    frame_bytes = width * height * 3
    while len(buf := stdout.read(frame_bytes)) == frame_bytes:
        yield np.frombuffer(buf, np.uint8).reshape(height, width, 3)


def _no_output_error(returncode: int | None, tail: deque[str]) -> DecodeError:
    """Why ffmpeg ended without an output stream (DecodeInterrupted raised when a signal ended it)."""
    _check_signal(returncode, tail)
    no_video = any("matches no streams" in ln for ln in tail)
    what = "the file has no video stream" if no_video else "ffmpeg could not read the file"
    return DecodeError(_explain(returncode, tail, what))


def _check_whole(log: _FfmpegLog, n_all: int, cfg: DecodeConfig, start: float | None, end: float | None) -> str | None:
    """Why a decode that ended without error is partial, when ``cfg.allow_partial`` keeps it
    (DecodeError when it does not); None when it is whole."""
    want = expected_frames(log.duration, cfg.fps, start, end)
    why = []
    if log.damage:
        why.append("ffmpeg reported damage: " + "; ".join(log.damage))
    if want is not None and n_all > 0 and n_all < 0.9 * want and want - n_all >= 3:
        why.append(f"{n_all} frames decoded, the container's duration says {want:.0f}")
    if why and not cfg.allow_partial:
        raise DecodeError("partial decode: " + "; ".join(why) + " (run --allow-partial keeps such videos)")
    return "; ".join(why) or None


def _reap(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    for f in (proc.stdout, proc.stderr):
        if f is not None:
            f.close()


def _explain(returncode: int | None, tail: deque[str], what: str) -> str:
    # Keep the lines that say what went wrong, not ffmpeg's stream listing.
    useful = [
        ln.strip() for ln in tail if ln.strip() and not ln.startswith((" ", "Input #", "Output #", "Stream mapping"))
    ]
    last = "; ".join(useful[-3:]) or "(no message)"
    return f"{what} (exit {returncode}): {last}"


def decode_video(
    path: str, cfg: DecodeConfig = DecodeConfig(), start: float | None = None, end: float | None = None
) -> np.ndarray:
    """The whole video as one uint8 array (T, H, W, 3); for tests and short clips."""
    return np.concatenate(list(decode_blocks(path, cfg, start, end)))
