"""Fetch stage: yt-dlp for real against a loopback server, error classes, config, local collections."""

import json
import subprocess
import sys

import pytest
from loopback import Loopback

from flowprep import open_store
from flowprep.dataset.decode import DecodeConfig, decode_video, ffmpeg_exe
from flowprep.dataset.fetch import (
    REASON_CLASSES,
    FetchConfig,
    FetchError,
    Gate,
    classify_error,
    fetch_clip,
    find_local,
    safe_label,
)
from flowprep.dataset.manifest import ManifestRow
from flowprep.run.pipeline import run
from flowprep.run.recipe import RecipeError, load_recipe
from flowprep.run.state import read_latest, run_dir

GOOD = "abcdefghijk"
GOOD2 = "Zyxwvut_-12"
# Short timeouts and no waits: tests check plumbing, not patience.
FAST = {"retries": 0, "delay": 0.0, "backoff": 0.0, "rate_limited_pause": 0.0, "socket_timeout": 1.0}


class FakeClock:
    """Time that moves only when the gate sleeps: its waits are read, not timed under load."""

    def __init__(self, now: float = 1e9):
        self.now = now
        self.sleeps: list[float] = []

    def time(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("srv")
    for name in (GOOD, GOOD2):
        # 6 s of testsrc, a keyframe every 2 s: the cut at 1 s and 3 s needs forced keyframes.
        subprocess.run(
            [
                ffmpeg_exe(),
                "-nostdin",
                "-loglevel",
                "error",
                "-y",
                "-f",
                "lavfi",
                "-i",
                "testsrc=size=96x64:rate=25:duration=6",
                "-c:v",
                "libx264",
                "-pix_fmt",
                "yuv420p",
                "-g",
                "50",
                "-movflags",
                "+faststart",
                str(root / f"{name}.mp4"),
            ],
            check=True,
        )
    with Loopback(root, slow_seconds=2.5) as lb:
        yield lb


def test_range_is_cut_and_cache_reused(server, tmp_path):
    cfg = FetchConfig(url_template=server.url_template, **FAST)
    before = server.hits[f"{GOOD}.mp4"]
    path = fetch_clip(GOOD, 1, 3, cfg, tmp_path)
    assert path == tmp_path / f"{GOOD}_000001_000003.mp4"
    frames = decode_video(str(path), DecodeConfig(fps=25, short_side=64))
    assert abs(len(frames) - 50) <= 2  # 2 s at 25 fps (cut at keyframes forced at 1 s and 3 s)
    assert frames.shape[1:] == (64, 96, 3)
    hits = server.hits[f"{GOOD}.mp4"]
    assert hits > before
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith(".")] == [path.name]  # no temp debris
    assert fetch_clip(GOOD, 1, 3, cfg, tmp_path) == path
    assert server.hits[f"{GOOD}.mp4"] == hits  # served from the cache: no request at all


def test_broken_cache_file_is_fetched_again(server, tmp_path):
    cfg = FetchConfig(url_template=server.url_template, **FAST)
    bad = tmp_path / f"{GOOD}_000000_000002.mp4"
    bad.write_bytes(b"not a video")
    before = server.hits[f"{GOOD}.mp4"]
    assert fetch_clip(GOOD, 0, 2, cfg, tmp_path) == bad
    assert server.hits[f"{GOOD}.mp4"] > before
    assert len(decode_video(str(bad), DecodeConfig(short_side=64))) in (49, 50, 51)


@pytest.mark.parametrize(
    "yid, cls",
    [
        ("E404aaaaaaa", "unavailable"),
        ("E403aaaaaaa", "other"),
        ("E429aaaaaaa", "rate_limited"),
        ("SLOWaaaaaaa", "network"),
    ],
)
def test_http_failures_are_classified(server, tmp_path, yid, cls):
    cfg = FetchConfig(url_template=server.url_template, **FAST)
    with pytest.raises(FetchError) as e:
        fetch_clip(yid, 0, 2, cfg, tmp_path)
    assert e.value.reason_class == cls
    assert yid in str(e.value)
    assert not list(tmp_path.glob("*.mp4")) and not list(tmp_path.glob(".part-*"))


