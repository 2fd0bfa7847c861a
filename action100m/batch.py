"""Many videos at once, without Airflow: video lists, manifests, shards and the run report.

The Airflow DAGs call these; so can any other orchestrator. Nothing here imports Airflow or a model.

- :func:`resolve_batch`: the per-run list of ``{video_id, uri, metadata}``, duplicates dropped,
  bounded by :func:`max_videos_per_run` with an error pointing at the backfill DAG.
- :func:`read_manifest`: a plain list of IDs (one a line) or a HowTo100M CSV with a ``video_id``
  column, from any URI the store can read.
- :func:`pending_videos` and :func:`shard`: what a backfill still has to do, in runs of a given size;
  :func:`plan_window`: the next bounded slice of a manifest (a backfill run and its continuation).
- :func:`read_video_list` / :func:`write_video_list`: a shard's IDs as a store object, so only its URI
  travels through XCom and the triggered run's conf (where: ``store.shard_list_uri``).
- :func:`file_transcripts`: HowTo100M's own ASR (``raw_caption.json``, read streaming, once) filed
  as the listed videos' transcripts, which the fetch stage uses instead of subtitles.
- the run report that follows a batch is :mod:`action100m.report`.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import re
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from action100m.errors import PermanentError, VideoError
from action100m.layout import check_video_id
from action100m.sources import (
    check_allowed,
    fill_template,
    is_fetchable,
    looks_like_location,
    resolve_video,
)
from action100m.status import is_complete
from action100m.store import ArtifactStore, normalise_uri
from action100m.transcripts import read_raw_captions

log = logging.getLogger(__name__)

DEFAULT_MAX_VIDEOS_PER_RUN = 256
BACKFILL_DAG_ID = "action100m_backfill"
_SEPARATORS = re.compile(r"[\s,;]+")


def max_videos_per_run(environ: dict[str, str] | None = None) -> int:
    """Videos one run may map (``ACTION100M_MAX_VIDEOS_PER_RUN``), far below Airflow's
    ``max_map_length`` of 1024: thousands of mapped instances slow the scheduler and the UI."""
    env = os.environ if environ is None else environ
    return int(env.get("ACTION100M_MAX_VIDEOS_PER_RUN", DEFAULT_MAX_VIDEOS_PER_RUN))


def parse_video_list(videos: str | Sequence[str] | None) -> list[str]:
    """Entries of a string separated by newlines, commas or spaces, or of a list, one entry per
    item (per line of an item): an ID or a file name with a space in it stays one video."""
    if videos is None:
        return []
    if isinstance(videos, str):
        return [part for part in _SEPARATORS.split(videos) if part]
    entries: list[str] = []
    for item in videos:
        entries.extend(line.strip() for line in str(item).splitlines() if line.strip())
    return entries


def resolve_batch(
    videos: str | Sequence[str] | None,
    source_template: str | None = None,
    metadata_template: str | None = None,
    limit: int | None = None,
    allowed: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """``[{video_id, uri, metadata}]`` for one run. A video ID seen twice is kept once. With
    ``allowed`` (a DAG run's parameters), every source and metadata location must lie under one
    of those prefixes (:func:`~action100m.sources.check_allowed`)."""
    entries = parse_video_list(videos)
    if not entries:
        raise PermanentError("no videos given: set the 'videos' parameter (IDs, paths or URIs)")
    limit = max_videos_per_run() if limit is None else limit
    batch: dict[str, dict[str, Any]] = {}
    for entry in entries:
        video_id, uri = resolve_video(entry, source_template or None)
        if video_id in batch:
            if batch[video_id]["uri"] != uri:  # two files with one stem would share one folder
                raise PermanentError(
                    f"video {video_id}: two videos have this ID ({batch[video_id]['uri']} and "
                    f"{uri}); rename one, or run them apart with --video-id"
                )
            log.info("video %s listed twice; keeping it once", video_id)
            continue
        metadata = (
            fill_template(metadata_template, video_id, "metadata") if metadata_template else None
        )
        if allowed is not None:
            # A web source is the fetch stage's to refuse, by its host (fetch.allowed_hosts).
            if not is_fetchable(uri):
                uri = check_allowed(uri, allowed, f"video {video_id}: source")
            if metadata:
                metadata = check_allowed(metadata, allowed, f"video {video_id}: metadata")
        batch[video_id] = {"video_id": video_id, "uri": uri, "metadata": metadata}
    if len(batch) > limit:
        raise PermanentError(
            f"{len(batch)} videos in one run; one run takes at most {limit} "
            f"(ACTION100M_MAX_VIDEOS_PER_RUN). For more, put the IDs in a manifest and trigger "
            f"the {BACKFILL_DAG_ID} DAG: it runs them in shards of shard_size videos."
        )
    return list(batch.values())


def parse_manifest(text: str) -> list[str]:
    """Video IDs from a plain list (one a line, ``#`` comments) or a CSV with ``video_id``; an
    ID with spaces stays whole."""
    lines = [line.strip() for line in text.splitlines()]
    header = next((line for line in lines if line and not line.startswith("#")), "")
    if "," in header and "video_id" in [cell.strip() for cell in header.split(",")]:
        rows = csv.DictReader(io.StringIO(text))
        ids = [(row.get("video_id") or "").strip() for row in rows]
    else:
        # A line is one entry (an ID may hold spaces); a tab ends it (a TSV's first cell).
        ids = [line.split("\t")[0].strip() for line in lines if line and not line.startswith("#")]
    return list(dict.fromkeys(video_id for video_id in ids if video_id))


def read_manifest(
    uri: str,
    storage_options: dict[str, Any] | None = None,
    what: str = "manifest",
    allowed: Sequence[str] | None = None,
) -> list[str]:
    """The manifest's video IDs, duplicates dropped; ``uri`` is a path or any fsspec URI (with
    ``allowed``: one under those prefixes)."""
    uri = normalise_uri(uri) if allowed is None else check_allowed(uri, allowed, what)
    parent, _, _ = uri.rpartition("/")
    reader = ArtifactStore(parent, storage_options)
    if not reader.exists(uri):
        raise PermanentError(f"{what} {uri} does not exist")
    ids = parse_manifest(reader.read_bytes(uri).decode("utf-8-sig"))
    if not ids:
        raise PermanentError(f"{what} {uri} lists no video IDs")
    bad = []
    for entry in ids:  # paths and URIs get their ID (the file stem) checked when resolved
        if not looks_like_location(entry):
            try:
                check_video_id(entry)
            except VideoError as exc:
                bad.append(str(exc))
    if bad:
        raise PermanentError(f"{what} {uri}: {len(bad)} unusable entry(ies), first: {bad[0]}")
    return ids


def read_video_list(
    store: ArtifactStore, uri: str, allowed: Sequence[str] | None = None
) -> list[str]:
    """A list of videos (one a line: IDs, paths or URIs) at ``uri``, e.g. a backfill shard."""
    return read_manifest(uri, store.options_for(uri), what="video list", allowed=allowed)


def write_video_list(store: ArtifactStore, uri: str, videos: Sequence[str]) -> None:
    store.write_bytes(uri, ("\n".join(videos) + "\n").encode())


def pending_videos(store: ArtifactStore, video_ids: Iterable[str], workers: int = 16) -> list[str]:
    """The IDs not finished yet, in order: no document, or a document written without every
    stage (an aggregate skipped for want of an LLM counts as not finished, so a later run with
    a key annotates it)."""
    ids = list(video_ids)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        done = list(pool.map(lambda vid: is_complete(store, vid), ids))
    return [vid for vid, finished in zip(ids, done, strict=True) if not finished]


def plan_window(
    store: ArtifactStore,
    ids: Sequence[str],
    offset: int,
    shard_size: int,
    max_shards: int,
    skip_done: bool = True,
    max_scan: int | None = None,
) -> tuple[list[list[str]], int | None, int]:
    """The next bounded slice of a manifest: ``(shards, next_offset, scanned)``.

    From ``ids[offset:]``, collects up to ``max_shards * shard_size`` videos still to do (all of
    them when not ``skip_done``), checking the store a chunk at a time so a run never looks at
    more of a 1.2M-video manifest than it needs, and at most ``max_scan`` entries (16 times the
    capacity by default): a nearly finished manifest is rescanned by a chain of short runs, not
    by one task reading a million statuses. ``next_offset`` is where a continuation starts (None
    once the manifest is exhausted); ``scanned`` counts the entries looked at."""
    if max_shards < 1:
        raise PermanentError(f"max_shards must be at least 1, got {max_shards}")
    capacity = max_shards * shard_size
    todo: list[str] = []
    position = offset = max(0, offset)
    scan_end = min(len(ids), offset + (16 * capacity if max_scan is None else max_scan))
    while position < scan_end and len(todo) < capacity:
        chunk = ids[position : min(scan_end, position + max(capacity - len(todo), 256))]
        wanted = set(pending_videos(store, chunk)) if skip_done else set(chunk)
        for video_id in chunk:
            position += 1
            if video_id in wanted:
                todo.append(video_id)
                if len(todo) == capacity:
                    break
    next_offset = position if position < len(ids) else None
    return shard(todo, shard_size), next_offset, position - offset


def shard(items: Sequence[str], size: int) -> list[list[str]]:
    if size < 1:
        raise PermanentError(f"shard_size must be at least 1, got {size}")
    return [list(items[start : start + size]) for start in range(0, len(items), size)]


def file_transcripts(
    store: ArtifactStore, uri: str, video_ids: Iterable[str], allowed: Sequence[str] | None = None
) -> int:
    """File each listed video's transcript from HowTo100M's ``raw_caption.json`` at ``uri``
    (``.gz`` and the like decompressed) as ``videos/{id}/transcript.json``, where none is filed
    yet: the fetch stage then uses it instead of subtitles. The file (gigabytes) is read once,
    streaming, and only until every wanted video was found. Returns how many were filed."""
    uri = normalise_uri(uri) if allowed is None else check_allowed(uri, allowed, "transcripts")
    wanted = [
        vid for vid in dict.fromkeys(video_ids) if not store.exists(store.transcript_uri(vid))
    ]
    if not wanted:
        return 0
    parent, _, _ = uri.rpartition("/")
    reader = ArtifactStore(parent, store.options_for(uri))
    if not reader.exists(uri):
        raise PermanentError(f"transcripts {uri} do not exist")
    filed = 0
    path = reader.fs._strip_protocol(uri)
    with (
        reader.fs.open(path, "rb", compression="infer") as raw,
        io.TextIOWrapper(raw, encoding="utf-8") as stream,
    ):
        try:
            for video_id, lines in read_raw_captions(stream, wanted):
                store.write_json(store.transcript_uri(video_id), lines)
                filed += 1
        except ValueError as exc:
            raise PermanentError(f"transcripts {uri}: {exc}") from None
    log.info("transcripts %s: %d of %d video(s) filed", uri, filed, len(wanted))
    return filed
