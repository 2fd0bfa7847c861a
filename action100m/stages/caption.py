"""Stage 2: a caption for every node of the segment tree (docs/architecture.md).

Leaves get their middle frame with an image prompt, other nodes ``caption.frames`` evenly spaced
frames with a video prompt (as one video, or as images: ``caption.frames_as``), all
``caption.size`` square. Frames are read from the source video in
one seeking pass; the backend (vLLM server, vLLM engine, transformers) captions them as they come.
A node that fails for good (unreadable frame, a rejected request, an empty answer after retries)
records its error and the video goes on. A node whose last try still met a service failure (5xx,
429, timeout) is not done: once every other node is finished and the request cache is saved, the
task raises ``ServiceError`` naming how many and why, so Airflow's retry asks only for those. A
backend that cannot work at all raises ``ServiceError`` the same way, after the cache is saved.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

from action100m.config import CaptionConfig
from action100m.errors import ServiceError, VideoError
from action100m.models.captioner import Captioner, CaptionJob, CaptionOutcome, make_captioner
from action100m.stages.base import Runtime, Stage, StageContext, StageOutput
from action100m.stages.caption_requests import (
    NodeRequest,
    RequestCache,
    assemble_jobs,
    plan_requests,
)
from action100m.stages.outputs import forget_output

log = logging.getLogger(__name__)
ARTIFACT = "captions.json"
ERROR_KEY = {"segment_caption": "segment_error", "action": "action_error"}


def action_label(text: str | None) -> str | None:
    """A verb phrase as the release's ``plm_action``: one line, no quotes, no final period."""
    if not text:
        return text
    line = text.strip().splitlines()[0].strip().strip("\"'`*").strip()
    return line[:-1] if line.endswith(".") else line


