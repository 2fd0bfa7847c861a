"""The official Action100M format in and out.

``import_file`` reads a release file (JSON as in ``reference/hySSAAw4t24.json``, columnar with one
list entry per video; JSON Lines or Parquet with one row per video) into the store as finished
``segment`` and ``caption`` stages under the current keys, node ids kept, so later stages can run on
released trees. The release's own annotations fill the ``aggregate`` slot, marked as imported: the
per-video document and exports show them until ``aggregate`` runs, which replaces them.

``export`` writes the per-video documents as JSON Lines or Parquet (by the extension of ``out``):
``action100m`` uses the release's field names (``plm_caption``, ``llama3_caption``,
``gpt.summary.brief``, ...), one row per video; ``flat`` has one row per node with the five fields.
"""

from __future__ import annotations

import logging
from pathlib import PurePosixPath
from typing import Any, Literal

from action100m.config import Settings
from action100m.errors import PermanentError
from action100m.layout import check_video_id
from action100m.llm.schema import FIELDS, NESTED, nest
from action100m.release import (
    SCHEMA,
    read_records,
    release_metadata,
    release_time,
    sort_nodes,
    write_records,
)
from action100m.sources import clean_metadata
from action100m.stages import get_stage, stages
from action100m.stages.base import Runtime, StageOutput, Video, run_stage, store_output
from action100m.store import ArtifactStore
from action100m.tree import Node, Tree

log = logging.getLogger(__name__)
RELEASE = "action100m-release"


TILING_TOLERANCE = 0.011  # seconds: the release's times are on a 0.01 s grid, stored as float32


def release_tree(video_id: str, metadata: dict[str, Any], rows: list[dict[str, Any]]) -> Tree:
    """The release's nodes as a :class:`Tree` in depth-first pre-order, ids and levels kept.
    Anything but one binary tree whose children tile their parent is refused with one line."""
    by_id: dict[str, dict[str, Any]] = {}
    children: dict[str | None, list[dict[str, Any]]] = {}
    for row in rows:
        node_id = str(row.get("node_id"))
        if node_id in by_id:
            raise PermanentError(f"video {video_id}: node {node_id} is listed twice")
        by_id[node_id] = row
        children.setdefault(row.get("parent_id"), []).append(row)
    roots = children.get(None, [])
    if len(roots) != 1 or any(p is not None and p not in by_id for p in children):
        raise PermanentError(f"video {video_id}: the nodes do not form one tree")
    nodes: list[Node] = []
    stack = [roots[0]]
    while stack:
        row = stack.pop()
        kids = sorted(children.get(row["node_id"], []), key=lambda r: float(r["start"]))
        _check_tiling(video_id, row, kids)
        nodes.append(
            Node(
                row["node_id"],
                row.get("parent_id"),
                int(row["level"]),
                float(row["start"]),
                float(row["end"]),
                [k["node_id"] for k in kids],
            )
        )
        stack.extend(reversed(kids))
        if len(nodes) > len(rows):  # only a loop can visit more nodes than there are
            break
    if len(nodes) != len(rows):
        raise PermanentError(
            f"video {video_id}: the nodes do not form one tree ({len(rows)} nodes, "
            f"{len(nodes)} reached from the root: a loop or a detached node)"
        )
    root = nodes[0]
    return Tree(
        video_id, root.end, float(metadata.get("fps") or 0.0), f"{RELEASE}:{video_id}", nodes
    )


def _check_tiling(video_id: str, row: dict[str, Any], kids: list[dict[str, Any]]) -> None:
    """An inner node has two children that cover it exactly, end to start."""
    if not kids:
        return
    spans = [(float(k["start"]), float(k["end"])) for k in kids]
    start, end = float(row["start"]), float(row["end"])

    def close(a: float, b: float) -> bool:
        return abs(a - b) <= TILING_TOLERANCE

    if not (
        len(spans) == 2
        and close(spans[0][0], start)
        and close(spans[0][1], spans[1][0])
        and close(spans[1][1], end)
    ):
        raise PermanentError(
            f"video {video_id}: node {row['node_id']} is not split into two children that tile it"
        )


