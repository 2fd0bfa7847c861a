"""Where a video and its metadata come from: IDs, paths and URIs resolved to a source URI, and the
metadata JSON copied next to the video's artifacts.

Whoever may trigger a DAG run may not thereby read the workers' files: under Airflow every
location a run's parameters name (sources, metadata, video lists, manifests) must lie under the
store's root or a prefix listed in ``ACTION100M_ALLOWED_SOURCES`` (:func:`check_allowed`), and
only the metadata fields the pipeline knows are kept (:func:`clean_metadata`).
"""

from __future__ import annotations

import logging
import os
import re
import string
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from action100m.errors import PermanentError, VideoError
from action100m.layout import check_video_id
from action100m.store import ArtifactStore, normalise_uri

log = logging.getLogger(__name__)
ALLOWED_SOURCES_ENV = "ACTION100M_ALLOWED_SOURCES"
# The release's metadata fields, each with the types it may have; anything else is dropped.
METADATA_FIELDS: dict[str, tuple[type, ...]] = {
    "title": (str,),
    "description": (str,),
    "view_count": (int,),
    "like_count": (int,),
    "duration": (int, float),
    "upload_date": (str,),
    "transcript": (list,),
}
YOUTUBE_ID = re.compile(r"[A-Za-z0-9_-]{11}")
MAX_TEXT = 100_000  # characters of one metadata string
MAX_TRANSCRIPT_LINES = 50_000


def allowed_locations(store_root: str, environ: dict[str, str] | None = None) -> list[str]:
    """Where a run may read from: the store's root and each prefix in ACTION100M_ALLOWED_SOURCES
    (separated by commas or spaces)."""
    env = os.environ if environ is None else environ
    extra = [p for p in re.split(r"[\s,]+", env.get(ALLOWED_SOURCES_ENV, "")) if p]
    return [_canonical(normalise_uri(p)) for p in (store_root, *extra)]


def _canonical(uri: str) -> str:
    """A local URI with ``..`` and symbolic links resolved (where it really points)."""
    if not uri.startswith("file://"):
        return uri.rstrip("/")
    return Path(unquote(urlsplit(uri).path)).resolve().as_uri()


def check_allowed(uri: str, allowed: Sequence[str], what: str) -> str:
    """``uri`` (normalised) if it lies under one of ``allowed``, else a one-line PermanentError."""
    target = _canonical(normalise_uri(uri))
    dots = any(part in (".", "..") for part in target.split("://", 1)[-1].split("/"))
    inside = any(target == root or target.startswith(root.rstrip("/") + "/") for root in allowed)
    if dots or not inside:
        raise PermanentError(
            f"{what} {uri} is outside the locations runs may read (the store, and "
            f"{ALLOWED_SOURCES_ENV}: {', '.join(allowed[1:]) or 'not set'})"
        )
    return target


def clean_metadata(video_id: str, value: dict[str, Any]) -> dict[str, Any]:
    """The known fields of a video's metadata, type-checked and bounded; the rest is dropped
    (with a warning), so nothing else of a file reaches the document and the viewer."""
    kept: dict[str, Any] = {}
    for name, kinds in METADATA_FIELDS.items():
        field = value.get(name)
        if field is None:
            continue
        if not isinstance(field, kinds) or isinstance(field, bool):
            log.warning("video %s: metadata field %s is not %s; dropped", video_id, name,
                        " or ".join(k.__name__ for k in kinds))  # fmt: skip
            continue
        kept[name] = field[:MAX_TEXT] if isinstance(field, str) else field
    if "transcript" in kept:
        kept["transcript"] = _transcript(kept["transcript"])
    dropped = sorted(set(value) - set(METADATA_FIELDS))
    if dropped:
        log.warning("video %s: metadata fields %s are not used; dropped", video_id,
                    ", ".join(map(str, dropped[:10])))  # fmt: skip
    return kept


