"""The fetch stage against a real media site on loopback (yt-dlp's own extractors, real HTTP):
the stored file, the release's metadata and transcript, each failure's outcome, reruns; the
YouTube-specific path with a recorded info dict."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
from llm_server import LLMServer
from media_server import MediaServer, Reply

from action100m.cli import main
from action100m.config import Settings, load_settings
from action100m.download import failure, metadata_from_info
from action100m.errors import PermanentError, ServiceError
from action100m.interop import read_records
from action100m.pipeline import run_named
from action100m.samples import make_video
from action100m.services import FetchAccess, Services
from action100m.sources import resolve_video, youtube_id
from action100m.stages.base import Video
from action100m.store import ArtifactStore
from action100m.transcripts import parse_webvtt, pick_track

DATA = Path(__file__).resolve().parent / "data"
VTT = """WEBVTT

00:00:00.500 --> 00:00:01.400
Fold the <c>paper</c> in half

00:00:01.920 --> 00:00:02.400
press the crease &amp; turn it
"""
LLM_VARIABLES = ("OPENAI_API_KEY", "OPENAI_BASE_URL", "ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL")


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("fetch") / "clip.mp4"
    make_video(path, [1.5, 1.5], width=64, height=48, fps=12)
    return path.read_bytes()


@pytest.fixture
def site(clip: bytes) -> Any:
    with MediaServer() as server:
        server.add("clip.mp4", clip, "video/mp4")
        server.add("clip.en.vtt", VTT, "text/vtt")
        server.page("howto", "clip.mp4", title="Folding paper", tracks={"en": "clip.en.vtt"})
        yield server


def fetch_settings(store: ArtifactStore, *extra: str) -> Settings:
    overrides = ["fetch.allowed_hosts=127.0.0.1", "fetch.retry_wait=0.01", "fetch.retries=2"]
    return load_settings(
        profile="tiny", store=store.root, environ={}, overrides=[*overrides, *extra]
    )


def fetched(store: ArtifactStore, video_id: str) -> list[str]:
    root = Path(store.fs._strip_protocol(store.video_dir(video_id))) / "source"
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


def test_a_page_is_fetched_annotated_exported_and_reused(
    site: MediaServer, clip: bytes, store: ArtifactStore, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    for name in LLM_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    with LLMServer() as llm:
        base = ["--store", store.root, "--profile", "tiny", "-q", "--set", "aggregate.model=m",
                "--set", f"aggregate.base_url={llm.base_url}", "--set", "aggregate.min_duration=2",
                "--set", "fetch.allowed_hosts=127.0.0.1"]  # fmt: skip
        assert main([*base, "run", site.url("howto")]) == 0
        summary = json.loads(capsys.readouterr().out)
        assert summary["video_id"] == "howto" and summary["aggregated"] is True
        [key] = {name.split("/")[0] for name in fetched(store, "howto")}
        folder = store.stage_dir("howto", "fetch", key)
        assert folder.endswith(f"/videos/howto/source/{key}")
        assert store.read_bytes(f"{folder}/video.mp4") == clip
        info = store.read_json(f"{folder}/info.json")
        assert info["extractor"] == "html5" and info["transcript"] == "subtitles"
        metadata = store.read_json(store.metadata_uri("howto"))
        assert metadata["title"].startswith("Folding paper")
        assert metadata["transcript"] == [
            {"time": "0.5", "text": "Fold the paper in half"},
            {"time": "1.92", "text": "press the crease & turn it"},
        ]
        # Stage 3 got the metadata; embed and caption read the stored copy, not the site.
        assert any("Fold the paper in half" in r.prompt for r in llm.requests)
        document = store.read_json(store.document_uri("howto"))
        assert document["metadata"]["transcript"] == metadata["transcript"]
        assert document["metadata"]["source"] == f"{folder}/video.mp4"
        assert document["pipeline"]["stages"]["fetch"] is True
        assert site.count("clip.mp4") == 1

        # A rerun fetches nothing and asks nothing.
        asked = len(llm.requests)
        assert main([*base, "run", site.url("howto")]) == 0
        assert site.count("clip.mp4") == 1 and site.count("howto") == 1
        assert len(llm.requests) == asked
    out = tmp_path / "x.jsonl"
    assert main([*base, "export", "--out", str(out)]) == 0
    [record] = read_records(str(out))
    assert record["metadata"]["transcript"] == metadata["transcript"]
    assert record["metadata"]["title"] == metadata["title"]


@pytest.mark.parametrize(
    ("script", "outcome", "video_requests"),
    [
        ([Reply.status(429)], "done", 2),
        ([Reply.cut()], "done", 2),
        ([Reply.status(404)], PermanentError, 1),
        ([Reply.status(403)], PermanentError, 1),
        ([Reply.status(503)] * 20, ServiceError, 9),
    ],
    ids=["429-then-success", "cut-mid-body", "404", "403", "503-always"],
)
def test_each_failure_has_its_outcome(
    site: MediaServer, clip: bytes, store: ArtifactStore, script: list[Reply], outcome: Any,
    video_requests: int,
) -> None:  # fmt: skip
    site.script("clip.mp4", *script)
    settings = fetch_settings(store)
    video = Video("howto", site.url("howto"))
    if outcome == "done":
        record = run_named("fetch", settings, store, video, services=Services())
        assert store.read_bytes(f"{record.uri}/video.mp4") == clip
        if script[0].kind == "cut":  # resumed where the connection dropped
            assert site.requests[-1][2] is not None and site.requests[-1][2].startswith("bytes=")
    else:
        with pytest.raises(outcome) as caught:
            run_named("fetch", settings, store, video, services=Services())
        message = str(caught.value)
        assert (
            message.startswith("video howto: cannot fetch http://127.0.0.1:")
            and "\n" not in message
        )
        assert "HTTP Error" in message
        assert fetched(store, "howto") == []  # nothing half-written, nothing marked done
    # yt-dlp retries a 503 itself (fetch.retries), the stage tries the whole download again.
    assert site.count("clip.mp4") == video_requests


def test_hosts_outside_the_allowed_list_are_refused_before_any_request(
    site: MediaServer, store: ArtifactStore
) -> None:
    settings = load_settings(profile="tiny", store=store.root, environ={})
    with pytest.raises(PermanentError, match=r"^video howto: host 127.0.0.1 is not in fetch"):
        run_named("fetch", settings, store, Video("howto", site.url("howto")))
    assert site.requests == []
    with pytest.raises(PermanentError, match="credentials in a URL"):
        run_named("fetch", fetch_settings(store), store, Video("x", "http://u:p@127.0.0.1/x"))


def test_files_skip_fetch_and_embed_reads_what_was_fetched(
    site: MediaServer, store: ArtifactStore, tmp_path: Path
) -> None:
    settings = fetch_settings(store)
    local = tmp_path / "local.mp4"
    local.write_bytes(b"not read")
    record = run_named("fetch", settings, store, Video("local", str(local)))
    assert (record.uri, record.reused, record.skipped) == (None, True, None)
    assert not store.exists(store.video_dir("local"))
    with pytest.raises(Exception, match="run `fetch` first"):
        run_named("embed", settings, store, Video("howto", site.url("howto")))
    assert resolve_video("dQw4w9WgXcQ") == ("dQw4w9WgXcQ", youtube("dQw4w9WgXcQ"))
    assert resolve_video("https://youtu.be/dQw4w9WgXcQ?t=3")[0] == "dQw4w9WgXcQ"
    for url in ("https://www.youtube.com/watch?v=dQw4w9WgXcQ&list=x",
                "https://m.youtube.com/shorts/dQw4w9WgXcQ"):  # fmt: skip
        assert youtube_id(url) == "dQw4w9WgXcQ"
    assert resolve_video(site.url("howto"))[0] == "howto"


def youtube(video_id: str) -> str:
    return f"https://www.youtube.com/watch?v={video_id}"


def test_a_youtube_info_dict_maps_to_the_release_fields() -> None:
    """A recorded info dict (the field names yt-dlp's YouTube extractor gives)."""
    info = json.loads((DATA / "youtube_info.json").read_text())
    assert metadata_from_info(info) == {
        "title": info["title"], "description": info["description"], "view_count": 3170,
        "like_count": 227, "duration": 690, "upload_date": "20190212",
    }  # fmt: skip
    # Manual subtitles in the video's language first, else automatic captions in English.
    assert pick_track(info, ["en"])["kind"] == "subtitles"  # type: ignore[index]
    no_manual = {**info, "subtitles": {}}
    track = pick_track(no_manual, ["en"])
    assert track == {"kind": "automatic_captions", "lang": "en",
                     "url": info["automatic_captions"]["en"][1]["url"]}  # fmt: skip
    assert pick_track({**no_manual, "automatic_captions": {}}, ["en"]) is None
    rolling = (DATA / "youtube_auto.en.vtt").read_text()
    assert parse_webvtt(rolling) == [
        {"time": "0.0", "text": "[Music]"},
        {"time": "3.45", "text": "hey guys it's Joe welcome back to the"},
        {"time": "5.97", "text": "channel I hope you're doing well today"},
    ]


@pytest.mark.parametrize(
    ("message", "permanent"),
    [
        ("[youtube] abcdefghijk: Private video. Sign in if you've been granted access", True),
        ("[youtube] abcdefghijk: Video unavailable. This video has been removed", True),
        ("[youtube] abcdefghijk: Sign in to confirm your age", True),
        ("[youtube] abcdefghijk: Sign in to confirm you’re not a bot", True),
        (
            "[youtube] abcdefghijk: The uploader has not made this video available in your country",
            True,
        ),
        ("unable to download video data: HTTP Error 429: Too Many Requests", False),
        ("[download] Got error: HTTP Error 502: Bad Gateway. Giving up after 3 retries", False),
    ],
)
def test_youtube_failures_are_one_line_and_classified(message: str, permanent: bool) -> None:
    from yt_dlp.utils import DownloadError, ExtractorError

    try:
        raise ExtractorError(message, expected=True)
    except ExtractorError as exc:
        error = failure("abcdefghijk", youtube("abcdefghijk"), DownloadError(f"ERROR: {exc}", None))
    assert isinstance(error, PermanentError) is permanent
    assert isinstance(error, ServiceError) is not permanent
    text = str(error)
    assert text.startswith(f"video abcdefghijk: cannot fetch {youtube('abcdefghijk')}: ")
    assert "\n" not in text and "ERROR" not in text and "report this issue" not in text
    if "not a bot" in message:
        assert "cookies" in text


def test_cookies_reach_the_site_and_never_a_log(
    site: MediaServer, store: ArtifactStore, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "SID-very-secret-cookie"
    cookies = f"# Netscape HTTP Cookie File\n127.0.0.1\tFALSE\t/\tFALSE\t0\tSID\t{secret}\n"
    services = Services(fetch=FetchAccess(cookies=cookies))  # type: ignore[arg-type]
    assert secret not in repr(services)
    with caplog.at_level(logging.DEBUG):
        run_named("fetch", fetch_settings(store), store, Video("howto", site.url("howto")),
                  services=services)  # fmt: skip
    assert secret not in caplog.text
    assert f"SID={secret}" in site.cookies  # the page and the video were asked with them
    assert fetched(store, "howto") and not any("cookies" in p for p in fetched(store, "howto"))


def test_howto100m_transcripts_are_filed_from_raw_caption_and_used(
    site: MediaServer, store: ArtifactStore, tmp_path: Path
) -> None:
    """HowTo100M's raw_caption.json (gzip here), read streaming once for the listed videos: the
    fetch stage takes the filed transcript instead of the page's subtitles."""
    import gzip

    from action100m.batch import file_transcripts
    from action100m.transcripts import read_raw_captions

    captions = {f"other{i:04d}": {"start": [0.0], "end": [1.0], "text": ["x"]} for i in range(300)}
    captions["howto"] = {"start": [0.4, 2.125], "end": [2.0, 3.0], "text": ["fold it", "again"]}
    raw = tmp_path / "raw_caption.json.gz"
    raw.write_bytes(gzip.compress(json.dumps(captions).encode()))
    expected = [{"time": "0.4", "text": "fold it"}, {"time": "2.12", "text": "again"}]
    with gzip.open(raw, "rt") as stream:  # any chunk size reads the same
        assert dict(read_raw_captions(stream, ["howto"], chunk=7)) == {"howto": expected}
    assert file_transcripts(store, str(raw), ["howto", "missing"]) == 1
    assert file_transcripts(store, str(raw), ["howto"]) == 0  # filed already
    record = run_named("fetch", fetch_settings(store), store, Video("howto", site.url("howto")))
    assert store.read_json(store.metadata_uri("howto"))["transcript"] == expected
    assert store.read_json(f"{record.uri}/info.json")["transcript"] == "given"


def test_a_refused_subtitle_track_leaves_the_video_without_a_transcript(
    site: MediaServer, store: ArtifactStore
) -> None:
    site.script("clip.en.vtt", Reply.status(404))
    record = run_named("fetch", fetch_settings(store), store, Video("howto", site.url("howto")))
    assert "transcript" not in store.read_json(store.metadata_uri("howto"))
    assert store.read_json(f"{record.uri}/info.json")["transcript"] == "none"


def test_a_fetched_video_goes_to_an_s3_store_in_one_upload(
    site: MediaServer, clip: bytes, s3_server: dict[str, str]
) -> None:
    store = ArtifactStore(f"s3://{s3_server['bucket']}/store")
    settings = fetch_settings(store)
    record = run_named("fetch", settings, store, Video("howto", site.url("howto")))
    assert record.uri == store.stage_dir("howto", "fetch", record.uri.rsplit("/", 1)[-1])
    assert store.read_bytes(f"{record.uri}/video.mp4") == clip and store.is_done(record.uri)
    assert store.read_json(store.metadata_uri("howto"))["title"].startswith("Folding paper")


def test_a_site_that_is_down_is_worth_a_retry(store: ArtifactStore) -> None:
    import socket

    with socket.socket() as free:  # a loopback port nobody listens on
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    with pytest.raises(ServiceError, match=r"^video down: cannot fetch http://127.0.0.1:\d+/down"):
        run_named("fetch", fetch_settings(store, "fetch.retries=1"), store,
                  Video("down", f"http://127.0.0.1:{port}/down"))  # fmt: skip
    assert fetched(store, "down") == []
