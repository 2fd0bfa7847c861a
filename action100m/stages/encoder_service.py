"""The encoder service: V-JEPA 2 loaded once per GPU and kept, embedding videos for many tasks.

``action100m serve-encoder`` runs it on LitServe: one inference worker per device, each loading
the encoder its settings name (``embed.*``) before it takes requests. A request names a video
(ID and source URI) and the run's embed settings; the worker runs the same code as the local path
(:func:`~action100m.stages.embed.encode_video`: probe, decode, windows, encode) and streams JSON
lines back (:mod:`~action100m.stages.encoder_client`): progress per batch of windows, then the
per-frame vectors or the error. Writing them stays the task's (the stage runner owns completion).

It reads only what a run may read (:func:`~action100m.sources.check_allowed`: the store's root
and ``ACTION100M_ALLOWED_SOURCES``), serves only its own model, binds to loopback unless told
otherwise, and, given a key, refuses requests without it.
"""

from __future__ import annotations

import hmac
import logging
import queue
import signal
import threading
from collections.abc import Iterator
from typing import Any

import litserve
from fastapi import Header, HTTPException

from action100m.config import EmbedConfig, Settings
from action100m.errors import PermanentError, redact_logs
from action100m.layout import check_video_id
from action100m.sources import allowed_locations, check_allowed
from action100m.stages.embed import encode_video, load_encoder
from action100m.stages.encoder_client import API_PATH, error_line
from action100m.store import ArtifactStore

log = logging.getLogger("action100m.encoder_service")
DEFAULT_PORT = 8100
_DONE = object()


class EncoderAPI(litserve.LitAPI):  # type: ignore[misc]
    """One inference worker: the encoder, the store and the locations it may read."""

    def __init__(self, settings: Settings, api_key: str | None = None) -> None:
        super().__init__(api_path=API_PATH, stream=True)
        self.served = settings.embed
        self.store_root = settings.store
        self.api_key = api_key

    def setup(self, device: str) -> None:
        """In the worker's own (spawned) process: logging, the device, the encoder, loaded now."""
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
        redact_logs()
        if str(device).startswith("cuda:"):  # one worker per GPU: "cuda" is this worker's
            import torch

            torch.cuda.set_device(int(str(device).split(":")[1]))
        self.store = ArtifactStore(self.store_root)
        self.allowed = allowed_locations(self.store.root)
        load_encoder(self.served)
        log.info("encoder service worker ready on %s: %s", device, self.served.model)

    def authorize(self, authorization: str | None = Header(default=None)) -> None:
        """Every route (LitServe's dependency): with a key, ``Authorization: Bearer <key>``."""
        if self.api_key and not hmac.compare_digest(
            (authorization or "").encode(), f"Bearer {self.api_key}".encode()
        ):
            raise HTTPException(status_code=401, detail="missing or wrong key")

    def predict(self, request: Any) -> Iterator[dict[str, Any]]:
        """JSON lines for one video: progress, then the result or the error."""
        try:
            video_id, uri, cfg, min_duration = self.parse(request)
        except (PermanentError, ValueError) as exc:  # a bad request: the same next time
            yield error_line(exc if isinstance(exc, PermanentError) else PermanentError(str(exc)))
            return
        yield from self.encode(video_id, uri, cfg, min_duration)

    def encode_response(self, lines: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        yield from lines

    def parse(self, request: Any) -> tuple[str, str, EmbedConfig, float]:
        """The request's video, its checked source, and the settings to run: this service's,
        with the run's settings that shape the output (frame step, window, stride)."""
        if not isinstance(request, dict):
            raise PermanentError("the request is not a JSON object")
        video_id = check_video_id(request.get("video_id"))  # type: ignore[arg-type]
        uri = request.get("uri")
        if not isinstance(uri, str):
            raise PermanentError("the request names no source URI")
        check_allowed(uri, self.allowed, "source")  # the client names the video
        asked = EmbedConfig.model_validate(request.get("embed") or {})
        if asked.model != self.served.model:
            raise PermanentError(
                f"this encoder service serves {self.served.model}, the run asks for "
                f"embed.model={asked.model}"
            )
        cfg = self.served.model_copy(update=asked.identity())
        return video_id, uri, cfg, float(request.get("min_duration") or 0.0)

    def encode(
        self, video_id: str, uri: str, cfg: EmbedConfig, min_duration: float
    ) -> Iterator[dict[str, Any]]:
        """Run the video in a thread while its progress is streamed from this one."""
        progress: queue.Queue[Any] = queue.Queue()
        outcome: dict[str, Any] = {}

        def work() -> None:
            try:
                outcome["result"] = encode_video(
                    self.store, uri, video_id, cfg, min_duration,
                    lambda done, total: progress.put({"progress": [done, total]}),
                )  # fmt: skip
            except Exception as exc:  # sent to the client as its kind of error
                outcome["error"] = exc
            finally:
                progress.put(_DONE)

        worker = threading.Thread(target=work, name=f"encode-{video_id}", daemon=True)
        worker.start()
        while (line := progress.get()) is not _DONE:
            yield line
        worker.join()
        if "error" in outcome:
            log.warning("video %s: %s", video_id, outcome["error"])
            yield error_line(outcome["error"])
        else:
            yield {"result": outcome["result"].to_json()}


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def serve(
    settings: Settings,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    api_key: str | None = None,
    workers_per_device: int = 1,
) -> None:
    """Run the service until stopped: ``workers_per_device`` encoders on each device."""
    signal.signal(signal.SIGTERM, _interrupt)  # `docker stop`: LitServe's graceful shutdown
    accelerator = {"auto": "auto", "cpu": "cpu", "cuda": "cuda"}[settings.embed.device]
    server = litserve.LitServer(
        EncoderAPI(settings, api_key),
        accelerator=accelerator,
        devices="auto",
        workers_per_device=workers_per_device,
        timeout=False,  # a request may wait behind another video: the client bounds it
    )
    server.run(host=host, port=port, generate_client_file=False, num_api_servers=1,
               log_level="warning")  # fmt: skip
