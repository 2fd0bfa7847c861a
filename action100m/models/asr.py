"""Speech recognition for a fetched video without subtitles, by the same two roads as captioning:
an OpenAI-compatible transcription endpoint (``audio.transcriptions`` of the ``openai`` client:
OpenAI's ``whisper-1``, or vLLM serving a Whisper model) and an in-process transformers Whisper
(the CPU path, loaded once per process through :func:`~action100m.models.load_once`).

The audio track is decoded with PyAV to 16 kHz mono and cut into ``fetch.asr_chunk_seconds``
pieces; silent pieces are not sent. Each piece's segments come back with their start times,
shifted by the piece's offset: ``[(seconds, text)]``.
"""

from __future__ import annotations

import io
import logging
import wave
from collections.abc import Iterator

import numpy as np

from action100m.config import FetchConfig
from action100m.errors import PermanentError, ServiceError, VideoError
from action100m.services import Endpoint

log = logging.getLogger(__name__)
RATE = 16_000
SILENCE_RMS = 1e-3


def load_audio(path: str, video_id: str) -> np.ndarray:
    """The file's first audio stream as 16 kHz mono float32 (empty where it has none)."""
    import av

    try:
        with av.open(path) as container:
            if not container.streams.audio:
                return np.zeros(0, np.float32)
            resampler = av.AudioResampler(format="flt", layout="mono", rate=RATE)
            pieces = []
            for frame in container.decode(container.streams.audio[0]):
                pieces += [out.to_ndarray().reshape(-1) for out in resampler.resample(frame)]
            pieces += [out.to_ndarray().reshape(-1) for out in resampler.resample(None)]
    except (av.error.FFmpegError, OSError) as exc:
        raise VideoError(video_id, f"cannot decode its audio ({exc})") from None
    return np.concatenate(pieces).astype(np.float32) if pieces else np.zeros(0, np.float32)


def chunks(audio: np.ndarray, seconds: float) -> Iterator[tuple[float, np.ndarray]]:
    """``(offset seconds, samples)`` pieces of at most ``seconds``; silent ones left out."""
    step = max(1, int(seconds * RATE))
    for start in range(0, len(audio), step):
        piece = audio[start : start + step]
        if len(piece) and float(np.sqrt(np.mean(piece.astype(np.float64) ** 2))) > SILENCE_RMS:
            yield start / RATE, piece


def wav_bytes(samples: np.ndarray) -> bytes:
    """16-bit PCM WAV of float samples in [-1, 1]."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(RATE)
        out.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    return buffer.getvalue()


def transcribe(
    path: str, video_id: str, cfg: FetchConfig, endpoint: Endpoint
) -> list[tuple[float, str]]:
    """``[(start seconds, text)]`` of the speech in the file at ``path``."""
    audio, seconds = load_audio(path, video_id), cfg.asr_chunk_seconds
    if cfg.asr_backend == "api":
        recognise = _api(video_id, cfg, endpoint)
    else:
        from action100m.models.whisper import load_whisper

        recognise, seconds = load_whisper(cfg).segments, min(seconds, 30.0)  # Whisper's window
    found: list[tuple[float, str]] = []
    for offset, piece in chunks(audio, seconds):
        found += [(offset + start, text) for start, text in recognise(piece)]
    log.info("video %s: speech recognised (%s, %s): %d segment(s) in %.0f s of audio", video_id,
             cfg.asr_backend, cfg.asr_model, len(found), len(audio) / RATE)  # fmt: skip
    return found


def _api(video_id: str, cfg: FetchConfig, endpoint: Endpoint):  # type: ignore[no-untyped-def]
    import openai

    client = openai.OpenAI(
        base_url=cfg.asr_base_url or endpoint.base_url,
        api_key=endpoint.key() or "EMPTY",
        timeout=max(60.0, cfg.socket_timeout),
        max_retries=cfg.retries,
    )

    def recognise(piece: np.ndarray) -> list[tuple[float, str]]:
        try:
            reply = client.audio.transcriptions.create(
                model=cfg.asr_model,
                file=("audio.wav", wav_bytes(piece), "audio/wav"),
                response_format="verbose_json",
                timestamp_granularities=["segment"],
            )
        except openai.APIStatusError as exc:
            message = f"video {video_id}: speech recognition ({cfg.asr_model}): {exc.message}"
            if exc.status_code in (408, 409, 429) or exc.status_code >= 500:
                raise ServiceError(message) from None
            raise PermanentError(message) from None
        except openai.APIError as exc:  # connection refused, timeouts
            raise ServiceError(f"video {video_id}: speech recognition: {exc}") from None
        segments = getattr(reply, "segments", None) or []
        if segments:
            return [(float(s.start), str(s.text)) for s in segments]
        return [(0.0, str(getattr(reply, "text", "") or ""))]

    return recognise
