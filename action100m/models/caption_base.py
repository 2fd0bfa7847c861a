"""What every captioning backend speaks: jobs in, outcomes out (the factory: ``captioner``).

One interface over the three captioning backends (``vllm-server``, ``vllm``, ``transformers``).

A backend takes a stream of ``CaptionJob`` (a prompt and its frames, already at the final size) and
yields each job back with its ``CaptionOutcome``, in whatever order it finishes them; how it
parallelises (concurrent HTTP requests, engine batches, padded batches) is its own business. A
node-level failure is an outcome with ``error`` set (``transient`` when a later retry may succeed:
5xx, 429, timeouts); a backend that cannot work at all (server down) raises ``ServiceError`` once
the jobs already running are done, and the stage keeps everything finished so far.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CaptionJob:
    key: str  # the request hash; outcomes are matched back to nodes by it
    prompt: str
    frames: list[np.ndarray]  # H x W x 3 uint8, already resized to the captioning size
    max_new_tokens: int
    # Frames per second of the clip when the frames go in as one video (evenly spaced over the
    # span, so the model's timestamps are the clip's); None: each frame is a separate image.
    fps: float | None = None


@dataclass(frozen=True)
class CaptionOutcome:
    caption: str | None
    tokens_in: int = 0
    tokens_out: int = 0
    error: str | None = None
    # The service, not the request, failed (5xx, 429, timeout): the node is not done, and the
    # stage fails the task after the others so that Airflow's retry asks again.
    transient: bool = False

    @classmethod
    def failed(cls, error: str, *, transient: bool = False) -> CaptionOutcome:
        return cls(caption=None, error=error, transient=transient)


class Captioner(Protocol):
    model: str

    def run(self, jobs: Iterable[CaptionJob]) -> Iterator[tuple[CaptionJob, CaptionOutcome]]: ...


def chat_messages(prompt: str, images: list[Any], video: bool = False) -> list[dict[str, Any]]:
    """One user turn: the images in order (or one video part), then the prompt (Qwen's chat
    templates emit one vision placeholder per ``image`` part and one per ``video`` part)."""
    content: list[dict[str, Any]] = (
        [{"type": "video"}] if video else [{"type": "image", "image": image} for image in images]
    )
    content.append({"type": "text", "text": prompt})
    return [{"role": "user", "content": content}]


def clean_caption(text: str | None) -> str | None:
    """The caption with surrounding whitespace removed; None when the model said nothing."""
    text = (text or "").strip()
    return text or None


def batched_by_frame_count(
    jobs: Iterable[CaptionJob], batch_size: int
) -> Iterator[list[CaptionJob]]:
    """Groups of up to ``batch_size`` jobs with the same number of frames, sent the same way
    (leaves with leaves, segments with segments), so padded batches stay tight; partial groups
    come out at the end."""
    pending: dict[tuple[int, bool], list[CaptionJob]] = {}
    for job in jobs:
        shape = (len(job.frames), job.fps is not None)
        group = pending.setdefault(shape, [])
        group.append(job)
        if len(group) >= batch_size:
            yield pending.pop(shape)
    yield from pending.values()
