"""Fetch: a manifest row's YouTube clip to a local mp4, through yt-dlp's Python API.

Only the annotated range is downloaded (yt-dlp ``download_ranges`` with keyframes forced at the
cuts, done by ffmpeg), best format up to ``max_height``, into
``<cache>/{youtube_id}_{start:06d}_{end:06d}.mp4`` (the Kinetics crawlers' name).  A file is
written in a private temporary folder and renamed into place when complete, so the cache holds
only whole clips; a clip already there and readable by ffmpeg is reused.

The URL comes from ``url_template``: only ``{youtube_id}`` is substituted, with an id already
checked against ``[A-Za-z0-9_-]{11}``.  Nothing from a manifest reaches a shell (yt-dlp and
ffmpeg get argument lists).

Politeness is shared by every worker process through a small state file under the cache
(``Gate``): at most ``concurrency`` downloads at once, starts spaced by ``delay`` seconds, and an
HTTP 429 pauses the whole stage (``rate_limited_pause``, doubling while 429s continue).

Failures raise ``FetchError`` whose ``reason_class`` (see ``classify_error``) goes into the
ledger; ``RETRYABLE`` classes are retried here with backoff and again by ``run --retry-failed``.
This module may touch: the network (through yt-dlp), the fetch cache folder, ffmpeg.
"""

from __future__ import annotations

import contextlib
import contextvars
import fcntl
import json
import logging
import math
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from flowprep.atomic import publish_file, write_json
from flowprep.dataset.decode import ffmpeg_exe
from flowprep.dataset.errors import SourceError
from flowprep.dataset.manifest import YOUTUBE_ID, ManifestRow, kinetics_video_id

log = logging.getLogger("flowprep.dataset.fetch")

REASON_CLASSES = ("unavailable", "private", "copyright", "geo_blocked", "sign_in", "rate_limited", "network", "other")
# Worth another try later: the video may well be there once the network or YouTube allows.
RETRYABLE = frozenset({"rate_limited", "network", "other"})
DEFAULT_URL_TEMPLATE = "https://www.youtube.com/watch?v={youtube_id}"
_MAX_PENALTY = 900.0  # s: the longest shared pause after repeated 429s


class FetchError(SourceError):
    """A clip could not be fetched; ``reason_class`` is one of REASON_CLASSES."""

    def __init__(self, reason_class: str, message: str):
        super().__init__(message)
        self.reason_class = reason_class


# --- classification -------------------------------------------------------------------------

# Checked in order: the first class with a matching phrase wins.  Order matters where messages
# combine reasons: YouTube says "Video unavailable. This video contains content from SME, who
# has blocked it on copyright grounds" (copyright, not unavailable) and "Private video. Sign in
# if you've been granted access" (private, not sign_in).
_RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "rate_limited",
        (
            "http error 429",
            "too many requests",
            "rate-limited",
            "rate limited",
            "try again later",
            # YouTube's bot check follows too many requests from one address: back off, as for a 429.
            "confirm you're not a bot",
            "confirm you’re not a bot",
            "captcha",
        ),
    ),
    ("private", ("private video", "video is private", "members-only", "join this channel")),
    ("copyright", ("copyright",)),
    (
        "geo_blocked",
        (
            "not made this video available in your country",
            "not available in your country",
            "geo restriction",
            "geo-restrict",
            "from your location",
        ),
    ),
    (
        "sign_in",
        (
            "sign in",
            "confirm your age",
            "age-restricted",
            "age restricted",
            "inappropriate for some users",
            "login required",
            "log in",
            "account age-verification",
        ),
    ),
    (
        "unavailable",
        (
            "video unavailable",
            "has been removed",
            "no longer available",
            "does not exist",
            "isn't available anymore",
            "video is not available",
            "has been terminated",
            "http error 404",
            "http error 410",
        ),
    ),
    (
        "network",
        (
            "timed out",
            "timeout",
            "connection refused",
            "connection reset",
            "connection aborted",
            "remote end closed",
            "name resolution",
            "name or service not known",
            "nodename nor servname",
            "failed to resolve",
            "getaddrinfo",
            "network is unreachable",
            "no route to host",
            "incompleteread",
            "incomplete read",
            "unable to connect",
            "ssl:",
            "eof occurred",
            "transporterror",
            "errno 101",
            "errno 104",
            "errno 110",
            "errno 111",
            "errno 113",
            "broken pipe",
        ),
    ),
)


