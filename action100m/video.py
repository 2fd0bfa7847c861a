"""Video decoding: PyAV or decord (``embed.decoder``), the other one where the first cannot open
(or finish) a file.

PyAV is the default: on H.264 it decodes 1-in-4 frames about 1.5x faster than decord here
(decord scales every decoded frame, PyAV only the kept ones; ``benchmarks/decode.py``).

Frames at chosen times (captions, thumbnails) come from :mod:`action100m.frames`.

Frames come with their real presentation time (seconds from the stream's start, the origin both
decoders and the caption stage's seeking use), so variable frame rate videos get correct times.
Frames are decoded straight to the size the consumer needs and streamed, so memory does not grow
with the video's length.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from action100m.errors import VideoError

log = logging.getLogger(__name__)
DECORD_BATCH = 16
SEEK_MARGIN = 1.0  # seconds
TRUNCATION_TOLERANCE = 1.0  # seconds of declared video that may lack frames


@dataclass(frozen=True)
class VideoInfo:
    duration: float | None  # None: the file does not say; known only once decoded
    fps: float
    num_frames: int
    width: int
    height: int
    # The video stream's own duration (not the container's, which audio can lengthen): only then
    # is a shortfall of decoded frames proof of a truncated file.
    duration_from_stream: bool = False
    # Counter-clockwise degrees the display matrix turns stored frames (a phone held upright);
    # width and height above are the displayed ones.
    rotation: int = 0
    # The first frame's pixel format and FFmpeg colour tags (AVColorSpace, AVColorRange), for a
    # conversion done elsewhere than swscale (``planes``); "" where it could not be decoded.
    pixel_format: str = ""
    codec: str = ""  # the decoder's name (h264, vp9, libdav1d)
    colorspace: int = 2  # unspecified
    color_range: int = 0  # unspecified


def quarter_turns(degrees: float) -> int:
    """The display rotation as counter-clockwise quarter turns, 0 to 3."""
    return round(degrees / 90) % 4


def display_frame(frame: Any, size: tuple[int, int]) -> np.ndarray:
    """A decoded frame as shown: RGB, turned by its display rotation, ``size`` (width, height)
    as displayed."""
    turns = quarter_turns(frame.rotation or 0)
    width, height = (size[1], size[0]) if turns % 2 else size
    array = frame.to_ndarray(width=width, height=height, format="rgb24")
    return np.ascontiguousarray(np.rot90(array, turns)) if turns else array


def check_file(path: str, video_id: str) -> None:
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

    check_file(path, video_id)
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise VideoError(video_id, "no video stream in the file")
            stream = container.streams.video[0]
            fps = float(stream.average_rate or stream.guessed_rate or 0) or 25.0
            own: float | None = None  # the video stream's own duration, where it declares one
            if stream.duration is not None and stream.time_base is not None:
                own = float(stream.duration * stream.time_base)
            whole = container.duration / 1_000_000 if container.duration is not None else None
            duration = own if own is not None else whole
            frames = int(stream.frames or round((duration or 0.0) * fps))
            first = _first_frame(container, stream)
            rotation = int(getattr(first, "rotation", 0) or 0)
            width, height = stream.width, stream.height
            if quarter_turns(rotation) % 2:
                width, height = height, width
            codec = stream.codec_context.name
            tags = (first.format.name, codec, first.colorspace, first.color_range) if first else ()
            return VideoInfo(duration, fps, frames, width, height, own is not None, rotation, *tags)
    except VideoError:
        raise
    except Exception as exc:  # av.error.* for truncated or corrupt containers
        raise VideoError(video_id, f"cannot open the video ({type(exc).__name__}: {exc})") from exc


def _first_frame(container: Any, stream: Any) -> Any:
    """The first decoded frame (None where it cannot be decoded)."""
    try:
        return next(container.decode(stream), None)
    except Exception:  # a corrupt start: the decoders will say so in their own words
        return None


def _decord_frames(
    path: str, step: int, size: tuple[int, int], after: float | None = None
) -> Iterator[tuple[float, np.ndarray]]:
    import decord

    # decord applies the display rotation itself: ``size`` is the displayed one.
    reader = decord.VideoReader(path, ctx=decord.cpu(0), width=size[0], height=size[1])
    indices = np.arange(0, len(reader), step)
    # Seconds from the stream's start, as _pyav_frames gives them.
    times = reader.get_frame_timestamp(indices)[:, 0]
    if after is not None:
        keep = times > after
        indices, times = indices[keep], times[keep]
    for start in range(0, len(indices), DECORD_BATCH):
        chunk = indices[start : start + DECORD_BATCH]
        batch = reader.get_batch(list(chunk)).asnumpy()
        for offset, frame in enumerate(batch):
            yield float(times[start + offset]), frame


def _pyav_frames(
    path: str,
    step: int,
    size: tuple[int, int],
    after: float | None = None,
    convert: Callable[[Any], np.ndarray] | None = None,
) -> Iterator[tuple[float, np.ndarray]]:
    import av

    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        time_base = float(stream.time_base or 0)
        base = stream.start_time or 0  # seconds from the stream's start, as decord counts them
        for index, frame in enumerate(container.decode(stream)):
            if index % step or frame.pts is None:
                continue
            pts = (frame.pts - base) * time_base
            if after is not None and pts <= after:
                continue
            # Each frame carries its own rotation.
            yield pts, convert(frame) if convert else display_frame(frame, size)


DECODERS: dict[str, Callable[..., Iterator[tuple[float, np.ndarray]]]] = {
    "pyav": _pyav_frames,
    "decord": _decord_frames,
}


def iter_sampled_frames(
    path: str,
    video_id: str,
    step: int,
    short_side: int,
    decoder: str = "pyav",
    info: VideoInfo | None = None,
    convert: Callable[[Any], np.ndarray] | None = None,
) -> Iterator[tuple[float, np.ndarray]]:
    """Every ``step``-th frame as (seconds from the stream's start, HxWx3 uint8), shortest side
    resized to ``short_side``. ``decoder`` first; the other one from wherever it stopped.
    ``convert`` takes each decoded PyAV frame instead (``planes.cut``): PyAV only, no fallback.

    Raises VideoError when no frame decodes or when the frames stop well before the duration the
    video stream declares (a truncated file), so a partial video never passes as a whole one."""
    info = info or probe(path, video_id)
    size = scaled_size(info.width, info.height, short_side)
    last: float | None = None
    produced = 0
    order = ["pyav"] if convert else [decoder, *(name for name in DECODERS if name != decoder)]
    for name in order:
        try:
            options = {"convert": convert} if convert else {}
            for pts, frame in DECODERS[name](path, step, size, last, **options):
                last = pts
                produced += 1
                yield pts, frame
            break
        except Exception as exc:  # decord raises DECORDError/RuntimeError, PyAV av.error.*
            if name == order[-1]:
                raise VideoError(
                    video_id, f"decoding failed after {produced} frames ({exc})"
                ) from exc
            log.info(
                "video %s: %s stopped (%s); continuing with %s", video_id, name, exc, order[-1]
            )
    if last is None:
        raise VideoError(video_id, "no frame could be decoded (truncated or corrupt file)")
    _check_complete(video_id, info, last + step / info.fps, step)


def _check_complete(video_id: str, info: VideoInfo, covered: float, step: int) -> None:
    if not info.duration_from_stream or info.duration is None:
        return
    tolerance = max(TRUNCATION_TOLERANCE, 2 * step / info.fps)
    if info.duration - covered > tolerance:
        raise VideoError(
            video_id,
            f"truncated: decoded frames end at {covered:.2f} s of the {info.duration:.2f} s "
            "the video stream declares",
        )
