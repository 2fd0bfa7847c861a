"""Where a video and its metadata come from: IDs, paths and URIs resolved to a source URI, and the
metadata JSON copied next to the video's artifacts."""

from __future__ import annotations

import logging
from pathlib import Path

from action100m.errors import VideoError
from action100m.store import ArtifactStore, normalise_uri

log = logging.getLogger(__name__)


def looks_like_location(video: str) -> bool:
    """A path or a URI (else a bare video ID)."""
    return "://" in video or "/" in video or Path(video).suffix != ""


def resolve_video(video: str, source_template: str | None = None) -> tuple[str, str]:
    """``(video_id, uri)`` for a path, a URI, or a bare ID resolved through ``source_template``
    (e.g. ``s3://bucket/howto100m/{video_id}.mp4``). A path's ID is its file stem."""
    if looks_like_location(video):
        uri = normalise_uri(video)
        return Path(uri.split("://", 1)[1]).stem, uri
    if not source_template:
        raise VideoError(video, "a bare video ID needs a source template with {video_id}")
    if "{video_id}" not in source_template:
        raise VideoError(video, f"source template {source_template!r} lacks {{video_id}}")
    return video, normalise_uri(source_template.format(video_id=video))


def save_metadata(store: ArtifactStore, video_id: str, template: str | None) -> str | None:
    """Copy the video's metadata JSON (title, description, transcript) next to its artifacts.
    A template whose file is missing is not an error: the LLM then works without metadata."""
    if not template:
        return None
    source = normalise_uri(template.format(video_id=video_id))
    folder = source.rsplit("/", 1)[0]
    reader = ArtifactStore(folder, store.options_for(source))
    if not reader.exists(source):
        log.warning("video %s: no metadata at %s; continuing without it", video_id, source)
        return None
    value = reader.read_json(source)
    if not isinstance(value, dict):
        raise VideoError(video_id, f"metadata {source} is not a JSON object")
    target = store.metadata_uri(video_id)
    store.write_json(target, value)
    return target


def load_metadata(store: ArtifactStore, video_id: str) -> dict[str, object]:
    uri = store.metadata_uri(video_id)
    return dict(store.read_json(uri)) if store.exists(uri) else {}
