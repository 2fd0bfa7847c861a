"""What the caption stage asks for, per node, and the cache that remembers the answers.

A request is identified by a hash of what determines its answer (model, prompt, frame times, frame
size, token limit) and nothing about how it is served, so a retried task, another backend or a
re-segmented tree with the same spans re-uses finished captions. The cache lives in the video's
folder of the store (``videos/{id}/caption/cache/{model-hash}.json``) and is written every few
seconds and before any failure leaves the task. Each write first merges in what is stored, so two
overlapping tasks of a video (a retry beside a straggler) keep each other's answers.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from action100m.config import CaptionConfig
from action100m.frames import iter_frames_at
from action100m.models.captioner import CaptionJob
from action100m.store import ArtifactStore
from action100m.tree import Node, Tree

log = logging.getLogger(__name__)

IMAGE_PROMPT = (
    "Describe this image in detail: the people, the objects, the setting, and what is happening."
)
ACTION_PROMPT = (
    "These {count} frames are sampled evenly, in order, from a {seconds:.1f}-second video clip. "
    "Name the main action in the clip as a short verb phrase (for example: slice an onion). "
    "Answer with the phrase only."
)
SEGMENT_PROMPT = (
    "These {count} frames are sampled evenly, in order, from a {seconds:.1f}-second video clip. "
    "Describe the clip in detail: the people, the objects, the setting, and the actions as they "
    "unfold over time."
)


@dataclass(frozen=True)
class NodeRequest:
    node_id: str
    field: str  # "caption", "segment_caption" (a leaf's clip) or "action" (the span's label)
    kind: str  # "frame" or "segment"
    prompt: str
    times: tuple[float, ...]
    key: str
    max_new_tokens: int
    fps: float | None = None  # the frames as one video at this rate; None: separate images


def segment_times(node: Node, count: int) -> list[float]:
    """``count`` times evenly spaced over the span: the middles of ``count`` equal parts, so the
    last one is a frame that exists (a span's end is the next span's first frame)."""
    step = node.duration / count
    return [round(node.start + (i + 0.5) * step, 3) for i in range(count)]


def request_key(
    config: CaptionConfig, prompt: str, times: list[float], tokens: int, video: bool = False
) -> str:
    identity: dict[str, Any] = {
        "model": config.model,
        "prompt": prompt,
        "times": times,
        "size": config.size,
        "max_new_tokens": tokens,
    }
    if video:  # images leave the key as it was before videos existed: cached answers stay valid
        identity["frames_as"] = "video"
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:32]


def plan_requests(tree: Tree, config: CaptionConfig) -> list[NodeRequest]:
    """Leaves: the middle frame with the image prompt. Other nodes (and leaves too, when
    ``leaf_segment_caption`` is on): ``config.frames`` frames with the video prompt, as one video
    or as images (``frames_as``). Every node,
    with ``action`` on: the same frames with the action prompt (a server's prefix cache serves
    the images a second time)."""
    plans = []
    for node in tree.nodes:
        wanted = []
        if node.is_leaf:
            wanted.append(("caption", "frame", IMAGE_PROMPT, [round(node.middle, 3)]))
        times = segment_times(node, config.frames)
        words = {"count": config.frames, "seconds": node.duration}
        if not node.is_leaf or config.leaf_segment_caption:
            field = "caption" if not node.is_leaf else "segment_caption"
            wanted.append((field, "segment", SEGMENT_PROMPT.format(**words), times))
        if config.action:
            wanted.append(("action", "segment", ACTION_PROMPT.format(**words), times))
        for field, kind, prompt, moments in wanted:
            tokens = config.action_max_new_tokens if field == "action" else config.max_new_tokens
            tokens = min(tokens, config.max_new_tokens)
            video = kind == "segment" and config.frames_as == "video"
            key = request_key(config, prompt, moments, tokens, video)
            fps = len(moments) / max(node.duration, 1e-3) if video else None
            plans.append(
                NodeRequest(node.node_id, field, kind, prompt, tuple(moments), key, tokens, fps)
            )
    return plans


def assemble_jobs(
    path: str,
    video_id: str,
    plans: list[NodeRequest],
    config: CaptionConfig,
    on_error: Callable[[NodeRequest, str], None],
) -> Iterator[CaptionJob]:
    """Decode every needed frame in one pass and hand out each request as soon as its last frame
    is in; frames of a request whose frame could not be decoded are dropped with ``on_error``."""
    waiting: dict[float, list[tuple[int, int]]] = {}
    for index, plan in enumerate(plans):
        for slot, moment in enumerate(plan.times):
            waiting.setdefault(moment, []).append((index, slot))
    frames: dict[int, list[np.ndarray | None]] = {
        index: [None] * len(plan.times) for index, plan in enumerate(plans)
    }
    missing = {index: len(plan.times) for index, plan in enumerate(plans)}
    side = (config.size, config.size)
    for moment, frame, problem in iter_frames_at(path, video_id, list(waiting), side):
        for index, slot in waiting.pop(moment, []):
            if index not in frames:  # already failed on an earlier frame
                continue
            if frame is None:
                del frames[index]
                on_error(plans[index], f"cannot read the frame at {moment:.3f} s: {problem}")
                continue
            frames[index][slot] = frame
            missing[index] -= 1
            if missing[index] == 0:
                ready = [f for f in frames.pop(index) if f is not None]
                plan = plans[index]
                yield CaptionJob(plan.key, plan.prompt, ready, plan.max_new_tokens, plan.fps)


class RequestCache:
    """Finished request results by request key, flushed to the store every ``every`` seconds.

    An entry never changes once written (the key fixes the answer's inputs), so merging is a plain
    union: a flush re-reads the file and adds what this task has, then writes the whole atomically
    through the store. Another task's write between that read and this write can still be lost,
    but only for that moment's new entries (their next flush writes them again), not wholesale."""

    def __init__(self, store: ArtifactStore, uri: str, every: float = 15.0) -> None:
        self.store, self.uri, self.every = store, uri, every
        self.entries: dict[str, dict[str, Any]] = self._stored()
        self.unsaved = 0
        self.saved_at = time.monotonic()

    def _stored(self) -> dict[str, dict[str, Any]]:
        """What earlier tries cached; an unreadable cache is only lost work, never a blocker."""
        if not self.store.exists(self.uri):
            return {}
        try:
            value = self.store.read_json(self.uri)
        except ValueError as exc:
            log.warning("caption cache %s unreadable (%s); starting it afresh", self.uri, exc)
            return {}
        return dict(value) if isinstance(value, dict) else {}

    def __contains__(self, key: str) -> bool:
        return key in self.entries

    def get(self, key: str) -> dict[str, Any]:
        return self.entries[key]

    def put(self, key: str, result: dict[str, Any]) -> None:
        self.entries[key] = result
        self.unsaved += 1
        if time.monotonic() - self.saved_at >= self.every:
            self.flush()

    def flush(self) -> None:
        if self.unsaved:
            self.entries = {**self._stored(), **self.entries}
            self.store.write_json(self.uri, self.entries)
            log.debug("caption cache: %d results saved to %s", len(self.entries), self.uri)
        self.unsaved = 0
        self.saved_at = time.monotonic()
