"""Caption stage with the in-process transformers backend on a tiny random Qwen3-VL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from caption_helpers import ONE_PER_NODE, VIDEO_ID, prepared, read_captions, scene_tree

from action100m.config import CaptionConfig, load_settings
from action100m.errors import VideoError
from action100m.models.captioner import CaptionJob, make_captioner
from action100m.models.qwen3vl import TransformersCaptioner
from action100m.pipeline import run_caption
from action100m.stages import caption_requests
from action100m.stages.caption_requests import plan_requests, segment_times
from action100m.stages.publish import build_document
from action100m.store import ArtifactStore


class Spy:
    """Wraps the loaded captioner's ``encode`` to record what reaches the model per batch."""

    def __init__(self, captioner: TransformersCaptioner, monkeypatch: pytest.MonkeyPatch) -> None:
        self.batches: list[dict[str, Any]] = []
        real = captioner.encode

        def encode(batch: list[CaptionJob]) -> Any:
            inputs = real(batch)
            self.batches.append(
                {
                    "prompts": [job.prompt for job in batch],
                    "frames": [len(job.frames) for job in batch],
                    "grids": inputs["image_grid_thw"].tolist(),
                    "image_tokens": inputs["mm_token_type_ids"].sum(-1).tolist(),
                }
            )
            return inputs

        monkeypatch.setattr(captioner, "encode", encode)

    @property
    def requests(self) -> int:
        return sum(len(batch["prompts"]) for batch in self.batches)


def spy_on(settings: Any, monkeypatch: pytest.MonkeyPatch) -> Spy:
    captioner = make_captioner(settings.caption)
    assert isinstance(captioner, TransformersCaptioner)
    return Spy(captioner, monkeypatch)


def test_plan_gives_leaves_one_middle_frame_and_segments_evenly_spaced_frames() -> None:
    release = load_settings(profile="tiny", environ={}).caption
    config = release.model_copy(update=ONE_PER_NODE)
    tree = scene_tree("unused.mp4")
    plans = {(p.node_id, p.field): p for p in plan_requests(tree, config)}
    assert len(plans) == len(tree)
    for node in tree.nodes:
        plan = plans[(node.node_id, "caption")]
        if node.is_leaf:
            assert (plan.kind, plan.times) == ("frame", (node.middle,))
            assert "image" in plan.prompt
        else:
            assert plan.kind == "segment" and len(plan.times) == config.frames == 8
            gaps = np.diff(plan.times)
            assert np.allclose(gaps, node.duration / 8, atol=2e-3)
            assert node.start < plan.times[0] and plan.times[-1] < node.end
            assert f"{node.duration:.1f}-second" in plan.prompt
    assert segment_times(tree.root, 4) == [1.5, 4.5, 7.5, 10.5]
    both = plan_requests(tree, config.model_copy(update={"leaf_segment_caption": True}))
    assert len(both) == len(tree) + len(tree.leaves())
    # the release's fields, the default: and every node's action label over its clip's frames
    every = plan_requests(tree, release)
    assert len(every) == 2 * len(tree) + len(tree.leaves())
    for plan in every:
        if plan.field == "action":
            clip = segment_times(tree[plan.node_id], release.frames)
            assert plan.times == tuple(clip) and plan.max_new_tokens == 16  # <= max_new_tokens
    assert release.action_max_new_tokens < CaptionConfig().max_new_tokens


def test_32_frames_of_320_reach_the_model_as_32_images_of_320(tiny_settings: Any) -> None:
    config = tiny_settings.caption.model_copy(update={"size": 320, "frames": 32})
    captioner = TransformersCaptioner(config)
    frames = [np.full((320, 320, 3), i, np.uint8) for i in range(32)]
    inputs = captioner.encode([CaptionJob("k", "Describe the clip.", frames, 4)])
    assert inputs["image_grid_thw"].tolist() == [[1, 20, 20]] * 32
    assert int(inputs["mm_token_type_ids"].sum()) == 32 * 100  # 20x20 patches merged 2x2


