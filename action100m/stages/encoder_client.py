"""The embed stage's side of the encoder service (``embed.backend=service``).

The service (:mod:`action100m.stages.encoder_service`) keeps V-JEPA 2 loaded across tasks; a task
sends it the video's URI and its embed settings, logs the progress lines it streams back and gets
the per-frame vectors, which the stage's runner writes as it does the local path's. The reply is
JSON lines: ``{"progress": [done, total]}`` per batch of windows, then one ``{"result": ...}`` or
``{"error": ...}``. Errors keep their kind across the wire: a bad video is the same one-line
:class:`VideoError` the local path raises (not retried); a service that cannot be reached, or
that stops mid-answer, is a :class:`ServiceError` (retried).
"""

from __future__ import annotations

import base64
import io
import json
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from action100m.config import EmbedConfig
from action100m.errors import (
    Action100MError,
    ConfigError,
    PermanentError,
    ServiceError,
    VideoError,
)
from action100m.services import Endpoint

log = logging.getLogger("action100m.stages.embed")
API_PATH = "/embed"
CONNECT_TIMEOUT = 10.0
# Seconds without a line before the task gives up (and Airflow retries): a request can wait in
# the service's queue behind another video, so generous.
READ_TIMEOUT = 900.0


@dataclass
class Encoded:
    """One video through the encoder: sampled frame times, (frames, width) float32 vectors, the
    frame rate and the duration (declared, else decoded)."""

    times: list[float]
    features: np.ndarray
    fps: float
    duration: float

    def to_json(self) -> dict[str, Any]:
        buffer = io.BytesIO()
        np.save(buffer, np.ascontiguousarray(self.features, np.float32), allow_pickle=False)
        return {"times": self.times, "fps": self.fps, "duration": self.duration,
                "features": base64.b64encode(buffer.getvalue()).decode()}  # fmt: skip

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> Encoded:
        raw = base64.b64decode(value["features"])
        features = np.load(io.BytesIO(raw), allow_pickle=False)
        return cls(list(value["times"]), features, float(value["fps"]), float(value["duration"]))


def error_line(exc: BaseException) -> dict[str, Any]:
    """The ``{"error": ...}`` line for ``exc``: its kind (a video's, permanent, else retriable)
    and its one-line message."""
    if isinstance(exc, VideoError):
        return {"error": {"video_id": exc.video_id, "problem": exc.problem, "permanent": True}}
    message = " ".join(str(exc).split())
    if not isinstance(exc, Action100MError):  # an unexpected one: say what it was
        message = f"{type(exc).__name__}: {message}".rstrip(": ")
    permanent = isinstance(exc, PermanentError | ConfigError)  # as Airflow's tasks judge it
    return {"error": {"message": message[:400], "permanent": permanent}}


def raise_error(value: dict[str, Any], where: str) -> None:
    """Raise the error an ``{"error": ...}`` line describes, as its own kind."""
    if value.get("video_id") is not None:
        raise VideoError(str(value["video_id"]), str(value.get("problem")))
    message = f"{where}: {value.get('message')}"
    raise PermanentError(message) if value.get("permanent") else ServiceError(message)


def service_url(endpoint: Endpoint, cfg: EmbedConfig) -> str:
    """The service's address: the connection's (``Services.encoder``), else embed.service_url."""
    return (endpoint.base_url or cfg.service_url).rstrip("/")


def encode_remote(
    endpoint: Endpoint, uri: str, video_id: str, cfg: EmbedConfig, min_duration: float
) -> Encoded:
    """The video at ``uri`` through the encoder service, its progress in this task's log."""
    import httpx

    url = service_url(endpoint, cfg)
    where = f"encoder service {url}"  # errors redact credentials in a URL
    request = {"video_id": video_id, "uri": uri, "min_duration": min_duration,
               "embed": cfg.model_dump(mode="json")}  # fmt: skip
    headers = {"Authorization": f"Bearer {endpoint.key()}"} if endpoint.key() else {}
    timeout = httpx.Timeout(READ_TIMEOUT, connect=CONNECT_TIMEOUT)
    try:
        with httpx.stream(
            "POST", url + API_PATH, json=request, headers=headers, timeout=timeout
        ) as response:
            if response.status_code in (401, 403):
                raise PermanentError(f"{where} refused the key (HTTP {response.status_code})")
            if response.status_code != 200:
                raise ServiceError(f"{where} answered HTTP {response.status_code}")
            for line in response.iter_lines():
                if line.strip():
                    result = _read_line(json.loads(line), video_id, where)
                    if result is not None:
                        return result
    except (httpx.HTTPError, json.JSONDecodeError) as exc:
        detail = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise ServiceError(f"video {video_id}: {where} unreachable or cut off: {detail}") from None
    raise ServiceError(f"video {video_id}: {where} ended its answer without a result")


def _read_line(line: dict[str, Any], video_id: str, where: str) -> Encoded | None:
    """A progress line logged (None), an error raised, or the result."""
    if "progress" in line:
        done, total = line["progress"]
        log.info("video %s: encoded %d/~%d windows (encoder service)", video_id, done, total)
        return None
    if "error" in line:
        raise_error(line["error"], f"video {video_id}: {where}")
    return Encoded.from_json(line["result"])
