"""A hand-made segment tree for the caption tests: the 12 s scene video cut at 4 s and 8 s.

Built directly (not by the segment stage) so the tests know every node's span exactly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from action100m.config import Settings, load_settings
from action100m.stages.outputs import stage_key
from action100m.store import ArtifactStore
from action100m.tree import Node, Tree, make_node_id

VIDEO_ID = "scenes"
# (start, end, children as indexes): root, [0,4] leaf, [4,12] -> [4,8] leaf, [8,12] leaf.
SPANS: list[tuple[float, float, list[int]]] = [
    (0.0, 12.0, [1, 2]),
    (0.0, 4.0, []),
    (4.0, 12.0, [3, 4]),
    (4.0, 8.0, []),
    (8.0, 12.0, []),
]


def scene_tree(source: str, video_id: str = VIDEO_ID) -> Tree:
    ids = [make_node_id(video_id, start, end) for start, end, _ in SPANS]
    parents: dict[int, int] = {c: p for p, (_, _, kids) in enumerate(SPANS) for c in kids}
    levels = [0] * len(SPANS)
    for index in range(len(SPANS)):
        if index in parents:
            levels[index] = levels[parents[index]] + 1
    nodes = [
        Node(
            node_id=ids[i],
            parent_id=ids[parents[i]] if i in parents else None,
            level=levels[i],
            start=start,
            end=end,
            children=[ids[c] for c in kids],
        )
        for i, (start, end, kids) in enumerate(SPANS)
    ]
    return Tree(video_id=video_id, duration=12.0, fps=24.0, source=source, nodes=nodes)


def write_tree(settings: Settings, store: ArtifactStore, tree: Tree) -> str:
    folder = store.stage_dir(tree.video_id, "segment", stage_key(settings, "segment"))
    store.write_json(f"{folder}/tree.json", tree.to_json())
    store.mark_done(folder)
    return folder


# One request per node (a leaf's frame, another node's clip): the tests of the stage's mechanics
# count requests; the release's extra fields have tests of their own.
ONE_PER_NODE = {"leaf_segment_caption": False, "action": False}


def caption_settings(store: ArtifactStore, **caption: Any) -> Settings:
    return load_settings(
        profile="tiny", store=store.root, overrides={"caption": {**ONE_PER_NODE, **caption}},
        environ={},
    )  # fmt: skip


def prepared(store: ArtifactStore, video: Path, **caption: Any) -> tuple[Settings, Tree]:
    """Settings (tiny profile plus ``caption`` overrides) and the scene tree, already in the store."""
    settings = caption_settings(store, **caption)
    tree = scene_tree(str(video))
    write_tree(settings, store, tree)
    return settings, tree


def read_captions(settings: Settings, store: ArtifactStore) -> dict[str, Any]:
    folder = store.stage_dir(VIDEO_ID, "caption", stage_key(settings, "caption"))
    captions: dict[str, Any] = store.read_json(f"{folder}/captions.json")
    return captions
