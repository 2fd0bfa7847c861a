"""Stage 1 end to end on synthetic videos: cut recovery, tree invariants, idempotent reruns."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from action100m.config import Settings, load_settings
from action100m.pipeline import run_embed, run_publish, run_segment
from action100m.stages.outputs import stage_key
from action100m.stages.segment import build_tree, frame_boundaries, ward_merges
from action100m.store import ArtifactStore
from action100m.tree import Node, Tree, reaches


def _segment(settings: Settings, store: ArtifactStore, path: Path, video_id: str) -> Tree:
    run_embed(settings, store, video_id, str(path))
    folder = run_segment(settings, store, video_id)
    run_publish(settings, store, video_id)  # the document: publish's job, not segment's
    return Tree.from_json(store.read_json(f"{folder}/tree.json"))


def assert_tree_invariants(tree: Tree, min_duration: float) -> None:
    root = tree.root
    assert root.parent_id is None and root.level == 0 and root.start == 0.0
    assert root.end == pytest.approx(tree.duration)
    seen = set()
    for node in tree.nodes:
        assert node.node_id not in seen
        seen.add(node.node_id)
        assert node.lasts(min_duration)
        if node.parent_id is not None:
            assert tree[node.parent_id].level == node.level - 1
        if not node.is_leaf:
            left, right = tree.children(node)  # binary
            assert (left.start, right.end) == (node.start, node.end)
            assert left.end == right.start
    # Depth-first pre-order: the order of subtree() from the root.
    assert [n.node_id for n in tree.subtree(root)] == [n.node_id for n in tree.nodes]
    leaves = sorted(tree.leaves(), key=lambda n: n.start)
    assert leaves[0].start == 0.0 and leaves[-1].end == pytest.approx(tree.duration)
    for before, after in zip(leaves, leaves[1:], strict=False):
        assert before.end == after.start  # no gap, no overlap


@pytest.mark.parametrize(("window", "stride"), [(16, 4), (64, 8)])  # short windows; the paper's
def test_scene_cuts_are_top_level_boundaries(
    scene_video: tuple[Path, list[float]], store: ArtifactStore, window: int, stride: int
) -> None:
    path, cuts = scene_video
    settings = load_settings(
        profile="tiny",
        store=store.root,
        overrides=[f"embed.window={window}", f"embed.stride={stride}"],
        environ={},
    )
    tree = _segment(settings, store, path, "scenes")
    assert_tree_invariants(tree, settings.segment.min_duration)
    top = [n for n in tree.nodes if n.level <= 2]
    boundaries = sorted({n.end for n in top if n.end < tree.duration})
    for cut in cuts:
        assert min(abs(b - cut) for b in boundaries) <= 0.5, (cut, boundaries)


def test_rerun_skips_and_ids_are_stable(
    scene_video: tuple[Path, list[float]], store: ArtifactStore, tiny_settings: Settings
) -> None:
    path, _ = scene_video
    first = _segment(tiny_settings, store, path, "again")
    embed_dir = store.stage_dir("again", "embed", stage_key(tiny_settings, "embed"))
    marker = store.read_bytes(f"{embed_dir}/_SUCCESS")
    second = _segment(tiny_settings, store, path, "again")
    assert store.read_bytes(f"{embed_dir}/_SUCCESS") == marker  # not recomputed
    assert [n.node_id for n in first.nodes] == [n.node_id for n in second.nodes]
    # A fresh store recomputes everything and still gets the same ids.
    other = ArtifactStore(store.root + "-fresh")
    third = _segment(tiny_settings, other, path, "again")
    assert [n.node_id for n in third.nodes] == [n.node_id for n in first.nodes]
    document = store.read_json(store.document_uri("again"))
    assert document["video_uid"] == "again"
    assert [n["node_id"] for n in document["nodes"]] == [n.node_id for n in first.nodes]
    # A document lost after the stage finished (written after _SUCCESS) comes back on a rerun.
    Path(store.document_uri("again").removeprefix("file://")).unlink()
    _segment(tiny_settings, store, path, "again")
    assert store.read_json(store.document_uri("again")) == document


def test_short_valid_video_gives_valid_tree(
    short_video: Path, store: ArtifactStore, tiny_settings: Settings
) -> None:
    tree = _segment(tiny_settings, store, short_video, "short")
    assert_tree_invariants(tree, 0.5)
    assert tree.duration == pytest.approx(2.5, abs=0.1)


@pytest.mark.parametrize("seed", range(5))
def test_invariants_hold_for_random_features(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 400))
    times = np.cumsum(rng.uniform(0.05, 0.3, n)) - 0.05
    times[0] = 0.0
    duration = float(times[-1] + 0.1)
    features = rng.normal(size=(n, 8)).astype(np.float32)
    min_duration = float(rng.uniform(0.2, 1.0))
    if duration < min_duration:
        return
    merges = ward_merges(features)
    edges = frame_boundaries(list(times), duration)
    tree = build_tree("v", merges, edges, min_duration=min_duration, fps=30.0, source="x")
    assert_tree_invariants(tree, min_duration)
    # Pruning rule, against Ward's own splits: an internal node keeps exactly Ward's two children,
    # both long enough; a leaf is a single frame or a span Ward would split into a part shorter
    # than the threshold. So the tree is pruned neither too little nor too much.
    split = _ward_splits(merges, len(features))
    frame_at = {round(float(edge), 9): i for i, edge in enumerate(edges)}

    def frames_of(node: Node) -> tuple[int, int]:
        return frame_at[round(node.start, 9)], frame_at[round(node.end, 9)]

    def seconds(span: tuple[int, int]) -> float:
        return float(edges[span[1]] - edges[span[0]])

    for node in tree.nodes:
        span = frames_of(node)
        children = [frames_of(child) for child in tree.children(node)]
        if children:
            assert children == split[span]
            assert all(reaches(seconds(child), min_duration) for child in children)
        elif span[1] - span[0] > 1:
            assert not all(reaches(seconds(part), min_duration) for part in split[span])


def _ward_splits(merges: np.ndarray, n: int) -> dict[tuple[int, int], list[tuple[int, int]]]:
    """Frame span [first, last+1) of every Ward cluster -> its two parts, in time order."""
    lo, hi = list(range(n)), list(range(1, n + 1))
    split = {}
    for a, b in merges:
        lo.append(min(lo[a], lo[b]))
        hi.append(max(hi[a], hi[b]))
        split[(lo[-1], hi[-1])] = sorted([(lo[a], hi[a]), (lo[b], hi[b])])
    return split


def test_ward_matches_scikit_learn_with_chain_connectivity() -> None:
    """Our heap-based chain Ward builds exactly the spans scikit-learn's general path builds."""
    import warnings

    from scipy.sparse import diags
    from sklearn.cluster import AgglomerativeClustering

    def spans(merges: np.ndarray, n: int) -> set[tuple[int, int]]:
        lo, hi = list(range(n)), list(range(1, n + 1))
        for a, b in merges:
            lo.append(min(lo[a], lo[b]))
            hi.append(max(hi[a], hi[b]))
            assert hi[-1] - lo[-1] == (hi[a] - lo[a]) + (hi[b] - lo[b])  # adjacent only
        return set(zip(lo[n:], hi[n:], strict=True))

    rng = np.random.default_rng(7)
    for n in (2, 3, 17, 400):
        features = rng.normal(size=(n, 24))
        chain = diags([np.ones(n - 1), np.ones(n - 1)], [-1, 1], shape=(n, n), format="csr")
        reference = AgglomerativeClustering(
            n_clusters=1, linkage="ward", connectivity=chain, compute_full_tree=True
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reference.fit(features)
        assert spans(ward_merges(features), n) == spans(reference.children_, n)


def test_thresholds_hold_to_the_millisecond() -> None:
    """MP4 time bases give 11.9996875 s for a 12 s video: its last 4 s (shown 8.00-12.00) is 4 s
    for the aggregate threshold, and a 0.4996 s child survives pruning at 0.5 s."""
    assert reaches(11.9996875 - 8.0, 4.0) and reaches(0.4996, 0.5)
    assert not reaches(3.998, 4.0) and not reaches(0.499, 0.5)
    edges = np.array([0.0, 0.25, 0.4996, 0.75, 0.9992])
    merges = np.array([[0, 1], [2, 3], [4, 5]])  # (0.00-0.50) + (0.50-1.00)
    tree = build_tree("v", merges, edges, min_duration=0.5, fps=4.0, source="x")
    assert [(n.start, n.end) for n in tree.nodes] == [
        (0.0, 0.9992),
        (0.0, 0.4996),
        (0.4996, 0.9992),
    ]