def classify_error(message: str) -> str:
    """The ledger ``reason_class`` of a yt-dlp error message (one of REASON_CLASSES)."""
    text = message.lower()
    for cls, phrases in _RULES:
        if any(p in text for p in phrases):
            return cls
    return "other"


# --- configuration --------------------------------------------------------------------------


@dataclass(frozen=True)
class FetchConfig:
    """The recipe's ``[fetch]`` table.  Every field is checked on construction."""

    url_template: str = DEFAULT_URL_TEMPLATE  # only {youtube_id} is substituted
    max_height: int = 360  # best format up to this height: decode scales the short side to 256 anyway
    retries: int = 3  # further attempts for RETRYABLE failures within one run
    backoff: float = 5.0  # s before the first retry, doubled for each further one
    delay: float = 1.0  # s between download starts, over all workers: politeness
    concurrency: int = 2  # downloads at once, over all workers
    rate_limited_pause: float = 60.0  # s the whole stage waits after an HTTP 429; doubles while 429s go on
    socket_timeout: float = 30.0  # s without data before a connection counts as failed
    cookies: str | None = None  # Netscape cookies.txt, for sign-in/age-gated videos
    proxy: str | None = None  # e.g. socks5://127.0.0.1:1080 (yt-dlp's --proxy)
    rate_limit: str | None = None  # bytes/s per download, e.g. "2M" (yt-dlp's --limit-rate)
    cache_dir: str | None = None  # where clips are kept; default <run cache dir>/youtube
    local_root: str | None = None  # an existing download (e.g. CVDF's) searched before fetching
    download: bool = True  # false: use local_root only, never the network

    def __post_init__(self) -> None:
        def bad(name: str, allowed: str) -> ValueError:
            return ValueError(f"fetch.{name}={getattr(self, name)!r}: {allowed}")

        check_url_template(self.url_template)
        if not (
            isinstance(self.max_height, int) and not isinstance(self.max_height, bool) and 64 <= self.max_height <= 4320
        ):
            raise bad("max_height", "must be an integer in [64, 4320]")
        if not (isinstance(self.retries, int) and not isinstance(self.retries, bool) and 0 <= self.retries <= 20):
            raise bad("retries", "must be an integer in [0, 20]")
        if not (
            isinstance(self.concurrency, int) and not isinstance(self.concurrency, bool) and 1 <= self.concurrency <= 64
        ):
            raise bad("concurrency", "must be an integer in [1, 64]")
        for name, hi in (("backoff", 3600), ("delay", 3600), ("rate_limited_pause", 3600), ("socket_timeout", 3600)):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and 0 <= v <= hi):
                raise bad(name, f"must be a number of seconds in [0, {hi}]")
        if self.socket_timeout <= 0:
            raise bad("socket_timeout", "must be > 0")
        for name in ("cookies", "proxy", "rate_limit", "cache_dir", "local_root"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, str) or not v or "\x00" in v):
                raise bad(name, "must be a non-empty string")
        if self.cookies is not None and not Path(self.cookies).expanduser().is_file():
            raise bad("cookies", "no such file (a Netscape cookies.txt)")
        if self.rate_limit is not None and parse_rate(self.rate_limit) is None:
            raise bad("rate_limit", "bytes per second, e.g. 500K, 2M, 1048576")
        if not isinstance(self.download, bool):
            raise bad("download", "must be true or false")
        if not self.download and self.local_root is None:
            raise ValueError("fetch.download=false needs fetch.local_root (where the clips already are)")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> FetchConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown key(s) in [fetch]: {unknown}; known: {sorted(known)}")
        return cls(**data)


