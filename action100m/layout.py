"""Where everything lives in the artifact store: the one module that builds store paths.

Every other module asks an :class:`~action100m.store.ArtifactStore` (which inherits these methods)
for a URI instead of joining path parts itself. The layout under ``{root}``::

    videos/{video_id}/
        {stage}/{key}/...          a stage's output; ``_SUCCESS`` written last
        source/{key}/video.mp4, info.json   the fetch stage's download (IDs and URLs only)
        caption/cache/{model}.json the caption request cache (survives a failed try)
        metadata.json              title, description, transcript as the user gave them
        transcript.json            a transcript filed by a backfill (HowTo100M's ASR), for fetch
        annotations.json           the per-video document (written by publish)
        status.json                the video's status record (written by publish, after it)
        viewer.html                the self-contained tree viewer (written by publish)
        thumbnails/pack.bin, index.json
    cache/llm/{ab}/{key}.json      validated LLM answers, by request hash
    runs/{run_id}/report.json      a DAG run's report
    backfill/{run_id}/shardNNNN.txt  a backfill shard's video list
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

from action100m.errors import VideoError

SUCCESS = "_SUCCESS"
# A video ID names a folder: one path segment, short enough for any filesystem (255 bytes a name)
# with room for the temporary names writes go through.
MAX_VIDEO_ID_BYTES = 200
DOCUMENT_FILE = "annotations.json"
STATUS_FILE = "status.json"
METADATA_FILE = "metadata.json"
VIEWER_FILE = "viewer.html"
TRANSCRIPT_FILE = "transcript.json"
# A stage whose folder is not named after it: what fetch keeps is the video's source.
STAGE_FOLDERS = {"fetch": "source"}


def check_video_id(video_id: str) -> str:
    """``video_id`` if it is a safe single path segment (YouTube IDs, file stems with spaces or
    any script), else a :class:`VideoError` naming it: the one rule for every entry point."""
    problem = None
    if not isinstance(video_id, str) or not video_id.strip():
        problem = "a video ID must not be empty"
    elif video_id in (".", "..") or video_id != video_id.strip():
        problem = "not a usable video ID (dots only, or spaces at either end)"
    elif "/" in video_id or "\\" in video_id:
        problem = "a video ID must not contain / or \\ (it names one folder)"
    elif any(unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Zl", "Zp") for ch in video_id):
        problem = "a video ID must not contain control characters"
    elif len(video_id.encode("utf-8")) > MAX_VIDEO_ID_BYTES:
        problem = f"a video ID must be at most {MAX_VIDEO_ID_BYTES} bytes (UTF-8)"
    if problem:
        shown = repr(
            video_id
            if not isinstance(video_id, str) or len(video_id) <= 80
            else video_id[:77] + "..."
        )
        raise VideoError(shown, problem)
    return video_id


def path_safe(name: str) -> str:
    """A run ID (``manual__2026-01-01T00:00:00+00:00``) as one safe path segment."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


class StoreLayout:
    """Path arithmetic over ``root``; no I/O."""

    root: str

    def join(self, *parts: str) -> str:
        return "/".join([self.root, *(p.strip("/") for p in parts if p)])

    # -- per video ----------------------------------------------------------------------------
    def videos_dir(self) -> str:
        return self.join("videos")

    def video_dir(self, video_id: str) -> str:
        return self.join("videos", check_video_id(video_id))

    def stage_dir(self, video_id: str, stage: str, key: str) -> str:
        return f"{self.video_dir(video_id)}/{STAGE_FOLDERS.get(stage, stage)}/{key}"

    def success_uri(self, folder: str) -> str:
        return f"{folder}/{SUCCESS}"

    def document_uri(self, video_id: str) -> str:
        return f"{self.video_dir(video_id)}/{DOCUMENT_FILE}"

    def status_uri(self, video_id: str) -> str:
        return f"{self.video_dir(video_id)}/{STATUS_FILE}"

    def metadata_uri(self, video_id: str) -> str:
        return f"{self.video_dir(video_id)}/{METADATA_FILE}"

    def transcript_uri(self, video_id: str) -> str:
        return f"{self.video_dir(video_id)}/{TRANSCRIPT_FILE}"

    def viewer_uri(self, video_id: str) -> str:
        return f"{self.video_dir(video_id)}/{VIEWER_FILE}"

    def thumbnail_uris(self, video_id: str) -> tuple[str, str]:
        """``(pack, index)``: JPEGs back to back, and where each node's lies in the pack."""
        folder = f"{self.video_dir(video_id)}/thumbnails"
        return f"{folder}/pack.bin", f"{folder}/index.json"

    def caption_cache_uri(self, video_id: str, model: str) -> str:
        digest = hashlib.sha256(model.encode()).hexdigest()[:12]
        return f"{self.video_dir(video_id)}/caption/cache/{digest}.json"

    # -- shared by videos and runs ------------------------------------------------------------
    def llm_cache_uri(self, request_key: str) -> str:
        return self.join("cache", "llm", request_key[:2], f"{request_key}.json")

    def runs_dir(self) -> str:
        return self.join("runs")

    def report_uri(self, run_id: str) -> str:
        return self.join("runs", path_safe(run_id), "report.json")

    def shard_list_uri(self, run_id: str, index: int) -> str:
        return self.join("backfill", path_safe(run_id), f"shard{index:04d}.txt")
