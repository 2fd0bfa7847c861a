"""The per-video document: tree + captions + annotations + metadata, nodes depth-first.

A pure function of the stages' outputs; the publish stage reads them and writes the result.
Artifact formats read here:

- ``segment/{key}/tree.json``: ``Tree.to_json()``
- ``caption/{key}/captions.json``: ``{"model": str, "nodes": {node_id: {"caption": str | None,
  "kind": "frame" | "segment", "error": str | None, ...}}}``
- ``aggregate/{key}/annotations.json``: ``{"model": str, "nodes": {node_id: {"annotation":
  {five fields} | None, "error": str | None, ...}}}``
- ``videos/{video_id}/metadata.json``: title, description, transcript, ... as given by the user
"""

from __future__ import annotations

from typing import Any

from action100m import __version__
from action100m.tree import Node, Tree


def _caption_fields(caption: dict[str, Any]) -> dict[str, Any]:
    entry = {"caption": caption.get("caption"), "caption_kind": caption.get("kind")}
    if caption.get("action") is not None:  # the release's plm_action
        entry["caption_action"] = caption["action"]
    if caption.get("segment_caption") is not None:
        entry["segment_caption"] = caption["segment_caption"]
    if caption.get("error"):
        entry["caption_error"] = caption["error"]
    return entry


def _node_entry(
    node: Node, captions: dict[str, Any] | None, annotations: dict[str, Any] | None
) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "node_id": node.node_id,
        "parent_id": node.parent_id,
        "level": node.level,
        "start": node.start,
        "end": node.end,
    }
    if captions is not None:
        entry.update(_caption_fields(captions.get("nodes", {}).get(node.node_id, {})))
    if annotations is not None:
        annotated = annotations.get("nodes", {}).get(node.node_id, {})
        entry["annotation"] = annotated.get("annotation")
        if annotated.get("error"):
            entry["error"] = annotated["error"]
    return entry


def assemble_document(
    tree: Tree,
    *,
    captions: dict[str, Any] | None,
    annotations: dict[str, Any] | None,
    metadata: dict[str, Any],
    models: dict[str, str],
    config: dict[str, Any],
    stages: dict[str, bool],
    skipped: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The document from the finished outputs (None: that stage has not finished). ``stages``
    and ``skipped`` come from the video's status record, so both say the same."""
    models = dict(models)
    if captions is not None:
        models["captioner"] = captions.get("model", models.get("captioner", ""))
    if annotations is not None:
        models["llm"] = annotations.get("model", models.get("llm", ""))
    pipeline: dict[str, Any] = {
        "version": __version__,
        "models": models,
        "stages": stages,
        "config": config,
    }
    if skipped:
        pipeline["skipped"] = skipped
    return {
        "video_uid": tree.video_id,
        "metadata": {
            "duration": tree.duration,
            "fps": tree.fps,
            "source": tree.source,
            **metadata,
        },  # fmt: skip
        "pipeline": pipeline,
        "nodes": [_node_entry(node, captions, annotations) for node in tree.nodes],
    }
