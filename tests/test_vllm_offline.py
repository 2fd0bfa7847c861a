"""The ``vllm`` backend (vLLM's offline engine in-process) through the caption stage.

vLLM has no CPU wheel, so a stand-in ``vllm`` module (only in this file) takes its place in
``sys.modules``: it records what the captioner hands to ``LLM(...)``, ``SamplingParams(...)`` and
``generate(...)``, and answers with RequestOutput-like objects. Everything else is real: the scene
video, its frames decoded at the paper's 32 x 320 x 320, the stage, the store and its cache.
"""

from __future__ import annotations

import importlib
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from caption_helpers import ONE_PER_NODE, VIDEO_ID, read_captions, scene_tree, write_tree

from action100m import models
from action100m.config import load_settings
from action100m.pipeline import run_caption
from action100m.stages.outputs import stage_key
from action100m.store import ArtifactStore

ROOT = "12.0-second"  # in the root node's prompt only
PLACEHOLDER = "<|image_pad|>"
VIDEO_PLACEHOLDER = "<|video_pad|>"
QWEN3_VL_FACTOR = 32  # patch 16 x spatial merge 2: image sides are multiples of this


@dataclass
class SamplingParams:
    temperature: float = 1.0  # vLLM's defaults: sampling, not greedy
    max_tokens: int | None = 16


@dataclass
class Prompt:
    text: str
    images: list[Any]
    video: tuple[Any, dict[str, Any]] | None  # frames array and metadata
    processor: dict[str, Any]  # the prompt's mm_processor_kwargs
    sampling: SamplingParams

    @property
    def frames(self) -> int:
        return len(self.video[0]) if self.video is not None else len(self.images)


@dataclass
class StandInVLLM:
    """What the captioner asked of vLLM; ``fails`` says which prompts make a whole call raise."""

    fails: str | None = None
    names_taken: list[str] = field(default_factory=list)
    engine_options: list[dict[str, Any]] = field(default_factory=list)
    calls: list[list[Prompt]] = field(default_factory=list)

    def module(self) -> types.ModuleType:
        module = types.ModuleType("vllm")
        stand_in = self

        class Tokenizer:
            def apply_chat_template(
                self, messages: list[dict[str, Any]], *, tokenize: bool, add_generation_prompt: bool
            ) -> str:
                assert tokenize is False and add_generation_prompt is True
                (turn,) = messages
                marks = {"image": PLACEHOLDER, "video": VIDEO_PLACEHOLDER}
                parts = [marks.get(part["type"]) or part["text"] for part in turn["content"]]
                return f"<|user|>{''.join(parts)}<|assistant|>"

        class LLM:
            def __init__(self, **options: Any) -> None:
                stand_in.engine_options.append(options)

            def get_tokenizer(self) -> Tokenizer:
                return Tokenizer()

            def generate(
                self, prompts: list[dict[str, Any]], sampling: list[Any], use_tqdm: bool = True
            ) -> list[Any]:
                assert len(prompts) == len(sampling) and use_tqdm is False
                call = [
                    Prompt(
                        p["prompt"],
                        p["multi_modal_data"].get("image", []),
                        (p["multi_modal_data"].get("video") or [None])[0],
                        p.get("mm_processor_kwargs", {}),
                        s,
                    )
                    for p, s in zip(prompts, sampling, strict=True)
                ]
                stand_in.calls.append(call)
                if stand_in.fails and any(stand_in.fails in p.text for p in call):
                    raise ValueError("prompt is longer than the model's context")
                return [
                    types.SimpleNamespace(
                        prompt_token_ids=list(range(10 + (50 if p.video else 100) * p.frames)),
                        outputs=[
                            types.SimpleNamespace(
                                text=f" {p.frames} frames seen \n", token_ids=[1, 2, 3]
                            )
                        ],
                    )
                    for p in call
                ]

        def getattr_(name: str) -> Any:  # PEP 562: every name taken from the module is recorded
            if name not in ("LLM", "SamplingParams"):  # other code probing modules: __path__
                raise AttributeError(name)
            stand_in.names_taken.append(name)
            return LLM if name == "LLM" else SamplingParams

        module.__getattr__ = getattr_  # type: ignore[method-assign]
        return module


@pytest.fixture
def vllm(monkeypatch: pytest.MonkeyPatch) -> StandInVLLM:
    stand_in = StandInVLLM()
    monkeypatch.setitem(sys.modules, "vllm", stand_in.module())
    monkeypatch.setattr(models, "_LOADED", {})  # no engine kept from another test
    return stand_in


def vllm_settings(store: ArtifactStore, video: Path, frames_as: str = "video") -> Any:
    """The paper's caption settings (32 frames of 320 x 320) on the ``vllm`` backend."""
    overrides = {"caption": {"backend": "vllm", "frames_as": frames_as, **ONE_PER_NODE}}
    settings = load_settings(store=store.root, environ={}, overrides=overrides)
    write_tree(settings, store, scene_tree(str(video)))
    return settings


def test_importing_the_backend_does_not_import_vllm(
    vllm: StandInVLLM, monkeypatch: pytest.MonkeyPatch, store: ArtifactStore
) -> None:
    stand_in = sys.modules["vllm"]
    monkeypatch.setitem(sys.modules, "vllm", None)  # as on a CPU machine: `import vllm` fails
    monkeypatch.delitem(sys.modules, "action100m.models.vllm_offline", raising=False)
    module = importlib.import_module("action100m.models.vllm_offline")  # imports all the same
    settings = load_settings(
        store=store.root, environ={}, overrides={"caption": {"backend": "vllm"}}
    )
    with pytest.raises(ImportError, match="caption.backend=vllm needs the vllm package"):
        module.VLLMCaptioner(settings.caption)  # one clear message, when the backend is used
    monkeypatch.setitem(sys.modules, "vllm", stand_in)
    assert vllm.names_taken == []
    module.VLLMCaptioner(settings.caption)
    assert sorted(vllm.names_taken) == ["LLM", "SamplingParams"]