def test_retryable_failures_are_retried_and_429_pauses_everyone(server, tmp_path):
    cfg = FetchConfig(url_template=server.url_template, **{**FAST, "retries": 2, "rate_limited_pause": 0.2})
    before = server.hits["E429bbbbbbb.mp4"]
    clock = FakeClock()
    with pytest.raises(FetchError) as e:
        fetch_clip(
            "E429bbbbbbb", 0, 2, cfg, tmp_path, gate=Gate(tmp_path / ".gate", cfg, clock=clock.time, sleep=clock.sleep)
        )
    assert e.value.reason_class == "rate_limited" and "after 3 attempts" in str(e.value)
    assert server.hits["E429bbbbbbb.mp4"] - before == 3
    # pauses 0.2 s then 0.4 s (doubling while 429s go on) before the 2nd and 3rd attempts
    assert [s for s in clock.sleeps if s] == pytest.approx([0.2, 0.4])
    state = json.loads((tmp_path / ".gate" / "state.json").read_text())
    assert state["penalty"] == pytest.approx(0.8)  # the third 429 doubled it again for whoever comes next
    # a non-retryable class is not retried
    before = server.hits["E404bbbbbbb.mp4"]
    with pytest.raises(FetchError):
        fetch_clip("E404bbbbbbb", 0, 2, cfg, tmp_path)
    assert server.hits["E404bbbbbbb.mp4"] - before == 1


def test_gate_spaces_starts_and_limits_concurrency(tmp_path):
    cfg = FetchConfig(delay=0.15, concurrency=1)
    clock = FakeClock()
    gate = Gate(tmp_path, cfg, clock=clock.time, sleep=clock.sleep)
    starts = []
    for _ in range(3):
        with gate.slot():
            starts.append(clock.now)
    assert [b - a for a, b in zip(starts, starts[1:], strict=False)] == pytest.approx(
        [0.15, 0.15]
    ) and clock.sleeps == pytest.approx([0.15, 0.15])
    # another process cannot take the only slot while we hold it
    code = (
        "import sys, fcntl; f = open(sys.argv[1], 'a+')\n"
        "try:\n    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB); print('got')\nexcept BlockingIOError:\n    print('busy')"
    )
    with gate.slot():
        out = subprocess.run(
            [sys.executable, "-c", code, str(tmp_path / "slot-0.lock")], capture_output=True, text=True, check=False
        )
    assert out.stdout.strip() == "busy"


# Real yt-dlp messages (from yt-dlp's source and its issue tracker) -> ledger class.
MESSAGES = [
    (
        "[youtube] M7mKMWjAxG8: Private video. Sign in if you've been granted access to this video. Use --cookies-from-browser or --cookies for the authentication.",
        "private",
    ),
    (
        "[youtube] L03JVPaZpyc: Video unavailable. This video contains content from SME, who has blocked it on copyright grounds",
        "copyright",
    ),
    ("This video contains content from SME, who has blocked it in your country on copyright grounds.", "copyright"),
    (
        "[youtube] xxxxxxxxxxx: Video unavailable. This video is no longer available due to a copyright claim by Some Label",
        "copyright",
    ),
    (
        "[youtube] xxxxxxxxxxx: Video unavailable. The uploader has not made this video available in your country",
        "geo_blocked",
    ),
    ("[youtube] xxxxxxxxxxx: This video is not available from your location due to geo restriction", "geo_blocked"),
    (
        "[youtube] xxxxxxxxxxx: Sign in to confirm your age. This video may be inappropriate for some users. Use --cookies-from-browser or --cookies for the authentication.",
        "sign_in",
    ),
    (
        "[youtube] rVXeIRY6H9c: Sign in to confirm you’re not a bot. This helps protect our community. Learn more",
        "rate_limited",
    ),
    (
        "[youtube] xxxxxxxxxxx: This content isn't available, try again later. The current session has been rate-limited by YouTube for up to an hour.",
        "rate_limited",
    ),
    ("[youtube] xxxxxxxxxxx: Video unavailable", "unavailable"),
    ("[youtube] xxxxxxxxxxx: Video unavailable. This video has been removed by the uploader", "unavailable"),
    (
        "[youtube] xxxxxxxxxxx: Video unavailable. This video is no longer available because the YouTube account associated with this video has been terminated.",
        "unavailable",
    ),
    (
        "[generic] E404aaaaaaa: Unable to download webpage: HTTP Error 404: Not Found (caused by <HTTPError 404: Not Found>)",
        "unavailable",
    ),
    (
        "[generic] E429aaaaaaa: Unable to download webpage: HTTP Error 429: Too Many Requests (caused by <HTTPError 429: Too Many Requests>)",
        "rate_limited",
    ),
    ("[generic] SLOWaaaaaaa: Unable to download webpage: timed out (caused by TransportError('timed out'))", "network"),
    (
        "[youtube] xxxxxxxxxxx: Unable to download API page: <urlopen error [Errno -3] Temporary failure in name resolution> (caused by TransportError(...))",
        "network",
    ),
    (
        "[youtube] xxxxxxxxxxx: Unable to download webpage: [Errno 111] Connection refused (caused by TransportError('[Errno 111] Connection refused'))",
        "network",
    ),
    ("unable to download video data: HTTP Error 403: Forbidden", "other"),
    (
        "[youtube] xxxxxxxxxxx: Requested format is not available. Use --list-formats for a list of available formats",
        "other",
    ),
    (
        "[youtube] xxxxxxxxxxx: Join this channel to get access to members-only content like this video, and other exclusive perks.",
        "private",
    ),
]


