"""Stage 1a: sampled frames -> V-JEPA 2 windows -> one vector per sampled frame.

Windows of ``window`` sampled frames start every ``stride`` frames; the tail a stride leaves gets
its own window ending at the last frame; a video shorter than one window is one window padded with
its last frame. Each window's tokens are mean-pooled over space per tubelet, given to the frames
the tubelet covers, and overlapping windows are averaged. Frames are streamed (``embed_stream``):
only the centre crops of the windows in flight are held, so memory stays flat however long the
video is, and decoding runs ahead in a thread while the encoder works.

``embed.backend=service`` sends the video to the encoder service instead (``encoder_client``),
which runs the same :func:`encode_video` with the model it keeps loaded; the output is the same.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Protocol

import numpy as np

from action100m.config import EmbedConfig
from action100m.errors import ConfigError, VideoError
from action100m.models.vjepa2 import load_encoder
from action100m.planes import PlaneCrop, cut
from action100m.sources import save_metadata
from action100m.stages.base import Runtime, Stage, StageContext, StageOutput
from action100m.stages.embed_stream import (
    FrameFeatureAccumulator,
    Pending,
    embed_frames,
    per_window,
    window_starts,
)
from action100m.stages.encoder_client import Encoded, encode_remote
from action100m.stages.fetch import fetched_source
from action100m.store import ArtifactStore
from action100m.video import VideoInfo, iter_sampled_frames, probe, quarter_turns, scaled_size

log = logging.getLogger(__name__)


class FrameEncoder(Protocol):
    """What the stage needs of an encoder (``VJEPA2Encoder``; the benchmark's stand-in)."""

    crop_size: int
    resize_size: int
    tubelet_size: int

    def centre_crop(self, frame: np.ndarray) -> np.ndarray: ...

    def submit(
        self,
        span: np.ndarray,
        offsets: Sequence[int],
        window: int,
        *,
        planes: PlaneCrop | None = None,
    ) -> Pending: ...


def _require_length(video_id: str, seconds: float, minimum: float) -> None:
    if seconds < minimum:
        raise VideoError(video_id, f"too short: {seconds:.2f} s, needs at least {minimum} s")


class EmbedStage(Stage):
    name = "embed"
    settings_section = "embed"
    help = "stage 1a: V-JEPA 2 vectors for 1 in every frame_step frames"

    def setup(self, runtime: Runtime) -> None:
        if runtime.settings.embed.backend == "local":  # a service holds the model elsewhere
            load_encoder(runtime.settings.embed)  # process loads it lazily, after probing

    def before(self, ctx: StageContext) -> None:
        # A rerun may name metadata the first run lacked: copied whether or not embed is done.
        save_metadata(ctx.store, ctx.video_id, ctx.video.metadata)

    def process(self, ctx: StageContext) -> StageOutput:
        cfg, video_id = ctx.settings.embed, ctx.video_id
        source = fetched_source(ctx)  # a web page's video, as the fetch stage stored it
        if source is None:
            raise VideoError(video_id, "embed needs the video's source (a path or a URI)")
        min_duration = ctx.settings.segment.min_duration
        if cfg.backend == "service":
            encoded = encode_remote(ctx.runtime.services.encoder, source, video_id, cfg,
                                    min_duration)  # fmt: skip
        else:
            encoded = encode_video(ctx.store, source, video_id, cfg, min_duration)
        frames = {
            "video_id": video_id,
            "source": source,
            "source_fingerprint": ctx.store.fingerprint(source),
            "duration": encoded.duration,
            "fps": encoded.fps,
            "frame_step": cfg.frame_step,
            "times": encoded.times,
        }
        return StageOutput(
            {"embeddings.npy": encoded.features.astype(np.float16), "frames.json": frames},
            {"frames": len(encoded.times)},
        )


def encode_video(
    store: ArtifactStore,
    source: str,
    video_id: str,
    cfg: EmbedConfig,
    min_duration: float,
    on_progress: Callable[[int, int], None] | None = None,
) -> Encoded:
    """The video at ``source`` through the encoder ``cfg`` names, in this process (loaded once
    per process): probed and checked for length first, so a bad video costs no model load.
    ``on_progress(windows done, windows expected)`` after each batch."""
    with store.local_copy(source, video_id) as path:
        info = probe(path, video_id)
        if info.duration is not None:  # fail before any decoding when the file says so
            _require_length(video_id, info.duration, min_duration)
        encoder = load_encoder(cfg)
        times, features = embed_file(path, video_id, cfg, info, encoder, on_progress)
    # The last sampled frame stands for the frames skipped after it.
    decoded = times[-1] + cfg.frame_step / info.fps
    _require_length(video_id, decoded, min_duration)
    return Encoded(times, features, info.fps, max(info.duration or decoded, times[-1]))


def embed_file(
    path: str,
    video_id: str,
    cfg: EmbedConfig,
    info: VideoInfo,
    encoder: FrameEncoder,
    on_progress: Callable[[int, int], None] | None = None,
) -> tuple[list[float], np.ndarray]:
    """(sampled frame times, per-frame vectors) of the local file ``path``: decoded
    ``cfg.prefetch`` frames ahead in a thread while the encoder works."""
    if cfg.window % encoder.tubelet_size:
        raise ConfigError(
            f"embed.window ({cfg.window}) must be a multiple of the encoder's tubelet size "
            f"({encoder.tubelet_size})"
        )
    times: list[float] = []
    expected = max(1, -(-info.num_frames // cfg.frame_step))  # sampled: every step-th from 0
    n_windows = len(window_starts(expected, cfg.window, cfg.stride))
    done = [0]

    def progress(count: int) -> None:
        done[0] += count
        log.info("video %s: encoded %d/~%d windows", video_id, done[0], n_windows)
        if on_progress is not None:
            on_progress(done[0], n_windows)

    planes = device_planes(video_id, cfg, info, encoder)
    convert = (lambda frame: cut(frame, planes)) if planes else None

    def frames() -> Iterator[np.ndarray]:
        for pts, frame in iter_sampled_frames(
            path, video_id, cfg.frame_step, encoder.resize_size, cfg.decoder, info, convert
        ):
            times.append(pts)
            # Only the pixels the encoder sees (or its planes' source pixels) travel on.
            yield frame if planes else encoder.centre_crop(frame)

    features = embed_frames(
        frames(),
        functools.partial(encoder.submit, planes=planes),
        window=cfg.window,
        stride=cfg.stride,
        batch_size=cfg.batch_size,
        on_batch=progress,
        expected_frames=expected,
        prefetch=cfg.prefetch,
    )
    return times, features


def device_planes(
    video_id: str, cfg: EmbedConfig, info: VideoInfo, encoder: FrameEncoder
) -> PlaneCrop | None:
    """With ``embed.convert=device``, where the crop lies in the video's planes; None for the
    CPU's conversion (asked for, or frames that are not 8-bit 4:2:0)."""
    if cfg.convert != "device":
        return None
    size = (info.width, info.height)
    resized = scaled_size(*size, encoder.resize_size)
    tags = (info.pixel_format, info.colorspace, info.color_range)
    turns = quarter_turns(info.rotation)
    planes = PlaneCrop.for_video(size, resized, encoder.crop_size, turns, info.codec, tags)
    if planes is None:
        log.info("video %s: %s %s frames are converted on the CPU", video_id, info.codec, tags[0])
    return planes


STAGE = EmbedStage()
__all__ = ["STAGE", "FrameFeatureAccumulator", "embed_frames", "per_window", "window_starts"]
