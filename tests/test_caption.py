"""Caption stage with the in-process transformers backend on a tiny random Qwen3-VL."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from caption_helpers import ONE_PER_NODE, VIDEO_ID, prepared, read_captions, scene_tree

from action100m.config import CaptionConfig, load_settings
from action100m.errors import ConfigError, VideoError
from action100m.models.captioner import CaptionJob, make_captioner
from action100m.models.qwen3vl import TransformersCaptioner
from action100m.pipeline import run_caption
from action100m.stages import caption_requests
from action100m.stages.caption_requests import plan_requests, segment_times
from action100m.stages.outputs import stage_key
from action100m.stages.publish import build_document
from action100m.store import ArtifactStore


class Spy:
    """Wraps the loaded captioner's ``encode`` to record what reaches the model per batch."""

    def __init__(self, captioner: TransformersCaptioner, monkeypatch: pytest.MonkeyPatch) -> None:
        self.batches: list[dict[str, Any]] = []
        real = captioner.encode

        def encode(batch: list[CaptionJob]) -> Any:
            inputs = real(batch)
            kinds = inputs["mm_token_type_ids"]
            self.batches.append(
                {
                    "prompts": [job.prompt for job in batch],
                    "frames": [len(job.frames) for job in batch],
                    "grids": inputs.get("image_grid_thw", torch.empty(0, 3)).tolist(),
                    "video_grids": inputs.get("video_grid_thw", torch.empty(0, 3)).tolist(),
                    "image_tokens": (kinds == 1).sum(-1).tolist(),
                    "video_tokens": (kinds == 2).sum(-1).tolist(),
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


def test_32_frames_of_320_reach_the_model_as_one_video_of_16_frame_pairs(
    tiny_settings: Any,
) -> None:
    config = tiny_settings.caption.model_copy(update={"size": 320, "frames": 32})
    captioner = TransformersCaptioner(config)
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (320, 320, 3), dtype=np.uint8) for _ in range(32)]
    inputs = captioner.encode([CaptionJob("k", "Describe the clip.", frames, 4, fps=3.2)])
    assert "image_grid_thw" not in inputs
    assert inputs["video_grid_thw"].tolist() == [[16, 20, 20]]
    assert int((inputs["mm_token_type_ids"] == 2).sum()) == 16 * 100  # a pair of 20x20 merged 2x2
    expected = _video_patches(frames, captioner.image_processor)
    assert torch.allclose(inputs["pixel_values_videos"], expected, atol=1e-5)
    text = captioner.tokenizer.decode(inputs["input_ids"][0])
    stamps = [float(t) for t in re.findall(r"<([0-9.]+) seconds>", text)]
    assert stamps == [round((2 * i + 0.5) / 3.2, 1) for i in range(16)]  # each pair's mean time


def _video_patches(frames: list[np.ndarray], processor: Any) -> torch.Tensor:
    """Qwen3-VL's video patch layout written out: (pair, block row, block column, row, column)
    rows of (channel, frame in pair, y, x) values of the normalised frames."""
    mean, std = np.asarray(processor.image_mean), np.asarray(processor.image_std)
    video = np.stack([(f / 255.0 - mean) / std for f in frames]).transpose(0, 3, 1, 2)
    pairs, side, patch, merge = len(frames) // 2, frames[0].shape[0], 16, 2
    blocks = side // patch // merge
    shaped = torch.tensor(video, dtype=torch.float32).view(
        pairs, 2, 3, blocks, merge, patch, blocks, merge, patch
    )
    return shaped.permute(0, 3, 6, 4, 7, 2, 1, 5, 8).reshape(-1, 3 * 2 * patch * patch)


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
    # Leaves and segments are batched apart; every frame is 64x64 -> 4x4 patches, 4 tokens: a
    # leaf's one image, a segment's 8 frames as one video of 4 pairs.
    for batch in spy.batches:
        assert len(set(batch["frames"])) == 1
        if batch["frames"][0] == 1:
            assert batch["grids"] == [[1, 4, 4]] * len(batch["frames"])
            assert batch["image_tokens"] == [4] * len(batch["frames"])
        else:
            assert batch["grids"] == [] and batch["image_tokens"] == [0] * len(batch["frames"])
            assert batch["video_grids"] == [[4, 4, 4]] * len(batch["frames"])
            assert batch["video_tokens"] == [4 * 4] * len(batch["frames"])
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


def test_frames_as_video_changes_the_segment_requests_and_images_keeps_the_old_keys() -> None:
    tree = scene_tree("unused.mp4")
    video = load_settings(profile="tiny", environ={}).caption
    overrides = {"caption": {"frames_as": "images"}}
    images = load_settings(profile="tiny", environ={}, overrides=overrides)
    assert video.frames_as == "video"
    # Stores made before the setting existed sent images: their stage key stays what it was.
    assert "frames_as" not in images.caption.identity()
    assert video.identity() == {**images.caption.identity(), "frames_as": "video"}
    default = load_settings(profile="tiny", environ={})
    assert stage_key(images, "caption") != stage_key(default, "caption")
    as_video, as_images = plan_requests(tree, video), plan_requests(tree, images.caption)
    for sent, before in zip(as_video, as_images, strict=True):
        assert (sent.key == before.key) == (sent.kind == "frame") and before.fps is None
        if sent.kind == "frame":
            assert sent.fps is None  # a leaf's middle frame stays an image
        else:
            assert sent.fps == pytest.approx(video.frames / tree[sent.node_id].duration)


@pytest.mark.parametrize(
    ("caption", "problem"),
    [({"frames_as": "gif"}, "frames_as"), ({"frames": 1}, "needs caption.frames >= 2")],
)
def test_frames_as_is_validated(caption: dict[str, Any], problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        load_settings(environ={}, overrides={"caption": caption})


def test_one_frame_per_segment_is_fine_as_an_image() -> None:
    overrides = {"caption": {"frames": 1, "frames_as": "images"}}
    assert load_settings(environ={}, overrides=overrides).caption.frames == 1