class Progress:
    """Lines for a person reading the task log: every 10 % of the nodes or every 30 seconds."""

    def __init__(self, video_id: str, total: int, every: float = 30.0) -> None:
        self.video_id, self.total, self.every = video_id, total, every
        self.done = self.errors = self.cached = self.logged = 0
        self.started = self.logged_at = time.monotonic()
        self.step = max(1, total // 10)

    def add(self, *, error: bool = False, cached: bool = False) -> None:
        self.done += 1
        self.errors += error
        self.cached += cached
        now = time.monotonic()
        if self.done % self.step == 0 or now - self.logged_at >= self.every:
            self.log()

    def log(self) -> None:
        elapsed = time.monotonic() - self.started
        rate = (self.done - self.cached) / elapsed if elapsed > 0 else 0.0
        log.info(
            "video %s: captioned %d/%d requests (%d from cache, %d errors), %.2f/s",
            self.video_id,
            self.done,
            self.total,
            self.cached,
            self.errors,
            rate,
        )
        self.logged_at, self.logged = time.monotonic(), self.done


class CaptionStage(Stage):
    name = "caption"
    settings_section = "caption"
    help = "stage 2: a caption for every node of the tree"
    needs = ("segment",)

    def setup(self, runtime: Runtime) -> None:
        self.captioner(runtime)  # process makes it lazily, only when some node needs a caption

    @staticmethod
    def captioner(runtime: Runtime) -> Captioner:
        return make_captioner(runtime.settings.caption, runtime.services.vlm.key())

    def process(self, ctx: StageContext) -> StageOutput:
        config, video_id = ctx.settings.caption, ctx.video_id
        tree = ctx.tree()
        plans = plan_requests(tree, config)
        cache = RequestCache(ctx.store, ctx.store.caption_cache_uri(video_id, config.model))
        progress = Progress(video_id, len(plans))
        results = {p.key: {**cache.get(p.key), "cached": True} for p in plans if p.key in cache}
        for _ in results:
            progress.add(cached=True)
        todo = [plan for plan in plans if plan.key not in results]
        log.info(
            "video %s: %d nodes, %d caption requests (%d cached) with %s on %s",
            video_id, len(tree), len(plans), len(plans) - len(todo), config.model, config.backend,
        )  # fmt: skip
        unfinished: dict[str, str] = {}  # request key -> last service failure, worth a retry
        if todo:
            _check_source_unchanged(ctx, tree.source)
            try:
                captioner = self.captioner(ctx.runtime)
                with ctx.store.local_copy(tree.source) as path:
                    jobs = _jobs(path, video_id, todo, config, results, progress)
                    for job, outcome in captioner.run(jobs):
                        results[job.key] = _result(outcome)
                        if outcome.error is None:
                            cache.put(job.key, results[job.key])
                        elif outcome.transient:
                            unfinished[job.key] = outcome.error
                        progress.add(error=outcome.error is not None)
            except ServiceError as exc:
                raise ServiceError(f"video {video_id}: captioning stopped: {exc}") from exc
            finally:
                cache.flush()  # whatever happened, finished captions survive for the retry
        if progress.logged != progress.done:
            progress.log()
        _check_some_succeeded(video_id, results)
        _check_none_unfinished(video_id, plans, unfinished)
        document = _captions_document(config.model, tree.nodes, plans, results)
        return StageOutput({ARTIFACT: document}, document["summary"])


def _check_source_unchanged(ctx: StageContext, source: str) -> None:
    """The frames to caption must come from the file the tree was cut from: a source replaced
    since embed (a re-download, a shorter file) is refused, and embed and segment are forgotten so
    the next run cuts the new file's tree."""
    if not ctx.store.is_done(ctx.input_dir("embed")):  # an imported release: no embeddings
        return
    embedded = ctx.read_input("embed", "frames.json").get("source_fingerprint")
    now = ctx.store.fingerprint(source)
    if embedded is None or now is None or embedded == now:
        return
    for stage in ("segment", "embed"):
        forget_output(ctx.store, ctx.input_dir(stage))
    raise VideoError(
        ctx.video_id,
        f"the source {source} changed since it was embedded (size {embedded.get('size')} -> "
        f"{now.get('size')}); embed and segment will be redone by the next run",
    )


def _jobs(
    path: str,
    video_id: str,
    todo: list[NodeRequest],
    config: CaptionConfig,
    results: dict[str, dict[str, Any]],
    progress: Progress,
) -> Iterator[CaptionJob]:
    """The requests with their frames; a frame that cannot be read fails its node only."""

    def frame_failed(plan: NodeRequest, problem: str) -> None:
        results[plan.key] = {"caption": None, "error": problem, "frame_error": True}
        progress.add(error=True)

    return assemble_jobs(path, video_id, todo, config, frame_failed)


def _result(outcome: CaptionOutcome) -> dict[str, Any]:
    return {
        "caption": outcome.caption,
        "error": outcome.error,
        "tokens_in": outcome.tokens_in,
        "tokens_out": outcome.tokens_out,
    }


def _check_some_succeeded(video_id: str, results: dict[str, dict[str, Any]]) -> None:
    """A video with no caption at all is a broken video or a broken service, not a result."""
    if not results or any(r.get("error") is None for r in results.values()):
        return
    first = next(iter(results.values()))["error"]
    if all(r.get("frame_error") for r in results.values()):
        raise VideoError(video_id, f"no frame could be read for any node ({first})")
    raise ServiceError(f"video {video_id}: every caption request failed; first error: {first}")


def _check_none_unfinished(
    video_id: str, plans: list[NodeRequest], unfinished: dict[str, str]
) -> None:
    """Nodes that met only service failures are not done: fail the task (the finished captions are
    cached) instead of writing them down as errors that no retry would ever revisit."""
    if not unfinished:
        return
    nodes = {plan.node_id for plan in plans if plan.key in unfinished}
    total = len({plan.node_id for plan in plans})
    reasons = Counter(unfinished.values()).most_common(3)
    why = "; ".join(f"{count} x {reason}" for reason, count in reasons)
    raise ServiceError(
        f"video {video_id}: {len(nodes)} of {total} nodes not captioned, the server still failing "
        f"after every retry ({why}); a retry asks only for those (the rest are cached)"
    )


def _captions_document(
    model: str, nodes: list[Any], plans: list[NodeRequest], results: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """``captions.json`` as document.py reads it: node id -> caption, kind, error, token counts."""
    entries: dict[str, dict[str, Any]] = {}
    for plan in plans:
        result = results.get(plan.key, {"caption": None, "error": "not captioned"})
        entry = entries.setdefault(plan.node_id, {})
        tokens = (int(result.get("tokens_in", 0)), int(result.get("tokens_out", 0)))
        entry["tokens_in"] = entry.get("tokens_in", 0) + tokens[0]
        entry["tokens_out"] = entry.get("tokens_out", 0) + tokens[1]
        entry["cached"] = entry.get("cached", True) and bool(result.get("cached"))
        if plan.field == "caption":
            entry.update(caption=result["caption"], kind=plan.kind, error=result.get("error"))
            entry["frames"] = len(plan.times)
        else:  # "segment_caption" or "action": beside the caption, errors apart
            text = result["caption"]
            entry[plan.field] = action_label(text) if plan.field == "action" else text
            if result.get("error"):
                entry[ERROR_KEY[plan.field]] = result["error"]
    ordered = {node.node_id: entries[node.node_id] for node in nodes if node.node_id in entries}
    failed = sum(1 for e in ordered.values() if e.get("error"))
    summary = {
        "nodes": len(ordered),
        "captioned": len(ordered) - failed,
        "errors": failed,
        "tokens_in": sum(e["tokens_in"] for e in ordered.values()),
        "tokens_out": sum(e["tokens_out"] for e in ordered.values()),
    }
    return {"model": model, "nodes": ordered, "summary": summary}


STAGE = CaptionStage()
