"""Frames -> overlapping windows -> one averaged vector per frame, streamed.

The encoder gets a *span*: consecutive frames held once, plus the offset of each window in it, so
an encoder on a GPU sends the frames to the device once and builds the windows there, and one on
the CPU sees the windows as a strided view (:func:`windows_of`), not as copies. Frames go into a
buffer allocated once; decoding can run ahead in a producer thread (``prefetch``) while the
encoder works; the encoder's result for a batch is read only after the next batch was handed to
it, so a device that works asynchronously is never waited for while there is work to queue.
"""

from __future__ import annotations

import itertools
import queue
import threading
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from typing import Any, Protocol

import numpy as np
from numpy.lib.stride_tricks import as_strided


class Pending(Protocol):
    """An encoder's result that may still be computing (a device's)."""

    def result(self) -> np.ndarray: ...


# (span (N, H, W, 3) uint8, window offsets in the span, window length) -> (B, window, D) vectors,
# or a Pending for them. The span is reused once this returns: copy what is read later.
Submit = Callable[[np.ndarray, Sequence[int], int], "np.ndarray | Pending"]


def window_starts(num_frames: int, window: int, stride: int) -> list[int]:
    """Start index of every window: regular strides, plus a tail window ending at the last frame."""
    if num_frames <= window:
        return [0]
    starts = list(range(0, num_frames - window + 1, stride))
    if starts[-1] + window < num_frames:
        starts.append(num_frames - window)
    return starts


def windows_of(span: np.ndarray, offsets: Sequence[int], window: int) -> np.ndarray:
    """(B, window, ...) windows of ``span``: a read-only view when the offsets are evenly spaced
    (every batch but the tail), else one copy per window."""
    step = offsets[1] - offsets[0] if len(offsets) > 1 else 0
    regular = all(b - a == step for a, b in itertools.pairwise(offsets))
    if regular and step >= 0 and offsets[-1] + window <= len(span):
        shape = (len(offsets), window, *span.shape[1:])
        strides = (step * span.strides[0], *span.strides)
        return as_strided(span[offsets[0] :], shape, strides, writeable=False)
    return np.stack([span[o : o + window] for o in offsets])


def per_window(encode: Callable[[np.ndarray], np.ndarray]) -> Submit:
    """A :data:`Submit` for an ``encode`` that takes (B, T, H, W, 3) windows."""
    return lambda span, offsets, window: encode(windows_of(span, offsets, window))


class FrameFeatureAccumulator:
    """Averages per-frame vectors over every window that covers a frame.

    Sums are float32, allocated once for ``expected`` frames (the count the file declares) and
    grown geometrically past it, so a long video costs one allocation, not one per window."""

    def __init__(self, expected: int = 0) -> None:
        self.expected = max(expected, 1)
        self.sums: np.ndarray | None = None
        self.counts = np.zeros(0, np.int32)
        self.frames = 0  # frames covered so far

    def add(self, start: int, features: np.ndarray, valid: int) -> None:
        end = start + valid
        if self.sums is None:
            self.sums = np.zeros((self.expected, features.shape[-1]), np.float32)
            self.counts = np.zeros(self.expected, np.int32)
        if end > len(self.counts):
            size = max(end, len(self.counts) * 3 // 2)
            sums = np.zeros((size, self.sums.shape[1]), np.float32)
            sums[: len(self.sums)] = self.sums
            counts = np.zeros(size, np.int32)
            counts[: len(self.counts)] = self.counts
            self.sums, self.counts = sums, counts
        self.sums[start:end] += features[:valid]
        self.counts[start:end] += 1
        self.frames = max(self.frames, end)

    def result(self) -> np.ndarray:
        counts = self.counts[: self.frames]
        if self.sums is None or not (counts > 0).all():
            raise ValueError("some frame had no window: the stride must not exceed the window")
        return self.sums[: self.frames] / counts[:, None].astype(np.float32)


_DONE = object()


def prefetched(frames: Iterable[np.ndarray], depth: int) -> Iterator[np.ndarray]:
    """``frames``, produced by a thread that runs up to ``depth`` frames ahead. An error in the
    producer is raised here, as itself; leaving early stops (and closes) the producer."""
    items: queue.Queue[Any] = queue.Queue(depth)
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                items.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        source = iter(frames)
        try:
            for frame in source:
                if not put(frame):
                    break
            else:
                put(_DONE)
        except BaseException as exc:  # handed to the consumer, raised there
            put(exc)
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=produce, name="embed-decode", daemon=True)
    thread.start()
    try:
        while (item := items.get()) is not _DONE:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join()