def _transcript(lines: list[Any]) -> list[Any]:
    """Lines as text, or ``{time, text}`` with a number or numeric-string time; others dropped."""
    kept: list[Any] = []
    for line in lines[:MAX_TRANSCRIPT_LINES]:
        if isinstance(line, str):
            kept.append(line[:MAX_TEXT])
        elif isinstance(line, dict) and isinstance(line.get("text"), str):
            time = line.get("time")
            if isinstance(time, int | float | str) and not isinstance(time, bool):
                kept.append({"time": time, "text": line["text"][:MAX_TEXT]})
    return kept


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


def is_fetchable(uri: str | None) -> bool:
    """Whether ``uri`` is a web page or file the fetch stage downloads (``http(s)://``), as
    opposed to a file or an object store URI that embed reads directly."""
    return bool(uri) and urlsplit(str(uri)).scheme in ("http", "https")


def youtube_id(url: str) -> str | None:
    """The video ID of a YouTube URL (watch, youtu.be, shorts, embed, live), else None."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if host == "youtu.be" or host.endswith(".youtu.be"):
        found = parts.path.strip("/").split("/")[0]
    elif host == "youtube.com" or host.endswith((".youtube.com", ".youtube-nocookie.com")):
        query = parse_qs(parts.query).get("v")
        path = parts.path.strip("/").split("/")
        found = query[0] if query else path[1] if len(path) > 1 and path[0] in (
            "shorts", "embed", "live", "v") else ""  # fmt: skip
    else:
        return None
    return found if YOUTUBE_ID.fullmatch(found) else None


def watch_url(video_id: str) -> str:
    return f"https://www.youtube.com/watch?v={video_id}"


def resolve_video(video: str, source_template: str | None = None) -> tuple[str, str]:
    """``(video_id, uri)`` for a path, a URI, or a bare ID: resolved through ``source_template``
    (e.g. ``s3://bucket/howto100m/{video_id}.mp4``), else, for a YouTube ID (HowTo100M's IDs),
    its watch page, which the fetch stage downloads. A path's ID is its file stem, a YouTube
    URL's its video ID. Every ID passes :func:`~action100m.layout.check_video_id`."""
    if is_fetchable(video):
        name = (
            youtube_id(video)
            or Path(unquote(urlsplit(video).path)).stem
            or urlsplit(video).hostname
        )
        return check_video_id(str(name)), video.strip()
    if looks_like_location(video):
        uri = normalise_uri(video)
        return check_video_id(Path(uri.split("://", 1)[1]).stem), uri
    check_video_id(video)
    if source_template:
        return video, normalise_uri(fill_template(source_template, video, "source"))
    if YOUTUBE_ID.fullmatch(video):
        return video, watch_url(video)
    raise VideoError(
        video, "a bare video ID needs a source template with {video_id} (or is a YouTube ID)"
    )


def save_metadata(store: ArtifactStore, video_id: str, uri: str | None) -> str | None:
    """Copy the known fields of the video's metadata JSON at ``uri`` (a template already filled:
    :func:`fill_template`) next to its artifacts. A missing file is not an error: the LLM then
    works without metadata."""
    if not uri:
        return None
    source = normalise_uri(uri)
    folder = source.rsplit("/", 1)[0]
    reader = ArtifactStore(folder, store.options_for(source))
    if not reader.exists(source):
        log.warning("video %s: no metadata at %s; continuing without it", video_id, source)
        return None
    try:
        value = reader.read_json(source)
    except ValueError as exc:
        raise VideoError(video_id, f"metadata {source} is not JSON ({exc})") from None
    if not isinstance(value, dict):
        raise VideoError(video_id, f"metadata {source} is not a JSON object")
    target = store.metadata_uri(video_id)
    store.write_json(target, clean_metadata(video_id, value))
    return target


def load_metadata(store: ArtifactStore, video_id: str) -> dict[str, object]:
    uri = store.metadata_uri(video_id)
    return dict(store.read_json(uri)) if store.exists(uri) else {}
