"""Video decoding: decord first, PyAV when decord cannot open (or finish) a file.

Frames come with their real presentation time (seconds from the first frame), so variable frame
rate videos get correct times. Frames are decoded straight to the size the consumer needs and
streamed, so memory does not grow with the video's length.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from action100m.errors import VideoError

log = logging.getLogger(__name__)
DECORD_BATCH = 16
SEEK_MARGIN = 1.0  # seconds


@dataclass(frozen=True)
class VideoInfo:
    duration: float
    fps: float
    num_frames: int
    width: int
    height: int


def _check_file(path: str, video_id: str) -> None:
    file = Path(path)
    if not file.exists():
        raise VideoError(video_id, f"file not found: {path}")
    if file.stat().st_size == 0:
        raise VideoError(video_id, f"empty file (0 bytes): {path}")


def scaled_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """(width, height) with the shorter side equal to ``short_side``, aspect kept."""
    scale = short_side / min(width, height)
    return max(short_side, round(width * scale)), max(short_side, round(height * scale))


def probe(path: str, video_id: str) -> VideoInfo:
    """Duration, frame rate and size, with a clear VideoError for files that are not usable."""
    import av

    _check_file(path, video_id)
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise VideoError(video_id, "no video stream in the file")
            stream = container.streams.video[0]
            fps = float(stream.average_rate or stream.guessed_rate or 0) or 25.0
            duration = 0.0
            if stream.duration is not None and stream.time_base is not None:
                duration = float(stream.duration * stream.time_base)
            elif container.duration is not None:
                duration = container.duration / 1_000_000
            frames = int(stream.frames or round(duration * fps))
            return VideoInfo(duration, fps, frames, stream.width, stream.height)
    except VideoError:
        raise
    except Exception as exc:  # av.error.* for truncated or corrupt containers
        raise VideoError(video_id, f"cannot open the video ({type(exc).__name__}: {exc})") from exc


def _decord_frames(
    path: str, step: int, size: tuple[int, int]
) -> Iterator[tuple[float, np.ndarray]]:
    import decord

    reader = decord.VideoReader(path, ctx=decord.cpu(0), width=size[0], height=size[1])
    indices = np.arange(0, len(reader), step)
    times = reader.get_frame_timestamp(indices)[:, 0]
    for start in range(0, len(indices), DECORD_BATCH):
        chunk = indices[start : start + DECORD_BATCH]
        batch = reader.get_batch(list(chunk)).asnumpy()
        for offset, frame in enumerate(batch):
            yield float(times[start + offset]), frame


def _pyav_frames(
    path: str, step: int, size: tuple[int, int], after: float | None = None
) -> Iterator[tuple[float, np.ndarray]]:
    import av

    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        time_base = float(stream.time_base or 0)
        for index, frame in enumerate(container.decode(stream)):
            if index % step or frame.pts is None:
                continue
            pts = frame.pts * time_base
            if after is not None and pts <= after:
                continue
            yield pts, frame.to_ndarray(width=size[0], height=size[1], format="rgb24")


def iter_sampled_frames(
    path: str, video_id: str, step: int, short_side: int
) -> Iterator[tuple[float, np.ndarray]]:
    """Every ``step``-th frame as (seconds from the first frame, HxWx3 uint8), shortest side
    resized to ``short_side``. Decord first; PyAV from wherever decord stopped."""
    info = probe(path, video_id)
    size = scaled_size(info.width, info.height, short_side)
    first: float | None = None
    last: float | None = None
    produced = 0
    sources = [("decord", lambda: _decord_frames(path, step, size))]
    sources.append(("pyav", lambda: _pyav_frames(path, step, size, last)))
    for name, source in sources:
        try:
            for pts, frame in source():
                first = pts if first is None else first
                last = pts
                produced += 1
                yield pts - first, frame
            break
        except Exception as exc:  # decord raises DECORDError/RuntimeError on files it cannot read
            if name == "pyav":
                raise VideoError(
                    video_id, f"decoding failed after {produced} frames ({exc})"
                ) from exc
            log.info("video %s: decord stopped (%s); continuing with PyAV", video_id, exc)
    if produced == 0:
        raise VideoError(video_id, "no frame could be decoded (truncated or corrupt file)")


def read_frames_at(
    path: str, video_id: str, times: list[float], size: tuple[int, int]
) -> list[np.ndarray]:
    """The frames shown at ``times`` (seconds from the first frame), each resized to ``size``
    (width, height). Seeks instead of decoding the whole video."""
    import av

    _check_file(path, video_id)
    wanted = sorted(set(times))
    found: dict[float, np.ndarray] = {}
    try:
        with av.open(path) as container:
            stream = container.streams.video[0]
            base = stream.start_time or 0
            tb = float(stream.time_base or 0)
            for target in wanted:
                if target in found:
                    continue
                # Seeking goes by decode time: with B-frames the keyframe found can be shown after
                # the target, so aim a second earlier and decode forward.
                aim = max(0.0, target - SEEK_MARGIN)
                container.seek(int(base + aim / tb), stream=stream, backward=True)
                chosen = None
                for frame in container.decode(stream):
                    pts = (frame.pts - base) * tb if frame.pts is not None else target
                    if chosen is None or pts <= target + 1e-6:
                        chosen = frame
                    if pts >= target - 1e-6:
                        break
                if chosen is None:
                    raise VideoError(video_id, f"no frame at {target:.2f} s")
                found[target] = chosen.to_ndarray(width=size[0], height=size[1], format="rgb24")
    except VideoError:
        raise
    except Exception as exc:
        raise VideoError(video_id, f"cannot read frames ({type(exc).__name__}: {exc})") from exc
    return [found[t] for t in times]
