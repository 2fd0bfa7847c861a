"""Synthetic sample videos with known scene cuts (H.264 through PyAV), for the demo and the tests.

Each scene is a distinct moving pattern, so a segmenter has real boundaries to find. With
``vfr=True`` frame times are irregular (variable frame rate) but known exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import numpy as np

# Visually distinct scenes: base colour and stripe direction.
PALETTE = [
    ((220, 40, 40), 0),
    ((40, 200, 60), 1),
    ((40, 60, 220), 2),
    ((230, 200, 40), 3),
    ((200, 40, 200), 0),
    ((40, 200, 200), 1),
]


def scene_frame(scene: int, t: float, width: int, height: int) -> np.ndarray:
    """One frame of scene ``scene`` at time ``t``: a coloured, moving stripe pattern."""
    colour, direction = PALETTE[scene % len(PALETTE)]
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    coord = [xs, ys, xs + ys, xs - ys][direction]
    period = 12.0 + 6.0 * (scene % 3)
    stripes = (np.sin((coord + 40.0 * t) * 2 * np.pi / period) > 0).astype(np.float32)
    frame = np.empty((height, width, 3), np.float32)
    for channel in range(3):
        frame[..., channel] = colour[channel] * (0.45 + 0.55 * stripes)
    return frame.astype(np.uint8)


def make_video(
    path: str | Path,
    scenes: Sequence[float],
    *,
    fps: int = 24,
    width: int = 128,
    height: int = 96,
    vfr: bool = False,
    seed: int = 0,
    gop: int | None = None,
    faststart: bool = False,
    rotation: int = 0,
) -> list[float]:
    """Write an H.264 MP4 whose scene ``i`` lasts ``scenes[i]`` seconds; return the cut times.

    With ``vfr`` the gap between frames varies between 0.5/fps and 1.5/fps; ``gop`` sets the
    keyframe interval (frequent keyframes make seeking land near the target); ``faststart`` puts
    the MP4 index first, so a file cut short still opens (the way an interrupted download does).
    ``rotation`` stores each frame turned the other way with a display matrix that turns it back
    (counter-clockwise degrees), as a phone recording held upright: shown, it is ``width`` x
    ``height`` and upright.
    """
    import av

    rng = np.random.default_rng(seed)
    total = float(sum(scenes))
    cuts = list(np.cumsum(scenes)[:-1])
    time_base = Fraction(1, 1000)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), "w", options=options) as container:
        stream = container.add_stream("libx264", rate=fps)
        turns = round(rotation / 90) % 4
        stored = (height, width) if turns % 2 else (width, height)
        stream.width, stream.height, stream.pix_fmt = *stored, "yuv420p"
        if turns:
            stream.set_display_rotation(rotation)
        stream.time_base = time_base
        stream.codec_context.time_base = time_base
        if gop:
            stream.codec_context.gop_size = gop
        t = 0.0
        while t < total - 1e-9:
            scene = int(np.searchsorted(cuts, t, side="right"))
            image = np.ascontiguousarray(np.rot90(scene_frame(scene, t, width, height), -turns))
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = round(t * 1000)
            frame.time_base = time_base
            container.mux(stream.encode(frame))
            step = 1.0 / fps
            t += step * float(rng.uniform(0.5, 1.5)) if vfr else step
        container.mux(stream.encode(None))
    return [float(c) for c in cuts]