def check_url_template(template: str) -> None:
    if not isinstance(template, str) or not re.fullmatch(r"https?://[^\s{}]+", template.replace("{youtube_id}", "x")):
        raise ValueError(
            f"fetch.url_template={template!r}: must be an http(s) URL whose only placeholder is {{youtube_id}},"
            f" e.g. {DEFAULT_URL_TEMPLATE}"
        )
    if "{youtube_id}" not in template:
        raise ValueError(f"fetch.url_template={template!r}: must contain {{youtube_id}}")


def parse_rate(value: str) -> int | None:
    """'500K', '2M', '1048576' -> bytes per second; None if not such a value."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([KMG]?)i?B?", value.strip(), re.IGNORECASE)
    if not m:
        return None
    n = float(m.group(1)) * 1024 ** "_KMG".index(m.group(2).upper() or "_")
    return int(n) if n >= 1 else None


def clip_url(template: str, youtube_id: str) -> str:
    if not YOUTUBE_ID.fullmatch(youtube_id):
        raise FetchError("other", f"bad youtube_id {youtube_id!r}: must be 11 characters of [A-Za-z0-9_-]")
    return template.replace("{youtube_id}", youtube_id)


# --- local collections ----------------------------------------------------------------------

_UNSAFE_IN_NAME = re.compile(r"[\x00-\x1f\x7f/\\:]")


def safe_label(label: str) -> str:
    """A class label as one folder name: no separators, control characters, '..' or leading dot.

    Only the local-collection layout turns labels into paths, and only through this function.
    """
    name = _UNSAFE_IN_NAME.sub("_", label).strip().lstrip(".").strip()
    if not name or len(name.encode()) > 255:
        raise ValueError(f"label {label[:40]!r} cannot be a folder name")
    return name


def local_candidates(root: Path, row: ManifestRow) -> list[Path]:
    """Where an existing Kinetics download may hold the row's clip.

    CVDF's tarballs unpack to ``{split}/{clip}.mp4`` and its arrange script (and the ActivityNet
    crawler) to ``{label}/{clip}.mp4``, with spaces in labels kept or turned into '_'.
    """
    assert row.youtube_id is not None and row.time_start is not None and row.time_end is not None
    name = kinetics_video_id(row.youtube_id, row.time_start, row.time_end) + ".mp4"
    dirs = [root]
    if row.split:
        dirs.append(root / row.split)
    labels: list[str] = []
    if row.label:
        with contextlib.suppress(ValueError):
            lab = safe_label(row.label)
            labels = list(dict.fromkeys([lab, lab.replace(" ", "_")]))
    return [d / lab / name for d in dirs for lab in labels] + [d / name for d in dirs]


def find_local(root: Path, row: ManifestRow) -> Path | None:
    for p in local_candidates(root, row):
        if p.is_file() and p.stat().st_size > 0:
            return p
    return None


# --- shared politeness ----------------------------------------------------------------------


class Gate:
    """Politeness shared by all processes that fetch into one cache (file locks, no server).

    ``slot()`` holds one of ``concurrency`` lock files for the length of a download and waits
    for its start ticket: starts are at least ``delay`` apart and never before the end of a
    pause set by ``rate_limited()``.  ``clock`` (wall time: other processes read the tickets) and
    ``sleep`` are parameters so tests read the waits instead of timing them.
    """

    def __init__(
        self,
        folder: Path,
        cfg: FetchConfig,
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.folder = folder
        self.cfg = cfg
        self.clock = clock
        self.sleep = sleep
        folder.mkdir(parents=True, exist_ok=True)

    @contextlib.contextmanager
    def _state(self) -> Iterator[dict[str, float]]:
        with open(self.folder / "state.lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            path = self.folder / "state.json"
            try:
                state = json.loads(path.read_text())
            except (OSError, ValueError):
                state = {}
            state.setdefault("next_start", 0.0)
            state.setdefault("penalty", 0.0)
            yield state
            write_json(path, state)

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        held = None
        while held is None:
            for i in range(self.cfg.concurrency):
                f = open(self.folder / f"slot-{i}.lock", "a+")  # noqa: SIM115 (held past the loop, closed in finally)
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    f.close()
                    continue
                held = f
                break
            else:
                time.sleep(0.05)  # polling another process's lock: real time, not the gate's clock
        try:
            with self._state() as state:
                now = self.clock()
                start = max(now, state["next_start"])
                state["next_start"] = start + self.cfg.delay
            if start > now:
                self.sleep(start - now)
            yield
        finally:
            held.close()

    def rate_limited(self) -> float:
        """Pause every worker; returns the pause in seconds."""
        with self._state() as state:
            pause = min(_MAX_PENALTY, max(self.cfg.rate_limited_pause, 2 * state["penalty"]))
            state["penalty"] = pause
            state["next_start"] = max(state["next_start"], self.clock() + pause)
        log.warning("HTTP 429 (rate limited): all downloads pause for %.0f s", pause)
        return pause

    def succeeded(self) -> None:
        with self._state() as state:
            state["penalty"] = 0.0


# --- download -------------------------------------------------------------------------------


class _Quiet:
    """yt-dlp logger: messages go to our log at debug level, never to the terminal."""

    def debug(self, msg: str) -> None:
        log.debug("yt-dlp: %s", msg)

    info = debug

    def warning(self, msg: str) -> None:
        log.debug("yt-dlp warning: %s", msg)

    def error(self, msg: str) -> None:
        log.debug("yt-dlp error: %s", msg)


def is_readable_video(path: Path) -> bool:
    """Non-empty and ffmpeg decodes a first video frame."""
    if not path.is_file() or path.stat().st_size == 0:
        return False
    cmd = [
        ffmpeg_exe(),
        "-nostdin",
        "-v",
        "error",
        "-i",
        "file:" + str(path.resolve()),
        "-map",
        "0:v:0",
        "-frames:v",
        "1",
        "-f",
        "null",
        "-",
    ]
    return subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=120, check=False).returncode == 0


def ydl_options(cfg: FetchConfig, outtmpl: str, start: float, end: float) -> dict[str, Any]:
    """yt-dlp parameters for one clip (the Python API's names, as in ``yt_dlp.YoutubeDL(params)``)."""
    from yt_dlp.utils import download_range_func

    h = cfg.max_height
    opts: dict[str, Any] = {
        # Video only: flow and RGB need no audio; `?` keeps formats whose height is unknown.
        "format": f"bv*[height<=?{h}]/b[height<=?{h}]/wv*/w",
        "merge_output_format": "mp4",
        "postprocessors": [{"key": "FFmpegVideoRemuxer", "preferedformat": "mp4"}],
        "outtmpl": outtmpl,
        "download_ranges": download_range_func(None, [(start, end)]),
        "force_keyframes_at_cuts": True,
        "ffmpeg_location": ffmpeg_exe(),
        "noplaylist": True,
        "quiet": True,
        "no_warnings": True,
        "noprogress": True,
        "logger": _Quiet(),
        "socket_timeout": cfg.socket_timeout,
        # Retries are ours (with backoff and the shared 429 pause), not yt-dlp's.
        "retries": 0,
        "fragment_retries": 0,
        "extractor_retries": 0,
        "overwrites": True,
        "cachedir": False,
    }
    if cfg.cookies:
        opts["cookiefile"] = str(Path(cfg.cookies).expanduser())
    if cfg.proxy:
        opts["proxy"] = cfg.proxy
    if cfg.rate_limit:
        opts["ratelimit"] = parse_rate(cfg.rate_limit)
    return opts


def _run_ydl(url: str, opts: dict[str, Any]) -> None:
    import yt_dlp
    from yt_dlp.postprocessor.ffmpeg import FFmpegPostProcessor

    # yt-dlp's check "can ffmpeg cut ranges?" (FFmpegFD.available) reads ffmpeg's location from a
    # context variable that only its command line sets, not from the ffmpeg_location parameter.
    # Set it in a private copy of the context so nothing leaks to the caller.
    def go() -> None:
        FFmpegPostProcessor._ffmpeg_location.set(opts["ffmpeg_location"])
        with yt_dlp.YoutubeDL(opts) as ydl:
            ydl.download([url])

    contextvars.copy_context().run(go)


def download_clip(url: str, start: float, end: float, cfg: FetchConfig, dest: Path) -> None:
    """One attempt: the range [start, end] of ``url`` to ``dest`` (atomic).  Raises FetchError."""
    from yt_dlp.utils import YoutubeDLError

    tmp = dest.parent / f".part-{dest.stem}-{os.getpid()}-{threading.get_ident()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        try:
            _run_ydl(url, ydl_options(cfg, str(tmp / "clip.%(ext)s"), start, end))
        except YoutubeDLError as e:
            msg = re.sub(r"^ERROR:\s*", "", str(e)).strip()
            raise FetchError(classify_error(msg), msg) from None
        out = tmp / "clip.mp4"
        if not out.is_file():
            found = sorted(p.name for p in tmp.iterdir())
            raise FetchError("other", f"yt-dlp finished but wrote no clip.mp4 (found: {found})")
        if not is_readable_video(out):
            raise FetchError(
                "other", f"downloaded clip from {url} is not a readable video ({out.stat().st_size} bytes)"
            )
        publish_file(out, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def fetch_clip(
    youtube_id: str, start: float, end: float, cfg: FetchConfig, cache_dir: Path, *, gate: Gate | None = None
) -> Path:
    """The local mp4 of ``youtube_id`` cut to [start, end]: from the cache, else downloaded.

    Retries RETRYABLE failures up to ``cfg.retries`` times with doubling backoff; raises
    FetchError with the last failure's class and message.  ``gate``: default, the cache's
    ``.gate`` folder on real time (its clock also times the backoff).
    """
    if not YOUTUBE_ID.fullmatch(youtube_id):
        raise FetchError("other", f"bad youtube_id {youtube_id!r}: must be 11 characters of [A-Za-z0-9_-]")
    if not (math.isfinite(start) and math.isfinite(end) and 0 <= start < end):
        raise FetchError("other", f"bad time range [{start!r}, {end!r}]: need 0 <= start < end")
    cache_dir.mkdir(parents=True, exist_ok=True)
    dest = cache_dir / f"{kinetics_video_id(youtube_id, start, end)}.mp4"
    if is_readable_video(dest):
        return dest
    url = clip_url(cfg.url_template, youtube_id)
    gate = gate or Gate(cache_dir / ".gate", cfg)
    attempts = cfg.retries + 1
    for attempt in range(attempts):
        if attempt:
            gate.sleep(cfg.backoff * 2 ** (attempt - 1))
        try:
            with gate.slot():
                download_clip(url, start, end, cfg, dest)
            gate.succeeded()
            return dest
        except FetchError as e:
            if e.reason_class == "rate_limited":
                gate.rate_limited()
            if e.reason_class not in RETRYABLE or attempt == attempts - 1:
                tries = f" (after {attempt + 1} attempts)" if attempt else ""
                raise FetchError(e.reason_class, f"{e}{tries}") from None
            log.info("fetch %s: %s; retry %d/%d", youtube_id, e, attempt + 1, cfg.retries)
    raise AssertionError("unreachable")


def fetch_row(row: ManifestRow, cfg: FetchConfig, cache_dir: Path) -> Path:
    """The local file of a youtube_id row, already cut to the row's range.

    A local collection's clip (``local_root``) wins over the cache and the network.
    """
    if row.youtube_id is None or row.time_start is None or row.time_end is None:
        raise FetchError("other", "row has no youtube_id with time_start and time_end to fetch")
    if cfg.local_root is not None:
        found = find_local(Path(cfg.local_root).expanduser(), row)
        if found is not None:
            return found
        if not cfg.download:
            where = ", ".join(str(p) for p in local_candidates(Path(cfg.local_root).expanduser(), row)[:3])
            raise FetchError(
                "unavailable", f"not in the local collection (looked for {where}, ...) and fetch.download = false"
            )
    folder = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else cache_dir / "youtube"
    return fetch_clip(row.youtube_id, row.time_start, row.time_end, cfg, folder)
