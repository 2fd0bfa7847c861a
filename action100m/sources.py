"""Where a video and its metadata come from: IDs, paths and URIs resolved to a source URI, and the
metadata JSON copied next to the video's artifacts."""

from __future__ import annotations

import logging
import string
from pathlib import Path

from action100m.errors import PermanentError, VideoError
from action100m.layout import check_video_id
from action100m.store import ArtifactStore, normalise_uri

log = logging.getLogger(__name__)


def looks_like_location(video: str) -> bool:
    """A path or a URI (else a bare video ID)."""
    return "://" in video or "/" in video or Path(video).suffix != ""


def fill_template(template: str, video_id: str, what: str) -> str:
    """``template`` with ``{video_id}`` filled in. Any other placeholder (``{}``, ``{name}``,
    ``{video_id.__class__}``, a format spec) or a stray brace is a one-line error, never a
    traceback or a silent guess."""
    try:
        fields = [(name, spec, conv) for _, name, spec, conv in string.Formatter().parse(template)
                  if name is not None]  # fmt: skip
    except ValueError as exc:
        raise PermanentError(f"{what} template {template!r}: {exc}") from None
    if not fields or any(f != ("video_id", "", None) for f in fields):
        raise PermanentError(
            f"{what} template {template!r}: use {{video_id}} (and no other placeholder)"
        )
    return template.format(video_id=check_video_id(video_id))


def resolve_video(video: str, source_template: str | None = None) -> tuple[str, str]:
    """``(video_id, uri)`` for a path, a URI, or a bare ID resolved through ``source_template``
    (e.g. ``s3://bucket/howto100m/{video_id}.mp4``). A path's ID is its file stem. Every ID
    passes :func:`~action100m.layout.check_video_id`."""
    if looks_like_location(video):
        uri = normalise_uri(video)
        return check_video_id(Path(uri.split("://", 1)[1]).stem), uri
    check_video_id(video)
    if not source_template:
        raise VideoError(video, "a bare video ID needs a source template with {video_id}")
    return video, normalise_uri(fill_template(source_template, video, "source"))


def save_metadata(store: ArtifactStore, video_id: str, template: str | None) -> str | None:
    """Copy the video's metadata JSON (title, description, transcript) next to its artifacts.
    A template whose file is missing is not an error: the LLM then works without metadata."""
    if not template:
        return None
    source = normalise_uri(fill_template(template, video_id, "metadata"))
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
