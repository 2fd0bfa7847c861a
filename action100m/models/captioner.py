"""The captioning backend ``caption.backend`` names, loaded once per process (:func:`load_once`).

The types every backend speaks live in :mod:`action100m.models.caption_base`; they are re-exported
here for callers that only want a captioner.
"""

from __future__ import annotations

from action100m.config import CaptionConfig
from action100m.models import load_once
from action100m.models.caption_base import (
    Captioner,
    CaptionJob,
    CaptionOutcome,
    batched_by_frame_count,
    chat_messages,
    clean_caption,
)

__all__ = [
    "CaptionJob",
    "CaptionOutcome",
    "Captioner",
    "batched_by_frame_count",
    "chat_messages",
    "clean_caption",
    "make_captioner",
]


def make_captioner(config: CaptionConfig, api_key: str | None = None) -> Captioner:
    """The backend ``config.backend`` names. Models (``vllm``, ``transformers``) are loaded once
    per process and reused; a ``vllm-server`` client is cheap and holds per-run settings
    (timeouts, the key), so it is made each time."""
    if config.backend == "vllm-server":
        from action100m.models.vlm_server import ServerCaptioner

        return ServerCaptioner(config, api_key)
    identity = (config.backend, config.model, config.device, config.size)
    if config.backend == "vllm":
        from action100m.models.vllm_offline import VLLMCaptioner

        return load_once("vllm", identity, lambda: VLLMCaptioner(config), config.model)
    from action100m.models.qwen3vl import TransformersCaptioner

    return load_once("qwen3vl", identity, lambda: TransformersCaptioner(config), config.model)
