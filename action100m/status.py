"""A video's status: one record, computed by the publish stage from the stage markers and written
next to the document (``status.json``). The run report, the backfill's skip logic and the viewer
read it; nothing else decides whether a video is finished."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any

from action100m.errors import VideoError
from action100m.store import ArtifactStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VideoStatus:
    """``stages``: each stage that leaves output, finished or not; ``skipped``: why an unfinished
    one is (``{"aggregate": "no LLM configured ..."}``); complete once every stage finished."""

    video_id: str
    stages: dict[str, bool]
    skipped: dict[str, str] = field(default_factory=dict)
    document: str | None = None
    published_at: float | None = None

    @property
    def complete(self) -> bool:
        return all(self.stages.values())

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "complete": self.complete}

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> VideoStatus:
        return cls(
            video_id=str(value.get("video_id", "")),
            stages=dict(value.get("stages") or {}),
            skipped=dict(value.get("skipped") or {}),
            document=value.get("document"),
            published_at=value.get("published_at"),
        )


def read_status(store: ArtifactStore, video_id: str) -> dict[str, Any] | None:
    """The video's ``status.json`` as written (None: never published)."""
    uri = store.status_uri(video_id)
    try:
        value = store.read_json(uri)
    except FileNotFoundError:
        return None
    except ValueError as exc:  # not JSON: as if never published, so it is published again
        log.warning("video %s: unreadable status record %s (%s); treated as unpublished",
                    video_id, uri, exc)  # fmt: skip
        return None
    return value if isinstance(value, dict) else None


def is_complete(store: ArtifactStore, video_id: str) -> bool:
    """Whether the video is finished: published with every stage, aggregation included.

    ``status.json`` says so in one small read. A store written before status records existed
    (no status, or one an ``aggregate``/``import`` of that time outdated) is decided by the
    document's ``pipeline.stages``; no document: not finished."""
    try:
        status = read_status(store, video_id)
    except VideoError:  # a path or URI listed where IDs belong: the run resolves (or refuses) it
        return False
    if status is not None and status.get("complete"):
        return True
    uri = store.document_uri(video_id)
    if not store.exists(uri):
        return False
    stages = (store.read_json(uri).get("pipeline") or {}).get("stages")
    if not isinstance(stages, dict):  # older than pipeline.stages: only the status can tell
        return status is None
    return all(bool(done) for done in stages.values())
