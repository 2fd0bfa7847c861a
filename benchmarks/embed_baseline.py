"""The embed stage's streaming as it was before issue 14, frozen: the baseline that
``embed_pipeline.py`` measures the current code against in the same run.

Frames are pulled and encoded in one thread, each batch of windows is built with two
``np.stack`` copies of full 779x438 frames, the encoder is waited for on every batch, and
per-frame sums live in float64 arrays regrown with ``np.concatenate`` on every window.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np


class OldAccumulator:
    def __init__(self) -> None:
        self.sums: np.ndarray | None = None
        self.counts = np.zeros(0, np.int32)

    def add(self, start: int, features: np.ndarray, valid: int) -> None:
        end = start + valid
        if self.sums is None:
            self.sums = np.zeros((0, features.shape[-1]), np.float64)
        if end > len(self.counts):
            grow = end - len(self.counts)
            self.sums = np.concatenate([self.sums, np.zeros((grow, self.sums.shape[1]))])
            self.counts = np.concatenate([self.counts, np.zeros(grow, np.int32)])
        self.sums[start:end] += features[:valid]
        self.counts[start:end] += 1

    def result(self) -> np.ndarray:
        assert self.sums is not None and (self.counts > 0).all()
        return (self.sums / self.counts[:, None]).astype(np.float32)


def old_embed_frames(
    frames: Iterable[np.ndarray],
    encode: Callable[[np.ndarray], np.ndarray],
    *,
    window: int,
    stride: int,
    batch_size: int,
) -> np.ndarray:
    buffer: list[np.ndarray] = []
    buffer_start = 0
    next_start = 0
    pending: list[int] = []
    total = 0
    acc = OldAccumulator()

    def flush(starts: list[int], padded_to: int | None = None) -> None:
        windows = []
        for start in starts:
            clip = buffer[start - buffer_start : start - buffer_start + window]
            if padded_to is not None:
                clip = clip + [clip[-1]] * (padded_to - len(clip))
            windows.append(np.stack(clip))
        features = encode(np.stack(windows))
        for start, feats in zip(starts, features, strict=True):
            acc.add(start, feats, min(window, total - start))

    for frame in frames:
        buffer.append(frame)
        total += 1
        while next_start + window <= total:
            pending.append(next_start)
            next_start += stride
        if len(pending) >= batch_size:
            flush(pending)
            pending = []
            keep_from = min(next_start, max(total - window, 0))
            del buffer[: keep_from - buffer_start]
            buffer_start = keep_from

    if total < window:
        flush([0], padded_to=window)
        return acc.result()
    last_regular = next_start - stride
    tail = [total - window] if last_regular + window < total else []
    if pending or tail:
        flush(pending + tail)
    return acc.result()
