"""The stages in order, for one video, over artifact URIs: what the command line calls.

:func:`run_video` runs every stage of :data:`action100m.stages.PIPELINE`; :func:`run_until` the
stages up to a named one. Each stage skips work whose ``_SUCCESS`` marker exists (the runner,
:func:`action100m.stages.base.run_stage`, owns that), so a rerun or a retry only does what is
missing. The ``run_<stage>`` functions are the same runner, one stage at a time.
"""

from __future__ import annotations

import logging
from typing import Any

from action100m.config import Settings
from action100m.services import Services
from action100m.sources import fill_template, resolve_video, save_metadata
from action100m.stages import get_stage, stages
from action100m.stages.base import Runtime, StageRecord, Video, run_stage, unfinished_stages
from action100m.status import read_status
from action100m.store import ArtifactStore

log = logging.getLogger(__name__)
__all__ = [
    "resolve_video",
    "run_aggregate",
    "run_caption",
    "run_embed",
    "run_named",
    "run_publish",
    "run_segment",
    "run_until",
    "run_video",
    "save_metadata",
]


def _runtime(settings: Settings, store: ArtifactStore, services: Services | None) -> Runtime:
    if services is None:
        return Runtime.from_environment(settings, store)
    return Runtime(settings, store, services)


def run_named(
    name: str,
    settings: Settings,
    store: ArtifactStore,
    video: Video,
    *,
    required: bool = False,
    services: Services | None = None,
) -> StageRecord:
    """One stage for one video (skipped where done); ``required``: fail where it cannot run."""
    return run_stage(get_stage(name), _runtime(settings, store, services), video, required=required)


def run_embed(settings: Settings, store: ArtifactStore, video_id: str, source: str) -> str:
    return str(run_named("embed", settings, store, Video(video_id, source)).uri)


def run_segment(settings: Settings, store: ArtifactStore, video_id: str) -> str:
    return str(run_named("segment", settings, store, Video(video_id)).uri)


def run_caption(settings: Settings, store: ArtifactStore, video_id: str) -> str:
    return str(run_named("caption", settings, store, Video(video_id)).uri)


def run_aggregate(
    settings: Settings, store: ArtifactStore, video_id: str, *, required: bool = False
) -> str | None:
    """The aggregate folder, or None when no LLM is configured (logged with the reason); with
    ``required``, no LLM is a PermanentError naming the video."""
    return run_named("aggregate", settings, store, Video(video_id), required=required).uri


def run_publish(settings: Settings, store: ArtifactStore, video_id: str) -> str:
    """Write the per-video document, status and viewer from every finished stage; the document's
    URI."""
    return str(run_named("publish", settings, store, Video(video_id)).uri)


def run_until(
    last: str, runtime: Runtime, video: Video, *, required: bool = True
) -> dict[str, StageRecord]:
    """The stage ``last`` and whatever it needs that has not finished (``required``: fail where
    ``last`` cannot run), then the stages that only write what the finished ones hold (publish)
    where their inputs are there; the records by stage. An imported release (trees and captions,
    no embeddings) runs aggregate without asking for its video."""
    unfinished = unfinished_stages(runtime, video.video_id)
    wanted = {last}
    for stage in reversed(stages()):
        if stage.name in wanted:
            wanted.update(need for need in stage.needs if need in unfinished)
    # An optional stage (fetch) runs where the stage after it does: it makes that one's input.
    ordered = stages()
    for index, stage in enumerate(ordered[:-1]):
        if stage.optional and ordered[index + 1].name in wanted:
            wanted.add(stage.name)
    records = {
        stage.name: run_stage(stage, runtime, video, required=required and stage.name == last)
        for stage in stages()
        if stage.name in wanted
    }
    if not get_stage(last).keyed:
        return records
    unfinished = unfinished_stages(runtime, video.video_id)
    for stage in stages():
        if not stage.keyed and not unfinished.keys() & set(stage.needs):
            records[stage.name] = run_stage(stage, runtime, video)
    return records


def run_video(
    settings: Settings,
    store: ArtifactStore,
    source: str,
    video_id: str | None = None,
    metadata_uri: str | None = None,
    source_template: str | None = None,
    services: Services | None = None,
) -> dict[str, Any]:
    """Every stage for one video; returns a small summary (URIs and timings)."""
    resolved_id, uri = resolve_video(source, source_template)
    video_id = video_id or resolved_id
    metadata = fill_template(metadata_uri, video_id, "metadata") if metadata_uri else None
    video = Video(video_id, uri, metadata)
    runtime = _runtime(settings, store, services)
    records = {stage.name: run_stage(stage, runtime, video) for stage in stages()}
    status = read_status(store, video.video_id) or {}
    return {
        "video_id": video.video_id,
        "document": records["publish"].uri,
        "aggregated": bool(status.get("complete")),
        "skipped": {name: r.skipped for name, r in records.items() if r.skipped},
        "seconds": {name: r.seconds for name, r in records.items() if name != "publish"},
    }
