"""Qwen3-VL in-process through transformers: load once, greedy generation in padded batches.

The model's own processor cannot be used here: it builds Qwen3-VL's video processor, which needs
torchvision. Every frame goes through the PIL image processor of Qwen2-VL (the same patching
Qwen3-VL uses), with its pixel budget pinned to exactly ``size x size`` so a 320x320 frame reaches
the model at 320x320: the default budget would upscale small frames (the minimum is 256x256). A
job with ``fps`` (``caption.frames_as=video``) is one video, its frames paired into temporal
patches (:mod:`action100m.models.qwen3vl_video`), never re-sampled. The prompt is built as the
processor would: one ``<|image_pad|>`` per merged patch of an image, the timestamped
``<|video_pad|>`` groups of a video, and ``mm_token_type_ids`` marking them (1, 2) for M-RoPE.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from action100m.config import TINY_PREFIX, CaptionConfig
from action100m.models import pick_device, quiet_transformers, resolve_model
from action100m.models.caption_base import (
    CaptionJob,
    CaptionOutcome,
    batched_by_frame_count,
    chat_messages,
    clean_caption,
)
from action100m.models.qwen3vl_video import (
    VIDEO_PART,
    VIDEO_TOKEN,
    video_patches,
    video_placeholder,
)

log = logging.getLogger(__name__)

IMAGE_TOKEN = "<|image_pad|>"
SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    IMAGE_TOKEN,
    VIDEO_TOKEN,
]
# Qwen's chat format, for the tiny tokenizer and for checkpoints that ship no template.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}<|im_start|>{{ message.role }}\n"
    "{%- if message.content is string -%}{{ message.content }}{%- else -%}"
    "{%- for part in message.content -%}"
    "{%- if part.type == 'image' -%}<|vision_start|><|image_pad|><|vision_end|>"
    "{%- elif part.type == 'video' -%}<|vision_start|><|video_pad|><|vision_end|>"
    "{%- elif part.type == 'text' -%}{{ part.text }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}<|im_end|>\n{% endfor -%}"
    "{%- if add_generation_prompt -%}<|im_start|>assistant\n{%- endif -%}"
)
TINY_CORPUS = [
    "A person is cutting vegetables on a wooden board in a bright kitchen.",
    "The man pours water into a pot, stirs it, and places the lid on top.",
    "Close-up of hands tightening a bolt with a wrench under the car.",
    "She folds the paper in half, creases the edge, and opens it again.",
] * 8


def build_tiny_tokenizer(path: Path) -> Any:
    """A byte-level BPE trained here in milliseconds, with Qwen's special tokens and chat format."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=384,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    backend.train_from_iterator(TINY_CORPUS, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=CHAT_TEMPLATE,
    )
    tokenizer.save_pretrained(path)
    return tokenizer


def build_tiny_qwen3vl(path: Path) -> None:
    """A tiny random ``Qwen3VLForConditionalGeneration`` with the real architecture (deepstack,
    M-RoPE, 16-pixel patches merged 2x2), its tokenizer and image processor, saved to ``path``."""
    import torch
    from transformers import GenerationConfig, Qwen3VLConfig, Qwen3VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        Qwen2VLImageProcessorPil,
    )

    tokenizer = build_tiny_tokenizer(path)
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS}
    config = Qwen3VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 16,
            "max_position_embeddings": 4096,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 5_000_000.0,
                "mrope_section": [2, 3, 3],
                "mrope_interleaved": True,
            },
        },
        vision_config={
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "patch_size": 16,
            "out_hidden_size": 64,
            "num_position_embeddings": 256,
            "deepstack_visual_indexes": [0, 1],
        },
        image_token_id=ids[IMAGE_TOKEN],
        video_token_id=ids[VIDEO_TOKEN],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = Qwen3VLForConditionalGeneration(config).eval()
    model.generation_config = GenerationConfig(
        do_sample=False, eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"]
    )
    model.save_pretrained(path)
    Qwen2VLImageProcessorPil(patch_size=16, merge_size=2, temporal_patch_size=2).save_pretrained(
        path
    )


def pinned_side(size: int, factor: int) -> int:
    """The side a ``size`` frame keeps through the image processor: a multiple of patch x merge."""
    return max(factor, round(size / factor) * factor)