def _caption(row: dict[str, Any], leaf: bool) -> dict[str, Any]:
    """A release node's captions in our caption entry; empty strings stay empty, not null."""
    frame = leaf and row.get("llama3_caption") is not None
    segment = row.get("plm_caption")
    return {
        "caption": row.get("llama3_caption") if frame else segment,
        "kind": "frame" if frame else "segment",
        "segment_caption": segment if frame else None,
        "action": row.get("plm_action"),
        "error": None,
    }


def _annotation(gpt: Any) -> dict[str, Any] | None:
    """The five fields of a release ``gpt`` as they are (a null field stays null)."""
    if not isinstance(gpt, dict):
        return None
    fields = {f: (gpt.get(group) or {}).get(key) for f, (group, key) in NESTED.items()}
    return {f: v if isinstance(v, str) else None for f, v in fields.items()}


def release_outputs(
    record: dict[str, Any], source: str, annotations: bool = True
) -> tuple[str, dict[str, StageOutput]]:
    """``(video_id, {stage: output})``: one release record as the finished outputs of our stages
    (the tree as segment, the captions as caption, the annotations as aggregate)."""
    video_id = check_video_id(str(record.get("video_uid") or ""))
    metadata, rows = record.get("metadata") or {}, record.get("nodes") or []
    if not isinstance(metadata, dict) or not isinstance(rows, list):
        raise PermanentError(f"video {video_id}: metadata must be an object and nodes a list")
    if not all(isinstance(row, dict) for row in rows):
        raise PermanentError(f"video {video_id}: every node must be an object")
    tree = release_tree(video_id, metadata, rows)
    by_id = {row["node_id"]: row for row in rows}
    info = {"imported": source}
    captions = {n.node_id: _caption(by_id[n.node_id], n.is_leaf) for n in tree.nodes}
    outputs = {
        "segment": StageOutput({"tree.json": tree.to_json()}, info),
        "caption": StageOutput({"captions.json": {"model": RELEASE, "nodes": captions}}, info),
    }
    if annotations:
        nodes: dict[str, Any] = {
            n.node_id: {
                "annotation": _annotation(by_id[n.node_id].get("gpt")),
                "error": None,
                "rounds": [],
            }
            for n in tree.nodes
        }
        outputs["aggregate"] = StageOutput(
            {
                "annotations.json": {"model": RELEASE, "provider": "import", "nodes": nodes},
                "usage.json": {"provider": "import", "requests": 0},
            },
            info,
        )
    return video_id, outputs


def import_file(
    settings: Settings,
    store: ArtifactStore,
    path: str,
    *,
    annotations: bool = True,
    force: bool = False,
) -> list[str]:
    """Import every video in ``path``; returns their ids. ``annotations=False`` leaves the
    release's annotations out (the aggregate stage then simply has not run). A video already in
    the store is refused unless ``force``; the whole file is checked before anything is written.
    Each video is then published."""
    runtime = Runtime.from_environment(settings, store)
    records = read_records(path)
    prepared = [release_outputs(r, PurePosixPath(path).name, annotations) for r in records]
    present = [video_id for video_id, _ in prepared if store.exists(store.document_uri(video_id))]
    if present and not force:
        raise PermanentError(
            f"video {present[0]}: already in {store.root} ({len(present)} of {len(prepared)} "
            "videos in the file are); import --force replaces them"
        )
    for record, (video_id, outputs) in zip(records, prepared, strict=True):
        if video_id in present:
            log.warning("video %s: replacing what the store had with %s", video_id, path)
        metadata = clean_metadata(video_id, dict(record.get("metadata") or {}))
        runtime.store.write_json(runtime.store.metadata_uri(video_id), metadata)
        for stage in stages():  # in pipeline order, so each output's inputs are filed first
            if stage.name in outputs:
                store_output(runtime, stage, video_id, outputs[stage.name])
        run_stage(get_stage("publish"), runtime, Video(video_id))
    return [video_id for video_id, _ in prepared]


