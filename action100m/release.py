"""The official Action100M release's record: its exact Arrow schema, and files of it in and out.

A record is one video: ``video_uid``, ``metadata`` (seven fields, in the release's order and types)
and ``nodes`` listed by (level, start), times on the release's 0.01 s grid, stored as float32, so a
file written here concatenates with the release's own (``pyarrow.concat_tables``,
``datasets.load_dataset("parquet", ...)``). Files are read by extension: ``.parquet``, ``.jsonl``,
or ``.json`` (the release's columnar form ``{column: [value per video]}``, one record, or a list).
"""

from __future__ import annotations

import io
import json
import math
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from action100m.errors import PermanentError
from action100m.store import ArtifactStore, normalise_uri

_TEXT = pa.string()
METADATA = pa.struct(
    [
        ("title", _TEXT),
        ("description", _TEXT),
        ("view_count", pa.int64()),
        ("like_count", pa.int64()),
        ("duration", pa.int64()),
        ("upload_date", _TEXT),
        ("transcript", pa.list_(pa.struct([("time", _TEXT), ("text", _TEXT)]))),
    ]
)
GPT = pa.struct(
    [
        ("summary", pa.struct([("brief", _TEXT), ("detailed", _TEXT)])),
        ("action", pa.struct([("brief", _TEXT), ("detailed", _TEXT), ("actor", _TEXT)])),
    ]
)
NODE = pa.struct(
    [
        ("node_id", _TEXT),
        ("parent_id", _TEXT),
        ("level", pa.int16()),
        ("start", pa.float32()),
        ("end", pa.float32()),
        ("plm_action", _TEXT),
        ("plm_caption", _TEXT),
        ("llama3_caption", _TEXT),
        ("gpt", GPT),
    ]
)
SCHEMA = pa.schema([("video_uid", _TEXT), ("metadata", METADATA), ("nodes", pa.list_(NODE))])
ROW_GROUP_VIDEOS = 64  # a 1-hour video is ~1 MB of Parquet: row groups of tens of MB


def release_time(seconds: float) -> float:
    """A time as the release holds it: on its 0.01 s grid, as a float32 (its JSON has the same
    widened values). Children that tile a parent still do: equal times round equally."""
    return float(np.float32(round(float(seconds), 2)))


def _count(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return int(round(value))


def _transcript_time(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"{value:.2f}"
    return None


def release_metadata(metadata: dict[str, Any]) -> dict[str, Any]:
    """The release's seven metadata fields from a document's (whose ``duration`` is the video's
    own, or the tree's when none was given); a transcript line without a time has a null time."""
    lines = metadata.get("transcript") or []
    transcript = [
        {"time": None, "text": line}
        if isinstance(line, str)
        else {"time": _transcript_time(line.get("time")), "text": line.get("text")}
        for line in lines
        if isinstance(line, str | dict)
    ]
    text = {name: metadata.get(name) for name in ("title", "description", "upload_date")}
    return {
        "title": text["title"] if isinstance(text["title"], str) else None,
        "description": text["description"] if isinstance(text["description"], str) else None,
        "view_count": _count(metadata.get("view_count")),
        "like_count": _count(metadata.get("like_count")),
        "duration": _count(metadata.get("duration")),
        "upload_date": text["upload_date"] if isinstance(text["upload_date"], str) else None,
        "transcript": transcript if "transcript" in metadata else None,
    }


def sort_nodes(nodes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The release's order: by level, then start."""
    return sorted(nodes, key=lambda node: (int(node["level"]), float(node["start"])))


def to_table(records: list[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(records, schema=SCHEMA)


def write_records(records: list[dict[str, Any]], out: str, schema: pa.Schema | None) -> str:
    """``records`` to ``out`` by its extension (``.parquet`` with ``schema``, or inferred when
    None; ``.json`` columnar as the release's JSON; else JSON Lines), atomically; returns the URI."""
    uri = normalise_uri(out)
    if uri.endswith(".parquet"):
        buffer = io.BytesIO()
        table = pa.Table.from_pylist(records, schema=schema)
        pq.write_table(table, buffer, row_group_size=ROW_GROUP_VIDEOS, compression="zstd")
        data = buffer.getvalue()
    elif uri.endswith(".json"):  # columnar, as the release's JSON: {column: [one per row]}
        columns = {name: [r.get(name) for r in records] for name in _columns(records, schema)}
        data = json.dumps(columns, ensure_ascii=False).encode()
    else:
        data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode()
    ArtifactStore(uri.rsplit("/", 1)[0]).write_bytes(uri, data)
    return uri


def _columns(records: list[dict[str, Any]], schema: pa.Schema | None) -> list[str]:
    if schema is not None:
        return list(schema.names)
    return list(dict.fromkeys(name for record in records for name in record))


def read_records(path: str) -> list[dict[str, Any]]:
    """One dict per video from a release file; a missing or unreadable file is one line."""
    uri = normalise_uri(path)
    try:
        with fsspec.open(uri, "rb") as handle:
            data = handle.read()
    except (FileNotFoundError, IsADirectoryError, PermissionError) as exc:
        raise PermanentError(f"cannot read {path}: {type(exc).__name__}") from exc
    try:
        if uri.endswith(".parquet"):
            return list(pq.read_table(io.BytesIO(data)).to_pylist())
        return _json_records(data, lines=uri.endswith(".jsonl"))
    except (pa.ArrowException, ValueError, UnicodeDecodeError) as exc:
        kind = "Parquet" if uri.endswith(".parquet") else "JSON"
        detail = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise PermanentError(f"{path} is not a readable {kind} release file: {detail}") from exc


def _json_records(data: bytes, *, lines: bool) -> list[dict[str, Any]]:
    text = data.decode("utf-8")
    if not lines:
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            if not exc.msg.startswith("Extra data"):
                raise
            lines = True  # JSON Lines under a .json name
    if lines:
        value = [json.loads(line) for line in text.splitlines() if line.strip()]
    records: list[dict[str, Any]] = []
    for item in value if isinstance(value, list) else [value]:
        if not isinstance(item, dict):
            raise ValueError("expected one object per video")
        if isinstance(item.get("video_uid"), list):  # columnar: {column: [value per video]}
            columns = {k: v for k, v in item.items() if isinstance(v, list)}
            rows = zip(*columns.values(), strict=True)
            records.extend(dict(zip(columns, row, strict=True)) for row in rows)
        else:
            records.append(item)
    return records