class TransformersCaptioner:
    """Qwen3-VL (or any checkpoint with the same processor contract) loaded once in-process.
    ``config.concurrency`` is the number of requests generated together in one padded batch."""

    def __init__(self, config: CaptionConfig) -> None:
        import torch
        from transformers import AutoModelForImageTextToText, AutoTokenizer
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
            Qwen2VLImageProcessorPil,
        )

        quiet_transformers()
        self.model = config.model
        self.batch_size = config.concurrency
        self.device = pick_device(config.device)
        dtype = torch.bfloat16 if self.device == "cuda" else torch.float32
        path = resolve_model(config.model, {"qwen3vl": build_tiny_qwen3vl})
        self.tokenizer: Any = AutoTokenizer.from_pretrained(path, padding_side="left")
        if not self.tokenizer.chat_template or config.model.startswith(TINY_PREFIX):
            self.tokenizer.chat_template = CHAT_TEMPLATE  # a tiny one cached before videos too
        self.image_processor = Qwen2VLImageProcessorPil.from_pretrained(path)
        factor = self.image_processor.patch_size * self.image_processor.merge_size
        side = pinned_side(config.size, factor)
        if side != config.size:
            log.warning(
                "caption.size %d is not a multiple of %d: frames reach the model at %d",
                config.size,
                factor,
                side,
            )
        self.pixels = {"shortest_edge": side * side, "longest_edge": side * side}
        self.temporal = int(self.image_processor.temporal_patch_size)  # frames per video patch
        loaded: Any = AutoModelForImageTextToText.from_pretrained(path, dtype=dtype)
        self.net: Any = loaded.to(self.device).eval()
        self.image_token_id = self.token_id(IMAGE_TOKEN)
        self.video_token_id = self.token_id(VIDEO_TOKEN)
        self.eos_ids: set[int] = set(_as_list(self.net.generation_config.eos_token_id))
        self.eos_ids.add(self.token_id("<|im_end|>"))
        log.info("captioner %s loaded on %s (%s)", config.model, self.device, dtype)

    def token_id(self, token: str) -> int:
        found: Any = self.tokenizer.convert_tokens_to_ids(token)
        return int(found)

    def run(self, jobs: Iterable[CaptionJob]) -> Iterator[tuple[CaptionJob, CaptionOutcome]]:
        for batch in batched_by_frame_count(jobs, self.batch_size):
            try:
                outcomes = self.generate(batch)
            except Exception as exc:  # a batch-level failure (OOM, odd input): isolate per job
                if len(batch) == 1:
                    outcomes = [CaptionOutcome.failed(f"generation failed: {exc}")]
                else:
                    log.warning("batch of %d failed (%s); retrying one by one", len(batch), exc)
                    yield from (pair for job in batch for pair in self.run([job]))
                    continue
            yield from zip(batch, outcomes, strict=True)

    def encode(self, batch: list[CaptionJob]) -> Any:
        """Token ids, attention mask, ``mm_token_type_ids``, image and video patches for a batch."""
        import torch

        vision: dict[str, Any] = {}
        images = [frame for job in batch if job.fps is None for frame in job.frames]
        if images:
            vision.update(
                self.image_processor(images=images, size=self.pixels, return_tensors="pt")
            )
        videos = [self.video_inputs(job) for job in batch if job.fps is not None]
        if videos:
            vision["pixel_values_videos"] = torch.cat([patches for patches, _ in videos])
            vision["video_grid_thw"] = torch.tensor([grid for _, grid in videos])
        merge = self.image_processor.merge_size**2
        image_tokens = iter((vision["image_grid_thw"].prod(-1) // merge).tolist() if images else [])
        video_tokens = iter([rows * columns // merge for _, [_, rows, columns] in videos])
        texts = [self.prompt_text(job, image_tokens, video_tokens) for job in batch]
        inputs = self.tokenizer(texts, return_tensors="pt", padding=True)
        ids = inputs["input_ids"]
        kinds = (ids == self.image_token_id).long() + 2 * (ids == self.video_token_id).long()
        inputs["mm_token_type_ids"] = kinds
        inputs.update(vision)
        return inputs.to(self.device)

    def prompt_text(
        self, job: CaptionJob, image_tokens: Iterator[int], video_tokens: Iterator[int]
    ) -> str:
        """The chat-formatted prompt with every vision placeholder expanded to its tokens."""
        video = job.fps is not None
        text: str = self.tokenizer.apply_chat_template(
            chat_messages(job.prompt, [None] * len(job.frames), video=video),
            tokenize=False,
            add_generation_prompt=True,
        )
        if job.fps is not None:
            if VIDEO_PART not in text:
                raise ValueError(
                    f"the chat template of {self.model} has no video part: "
                    "set caption.frames_as=images"
                )
            pairs = video_placeholder(len(job.frames), next(video_tokens), job.fps, self.temporal)
            return text.replace(VIDEO_PART, pairs, 1)
        pieces = text.split(IMAGE_TOKEN)
        return pieces[0] + "".join(IMAGE_TOKEN * next(image_tokens) + p for p in pieces[1:])

    def video_inputs(self, job: CaptionJob) -> tuple[Any, list[int]]:
        """One video's patches and its (pairs, rows, columns) grid."""
        frames = self.image_processor(images=job.frames, size=self.pixels, return_tensors="pt")
        _, rows, columns = frames["image_grid_thw"][0].tolist()
        patches = video_patches(frames["pixel_values"], len(job.frames), self.temporal)
        return patches, [-(-len(job.frames) // self.temporal), rows, columns]

    def generate(self, batch: list[CaptionJob]) -> list[CaptionOutcome]:
        import torch

        inputs = self.encode(batch)
        limit = max(job.max_new_tokens for job in batch)
        with torch.inference_mode():
            output = self.net.generate(**inputs, max_new_tokens=limit, do_sample=False)
        prompt_length = inputs["input_ids"].shape[1]
        outcomes = []
        for row, job in enumerate(batch):
            generated = output[row, prompt_length:].tolist()[: job.max_new_tokens]
            ends = [i for i, token in enumerate(generated) if token in self.eos_ids]
            generated = generated[: ends[0] + 1] if ends else generated
            caption = clean_caption(self.tokenizer.decode(generated, skip_special_tokens=True))
            outcomes.append(
                CaptionOutcome(
                    caption=caption,
                    tokens_in=int(inputs["attention_mask"][row].sum()),
                    tokens_out=len(generated),
                    error=None if caption else "empty caption",
                )
            )
        return outcomes


def _as_list(value: int | list[int] | None) -> list[int]:
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]