def _gpt(annotation: dict[str, Any] | None) -> dict[str, Any] | None:
    return nest(annotation) if annotation else None


def official_record(document: dict[str, Any]) -> dict[str, Any]:
    """A per-video document as the release's record: its schema's fields and order, nodes by
    (level, start), times on its grid. Our extras (fps, source) stay out (:func:`pipeline_extras`)."""
    nodes = []
    for node in sort_nodes(document["nodes"]):
        frame = node.get("caption_kind") == "frame"
        nodes.append(
            {
                "node_id": node["node_id"],
                "parent_id": node["parent_id"],
                "level": node["level"],
                "start": release_time(node["start"]),
                "end": release_time(node["end"]),
                "plm_action": node.get("caption_action"),
                "plm_caption": node.get("segment_caption") if frame else node.get("caption"),
                "llama3_caption": node.get("caption") if frame else None,
                "gpt": _gpt(node.get("annotation")),
            }
        )
    return {
        "video_uid": document["video_uid"],
        "metadata": release_metadata(document["metadata"]),
        "nodes": nodes,
    }


def pipeline_extras(document: dict[str, Any]) -> dict[str, Any]:
    """What the release's record has no field for: where the video came from, how it was made."""
    metadata = document["metadata"]
    return {
        "video_uid": document["video_uid"],
        "fps": metadata.get("fps"),
        "source": metadata.get("source"),
        "pipeline": document.get("pipeline"),
    }


def flat_rows(document: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per node: where it is, its caption, and the five fields (null where none)."""
    rows = []
    for node in document["nodes"]:
        annotation = node.get("annotation") or {}
        rows.append(
            {
                "video_uid": document["video_uid"],
                **{k: node[k] for k in ("node_id", "parent_id", "level", "start", "end")},
                "caption": node.get("caption"),
                "caption_kind": node.get("caption_kind"),
                **{name: annotation.get(name) for name in FIELDS},
                "error": node.get("error"),
            }
        )
    return rows


def store_documents(store: ArtifactStore, video_ids: list[str] | None) -> list[dict[str, Any]]:
    """The named videos' documents (each must exist), or every document in the store."""
    chosen = video_ids
    if chosen is None:
        folders = store.list(store.videos_dir())
        chosen = sorted(PurePosixPath(f.split("://", 1)[1]).name for f in folders)
    documents = []
    for video_id in chosen:
        uri = store.document_uri(video_id)
        if store.exists(uri):
            documents.append(store.read_json(uri))
        elif video_ids is not None:
            raise PermanentError(f"video {video_id}: no document in {store.root}; run `publish`")
    return documents


def export(
    settings: Settings,
    store: ArtifactStore,
    fmt: Literal["action100m", "flat"],
    out: str,
    video_ids: list[str] | None = None,
) -> str:
    """Write the documents of ``video_ids`` (default: all) to ``out`` (``.parquet``: Parquet;
    ``.json``: columnar JSON as the release's; else JSON Lines); returns the URI written. ``action100m`` writes the
    release's exact schema, with our extras beside it in ``{out}.pipeline.jsonl``."""
    if fmt not in ("action100m", "flat"):
        raise PermanentError(f"unknown export format {fmt!r}; choose action100m or flat")
    documents = store_documents(store, video_ids)
    if fmt == "flat":
        rows = [row for document in documents for row in flat_rows(document)]
        return write_records(rows, out, schema=None)
    uri = write_records([official_record(d) for d in documents], out, schema=SCHEMA)
    write_records([pipeline_extras(d) for d in documents], f"{out}.pipeline.jsonl", schema=None)
    return uri
