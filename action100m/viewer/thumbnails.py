"""Node thumbnails: the middle frame of each node, small JPEGs, stored as one pack per video.

The pack (``store.thumbnail_uris``: ``videos/{id}/thumbnails/pack.bin``, JPEGs back to back) has ``index.json``
(``{"height": int, "nodes": {node_id: [offset, length]}}``), so a server reads one thumbnail with a
ranged read and a re-publish reuses every thumbnail whose node (same span, same id) it has.
A video that cannot be read (an imported release without its file) simply has no thumbnails.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from action100m.errors import Action100MError
from action100m.frames import read_frames_at
from action100m.store import ArtifactStore
from action100m.video import probe

log = logging.getLogger(__name__)

THUMB_HEIGHT = 72
JPEG_QUALITY = 70
SEEK_LIMIT = 48  # up to this many frames: seek to each; more: one decoding pass
SCAN_SEEK_GAP = 10.0  # seconds: in a decoding pass, seek over gaps longer than this


def encode_jpeg(frame: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="JPEG", quality=quality, optimize=True)
    return buffer.getvalue()


def middle_frame_jpegs(
    path: str, video_id: str, spans: Sequence[tuple[float, float]], height: int = THUMB_HEIGHT
) -> list[bytes]:
    """A JPEG of the middle frame of each (start, end) span, ``height`` pixels high."""
    if not spans:
        return []
    info = probe(path, video_id)
    width = max(2, round(info.width * height / max(1, info.height)) // 2 * 2)
    last = max(0.0, info.duration - 1e-3) if info.duration is not None else float("inf")
    times = [min(max(0.0, (s + e) / 2), last) for s, e in spans]
    # A few frames: seek to each; more: one decoding pass (skipping only long gaps).
    seek_gap = 0.0 if len(times) <= SEEK_LIMIT else SCAN_SEEK_GAP
    frames = read_frames_at(path, video_id, times, (width, height), seek_gap, retry_broken=False)
    return [encode_jpeg(frame) for frame in frames]


def read_index(store: ArtifactStore, video_id: str) -> dict[str, Any] | None:
    _, index_uri = store.thumbnail_uris(video_id)
    if not store.exists(index_uri):
        return None
    index: dict[str, Any] = store.read_json(index_uri)
    return index


def read_thumbnail(store: ArtifactStore, video_id: str, node_id: str) -> bytes | None:
    """One node's JPEG from the pack (a ranged read), or None."""
    index = read_index(store, video_id)
    entry = (index or {}).get("nodes", {}).get(node_id)
    if entry is None:
        return None
    pack_uri, _ = store.thumbnail_uris(video_id)
    offset, length = entry
    data: bytes = store.fs.cat_file(pack_uri, start=offset, end=offset + length)
    return data


def read_thumbnails(store: ArtifactStore, video_id: str) -> dict[str, bytes]:
    """Every thumbnail of a video's pack, by node id ({} when there is none)."""
    index = read_index(store, video_id)
    if not index:
        return {}
    pack = store.read_bytes(store.thumbnail_uris(video_id)[0])
    return {nid: pack[o : o + n] for nid, (o, n) in index["nodes"].items()}


def write_pack(store: ArtifactStore, video_id: str, thumbs: dict[str, bytes]) -> None:
    pack_uri, index_uri = store.thumbnail_uris(video_id)
    entries: dict[str, list[int]] = {}
    chunks, offset = [], 0
    for node_id, data in thumbs.items():
        entries[node_id] = [offset, len(data)]
        chunks.append(data)
        offset += len(data)
    store.write_bytes(pack_uri, b"".join(chunks))
    store.write_json(index_uri, {"height": THUMB_HEIGHT, "nodes": entries})


def ensure_thumbnails(
    store: ArtifactStore, document: dict[str, Any], limit: int | None = None
) -> dict[str, bytes]:
    """Thumbnails of the document's nodes (``limit``: the widest first), reusing the pack and
    decoding only what is missing. {} where the source video cannot be read."""
    video_id = str(document["video_uid"])
    nodes = sorted(document["nodes"], key=lambda n: (n["level"], -(n["end"] - n["start"])))
    nodes = nodes[:limit] if limit is not None else nodes
    have = read_thumbnails(store, video_id)
    missing = [n for n in nodes if n["node_id"] not in have]
    if not missing:
        return have
    source = (document.get("metadata") or {}).get("source")
    if not source:
        log.info("video %s: no source video in the document; no thumbnails", video_id)
        return have
    try:
        with store.local_copy(str(source)) as path:
            spans = [(float(n["start"]), float(n["end"])) for n in missing]
            jpegs = middle_frame_jpegs(path, video_id, spans)
    except (OSError, Action100MError) as exc:
        log.warning("video %s: no thumbnails (source %s unreadable: %s)", video_id, source, exc)
        return have
    have.update({n["node_id"]: data for n, data in zip(missing, jpegs, strict=True)})
    write_pack(store, video_id, have)
    return have