@pytest.mark.parametrize("message, cls", MESSAGES)
def test_classify_error_on_real_messages(message, cls):
    assert classify_error(message) == cls
    assert cls in REASON_CLASSES


def test_fetch_config_checks():
    with pytest.raises(ValueError, match=r"unknown key\(s\) in \[fetch\]: \['max_hieght'\]; known: .*max_height"):
        FetchConfig.from_mapping({"max_hieght": 360})
    for bad, field in (
        ({"url_template": "https://x/{id}"}, "url_template"),
        ({"url_template": "file:///etc/{youtube_id}"}, "url_template"),
        ({"url_template": "https://x/watch"}, "url_template"),
        ({"max_height": 10}, "max_height"),
        ({"retries": -1}, "retries"),
        ({"delay": float("nan")}, "delay"),
        ({"concurrency": 0}, "concurrency"),
        ({"rate_limit": "fast"}, "rate_limit"),
        ({"cookies": "/no/such/cookies.txt"}, "cookies"),
        ({"download": False}, "local_root"),
    ):
        with pytest.raises(ValueError, match=field):
            FetchConfig.from_mapping(bad)
    assert FetchConfig(rate_limit="2M").rate_limit == "2M"


def test_bad_ids_and_ranges_never_reach_the_network(tmp_path):
    cfg = FetchConfig(url_template="http://127.0.0.1:9/{youtube_id}.mp4", **FAST)
    for yid in ("../../etc/pa", "abc", "abcdefghij;", "abcdefghijkl"):
        with pytest.raises(FetchError, match="bad youtube_id"):
            fetch_clip(yid, 0, 1, cfg, tmp_path)
    with pytest.raises(FetchError, match="bad time range"):
        fetch_clip(GOOD, 5, 5, cfg, tmp_path)


def test_safe_label_and_local_collection(tmp_path):
    assert safe_label("../../etc") == "_.._etc"
    assert safe_label("playing\x00 guitar/x") == "playing_ guitar_x"
    assert safe_label("  .hidden") == "hidden"
    for bad in ("..", "/", "  ", "."):
        if bad in ("/",):
            assert safe_label(bad) == "_"
            continue
        with pytest.raises(ValueError):
            safe_label(bad)
    row = ManifestRow(
        2, f"{GOOD}_000010_000020", youtube_id=GOOD, label="air drumming", split="val", time_start=10, time_end=20
    )
    assert find_local(tmp_path, row) is None
    clip = tmp_path / "val" / "air_drumming" / f"{GOOD}_000010_000020.mp4"
    clip.parent.mkdir(parents=True)
    clip.write_bytes(b"x")
    assert find_local(tmp_path, row) == clip
    hostile = ManifestRow(3, "k", youtube_id=GOOD, label="../../val", split="val", time_start=10, time_end=20)
    assert all(
        tmp_path in p.parents
        for p in __import__("flowprep.dataset.fetch").dataset.fetch.local_candidates(tmp_path, hostile)
    )


def _kinetics_run(tmp_path, server, lines, fetch_extra="", **kw):
    manifest = tmp_path / "k.csv"
    manifest.write_text("label,youtube_id,time_start,time_end,split\n" + "\n".join(lines) + "\n")
    recipe = tmp_path / "k.toml"
    recipe.write_text(
        f'dataset = "k"\nmanifest = "{manifest}"\n[decode]\nshort_side = 64\n'
        '[flow]\nbackend = "opencv"\nparams = { nscales = 2, warps = 1, outer_iterations = 2, inner_iterations = 5 }\n'
        f'[fetch]\nurl_template = "{server.url_template}"\nretries = 0\ndelay = 0\nbackoff = 0\n'
        f"rate_limited_pause = 0\nsocket_timeout = 1\n{fetch_extra}"
    )
    cfg = load_recipe(recipe, out=str(tmp_path / "out" / "k.zarr"), progress=False, **kw)
    return cfg, run(cfg)


