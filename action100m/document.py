"""The per-video document (DESIGN.md): tree + captions + annotations + metadata, nodes depth-first.

Built from whatever stages have finished, so ``segment`` can already write it and each later stage
enriches it. Artifact formats read here:

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
from action100m.config import Settings
from action100m.errors import MissingArtifactError
from action100m.store import ArtifactStore
from action100m.tree import Tree


def stage_artifact(
    settings: Settings, store: ArtifactStore, video_id: str, stage: str, name: str
) -> str | None:
    """URI of a finished stage's artifact, or None where that stage has not finished."""
    folder = store.stage_dir(video_id, stage, settings.stage_key(stage))
    return f"{folder}/{name}" if store.is_done(folder) else None


def load_tree(settings: Settings, store: ArtifactStore, video_id: str) -> Tree:
    uri = stage_artifact(settings, store, video_id, "segment", "tree.json")
    if uri is None:
        raise MissingArtifactError(
            f"video {video_id}: no finished segment tree in {store.root}; run `segment` first"
        )
    return Tree.from_json(store.read_json(uri))


def metadata_uri(store: ArtifactStore, video_id: str) -> str:
    return f"{store.video_dir(video_id)}/metadata.json"


def load_metadata(store: ArtifactStore, video_id: str) -> dict[str, Any]:
    uri = metadata_uri(store, video_id)
    return dict(store.read_json(uri)) if store.exists(uri) else {}


def build_document(settings: Settings, store: ArtifactStore, video_id: str) -> dict[str, Any]:
    tree = load_tree(settings, store, video_id)
    captions_uri = stage_artifact(settings, store, video_id, "caption", "captions.json")
    annotations_uri = stage_artifact(settings, store, video_id, "aggregate", "annotations.json")
    captions = store.read_json(captions_uri) if captions_uri else {}
    annotations = store.read_json(annotations_uri) if annotations_uri else {}
    caption_nodes = captions.get("nodes", {})
    annotation_nodes = annotations.get("nodes", {})

    nodes = []
    for node in tree.nodes:
        entry: dict[str, Any] = {
            "node_id": node.node_id,
            "parent_id": node.parent_id,
            "level": node.level,
            "start": node.start,
            "end": node.end,
        }
        if captions_uri:
            caption = caption_nodes.get(node.node_id, {})
            entry["caption"] = caption.get("caption")
            entry["caption_kind"] = caption.get("kind")
            if caption.get("action"):  # the release's plm_action, kept by `import`
                entry["caption_action"] = caption["action"]
            if caption.get("segment_caption"):
                entry["segment_caption"] = caption["segment_caption"]
            if caption.get("error"):
                entry["caption_error"] = caption["error"]
        if annotations_uri:
            annotated = annotation_nodes.get(node.node_id, {})
            entry["annotation"] = annotated.get("annotation")
            if annotated.get("error"):
                entry["error"] = annotated["error"]
        nodes.append(entry)

    metadata = {"duration": tree.duration, "fps": tree.fps, "source": tree.source}
    metadata.update(load_metadata(store, video_id))
    models = {"encoder": settings.embed.model}
    if captions_uri:
        models["captioner"] = captions.get("model", settings.caption.model)
    if annotations_uri:
        models["llm"] = annotations.get("model", settings.aggregate.model)
    return {
        "video_uid": video_id,
        "metadata": metadata,
        "pipeline": {
            "version": __version__,
            "models": models,
            "stages": {
                "segment": True,
                "caption": bool(captions_uri),
                "aggregate": bool(annotations_uri),
            },
            "config": settings.summary(),
        },
        "nodes": nodes,
    }


def write_document(settings: Settings, store: ArtifactStore, video_id: str) -> str:
    """Write (or rewrite) the per-video document from the finished stages; returns its URI."""
    uri = store.document_uri(video_id)
    store.write_json(uri, build_document(settings, store, video_id))
    return uri
