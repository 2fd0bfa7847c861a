"""Stage 1a: sampled frames -> V-JEPA 2 windows -> one vector per sampled frame.

Windows of ``window`` sampled frames start every ``stride`` frames; the tail a stride leaves gets
its own window ending at the last frame; a video shorter than one window is one window padded with
its last frame. Each window's tokens are mean-pooled over space per tubelet, given to the frames
the tubelet covers, and overlapping windows are averaged. Frames are streamed: only the frames of
the windows in flight are held, so memory stays flat however long the video is.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator

import numpy as np

from action100m.config import EmbedConfig
from action100m.errors import ConfigError, VideoError
from action100m.models.vjepa2 import VJEPA2Encoder, load_encoder
from action100m.sources import save_metadata
from action100m.stages.base import Runtime, Stage, StageContext, StageOutput
from action100m.stages.fetch import fetched_source
from action100m.video import VideoInfo, iter_sampled_frames, probe

log = logging.getLogger(__name__)


def window_starts(num_frames: int, window: int, stride: int) -> list[int]:
    """Start index of every window: regular strides, plus a tail window ending at the last frame."""
    if num_frames <= window:
        return [0]
    starts = list(range(0, num_frames - window + 1, stride))
    if starts[-1] + window < num_frames:
        starts.append(num_frames - window)
    return starts


class FrameFeatureAccumulator:
    """Averages per-frame vectors over every window that covers a frame."""

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
        if self.sums is None or not (self.counts > 0).all():
            raise ValueError("some frame had no window: the stride must not exceed the window")
        return (self.sums / self.counts[:, None]).astype(np.float32)


def embed_frames(
    frames: Iterable[np.ndarray],
    encode: Callable[[np.ndarray], np.ndarray],
    *,
    window: int,
    stride: int,
    batch_size: int,
    on_batch: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Stream ``frames`` through ``encode`` in windows; return (num_frames, D) float32."""
    buffer: list[np.ndarray] = []
    buffer_start = 0  # index of buffer[0] among all frames
    next_start = 0
    pending: list[int] = []
    total = 0
    acc = FrameFeatureAccumulator()

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
        if on_batch:
            on_batch(len(starts))

    for frame in frames:
        buffer.append(frame)
        total += 1
        while next_start + window <= total:
            pending.append(next_start)
            next_start += stride
        if len(pending) >= batch_size:
            flush(pending)
            pending = []
            # Keep what the next windows and a possible tail window (last `window` frames) need.
            keep_from = min(next_start, max(total - window, 0))
            del buffer[: keep_from - buffer_start]
            buffer_start = keep_from

    if total == 0:
        raise ValueError("no frames to embed")
    if total < window:
        flush([0], padded_to=window)
        return acc.result()
    last_regular = next_start - stride
    tail = [total - window] if last_regular + window < total else []
    if pending or tail:
        flush(pending + tail)
    return acc.result()


def _require_length(video_id: str, seconds: float, minimum: float) -> None:
    if seconds < minimum:
        raise VideoError(video_id, f"too short: {seconds:.2f} s, needs at least {minimum} s")


class EmbedStage(Stage):
    name = "embed"
    settings_section = "embed"
    help = "stage 1a: V-JEPA 2 vectors for 1 in every frame_step frames"

    def setup(self, runtime: Runtime) -> None:
        load_encoder(runtime.settings.embed)  # process loads it lazily, after probing the video

    def before(self, ctx: StageContext) -> None:
        # A rerun may name metadata the first run lacked: copied whether or not embed is done.
        save_metadata(ctx.store, ctx.video_id, ctx.video.metadata)

    def process(self, ctx: StageContext) -> StageOutput:
        cfg, video_id = ctx.settings.embed, ctx.video_id
        source = fetched_source(ctx)  # a web page's video, as the fetch stage stored it
        if source is None:
            raise VideoError(video_id, "embed needs the video's source (a path or a URI)")
        with ctx.store.local_copy(source, video_id) as path:
            info = probe(path, video_id)
            if info.duration is not None:  # fail before any decoding when the file says so
                _require_length(video_id, info.duration, ctx.settings.segment.min_duration)
            encoder = load_encoder(cfg)
            times, features = _embed_file(path, video_id, cfg, info, encoder)
        # The last sampled frame stands for the frames skipped after it.
        decoded = times[-1] + cfg.frame_step / info.fps
        _require_length(video_id, decoded, ctx.settings.segment.min_duration)
        frames = {
            "video_id": video_id,
            "source": source,
            "source_fingerprint": ctx.store.fingerprint(source),
            "duration": max(info.duration or decoded, times[-1]),
            "fps": info.fps,
            "frame_step": cfg.frame_step,
            "times": times,
        }
        return StageOutput(
            {"embeddings.npy": features.astype(np.float16), "frames.json": frames},
            {"frames": len(times)},
        )


def _embed_file(
    path: str, video_id: str, cfg: EmbedConfig, info: VideoInfo, encoder: VJEPA2Encoder
) -> tuple[list[float], np.ndarray]:
    """(sampled frame times, per-frame vectors) of the local file ``path``."""
    if cfg.window % encoder.tubelet_size:
        raise ConfigError(
            f"embed.window ({cfg.window}) must be a multiple of the encoder's tubelet size "
            f"({encoder.tubelet_size})"
        )
    times: list[float] = []
    expected = max(1, int(info.num_frames / cfg.frame_step))
    n_windows = len(window_starts(expected, cfg.window, cfg.stride))
    done = [0]

    def progress(count: int) -> None:
        done[0] += count
        log.info("video %s: encoded %d/~%d windows", video_id, done[0], n_windows)

    def frames() -> Iterator[np.ndarray]:
        for pts, frame in iter_sampled_frames(
            path, video_id, cfg.frame_step, encoder.resize_size, cfg.decoder, info
        ):
            times.append(pts)
            yield frame

    features = embed_frames(
        frames(),
        encoder.encode,
        window=cfg.window,
        stride=cfg.stride,
        batch_size=cfg.batch_size,
        on_batch=progress,
    )
    return times, features


STAGE = EmbedStage()
