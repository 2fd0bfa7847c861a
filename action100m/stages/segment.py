"""Stage 1b: Ward clustering with temporal adjacency -> binary tree of contiguous spans -> prune.

Each sampled frame is connected only to its neighbours, so Ward can only merge adjacent spans and
the full merge tree is a binary tree of contiguous time spans (about O(n log n) in scikit-learn;
unconstrained Ward is quadratic). Pruning follows the official release: where either child of a
node is shorter than ``min_duration``, the node becomes a leaf, so the tree stays binary.
"""

from __future__ import annotations

import logging
import time
import warnings

import numpy as np
from scipy.sparse import diags

from action100m.config import Settings
from action100m.document import write_document
from action100m.errors import MissingArtifactError, VideoError
from action100m.store import ArtifactStore
from action100m.tree import Node, Tree, make_node_id

log = logging.getLogger(__name__)


def ward_merges(features: np.ndarray) -> np.ndarray:
    """(n-1, 2) merge list of Ward clustering where only temporal neighbours may merge.

    Row i merges clusters ``a`` and ``b`` into cluster ``n + i``; ids below ``n`` are frames.
    """
    from sklearn.cluster import AgglomerativeClustering

    n = len(features)
    if n < 2:
        return np.zeros((0, 2), np.int64)
    chain = diags([np.ones(n - 1), np.ones(n - 1)], [-1, 1], shape=(n, n), format="csr")
    model = AgglomerativeClustering(
        n_clusters=1, linkage="ward", connectivity=chain, compute_full_tree=True
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "the number of connected components" chatter
        model.fit(features.astype(np.float64, copy=False))
    return np.asarray(model.children_, dtype=np.int64)


def frame_boundaries(times: list[float], duration: float) -> np.ndarray:
    """Span edges: frame i covers [edges[i], edges[i+1]); the first starts at 0, the last ends at
    the video's end, so the frames tile the whole video."""
    edges = np.empty(len(times) + 1)
    edges[0] = 0.0
    edges[1:-1] = times[1:]
    edges[-1] = max(duration, times[-1])
    return edges


def build_tree(
    video_id: str,
    merges: np.ndarray,
    edges: np.ndarray,
    *,
    min_duration: float,
    fps: float,
    source: str,
) -> Tree:
    """Turn the merge list into the pruned binary tree, nodes in depth-first pre-order."""
    n = len(edges) - 1
    # Frame span [first, last+1) of every cluster id.
    lo = np.concatenate([np.arange(n), np.zeros(len(merges), np.int64)])
    hi = np.concatenate([np.arange(1, n + 1), np.zeros(len(merges), np.int64)])
    for i, (a, b) in enumerate(merges):
        lo[n + i] = min(lo[a], lo[b])
        hi[n + i] = max(hi[a], hi[b])
        if hi[n + i] - lo[n + i] != (hi[a] - lo[a]) + (hi[b] - lo[b]):
            raise AssertionError("Ward merged non-adjacent spans; connectivity is broken")

    def span(cluster: int) -> tuple[float, float]:
        return float(edges[lo[cluster]]), float(edges[hi[cluster]])

    def kids(cluster: int) -> tuple[int, int] | None:
        if cluster < n:
            return None
        a, b = merges[cluster - n]
        return (int(a), int(b)) if lo[a] < lo[b] else (int(b), int(a))

    nodes: list[Node] = []
    by_id: dict[str, Node] = {}
    root = n + len(merges) - 1 if len(merges) else 0
    stack: list[tuple[int, str | None, int]] = [(root, None, 0)]
    while stack:  # iterative: a chain-like tree of 27k frames would overflow recursion
        cluster, parent_id, level = stack.pop()
        start, end = span(cluster)
        node = Node(make_node_id(video_id, start, end), parent_id, level, start, end)
        if parent_id is not None:
            by_id[parent_id].children.append(node.node_id)
        nodes.append(node)
        by_id[node.node_id] = node
        pair = kids(cluster)
        if pair and all(span(c)[1] - span(c)[0] >= min_duration for c in pair):
            stack.extend((c, node.node_id, level + 1) for c in reversed(pair))
    return Tree(video_id, float(edges[-1]), fps, source, nodes)


def run_segment(settings: Settings, store: ArtifactStore, video_id: str) -> str:
    """Cluster the embeddings of ``video_id`` into ``segment/{key}/tree.json``; skip when done."""
    folder = store.stage_dir(video_id, "segment", settings.stage_key("segment"))
    if store.is_done(folder):
        log.info("video %s: segment already done at %s, skipping", video_id, folder)
        return folder
    embed_dir = store.stage_dir(video_id, "embed", settings.stage_key("embed"))
    if not store.is_done(embed_dir):
        raise MissingArtifactError(f"video {video_id}: no finished embeddings at {embed_dir}")
    started = time.monotonic()
    features = store.read_npy(f"{embed_dir}/embeddings.npy")
    frames = store.read_json(f"{embed_dir}/frames.json")
    min_duration = settings.segment.min_duration
    if frames["duration"] < min_duration:
        raise VideoError(video_id, f"too short: {frames['duration']:.2f} s < {min_duration} s")
    edges = frame_boundaries(frames["times"], frames["duration"])
    tree = build_tree(
        video_id,
        ward_merges(features),
        edges,
        min_duration=min_duration,
        fps=frames["fps"],
        source=frames["source"],
    )
    store.write_json(f"{folder}/tree.json", tree.to_json())
    store.mark_done(folder, {"nodes": len(tree), "leaves": len(tree.leaves())})
    log.info(
        "video %s: %d frames -> %d nodes (%d leaves) in %.2f s -> %s",
        video_id,
        len(features),
        len(tree),
        len(tree.leaves()),
        time.monotonic() - started,
        folder,
    )
    write_document(settings, store, video_id)
    return folder