@pytest.mark.slow
def test_whole_run_from_a_youtube_manifest(server, tmp_path):
    lines = [
        f'"riding a bike",{GOOD},1,3,val',
        f"juggling,{GOOD2},2,3,train",
        "gone,E404ccccccc,0,2,val",
        "busy,E429ccccccc,0,2,val",
        "hidden,E403ccccccc,0,2,val",
        "slow,SLOWccccccc,0,2,val",
    ]
    cfg, s = _kinetics_run(tmp_path, server, lines, jobs=2)
    assert (s.rows, s.done, s.failed, s.skipped) == (6, 2, 4, 0)
    assert s.failed_by_reason == {"unavailable": 1, "rate_limited": 1, "other": 1, "network": 1}
    store = open_store(cfg.out)
    assert sorted(store.video_ids) == sorted([f"{GOOD}_000001_000003", f"{GOOD2}_000002_000003"])
    info = store.info(f"{GOOD}_000001_000003")
    assert abs(info["n_frames"] - 50) <= 2 and info["height"] == 64 and info["label"] == "riding a bike"
    assert info["source"] == f"youtube:{GOOD}" and (info["time_start"], info["time_end"]) == (1, 3)
    assert abs(store.info(f"{GOOD2}_000002_000003")["n_frames"] - 25) <= 2
    latest = read_latest(run_dir(cfg.out))
    assert latest["E404ccccccc_000000_000002"]["reason_class"] == "unavailable"
    assert "HTTP Error 404" in latest["E404ccccccc_000000_000002"]["reason"]
    assert latest["SLOWccccccc_000000_000002"]["reason_class"] == "network"
    index = json.loads((run_dir(cfg.out) / "index.json").read_text())
    assert index["counts"] == {"done": 2, "failed": 4, "pending": 0}

    # --retry-failed redoes only retryable failures (429, timeout, 403 -> other), keeps the 404
    hits404, hits429 = server.hits["E404ccccccc.mp4"], server.hits["E429ccccccc.mp4"]
    cfg, s = _kinetics_run(tmp_path, server, lines, retry_failed=True)
    assert (s.rows, s.done, s.failed, s.skipped) == (6, 0, 4, 2)
    assert server.hits["E404ccccccc.mp4"] == hits404 and server.hits["E429ccccccc.mp4"] == hits429 + 1
    latest = read_latest(run_dir(cfg.out))
    assert latest["E404ccccccc_000000_000002"]["kept"] is True
    assert latest["E404ccccccc_000000_000002"]["reason_class"] == "unavailable"
    # a plain rerun redoes every row that is not complete, the 404 included
    cfg, s = _kinetics_run(tmp_path, server, lines)
    assert server.hits["E404ccccccc.mp4"] == hits404 + 1 and (s.done, s.failed, s.skipped) == (0, 4, 2)


def test_cli_url_template_and_local_only_collection(server, tmp_path):
    lines = [f"juggling,{GOOD2},2,4,val"]
    # the CLI flag wins over the recipe's template
    cfg = None
    manifest = tmp_path / "k.csv"
    manifest.write_text("label,youtube_id,time_start,time_end,split\n" + "\n".join(lines) + "\n")
    recipe = tmp_path / "k.toml"
    recipe.write_text(f'manifest = "{manifest}"\n[fetch]\nurl_template = "https://example.invalid/{{youtube_id}}"\n')
    cfg = load_recipe(recipe, fetch={"url_template": server.url_template, "proxy": None})
    assert cfg.fetch["url_template"] == server.url_template
    with pytest.raises(RecipeError, match=r"unknown key\(s\) in \[fetch\]"):
        load_recipe(recipe, fetch={"nope": 1})
    # local_root with download = false: the clip comes from the collection, the server is not asked
    local = tmp_path / "k400" / "val" / "juggling" / f"{GOOD2}_000002_000004.mp4"
    local.parent.mkdir(parents=True)
    local.write_bytes((server.root / f"{GOOD2}.mp4").read_bytes())
    before = server.hits[f"{GOOD2}.mp4"]
    cfg, s = _kinetics_run(
        tmp_path,
        server,
        lines + ["gone,E404ddddddd,0,2,val"],
        f'local_root = "{tmp_path / "k400"}"\ndownload = false\n',
    )
    assert (s.done, s.failed) == (1, 1) and server.hits[f"{GOOD2}.mp4"] == before
    assert open_store(cfg.out).info(f"{GOOD2}_000002_000004")["n_frames"] == 150  # the local file, used whole
    rec = read_latest(run_dir(cfg.out))["E404ddddddd_000000_000002"]
    assert rec["reason_class"] == "unavailable" and "local collection" in rec["reason"]