def test_captions_every_node_with_the_right_frames(
    store: ArtifactStore, scene_video: tuple[Path, list[float]], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, tree = prepared(store, scene_video[0])
    spy = spy_on(settings, monkeypatch)
    folder = run_caption(settings, store, VIDEO_ID)
    assert store.is_done(folder)
    captions = read_captions(settings, store)
    assert captions["model"] == "tiny-random/qwen3vl"
    assert list(captions["nodes"]) == [node.node_id for node in tree.nodes]
    for node in tree.nodes:
        entry = captions["nodes"][node.node_id]
        assert entry["kind"] == ("frame" if node.is_leaf else "segment")
        assert entry["frames"] == (1 if node.is_leaf else 8)
        assert entry["tokens_in"] > 0 and 0 < entry["tokens_out"] <= 16
        assert (entry["caption"] is None) == (entry["error"] == "empty caption")
    # Leaves and segments are batched apart; every image is 64x64 -> 4x4 patches, 4 tokens.
    for batch in spy.batches:
        assert len(set(batch["frames"])) == 1
        assert all(grid == [1, 4, 4] for grid in batch["grids"])
        assert batch["image_tokens"] == [4 * n for n in batch["frames"]]
    assert sorted(n for b in spy.batches for n in b["frames"]) == [1, 1, 1, 8, 8]
    document = build_document(settings, store, VIDEO_ID)
    kinds = [node["caption_kind"] for node in document["nodes"]]
    assert kinds == ["segment", "frame", "segment", "frame", "frame"]
    assert document["pipeline"]["models"]["captioner"] == "tiny-random/qwen3vl"


def test_rerun_is_skipped_and_the_cache_saves_repeated_work(
    store: ArtifactStore, scene_video: tuple[Path, list[float]], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, tree = prepared(store, scene_video[0])
    spy = spy_on(settings, monkeypatch)
    first = run_caption(settings, store, VIDEO_ID)
    made = spy.requests
    assert made == len(tree)
    assert run_caption(settings, store, VIDEO_ID) == first and spy.requests == made
    # A lost result (task killed before _SUCCESS) costs nothing the second time.
    store.fs.rm(store.fs._strip_protocol(f"{first}/_SUCCESS"))
    before = read_captions(settings, store)
    run_caption(settings, store, VIDEO_ID)
    assert spy.requests == made
    after = read_captions(settings, store)
    for node_id, entry in after["nodes"].items():
        assert entry["caption"] == before["nodes"][node_id]["caption"] and entry["cached"]
    # Leaf video captions are new requests; the image captions are reused.
    both, _ = prepared(store, scene_video[0], leaf_segment_caption=True)
    run_caption(both, store, VIDEO_ID)
    assert spy.requests == made + len(tree.leaves())
    nodes = read_captions(both, store)["nodes"]
    for leaf in tree.leaves():
        assert nodes[leaf.node_id]["kind"] == "frame" and "segment_caption" in nodes[leaf.node_id]


def test_an_unreadable_frame_fails_only_its_node(
    store: ArtifactStore, scene_video: tuple[Path, list[float]], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, tree = prepared(store, scene_video[0])
    broken = tree.nodes[3].middle  # the leaf [4, 8]
    real = caption_requests.iter_frames_at

    def iter_frames_at(*args: Any, **kwargs: Any) -> Any:
        for moment, frame, problem in real(*args, **kwargs):
            yield (moment, None, "corrupt packet") if moment == broken else (moment, frame, problem)

    monkeypatch.setattr(caption_requests, "iter_frames_at", iter_frames_at)
    run_caption(settings, store, VIDEO_ID)
    nodes = read_captions(settings, store)["nodes"]
    assert "corrupt packet" in nodes[tree.nodes[3].node_id]["error"]
    assert nodes[tree.nodes[3].node_id]["caption"] is None
    others = [n for n in tree.nodes if n is not tree.nodes[3]]
    assert all("corrupt" not in (nodes[n.node_id]["error"] or "") for n in others)


def test_a_missing_video_is_a_clear_permanent_error(store: ArtifactStore, tmp_path: Path) -> None:
    settings, _ = prepared(store, tmp_path / "gone.mp4")
    with pytest.raises(VideoError, match="scenes"):
        run_caption(settings, store, VIDEO_ID)


def test_overlapping_tasks_keep_each_others_cached_answers(store: ArtifactStore) -> None:
    uri = f"{store.video_dir(VIDEO_ID)}/caption/cache/model.json"
    first = caption_requests.RequestCache(store, uri)
    second = caption_requests.RequestCache(store, uri)  # both loaded the same (empty) file
    first.put("a", {"caption": "from the first task"})
    second.put("b", {"caption": "from the second task"})
    first.flush()
    second.flush()
    first.put("c", {"caption": "the first task again"})
    first.flush()
    assert set(store.read_json(uri)) == {"a", "b", "c"}
    assert "b" in first and store.read_json(uri)["a"] == {"caption": "from the first task"}
