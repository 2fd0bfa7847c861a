"""Publish: the per-video document, the video's status record and the viewer page.

The only stage that writes outside its own folder, and the only one that never counts as done
before: it always rebuilds the three from whatever stages have finished. The document goes first
and the status after it, so the status never runs ahead of the document. A video published
without a stage's output (aggregation skipped for want of an LLM) says so in both, and is not
complete, so a later backfill (with an LLM configured) picks it up again.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from action100m.config import Settings
from action100m.document import assemble_document
from action100m.sources import load_metadata
from action100m.stages import stages
from action100m.stages.base import (
    Runtime,
    Stage,
    StageContext,
    StageOutput,
    output_dir,
    unfinished_stages,
)
from action100m.stages.outputs import load_tree, read_finished
from action100m.status import VideoStatus
from action100m.store import ArtifactStore

log = logging.getLogger(__name__)


def video_status(runtime: Runtime, video_id: str) -> VideoStatus:
    """Which stages have finished for the video under these settings, and why the others have
    not (:func:`~action100m.stages.base.unfinished_stages`)."""
    skipped = unfinished_stages(runtime, video_id)
    # An optional stage (fetch) is listed where it ran: a file's video never needed it.
    keyed = [stage.name for stage in stages() if stage.keyed and (
        not stage.optional or runtime.store.is_done(output_dir(runtime, stage, video_id)))]  # fmt: skip
    done = {name: name not in skipped for name in keyed}
    return VideoStatus(video_id, done, skipped, runtime.store.document_uri(video_id), time.time())


def build_document(
    settings: Settings, store: ArtifactStore, video_id: str, status: VideoStatus | None = None
) -> dict[str, Any]:
    """The per-video document from every finished stage (``status``: the video's status record,
    computed here with the providers' usual variables when not given)."""
    status = status or video_status(Runtime.from_environment(settings, store), video_id)

    return assemble_document(
        load_tree(settings, store, video_id),
        captions=read_finished(settings, store, video_id, "caption", "captions.json"),
        annotations=read_finished(settings, store, video_id, "aggregate", "annotations.json"),
        metadata=load_metadata(store, video_id),
        models={
            "encoder": settings.embed.model,
            "captioner": settings.caption.model,
            "llm": settings.aggregate.model,
        },  # fmt: skip
        config=settings.summary(),
        stages=status.stages,
        skipped=status.skipped,
    )


class PublishStage(Stage):
    name = "publish"
    help = "write the per-video document, its status and its viewer page"
    needs = ("segment",)
    keyed = False

    def process(self, ctx: StageContext) -> StageOutput:
        store, video_id = ctx.store, ctx.video_id
        status = video_status(ctx.runtime, video_id)
        document = build_document(ctx.settings, store, video_id, status)
        artifacts: dict[str, Any] = {
            store.document_uri(video_id): document,  # first: the status never runs ahead of it
            store.status_uri(video_id): status.to_json(),
        }
        notes = "; ".join(f"{stage} skipped: {why}" for stage, why in status.skipped.items())
        log.info("video %s: document for %s%s", video_id, store.document_uri(video_id),
                 f" ({notes})" if notes else "")  # fmt: skip
        stats = {"nodes": len(document["nodes"]), "complete": status.complete}
        return StageOutput(artifacts, stats, uri=store.document_uri(video_id))

    def after(self, ctx: StageContext, output: StageOutput) -> None:
        """The viewer page and its thumbnails: a convenience; the document is what was asked for,
        so whatever goes wrong here is logged and the document stands."""
        from action100m.viewer import publish_viewer

        document = output.artifacts[ctx.store.document_uri(ctx.video_id)]
        try:
            publish_viewer(ctx.settings, ctx.store, ctx.video_id, document)
        except Exception as exc:
            log.warning("video %s: viewer not written: %s", ctx.video_id, exc)


STAGE = PublishStage()
