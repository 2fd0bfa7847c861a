"""The frame on screen at time t: the one reader behind caption frames, thumbnails and
:func:`read_frames_at`. Many timestamps go in one forward pass over a video, seeking over the gaps.

Captioning needs tens of thousands of frames from an hour of video (32 per segment node, at every
level of the tree), in no useful order per node. Seeking once per frame re-decodes a GOP each time;
decoding the whole video converts frames nobody needs. Here all wanted times are sorted, the video
is decoded forward, frames are converted only where wanted, and the reader seeks only when the next
wanted time is far enough ahead that skipping beats decoding through.

Times are seconds from the stream's start (the origin ``video.iter_sampled_frames`` uses): the frame
for time ``t`` is the one on screen at ``t`` (the last with a timestamp at or before it; the first
frame before it, the last frame after the end). ``seek_gap`` trades seeking for decoding: 0 seeks
for every time (a few frames), infinity decodes through (many frames spread over the video).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import numpy as np

from action100m.errors import VideoError
from action100m.video import SEEK_MARGIN, check_file, display_frame

log = logging.getLogger(__name__)
EPSILON = 1e-6


def iter_frames_at(
    path: str,
    video_id: str,
    times: list[float],
    size: tuple[int, int],
    seek_gap: float = 3.0,
    retry_broken: bool = True,
) -> Iterator[tuple[float, np.ndarray | None, str | None]]:
    """``(time, frame, None)`` for each distinct time in ascending order, frames ``size``
    (width, height) RGB; ``(time, None, reason)`` for a time whose frame could not be decoded.

    A file that cannot be opened at all raises ``VideoError``. When decoding breaks part way
    (a corrupt packet), the remaining times are tried one by one with a fresh seek, or, without
    ``retry_broken``, given back unread with the reason (thumbnails: not worth a seek each).
    """
    wanted = sorted(set(times))
    if not wanted:
        return
    container = _open(path, video_id)
    done = 0
    try:
        for item in _forward_pass(container, wanted, size, seek_gap):
            yield item
            done += 1
    except VideoError:
        raise
    except Exception as exc:
        log.warning(
            "video %s: decoding stopped at %.2f s (%s); seeking frame by frame",
            video_id,
            wanted[done],
            exc,
        )
    finally:
        container.close()
    for target in wanted[done:]:
        if not retry_broken:
            yield target, None, "decoding stopped before this time"
            continue
        try:
            yield target, _frame_at(path, video_id, target, size), None
        except VideoError as exc:
            yield target, None, exc.problem


def read_frames_at(
    path: str,
    video_id: str,
    times: list[float],
    size: tuple[int, int],
    seek_gap: float = 0.0,
    retry_broken: bool = True,
) -> list[np.ndarray]:
    """The frames shown at ``times``, in their order, each resized to ``size`` (width, height);
    a time whose frame cannot be decoded is a VideoError naming it."""
    check_file(path, video_id)
    found: dict[float, np.ndarray] = {}
    frames = iter_frames_at(path, video_id, times, size, seek_gap, retry_broken)
    for moment, frame, problem in frames:
        if frame is None:
            raise VideoError(video_id, f"no frame at {moment:.2f} s ({problem})")
        found[moment] = frame
    return [found[t] for t in times]


def _open(path: str, video_id: str) -> Any:
    import av

    try:
        container = av.open(path)
    except Exception as exc:  # av.error.*: missing, empty or not a video
        raise VideoError(video_id, f"cannot open the video ({type(exc).__name__}: {exc})") from exc
    if not container.streams.video:
        container.close()
        raise VideoError(video_id, "no video stream in the file")
    return container


def _frame_at(path: str, video_id: str, target: float, size: tuple[int, int]) -> np.ndarray:
    """One time with a fresh seek: how the times after a broken stretch are tried."""
    container = _open(path, video_id)
    try:
        for _, frame, _ in _forward_pass(container, [target], size, 0.0):
            if frame is not None:
                return frame
    except Exception as exc:
        raise VideoError(video_id, f"cannot read frames ({type(exc).__name__}: {exc})") from exc
    finally:
        container.close()
    raise VideoError(video_id, f"no frame at {target:.2f} s")


def _forward_pass(
    container: Any, wanted: list[float], size: tuple[int, int], seek_gap: float
) -> Iterator[tuple[float, np.ndarray | None, str | None]]:
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    base = stream.start_time or 0
    time_base = float(stream.time_base)
    next_index = 0
    previous: Any = None  # the last decoded frame: on screen until the next one's timestamp
    converted: tuple[Any, np.ndarray] | None = None

    def picture(frame: Any) -> np.ndarray:
        nonlocal converted
        if converted is None or converted[0] is not frame:  # several times may share one frame
            array = display_frame(frame, size)
            converted = (frame, array)
        return converted[1]

    position = 0.0
    seeked_for = -1  # a seek lands on the keyframe before its target: never seek twice for one
    while next_index < len(wanted):
        target = wanted[next_index]
        if previous is None or target - position > seek_gap:
            # Seeking goes by decode time; with B-frames the keyframe found can show after the
            # target, so aim a little earlier.
            aim = max(0.0, target - SEEK_MARGIN)
            container.seek(int(base + aim / time_base), stream=stream, backward=True)
            seeked_for, previous = next_index, None
        reseek = False
        for frame in container.decode(stream):
            if frame.pts is None:
                continue
            position = (frame.pts - base) * time_base
            while next_index < len(wanted) and position > wanted[next_index] + EPSILON:
                # ``previous`` was on screen at this time; before the first frame, show the first.
                yield wanted[next_index], picture(previous or frame), None
                next_index += 1
            previous = frame
            if next_index == len(wanted):
                return
            if wanted[next_index] - position > seek_gap and seeked_for != next_index:
                reseek = True
                break
        if reseek:
            continue
        # End of stream: times past the last frame show the last frame.
        if previous is None:
            raise RuntimeError(f"no frame decoded at or after {target:.2f} s")
        while next_index < len(wanted):
            yield wanted[next_index], picture(previous), None
            next_index += 1
