"""Stage 1b: Ward clustering with temporal adjacency -> binary tree of contiguous spans -> prune.

Each sampled frame is connected only to its neighbours, so Ward can only merge adjacent spans and
the full merge tree is a binary tree of contiguous time spans (O(n log n) with a heap over
adjacent pairs; unconstrained Ward is quadratic). Pruning follows the official release: where either child of a
node is shorter than ``min_duration``, the node becomes a leaf, so the tree stays binary.
"""

from __future__ import annotations

import heapq

import numpy as np

from action100m.errors import VideoError
from action100m.stages.base import Stage, StageContext, StageOutput
from action100m.tree import Node, Tree, make_node_id, reaches


def ward_merges(features: np.ndarray) -> np.ndarray:
    """(n-1, 2) merge list of Ward clustering where only temporal neighbours may merge.

    Row i merges clusters ``a`` and ``b`` into cluster ``n + i``; ids below ``n`` are frames (the
    convention of scikit-learn's ``children_``). With a chain connectivity every cluster is a
    contiguous span, so the candidates are only the n-1 adjacent pairs: a heap of their Ward costs
    (size-weighted squared distance of centroids) with lazy deletion gives O(n log n) time and
    O(n d) memory, several times less of both than scikit-learn's general connectivity path.
    """
    centroids = np.array(features, dtype=np.float64)
    n = len(centroids)
    if n < 2:
        return np.zeros((0, 2), np.int64)
    sizes = np.ones(n)
    right = np.arange(1, n + 1)  # right neighbour's head position (n: none)
    left = np.arange(-1, n - 1)  # left neighbour's head position (-1: none)
    label = np.arange(n)  # cluster id of the span headed at each position
    version = np.zeros(n, np.int64)  # bumped on change; heap entries with old versions are stale
    costs = np.empty(n - 1)
    for lo in range(0, n - 1, 4096):  # chunked: a full difference matrix would double memory
        hi = min(lo + 4096, n - 1)
        diff = centroids[lo + 1 : hi + 1] - centroids[lo:hi]
        costs[lo:hi] = 0.5 * np.einsum("ij,ij->i", diff, diff)
    heap = [(float(c), i, 0, i + 1, 0) for i, c in enumerate(costs)]
    heapq.heapify(heap)

    def ward_cost(a: int, b: int) -> float:
        diff = centroids[a] - centroids[b]
        return float(sizes[a] * sizes[b] / (sizes[a] + sizes[b]) * diff.dot(diff))

    merges = np.empty((n - 1, 2), np.int64)
    for step in range(n - 1):
        while True:
            _, a, version_a, b, version_b = heapq.heappop(heap)
            if version[a] == version_a and version[b] == version_b and right[a] == b:
                break
        merges[step] = label[a], label[b]
        total = sizes[a] + sizes[b]
        centroids[a] = (sizes[a] * centroids[a] + sizes[b] * centroids[b]) / total
        sizes[a] = total
        label[a] = n + step
        version[a] += 1
        version[b] = -1  # b is gone
        right[a] = right[b]
        if right[a] < n:
            left[right[a]] = a
            heapq.heappush(
                heap, (ward_cost(a, right[a]), a, version[a], right[a], version[right[a]])
            )
        if left[a] >= 0:
            heapq.heappush(heap, (ward_cost(left[a], a), left[a], version[left[a]], a, version[a]))
    return merges


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
        if pair and all(reaches(span(c)[1] - span(c)[0], min_duration) for c in pair):
            stack.extend((c, node.node_id, level + 1) for c in reversed(pair))
    return Tree(video_id, float(edges[-1]), fps, source, nodes)


class SegmentStage(Stage):
    name = "segment"
    settings_section = "segment"
    help = "stage 1b: Ward clustering of the vectors into a pruned binary tree"
    needs = ("embed",)

    def process(self, ctx: StageContext) -> StageOutput:
        features = ctx.read_input("embed", "embeddings.npy")
        frames = ctx.read_input("embed", "frames.json")
        try:
            times, duration = [float(t) for t in frames["times"]], float(frames["duration"])
            fps, source = float(frames["fps"]), str(frames["source"])
            if not times or features.ndim != 2 or len(features) != len(times):
                raise ValueError(f"{len(features)} vectors for {len(times)} frame times")
        except (KeyError, TypeError, ValueError) as exc:
            uri = f"{ctx.input_dir('embed')}/frames.json"
            raise ctx.corrupt("embed", uri, exc) from None
        min_duration = ctx.settings.segment.min_duration
        if duration < min_duration:
            raise VideoError(ctx.video_id, f"too short: {duration:.2f} s < {min_duration} s")
        tree = build_tree(
            ctx.video_id,
            ward_merges(features),
            frame_boundaries(times, duration),
            min_duration=min_duration,
            fps=fps,
            source=source,
        )
        stats = {"frames": len(features), "nodes": len(tree), "leaves": len(tree.leaves())}
        return StageOutput({"tree.json": tree.to_json()}, stats)


STAGE = SegmentStage()
