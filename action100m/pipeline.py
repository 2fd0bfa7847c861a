"""The stages in order, for one video, over artifact URIs: what the CLI and the DAG tasks call.

Every ``run_*`` skips work whose ``_SUCCESS`` marker exists and returns its stage folder URI, so a
rerun or an Airflow retry only does what is missing. Heavy libraries load inside the stages.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from action100m.config import Settings
from action100m.document import build_document, metadata_uri
from action100m.errors import VideoError
from action100m.stages.embed import run_embed
from action100m.stages.segment import run_segment
from action100m.store import ArtifactStore, normalise_uri

log = logging.getLogger(__name__)
# Written by publish next to the document: whether the video is finished (every stage ran,
# aggregation included), so a backfill tells finished videos apart with one small read.
STATUS_FILE = "status.json"
__all__ = [
    "resolve_video",
    "save_metadata",
    "run_embed",
    "run_segment",
    "run_caption",
    "run_aggregate",
    "run_publish",
    "run_video",
    "skipped_stages",
]


def resolve_video(video: str, source_template: str | None = None) -> tuple[str, str]:
    """``(video_id, uri)`` for a path, a URI, or a bare ID resolved through ``source_template``
    (e.g. ``s3://bucket/howto100m/{video_id}.mp4``). A path's ID is its file stem."""
    looks_like_location = "://" in video or "/" in video or Path(video).suffix != ""
    if looks_like_location:
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
    same_protocol = folder.split("://", 1)[0] == store.root.split("://", 1)[0]
    reader = ArtifactStore(folder, store.storage_options if same_protocol else None)
    if not reader.exists(source):
        log.warning("video %s: no metadata at %s; continuing without it", video_id, source)
        return None
    value = reader.read_json(source)
    if not isinstance(value, dict):
        raise VideoError(video_id, f"metadata {source} is not a JSON object")
    target = metadata_uri(store, video_id)
    store.write_json(target, value)
    return target


def run_caption(settings: Settings, store: ArtifactStore, video_id: str) -> str:
    from action100m.stages.caption import run_caption as caption

    return caption(settings, store, video_id)


def run_aggregate(settings: Settings, store: ArtifactStore, video_id: str) -> str | None:
    """The aggregate stage folder, or None when no LLM is configured (logged with the reason)."""
    from action100m.stages.aggregate import llm_unavailable_reason
    from action100m.stages.aggregate import run_aggregate as aggregate

    reason = llm_unavailable_reason(settings)
    if reason:
        log.warning("video %s: aggregate skipped: %s", video_id, reason)
        return None
    return aggregate(settings, store, video_id)


def skipped_stages(settings: Settings, store: ArtifactStore, video_id: str) -> dict[str, str]:
    """The stages whose output the video's document lacks, each with why (empty: finished).
    Aggregation skipped for want of an LLM gives that reason."""
    skipped: dict[str, str] = {}
    for stage in ("caption", "aggregate"):
        if store.is_done(store.stage_dir(video_id, stage, settings.stage_key(stage))):
            continue
        reason = None
        if stage == "aggregate":
            from action100m.stages.aggregate import llm_unavailable_reason

            reason = llm_unavailable_reason(settings)
        skipped[stage] = reason or f"{stage} has not finished"
    return skipped


def run_publish(settings: Settings, store: ArtifactStore, video_id: str) -> str:
    """Write the per-video document from every finished stage; returns its URI.

    A document written without a stage's output (aggregation skipped for want of an LLM)
    records it under ``pipeline.skipped`` (``{"aggregate": reason}``), and ``status.json`` says
    the video is not finished, so a later backfill (with an LLM configured) picks it up again."""
    from action100m.viewer import publish_viewer

    skipped = skipped_stages(settings, store, video_id)
    document = build_document(settings, store, video_id)
    if skipped:
        document["pipeline"]["skipped"] = skipped
    uri = store.document_uri(video_id)
    store.write_json(uri, document)  # the document first: the status never runs ahead of it
    store.write_json(
        store.join("videos", video_id, STATUS_FILE),
        {"complete": not skipped, "skipped": skipped, "published_at": time.time()},
    )
    notes = "; ".join(f"{stage} skipped: {why}" for stage, why in skipped.items())
    log.info("video %s: document written to %s%s", video_id, uri, f" ({notes})" if notes else "")
    try:
        viewer = publish_viewer(settings, store, video_id)
        log.info("video %s: viewer written to %s", video_id, viewer)
    except Exception as exc:  # the page is a convenience; the document is what was asked for
        log.warning("video %s: viewer not written: %s", video_id, exc)
    return uri


def run_video(
    settings: Settings,
    store: ArtifactStore,
    source: str,
    video_id: str | None = None,
    metadata_uri: str | None = None,
    source_template: str | None = None,
) -> dict[str, Any]:
    """Every stage for one video; returns a small summary (URIs and timings)."""
    resolved_id, uri = resolve_video(source, source_template)
    video_id = video_id or resolved_id
    timings: dict[str, float] = {}
    started = time.monotonic()
    save_metadata(store, video_id, metadata_uri)
    run_embed(settings, store, video_id, uri)
    timings["embed"] = time.monotonic() - started
    for name, stage in (("segment", run_segment), ("caption", run_caption)):
        mark = time.monotonic()
        stage(settings, store, video_id)
        timings[name] = time.monotonic() - mark
    mark = time.monotonic()
    aggregated = run_aggregate(settings, store, video_id)
    timings["aggregate"] = time.monotonic() - mark
    document = run_publish(settings, store, video_id)
    return {
        "video_id": video_id,
        "document": document,
        "aggregated": aggregated is not None,
        "seconds": {k: round(v, 3) for k, v in timings.items()},
    }
