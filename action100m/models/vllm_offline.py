"""Captioning with vLLM's offline engine in-process (one GPU machine, many videos per task).

``vllm`` is imported here only: it has no CPU wheel and is an optional GPU extra. Requests are
handed to the engine in large chunks (it schedules and batches them itself); the prompt is the
model's own chat template with one image placeholder per frame, the frames going in as PIL images,
or (a job with ``fps``: ``caption.frames_as=video``) one video placeholder, the frames going in as
one array with the metadata vLLM's Qwen3-VL processor reads for its timestamps (fps, frame
indices) and ``do_sample_frames=False`` so that none is dropped. The pixel budget is pinned per
request so every frame reaches the model at size x size: for a video the budget is the whole
clip's (frames, rounded up to the temporal patch, x size x size).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from itertools import islice
from typing import Any

import numpy as np

from action100m.config import CaptionConfig
from action100m.models.caption_base import CaptionJob, CaptionOutcome, chat_messages, clean_caption

log = logging.getLogger(__name__)
# Requests per engine call: enough to keep the scheduler full, few enough that the decoded frames
# waiting in memory stay in the low gigabytes.
CHUNK = 256
CONTEXT_TOKENS = 16384  # 32 frames of 320x320: ~1,800 tokens as a video, ~3,300 as images
TEMPORAL_PATCH = 2  # Qwen3-VL's frames per video patch


class VLLMCaptioner:
    def __init__(self, config: CaptionConfig) -> None:
        try:
            from vllm import LLM, SamplingParams
        except ImportError as exc:
            raise ImportError(
                "caption.backend=vllm needs the vllm package (a GPU machine); "
                "use caption.backend=vllm-server or transformers instead"
            ) from exc

        self.model = config.model
        self.pixels = config.size * config.size
        self.engine = LLM(
            model=config.model,
            limit_mm_per_prompt={"image": max(config.frames, 1), "video": 1},
            max_model_len=CONTEXT_TOKENS,
        )
        self.tokenizer = self.engine.get_tokenizer()
        self.sampling: dict[int, Any] = {}
        self._sampling_params = SamplingParams
        log.info("vLLM engine loaded %s", config.model)

    def sampling_for(self, max_new_tokens: int) -> Any:
        if max_new_tokens not in self.sampling:
            self.sampling[max_new_tokens] = self._sampling_params(
                temperature=0.0, max_tokens=max_new_tokens
            )
        return self.sampling[max_new_tokens]

    def run(self, jobs: Iterable[CaptionJob]) -> Iterator[tuple[CaptionJob, CaptionOutcome]]:
        pending = iter(jobs)
        while chunk := list(islice(pending, CHUNK)):
            yield from zip(chunk, self.generate(chunk), strict=True)

    def prompt(self, job: CaptionJob) -> dict[str, Any]:
        """The engine's input for one job: chat text, frames, pinned processor settings."""
        from PIL import Image

        text = self.tokenizer.apply_chat_template(
            chat_messages(job.prompt, [None] * len(job.frames), video=job.fps is not None),
            tokenize=False,
            add_generation_prompt=True,
        )
        if job.fps is None:
            images = [Image.fromarray(frame) for frame in job.frames]
            pinned = {"shortest_edge": self.pixels, "longest_edge": self.pixels}
            return {
                "prompt": text,
                "multi_modal_data": {"image": images},
                "mm_processor_kwargs": {"size": pinned},
            }
        count = len(job.frames)
        metadata = {
            "fps": job.fps,
            "duration": count / job.fps,
            "total_num_frames": count,
            "frames_indices": list(range(count)),
            "video_backend": "opencv",
            "do_sample_frames": False,
        }
        clip = -(-count // TEMPORAL_PATCH) * TEMPORAL_PATCH * self.pixels
        return {
            "prompt": text,
            "multi_modal_data": {"video": [(np.stack(job.frames), metadata)]},
            "mm_processor_kwargs": {
                "do_sample_frames": False,
                "size": {"shortest_edge": clip, "longest_edge": clip},
            },
        }

    def generate(self, chunk: list[CaptionJob]) -> list[CaptionOutcome]:
        prompts = [self.prompt(job) for job in chunk]
        try:
            outputs = self.engine.generate(
                prompts, [self.sampling_for(job.max_new_tokens) for job in chunk], use_tqdm=False
            )
        except Exception as exc:  # one bad request fails the whole call: isolate it
            if len(chunk) == 1:
                return [CaptionOutcome.failed(f"generation failed: {exc}")]
            log.warning("vLLM call of %d requests failed (%s); one by one", len(chunk), exc)
            return [outcome for job in chunk for outcome in self.generate([job])]
        outcomes = []
        for output in outputs:
            completion = output.outputs[0]
            caption = clean_caption(completion.text)
            outcomes.append(
                CaptionOutcome(
                    caption=caption,
                    tokens_in=len(output.prompt_token_ids or []),
                    tokens_out=len(completion.token_ids),
                    error=None if caption else "empty caption",
                )
            )
        return outcomes