def embed_frames(
    frames: Iterable[np.ndarray],
    submit: Submit,
    *,
    window: int,
    stride: int,
    batch_size: int,
    on_batch: Callable[[int], None] | None = None,
    expected_frames: int = 0,
    prefetch: int = 0,
) -> np.ndarray:
    """Stream ``frames`` through ``submit`` in windows; return (num_frames, D) float32.

    ``expected_frames`` sizes the buffers (a guess is fine); ``prefetch`` > 0 decodes that many
    frames ahead in a thread, 0 pulls them in this one."""
    acc = FrameFeatureAccumulator(expected_frames)
    # Frames base .. base + count - 1 sit in ring[:count]. Between two batches at most
    # window + batch_size * stride frames are needed; 3x that makes shifting the kept ones rare.
    capacity = 3 * (window + batch_size * stride)
    ring: np.ndarray | None = None
    base = count = next_start = 0
    pending: list[int] = []
    in_flight: tuple[list[int], int, np.ndarray | Pending] | None = None

    def collect() -> None:
        nonlocal in_flight
        if in_flight is None:
            return
        starts, total, result = in_flight
        features = result if isinstance(result, np.ndarray) else result.result()
        for start, feats in zip(starts, features, strict=True):
            acc.add(start, feats, min(window, total - start))
        in_flight = None
        if on_batch:
            on_batch(len(starts))

    def flush(starts: list[int]) -> None:
        nonlocal in_flight
        assert ring is not None
        first = starts[0] - base
        span = ring[first : min(max(starts) - base + window, count)]
        if len(span) < window:  # a video shorter than one window: pad with its last frame
            span = np.concatenate([span, np.repeat(span[-1:], window - len(span), axis=0)])
        result = submit(span, [s - starts[0] for s in starts], window)
        collect()  # the previous batch's result, read while this one computes
        in_flight = (starts, base + count, result)

    source = prefetched(frames, prefetch) if prefetch > 0 else iter(frames)
    try:
        for frame in source:
            if ring is None:
                ring = np.empty((capacity, *frame.shape), frame.dtype)
            if count == capacity:  # keep what unsent windows and a possible tail window need
                total = base + count
                keep_from = min(pending[0] if pending else next_start, max(total - window, 0))
                ring[: total - keep_from] = ring[keep_from - base : count]
                base, count = keep_from, total - keep_from
            ring[count] = frame
            count += 1
            while next_start + window <= base + count:
                pending.append(next_start)
                next_start += stride
            # The first window goes alone as soon as it is complete, so the device starts after
            # ``window`` frames, not ``window + (batch_size - 1) * stride``; later batches fill
            # while it computes. The windows are the same, only the first batch is smaller.
            if len(pending) >= batch_size or (pending and in_flight is None):
                flush(pending)
                pending = []
    finally:
        if isinstance(source, Generator):
            source.close()  # stops a producer thread when encoding fails

    total = base + count
    if total == 0:
        raise ValueError("no frames to embed")
    if total < window:
        pending = [0]  # one window, padded with the last frame
    elif next_start - stride + window < total:
        pending.append(total - window)  # the tail window, ending at the last frame
    if pending:
        flush(pending)
    collect()
    return acc.result()
