"""Captioning through an OpenAI-compatible server (``vllm serve``): no model load in the task.

All of a video's requests go out concurrently (at most ``caption.concurrency`` in flight), each
frame a base64 JPEG image part, greedy, at most ``max_new_tokens``. The OpenAI client retries 5xx,
429 and timeouts with exponential backoff (``caption.max_retries``); an empty answer is asked
again the same number of times. What still fails becomes that node's error. A server that cannot
be reached at all raises ``ServiceError``: the task fails and Airflow retries it later.

vLLM serves Qwen3-VL with the model's default pixel budget (at least 256x256 per image), so frames
smaller than that are upscaled by the server; the default 320x320 passes through unchanged.
"""

from __future__ import annotations

import base64
import io
import logging
import os
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

import numpy as np

from action100m.config import CaptionConfig
from action100m.errors import ServiceError
from action100m.models.captioner import CaptionJob, CaptionOutcome, clean_caption

log = logging.getLogger(__name__)
JPEG_QUALITY = 95
SERVER_MIN_PIXELS = 256 * 256  # Qwen3-VL's image processor default "shortest_edge"


def image_part(frame: np.ndarray) -> dict[str, Any]:
    """An OpenAI chat image part holding the frame as a base64 JPEG data URL."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="JPEG", quality=JPEG_QUALITY)
    encoded = base64.b64encode(buffer.getvalue()).decode("ascii")
    return {"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{encoded}"}}


class ServerCaptioner:
    def __init__(self, config: CaptionConfig) -> None:
        from openai import OpenAI

        self.model = config.model
        self.base_url = config.base_url
        self.concurrency = config.concurrency
        self.max_retries = config.max_retries
        self.timeout = config.timeout
        self.client = OpenAI(
            base_url=config.base_url,
            api_key=os.environ.get(config.api_key_env) or "EMPTY",
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
        pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="caption")
        try:
            while True:
                # Take new jobs only as slots free up: frames are decoded just in time.
                while len(in_flight) < self.concurrency:
                    job = next(pending, None)
                    if job is None:
                        break
                    in_flight[pool.submit(self.caption, job)] = job
                if not in_flight:
                    return
                finished, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                for future in finished:
                    job = in_flight.pop(future)
                    yield job, future.result()  # ServiceError (server gone) propagates
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

    def caption(self, job: CaptionJob) -> CaptionOutcome:
        """One request with retries; never raises except when the server cannot be reached."""
        import openai

        content = [image_part(frame) for frame in job.frames]
        content.append({"type": "text", "text": job.prompt})
        messages: Any = [{"role": "user", "content": content}]
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(min(8.0, 0.5 * 2**attempt))
            try:
                response = self.client.chat.completions.create(
                    model=self.model,
                    messages=messages,
                    max_tokens=job.max_new_tokens,
                    temperature=0.0,
                )
            except openai.APITimeoutError:  # the client has already retried
                return CaptionOutcome.failed(f"server timed out after {self.timeout:g} s")
            except openai.APIConnectionError as exc:
                raise ServiceError(
                    f"caption server {self.base_url} is unreachable ({exc})"
                ) from exc
            except openai.APIStatusError as exc:
                return CaptionOutcome.failed(
                    f"server answered {exc.status_code}: {str(exc.message)[:200]}"
                )
            choice = response.choices[0] if response.choices else None
            caption = clean_caption(choice.message.content if choice else None)
            if caption:
                usage = response.usage
                return CaptionOutcome(
                    caption=caption,
                    tokens_in=usage.prompt_tokens if usage else 0,
                    tokens_out=usage.completion_tokens if usage else 0,
                )
            log.info("empty caption for request %s (attempt %d)", job.key[:8], attempt + 1)
        return CaptionOutcome.failed("empty caption")
