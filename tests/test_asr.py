"""Speech recognition for a fetched video without subtitles: the audio track decoded, cut into
pieces, sent to an OpenAI-compatible transcription endpoint (a scripted one on loopback, the real
``openai`` client) or to an in-process Whisper; the segments' times land in the transcript."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
import wave
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from media_server import MediaServer
from test_fetch import fetch_settings, fetched

from action100m.errors import PermanentError, ServiceError
from action100m.pipeline import run_named
from action100m.services import Endpoint, Services
from action100m.stages.base import Video
from action100m.store import ArtifactStore


def talking_video(path: Path, wav: Path, seconds: float) -> None:
    """An H.264 + AAC MP4: moving scenes, and the WAV's speech from 0.5 s on."""
    import av

    from action100m.samples import scene_frame

    with wave.open(str(wav)) as source:
        rate = source.getframerate()
        pcm = np.frombuffer(source.readframes(source.getnframes()), "<i2") / 32768
    audio = np.zeros(int(seconds * rate), np.float32)
    speech = pcm[: len(audio) - rate // 2]
    audio[rate // 2 : rate // 2 + len(speech)] = speech
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=12)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        sound = out.add_stream("aac", rate=rate)
        sound.layout = "mono"
        for index in range(int(seconds * 12)):
            frame = scene_frame(index // 24, index / 12, 64, 48)
            for packet in video.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                out.mux(packet)
        for packet in video.encode():
            out.mux(packet)
        for start in range(0, len(audio), 1024):
            piece = av.AudioFrame.from_ndarray(audio[None, start : start + 1024].copy(),
                                               format="fltp", layout="mono")  # fmt: skip
            piece.sample_rate, piece.pts = rate, start
            for packet in sound.encode(piece):
                out.mux(packet)
        for packet in sound.encode():
            out.mux(packet)


@pytest.fixture(scope="module")
def speech_clip(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """Four seconds of moving scenes with a sentence spoken by espeak-ng."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (make system-deps)")
    folder = tmp_path_factory.mktemp("speech")
    wav = folder / "speech.wav"
    sentence = "Fold the paper in half and press the crease."
    subprocess.run(["espeak-ng", "-w", str(wav), sentence], check=True, timeout=60)
    talking_video(folder / "talk.mp4", wav, 4.0)
    return (folder / "talk.mp4").read_bytes()


class TranscriptionServer:
    """``POST /v1/audio/transcriptions``: each request gets the next scripted status (then 200
    with one segment, 0.2 s into the piece); ``requests`` holds each request's form fields."""

    def __init__(self) -> None:
        self.statuses: list[int] = []
        self.requests: list[dict[str, Any]] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        site = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                fields = dict(re.findall(rb'name="(\w+)"\r\n\r\n([^\r]*)\r\n', body))
                site.requests.append({
                    "path": self.path, "auth": self.headers.get("Authorization"),
                    "fields": {k.decode(): v.decode() for k, v in fields.items()},
                    "wav": b"RIFF" in body and b"WAVE" in body,
                })  # fmt: skip
                status = site.statuses.pop(0) if site.statuses else 200
                reply: dict[str, Any] = {"error": {"message": f"scripted {status}"}}
                if status == 200:
                    number = len(site.requests)
                    reply = {"text": f" piece {number}", "duration": 2.0, "segments": [
                        {"id": 0, "start": 0.2, "end": 1.4, "text": f" piece {number}"}]}  # fmt: skip
                payload = json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        return Handler

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def transcriber() -> Iterator[TranscriptionServer]:
    server = TranscriptionServer()
    yield server
    server.close()


@pytest.fixture
def talk_site(speech_clip: bytes) -> Iterator[MediaServer]:
    with MediaServer() as site:
        site.add("talk.mp4", speech_clip, "video/mp4")
        site.page("talk", "talk.mp4", title="Talking")  # no subtitles
        yield site


def api_settings(store: ArtifactStore, server: TranscriptionServer, *extra: str) -> Any:
    return fetch_settings(store, "fetch.asr=true", "fetch.asr_backend=api",
                          f"fetch.asr_base_url={server.base_url}", "fetch.asr_model=whisper-t",
                          "fetch.asr_chunk_seconds=2", *extra)  # fmt: skip


def test_speech_is_recognised_through_the_transcription_api(
    talk_site: MediaServer, transcriber: TranscriptionServer, store: ArtifactStore
) -> None:
    services = Services(asr=Endpoint(api_key="asr-key"))  # type: ignore[arg-type]
    record = run_named("fetch", api_settings(store, transcriber), store,
                       Video("talk", talk_site.url("talk")), services=services)  # fmt: skip
    # Four seconds, speech from 0.5 s: two pieces of two seconds, each sent as a WAV.
    assert len(transcriber.requests) == 2
    first = transcriber.requests[0]
    assert first["path"] == "/v1/audio/transcriptions" and first["wav"]
    assert first["auth"] == "Bearer asr-key"
    assert first["fields"]["model"] == "whisper-t"
    assert first["fields"]["response_format"] == "verbose_json"
    metadata = store.read_json(store.metadata_uri("talk"))
    assert metadata["transcript"] == [
        {"time": "0.2", "text": "piece 1"},
        {"time": "2.2", "text": "piece 2"},
    ]
    assert store.read_json(f"{record.uri}/info.json")["transcript"] == "asr:whisper-t"


@pytest.mark.parametrize(("status", "error"), [(400, PermanentError), (503, ServiceError)])
def test_a_failing_transcription_endpoint_fails_the_video_in_one_line(
    talk_site: MediaServer, transcriber: TranscriptionServer, store: ArtifactStore,
    status: int, error: type[Exception],
) -> None:  # fmt: skip
    transcriber.statuses = [status] * 10
    settings = api_settings(store, transcriber, "fetch.retries=0")
    with pytest.raises(error) as caught:
        run_named("fetch", settings, store, Video("talk", talk_site.url("talk")),
                  services=Services())  # fmt: skip
    assert str(caught.value).startswith("video talk: speech recognition")
    assert "\n" not in str(caught.value)
    assert fetched(store, "talk") == []  # nothing marked done: a retry downloads again


def test_speech_is_recognised_by_an_in_process_whisper(
    talk_site: MediaServer, store: ArtifactStore
) -> None:
    """A tiny random Whisper (built from a small config, loaded with ``from_pretrained``): its
    words mean nothing, its segments' times come back shifted by each piece's offset."""
    from action100m import models

    settings = fetch_settings(store, "fetch.asr=true", "fetch.asr_backend=transformers",
                              "fetch.asr_model=tiny-random/whisper", "fetch.asr_chunk_seconds=2",
                              "fetch.asr_device=cpu")  # fmt: skip
    loads = models.LOADS["whisper"]
    record = run_named("fetch", settings, store, Video("talk", talk_site.url("talk")))
    transcript = store.read_json(store.metadata_uri("talk"))["transcript"]
    times = [float(line["time"]) for line in transcript]
    assert transcript and all(
        line["time"] == str(round(t, 2)) for line, t in zip(transcript, times, strict=True)
    )
    assert times == sorted(times) and times[0] < 2.0 <= times[-1] < 4.0  # both pieces
    assert store.read_json(f"{record.uri}/info.json")["transcript"] == "asr:tiny-random/whisper"
    run_named("fetch", settings, store, Video("talk2", talk_site.url("talk")))
    assert models.LOADS["whisper"] == loads + 1  # loaded once for both videos
