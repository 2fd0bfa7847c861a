"""Captioning through an OpenAI-compatible server (``vllm serve``): no model load in the task.

All of a video's requests go out concurrently (at most ``caption.concurrency`` in flight), greedy,
at most ``max_new_tokens``. A segment's frames go as one ``video_url`` part (``caption.frames_as``
``video``): the frames' JPEGs muxed, not re-encoded, into an MJPEG MP4 at the clip's frame rate, with
``mm_processor_kwargs.do_sample_frames=false`` so vLLM's Qwen3-VL processor keeps every frame and
stamps them with the clip's own times (vLLM decodes a ``video/mp4`` data URL with its video loader,
OpenCV by default, in every release since Qwen3-VL's; a ``video/jpeg`` list of frames came without
the metadata Qwen3-VL needs until vllm-project/vllm#37301, March 2026). Otherwise, and
for a leaf's middle frame, each frame is a base64 JPEG image part. Frames are JPEG-encoded in a
pool of threads (PIL lets go of the GIL while it encodes), and the body's JSON is written around
the base64 payloads, which are spliced in as bytes: no JSON encoder scans the megabytes under the
GIL, so building a body never stalls the other requests for long. The OpenAI client retries 5xx,
429 and timeouts with exponential backoff (``caption.max_retries``); an empty answer is asked
again the same number of times. What still fails becomes that node's error: a transient one
(5xx, 429, timeout, a malformed body) when a later try may succeed, so the stage fails the task
after the other nodes; a permanent one (a 4xx rejection, an empty answer) otherwise. A server that
cannot be reached at all raises ``ServiceError`` once the requests already in flight are done and
handed back, so the task fails, keeps what finished, and Airflow retries it later.

vLLM serves Qwen3-VL with the model's default pixel budget (at least 256x256 per image), so frames
smaller than that are upscaled by the server; the default 320x320 passes through unchanged. Its
video loader reads at most 32 frames of a video unless started with
``--media-io-kwargs '{"video": {"num_frames": -1}}'`` (docker-compose.yaml does).
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from fractions import Fraction
from typing import Any

import numpy as np

from action100m.config import CaptionConfig
from action100m.errors import ServiceError, redact
from action100m.models.caption_base import CaptionJob, CaptionOutcome, clean_caption

log = logging.getLogger(__name__)
JPEG_QUALITY = 95
SERVER_MIN_PIXELS = 256 * 256  # Qwen3-VL's image processor default "shortest_edge"
SLOT = "@@frames@@"  # where a base64 payload goes in a request's JSON (never in our prompts)


def jpeg(frame: np.ndarray) -> bytes:
    """The frame as a JPEG (PIL releases the GIL while it encodes)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def mjpeg_mp4(jpegs: list[bytes], fps: float, width: int, height: int) -> bytes:
    """The JPEGs as the frames of an MP4 at ``fps`` (stored as they are: no second encoding)."""
    import av

    rate = Fraction(fps).limit_denominator(1000)
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as container:
        stream = container.add_stream("mjpeg", rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuvj420p"
        for index, data in enumerate(jpegs):
            packet = av.Packet(data)
            packet.stream, packet.time_base = stream, 1 / rate
            packet.pts = packet.dts = index
            packet.is_keyframe = True
            container.mux(packet)
    return buffer.getvalue()


def spliced(body: dict[str, Any], payloads: list[bytes]) -> bytes:
    """``body`` as JSON with each ``SLOT`` replaced by the next payload, in order."""
    pieces = json.dumps(body, ensure_ascii=False).encode().split(SLOT.encode())
    joined = [pieces[0]]
    for payload, piece in zip(payloads, pieces[1:], strict=True):
        joined += [payload, piece]
    return b"".join(joined)


class ServerCaptioner:
    def __init__(self, config: CaptionConfig, api_key: str | None = None) -> None:
        from openai import OpenAI

        self.model = config.model
        self.base_url = redact(config.base_url)  # for messages; the client gets the real one
        self.concurrency = config.concurrency
        self.max_retries = config.max_retries
        self.timeout = config.timeout
        self.encoders: ThreadPoolExecutor | None = None  # JPEG encoding, while run() runs
        self.client = OpenAI(
            base_url=config.base_url,
            api_key=api_key or "EMPTY",
            timeout=config.timeout,
            max_retries=config.max_retries,
        )
        if config.size * config.size < SERVER_MIN_PIXELS:
            log.warning(
                "caption.size %d is below the server's pixel budget: frames get upscaled",
                config.size,
            )

    def check_server(self) -> None:
        """Fail fast, before any frame is decoded, when the server is down or serves another
        model."""
        import openai

        try:
            served = [model.id for model in self.client.models.list()]
        except openai.APIConnectionError as exc:
            raise ServiceError(f"caption server {self.base_url} is unreachable ({exc})") from exc
        except openai.APIStatusError as exc:  # a proxy without /models: go on and find out
            log.warning("caption server %s: /models answered %s", self.base_url, exc.status_code)
            return
        if served and self.model not in served:
            raise ServiceError(
                f"caption server {self.base_url} serves {served}, not {self.model!r}"
            )

    def run(self, jobs: Iterable[CaptionJob]) -> Iterator[tuple[CaptionJob, CaptionOutcome]]:
        self.check_server()
        pending = iter(jobs)
        in_flight: dict[Future[CaptionOutcome], CaptionJob] = {}
        stopped: Exception | None = None  # the first request that could not be served at all
        pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="caption")
        self.encoders = ThreadPoolExecutor(os.cpu_count() or 2, thread_name_prefix="caption-jpeg")
        try:
            while True:
                # Take new jobs only as slots free up (frames are decoded just in time), and none
                # once the server is gone.
                while stopped is None and len(in_flight) < self.concurrency:
                    job = next(pending, None)
                    if job is None:
                        break
                    in_flight[pool.submit(self.caption, job)] = job
                if not in_flight:
                    break
                finished, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                for future in finished:
                    job = in_flight.pop(future)
                    try:
                        outcome = future.result()
                    except Exception as exc:  # server gone: let the others finish, then raise
                        # (anything else unexpected too: what finished still gets cached)
                        stopped = stopped or exc
                        continue
                    yield job, outcome
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
            if self.encoders is not None:
                self.encoders.shutdown(wait=False, cancel_futures=True)
                self.encoders = None
        if stopped is not None:
            raise stopped

    def caption(self, job: CaptionJob) -> CaptionOutcome:
        """One request with retries; never raises except when the server cannot be reached."""
        import openai

        body = self.request_body(job)
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(min(8.0, 0.5 * 2**attempt))
            try:
                response = self.send(body)
            except openai.APITimeoutError:  # the client has already retried
                return CaptionOutcome.failed(
                    f"server timed out after {self.timeout:g} s", transient=True
                )
            except openai.APIConnectionError as exc:
                raise ServiceError(
                    f"caption server {self.base_url} is unreachable ({exc})"
                ) from exc
            except openai.APIStatusError as exc:
                # 408/409/429/5xx are the server's trouble; other 4xx reject this very request.
                status = exc.status_code
                return CaptionOutcome.failed(
                    f"server answered {status}: {str(exc.message)[:200]}",
                    transient=status in (408, 409, 429) or status >= 500,
                )
            except (openai.APIResponseValidationError, json.JSONDecodeError) as exc:
                return CaptionOutcome.failed(
                    f"malformed response from the server: {str(exc)[:200]}", transient=True
                )
            if isinstance(response, str):  # a body that is not JSON at all (a proxy's page)
                return CaptionOutcome.failed(
                    f"malformed response from the server: {response[:200]!r}", transient=True
                )
            caption = clean_caption(_answer_text(response))
            if caption:
                usage = getattr(response, "usage", None)
                return CaptionOutcome(
                    caption=caption,
                    tokens_in=int(getattr(usage, "prompt_tokens", 0) or 0),
                    tokens_out=int(getattr(usage, "completion_tokens", 0) or 0),
                )
            log.info("empty caption for request %s (attempt %d)", job.key[:8], attempt + 1)
        return CaptionOutcome.failed("empty caption")

    def request_body(self, job: CaptionJob) -> bytes:
        """The request's JSON, greedy. The megabytes of base64 frames are spliced in, not passed
        through a JSON encoder that would scan them under the GIL (12-18 ms a request here)."""
        pool = self.encoders
        jpegs = list(pool.map(jpeg, job.frames)) if pool else [jpeg(f) for f in job.frames]
        extra: dict[str, Any] = {}
        if job.fps is None:
            payloads = [base64.b64encode(data) for data in jpegs]
            url = {"url": f"data:image/jpeg;base64,{SLOT}"}
            content: list[dict[str, Any]] = [{"type": "image_url", "image_url": url}] * len(jpegs)
        else:
            height, width = job.frames[0].shape[:2]
            payloads = [base64.b64encode(mjpeg_mp4(jpegs, job.fps, width, height))]
            url = {"url": f"data:video/mp4;base64,{SLOT}"}
            content = [{"type": "video_url", "video_url": url}]
            # vLLM's loader marks a video it read whole for re-sampling at the model's 2 fps.
            extra["mm_processor_kwargs"] = {"do_sample_frames": False}
        content = [*content, {"type": "text", "text": job.prompt}]
        body = {
            "model": self.model,
            "messages": [{"role": "user", "content": content}],
            "max_tokens": job.max_new_tokens,
            "temperature": 0.0,
            **extra,
        }
        return spliced(body, payloads)

    def send(self, body: bytes) -> Any:
        """POST the body as a chat completion: the client's retries, errors and parsing."""
        from openai.types.chat import ChatCompletion

        return self.client.post("/chat/completions", cast_to=ChatCompletion, content=body)


def _answer_text(response: Any) -> str | None:
    """The first choice's text; None for a body without one (no or null ``choices``, a null
    message: the client does not validate bodies), which then counts as an empty answer."""
    choices = getattr(response, "choices", None)
    choice = choices[0] if isinstance(choices, list) and choices else None
    content = getattr(getattr(choice, "message", None), "content", None)
    return content if isinstance(content, str) else None
