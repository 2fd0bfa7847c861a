"""Qwen3-VL's video input for the in-process captioner, built without its video processor.

Qwen3VLVideoProcessor needs torchvision, which the CPU image does not ship. The frames instead go
through the PIL image processor like images (resized to the pinned size, rescaled, normalised);
each pair of consecutive frames (the vision tower's temporal patch) then becomes one group of
patches, laid out as the video processor lays them out: patch rows ordered (pair, block row,
block column, row in block, column in block), each row (channel, frame in pair, y, x). An odd
last frame is repeated, as the video processor pads.

The prompt gets the placeholder vLLM gives Qwen3-VL: for every pair ``<t seconds>`` (the pair's
mean time from the clip's start at ``fps``), then vision start, the pair's tokens, vision end. No
frame is dropped or re-sampled: the frames are already the span's, evenly spaced.
"""

from __future__ import annotations

from typing import Any

VIDEO_TOKEN = "<|video_pad|>"
# What a chat template emits for a video part, replaced by the expanded placeholder.
VIDEO_PART = "<|vision_start|><|video_pad|><|vision_end|>"


def video_patches(image_patches: Any, frames: int, temporal: int) -> Any:
    """One video's patches from its frames' image patches (each frame copied into every temporal
    slot by the image processor): slot 0 of each frame, paired up along the temporal axis."""
    import torch

    rows, width = image_patches.shape
    per_frame = rows // frames
    channels = 3
    pixels = width // (channels * temporal)  # patch x patch
    single = image_patches.reshape(frames, per_frame, channels, temporal, pixels)[:, :, :, 0]
    if pad := -frames % temporal:
        single = torch.cat([single, single[-1:].expand(pad, -1, -1, -1)])
    pairs = single.reshape(-1, temporal, per_frame, channels, pixels)
    return pairs.permute(0, 2, 3, 1, 4).reshape(-1, channels * temporal * pixels)


def pair_times(frames: int, fps: float, temporal: int) -> list[float]:
    """Seconds from the clip's start of each temporal pair: the mean of its first and last
    frame (Qwen3-VL's processor), the last frame standing in for a missing partner."""
    indices = list(range(frames)) + [frames - 1] * (-frames % temporal)
    groups = [indices[i : i + temporal] for i in range(0, len(indices), temporal)]
    return [(group[0] + group[-1]) / 2 / fps for group in groups]


def video_placeholder(frames: int, tokens_per_pair: int, fps: float, temporal: int) -> str:
    return "".join(
        f"<{seconds:.1f} seconds><|vision_start|>{VIDEO_TOKEN * tokens_per_pair}<|vision_end|>"
        for seconds in pair_times(frames, fps, temporal)
    )
