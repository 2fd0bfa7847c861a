"""A dataset export in shards: bounded Parquet files, an index, incremental, streamed.

``export_shards`` writes the store's documents in the release's format (:mod:`action100m.release`)
to ``OUT/part-00000.parquet``, ``part-00001.parquet``, … and ``OUT/index.json`` (which video is in
which shard, with the fingerprint and digest it was exported at). Documents are read one at a time
and rows leave memory a row group at a time, so memory is bounded by a row group (``GROUP_NODES``
nodes or ``GROUP_VIDEOS`` videos), not by the dataset. A second export adds only what changed: a
video whose document is unchanged (same fingerprint, or same content) is skipped; a new or changed
one goes into new shards, and the shards that held its old version are rewritten without it. Each
shard is uploaded whole (a temporary name, then renamed) and the index is written last, so an
export that dies half-way leaves the previous index and its shards intact.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from action100m.interop import official_record
from action100m.lease import give_back, take
from action100m.release import SCHEMA
from action100m.store import ArtifactStore, normalise_uri

log = logging.getLogger(__name__)
INDEX = "index.json"
MAX_FILE_BYTES = 256 * 2**20  # a shard file rolls over past this (datasets and object stores)
GROUP_NODES = 20_000  # a row group holds at most this many nodes (about 20 MB of Parquet) ...
GROUP_VIDEOS = 64  # ... and at most this many videos
EXPORT_LEASE_SECONDS = 3600.0  # an export holds its folder at most this long


class ShardWriter:
    """Records into numbered Parquet shards under ``out``: row groups of bounded size, files
    rolled over past ``max_bytes``, each uploaded whole when it is closed."""

    def __init__(self, out: ArtifactStore, first: int, max_bytes: int = MAX_FILE_BYTES) -> None:
        self.out, self.number, self.max_bytes = out, first, max_bytes
        self.folder = tempfile.TemporaryDirectory(prefix="action100m-export-")
        self.writer: pq.ParquetWriter | None = None
        self.path = Path(self.folder.name) / "shard.parquet"
        self.buffer: list[dict[str, Any]] = []
        self.buffered_nodes = 0
        self.videos: list[str] = []
        self.finished: dict[str, dict[str, Any]] = {}

    @property
    def name(self) -> str:
        return f"part-{self.number:05d}.parquet"

    def add(self, record: dict[str, Any]) -> str:
        """Buffer ``record``; returns the name of the shard it goes into."""
        self.buffer.append(record)
        self.buffered_nodes += len(record["nodes"])
        self.videos.append(record["video_uid"])
        name = self.name
        if self.buffered_nodes >= GROUP_NODES or len(self.buffer) >= GROUP_VIDEOS:
            self._flush()
        return name

    def _flush(self) -> None:
        if not self.buffer:
            return
        if self.writer is None:
            self.writer = pq.ParquetWriter(self.path, SCHEMA, compression="zstd")
        self.writer.write_table(pa.Table.from_pylist(self.buffer, schema=SCHEMA))
        self.buffer, self.buffered_nodes = [], 0
        if self.path.stat().st_size >= self.max_bytes:
            self._roll()

    def _roll(self) -> None:
        """Close the current file and upload it as the next shard."""
        if self.writer is None:
            return
        self.writer.close()
        self.writer = None
        size = self.path.stat().st_size
        self.out.put_file(self.path, self.out.join(self.name))
        self.finished[self.name] = {"videos": self.videos, "bytes": size}
        log.info("export: %s (%d videos, %.1f MB)", self.name, len(self.videos), size / 2**20)
        self.videos = []
        self.number += 1

    def close(self) -> dict[str, dict[str, Any]]:
        self._flush()
        self._roll()
        self.folder.cleanup()
        return self.finished


def _digest(record: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:32]


def _video_ids(store: ArtifactStore, chosen: list[str] | None) -> Iterator[str]:
    if chosen is not None:
        yield from chosen
        return
    for folder in sorted(store.list(store.videos_dir())):
        yield PurePosixPath(folder.split("://", 1)[1]).name


def read_index(out: ArtifactStore) -> dict[str, Any]:
    uri = out.join(INDEX)
    if not out.exists(uri):
        return {"format": "action100m", "shards": {}, "videos": {}}
    index: dict[str, Any] = out.read_json(uri)
    return index


def export_shards(
    store: ArtifactStore,
    out_uri: str,
    video_ids: list[str] | None = None,
    max_bytes: int = MAX_FILE_BYTES,
) -> dict[str, Any]:
    """Export the store's documents (or ``video_ids``) into shards under ``out_uri``, adding
    only what changed since the last export there; returns a summary. Exports into one folder
    take turns (a lease on it: two shard runs finishing together must not both write the index)."""
    out = ArtifactStore(normalise_uri(out_uri).rstrip("/"))
    lease = take(out, out.root, f"export {out.root}", ttl_seconds=EXPORT_LEASE_SECONDS,
                 wait_seconds=EXPORT_LEASE_SECONDS, finished=lambda: False)  # fmt: skip
    try:
        return _export(store, out, video_ids, max_bytes)
    finally:
        give_back(out, lease)


def _export(
    store: ArtifactStore, out: ArtifactStore, video_ids: list[str] | None, max_bytes: int
) -> dict[str, Any]:
    index = read_index(out)
    numbers = [int(name[5:10]) for name in index["shards"]]
    writer = ShardWriter(out, max(numbers, default=-1) + 1, max_bytes)
    moved: dict[str, str] = {}  # video -> the shard that held its previous version
    unchanged = 0
    for video_id in _video_ids(store, video_ids):
        document_uri = store.document_uri(video_id)
        known = index["videos"].get(video_id)
        fingerprint = store.fingerprint(document_uri)
        if fingerprint is None:
            continue  # not published (yet)
        if known and known.get("fingerprint") == fingerprint:
            unchanged += 1
            continue
        record = official_record(store.read_json(document_uri))
        digest = _digest(record)
        if known and known.get("digest") == digest:  # republished, same content
            known["fingerprint"] = fingerprint
            unchanged += 1
            continue
        if known:
            moved[video_id] = known["shard"]
        shard = writer.add(record)
        index["videos"][video_id] = {"shard": shard, "fingerprint": fingerprint, "digest": digest}
    index["shards"].update(writer.close())
    for name in sorted(set(moved.values())):
        _drop_videos(out, index, name, {v for v, old in moved.items() if old == name})
    out.write_json(out.join(INDEX), index)  # last: the shards it names are all in place
    added = sum(len(s["videos"]) for n, s in index["shards"].items() if n in writer.finished)
    return {
        "out": out.root,
        "added": added,
        "replaced": len(moved),
        "unchanged": unchanged,
        "shards": len(index["shards"]),
        "videos": len(index["videos"]),
    }


def _drop_videos(out: ArtifactStore, index: dict[str, Any], name: str, videos: set[str]) -> None:
    """Rewrite shard ``name`` without ``videos`` (their new versions are in newer shards),
    streaming one row group at a time; a shard left empty is removed."""
    entry = index["shards"][name]
    keep = [v for v in entry["videos"] if v not in videos]
    uri = out.join(name)
    if not keep:
        out.fs.rm(out.fs._strip_protocol(uri))
        del index["shards"][name]
        return
    with tempfile.TemporaryDirectory(prefix="action100m-export-") as folder:
        source, target = Path(folder) / "old.parquet", Path(folder) / "new.parquet"
        with out.fs.open(out.fs._strip_protocol(uri), "rb") as remote, source.open("wb") as local:
            while chunk := remote.read(2**24):
                local.write(chunk)
        reader = pq.ParquetFile(source)
        with pq.ParquetWriter(target, SCHEMA, compression="zstd") as writer:
            for group in range(reader.num_row_groups):
                table = reader.read_row_group(group)
                mask = pa.array([v not in videos for v in table.column("video_uid").to_pylist()])
                writer.write_table(table.filter(mask))
        out.put_file(target, uri)
        entry.update(videos=keep, bytes=target.stat().st_size)


def iter_records(location: str) -> Iterator[dict[str, Any]]:
    """Release records one at a time from a store, a release file, or a folder of shards."""
    path = Path(location.removeprefix("file://"))
    if path.suffix in (".parquet", ".json", ".jsonl"):
        from action100m.release import read_records

        yield from read_records(location)
        return
    folder = ArtifactStore(normalise_uri(location).rstrip("/"))
    if folder.exists(folder.join(INDEX)):
        for name in sorted(read_index(folder)["shards"]):
            with folder.fs.open(folder.fs._strip_protocol(folder.join(name)), "rb") as handle:
                for batch in pq.ParquetFile(handle).iter_batches(batch_size=16):
                    yield from batch.to_pylist()
        return
    for video_id in _video_ids(folder, None):
        uri = folder.document_uri(video_id)
        if folder.exists(uri):
            yield official_record(folder.read_json(uri))


def store_usage(location: str) -> Iterator[dict[str, Any]]:
    """Every finished Stage 3 ``usage.json`` of a store (none for a file or shards)."""
    store = ArtifactStore(normalise_uri(location).rstrip("/"))
    if Path(location).suffix or store.exists(store.join(INDEX)):
        return
    for folder in store.list(store.videos_dir()):
        for key_folder in store.list(f"{folder}/aggregate"):
            uri = f"{key_folder}/usage.json"
            if store.is_done(key_folder) and store.exists(uri):
                yield store.read_json(uri)