@pytest.mark.parametrize("frames_as", ["video", "images"])
def test_engine_settings_keep_32_frames_of_320_and_sampling_is_greedy(
    vllm: StandInVLLM, store: ArtifactStore, scene_video: tuple[Path, list[float]], frames_as: str
) -> None:
    settings = vllm_settings(store, scene_video[0], frames_as)
    config = settings.caption
    assert (config.frames, config.size, config.max_new_tokens) == (32, 320, 1024)
    run_caption(settings, store, VIDEO_ID)

    (options,) = vllm.engine_options
    assert options["model"] == config.model
    assert options["limit_mm_per_prompt"] == {"image": 32, "video": 1}
    tokens_per_frame = (320 // QWEN3_VL_FACTOR) ** 2
    assert options["max_model_len"] >= 32 * tokens_per_frame + config.max_new_tokens

    (call,) = vllm.calls  # the whole video's requests in one engine call
    tree = scene_tree(str(scene_video[0]))
    assert len(call) == len(tree)
    as_video = frames_as == "video"
    for prompt in call:
        leaf = "image in detail" in prompt.text
        assert prompt.frames == (1 if leaf else 32)
        if as_video and not leaf:
            _check_video(prompt, tree)
        else:
            _check_images(prompt)
        assert prompt.sampling == SamplingParams(temperature=0.0, max_tokens=1024)
    captions = read_captions(settings, store)["nodes"]
    for node in tree.nodes:
        entry = captions[node.node_id]
        frames = 1 if node.is_leaf else 32
        per_frame = 50 if as_video and not node.is_leaf else 100
        assert entry["caption"] == f"{frames} frames seen" and entry["error"] is None
        assert (entry["tokens_in"], entry["tokens_out"]) == (10 + per_frame * frames, 3)


def _check_images(prompt: Prompt) -> None:
    """One placeholder per frame, PIL images of 320 x 320, and a pixel budget pinned to exactly
    that: a frame is neither shrunk to fit a smaller budget nor grown to a larger minimum."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    assert prompt.video is None and prompt.text.count(PLACEHOLDER) == len(prompt.images)
    assert {image.size for image in prompt.images} == {(320, 320)}
    assert {image.mode for image in prompt.images} == {"RGB"}
    budget = prompt.processor["size"]
    resized = smart_resize(
        320, 320, factor=QWEN3_VL_FACTOR, min_pixels=budget["shortest_edge"],
        max_pixels=budget["longest_edge"],
    )  # fmt: skip
    assert resized == (320, 320)


def _check_video(prompt: Prompt, tree: Any) -> None:
    """One video placeholder, the 32 frames as one array with the metadata Qwen3-VL's processor
    times them by, no re-sampling, and the whole clip's pixel budget pinned to 32 x 320 x 320."""
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import smart_resize

    assert prompt.images == [] and prompt.text.count(VIDEO_PLACEHOLDER) == 1
    frames, metadata = prompt.video or (None, {})
    assert frames.shape == (32, 320, 320, 3) and frames.dtype.name == "uint8"
    spans = [n.duration for n in tree.nodes if f"{n.duration:.1f}-second" in prompt.text]
    assert any(metadata["fps"] == pytest.approx(32 / seconds) for seconds in spans)
    assert metadata["frames_indices"] == list(range(32)) and metadata["total_num_frames"] == 32
    assert metadata["do_sample_frames"] is False and prompt.processor["do_sample_frames"] is False
    budget = prompt.processor["size"]
    resized = smart_resize(
        32, 320, 320, temporal_factor=2, factor=QWEN3_VL_FACTOR,
        min_pixels=budget["shortest_edge"], max_pixels=budget["longest_edge"],
    )  # fmt: skip
    assert resized == (320, 320)


def test_a_failing_engine_call_is_retried_one_request_at_a_time(
    vllm: StandInVLLM, store: ArtifactStore, scene_video: tuple[Path, list[float]]
) -> None:
    vllm.fails = ROOT  # the root's request makes any call holding it raise
    settings = vllm_settings(store, scene_video[0])
    run_caption(settings, store, VIDEO_ID)  # one bad request never fails the video
    tree = scene_tree(str(scene_video[0]))
    assert [len(call) for call in vllm.calls] == [len(tree)] + [1] * len(tree)
    assert sorted(p.text for call in vllm.calls[1:] for p in call) == sorted(
        p.text for p in vllm.calls[0]
    )
    captions = read_captions(settings, store)["nodes"]
    root = captions[tree.root.node_id]
    assert root["caption"] is None
    assert root["error"] == "generation failed: prompt is longer than the model's context"
    assert all(captions[n.node_id]["caption"] for n in tree.nodes[1:])
    # The next run (the stage folder reopened) asks again for the failed request only.
    vllm.calls.clear()
    folder = store.stage_dir(VIDEO_ID, "caption", stage_key(settings, "caption"))
    store.fs.rm(store.fs._strip_protocol(f"{folder}/_SUCCESS"))
    vllm.fails = None
    run_caption(settings, store, VIDEO_ID)
    assert [[ROOT in p.text for p in call] for call in vllm.calls] == [[True]]
