"""Stage 0: a YouTube ID's or an ``http(s)`` URL's video, metadata and transcript, with yt-dlp.

Only videos whose source is a web page run it (files and ``s3://`` URIs go straight to embed).
The video is downloaded at most ``fetch.max_height`` lines into a scratch folder and written by
the runner into ``videos/{id}/source/{key}/`` with ``info.json`` (where it came from) and then
``_SUCCESS``: a download that dies half-way leaves nothing marked done, and a rerun reuses a
finished one. The release's metadata fields (title, description, view and like counts, duration,
upload date, transcript) go to the video's ``metadata.json``, which Stage 3 and the export read.

The transcript: a transcript the backfill filed for the video (HowTo100M's own ASR), else a
subtitle track (:func:`~action100m.transcripts.pick_track`), else, with ``fetch.asr``, speech
recognition (:mod:`action100m.models.asr`).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from action100m.download import Downloaded, check_url, download, metadata_from_info, stored_info
from action100m.errors import MissingArtifactError, ServiceError
from action100m.sources import clean_metadata, is_fetchable
from action100m.stages.base import Stage, StageContext, StageOutput, Video
from action100m.stages.outputs import finished_artifact, read_finished
from action100m.transcripts import from_segments, parse_webvtt, pick_track

log = logging.getLogger(__name__)
T = TypeVar("T")
INFO = "info.json"


class FetchStage(Stage):
    name = "fetch"
    settings_section = "fetch"
    optional = True
    help = "stage 0: an ID's or URL's video, metadata and transcript (yt-dlp)"

    def applies(self, video: Video) -> bool:
        return is_fetchable(video.uri)

    def process(self, ctx: StageContext) -> StageOutput:
        cfg, video_id, url = ctx.settings.fetch, ctx.video_id, str(ctx.video.uri)
        check_url(video_id, url, cfg.allowed_hosts)  # before anything is asked of the host
        scratch = tempfile.mkdtemp(prefix="action100m-fetch-")
        try:
            langs = cfg.subtitle_langs
            services = ctx.runtime.services
            got, subtitles = _retrying(
                video_id,
                cfg.retries,
                cfg.retry_wait,
                lambda: download(video_id, url, Path(scratch), cfg, services.fetch,
                                 lambda info: (pick_track(info, langs) or {}).get("url")),
            )  # fmt: skip
            transcript, origin = self._transcript(ctx, got, subtitles)
            metadata = metadata_from_info(got.info)
            if transcript:
                metadata["transcript"] = transcript
            name = f"video{got.path.suffix or '.mp4'}"
            info = {**stored_info(got.info), "url": url, "file": name, "transcript": origin,
                    "size": got.path.stat().st_size}  # fmt: skip
            artifacts: dict[str, Any] = {
                name: got.path,
                INFO: info,
                ctx.store.metadata_uri(video_id): clean_metadata(video_id, metadata),
            }
        except BaseException:
            shutil.rmtree(scratch, ignore_errors=True)
            raise
        stats = {"bytes": info["size"], "height": info.get("height"), "transcript": origin,
                 "lines": len(transcript)}  # fmt: skip
        return StageOutput(artifacts, stats, scratch=scratch)

    def _transcript(
        self, ctx: StageContext, got: Downloaded, subtitles: bytes | None
    ) -> tuple[list[dict[str, str]], str]:
        """The transcript lines and where they came from."""
        cfg, video_id = ctx.settings.fetch, ctx.video_id
        given = ctx.store.transcript_uri(video_id)
        if ctx.store.exists(given):
            return list(ctx.store.read_json(given)), "given"
        if subtitles:
            lines = parse_webvtt(subtitles.decode("utf-8", errors="replace"))
            if lines:
                return lines, "subtitles"
        if cfg.asr:
            from action100m.models.asr import transcribe

            segments = transcribe(str(got.path), video_id, cfg, ctx.runtime.services.asr)
            return from_segments(segments), f"asr:{cfg.asr_model}"
        return [], "none"


def _retrying(video_id: str, retries: int, wait: float, work: Callable[[], T]) -> T:
    """``work()``, tried again after a retryable failure (HTTP 429, 5xx, a dropped connection),
    waiting ``wait`` seconds, then twice that, ...; the last failure goes to the caller (under
    Airflow, a task retry with its own backoff)."""
    for attempt in range(retries + 1):
        try:
            return work()
        except ServiceError as exc:
            if attempt == retries:
                raise
            delay = wait * 2**attempt
            log.warning("video %s: %s; trying again in %.1f s", video_id, exc, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


def fetched_source(ctx: StageContext) -> str | None:
    """The file embed reads: the fetched video where the source is a web page (or where none is
    given and one was fetched before), else the source itself."""
    uri = ctx.video.uri
    if uri is not None and not is_fetchable(uri):
        return uri
    info = read_finished(ctx.settings, ctx.store, ctx.video_id, "fetch", INFO)
    if info is None:
        if uri is None:
            return None
        raise MissingArtifactError(
            f"video {ctx.video_id}: embed needs the fetched video of {uri}; run `fetch` first"
        )
    found = finished_artifact(ctx.settings, ctx.store, ctx.video_id, "fetch", str(info["file"]))
    return found


STAGE = FetchStage()
