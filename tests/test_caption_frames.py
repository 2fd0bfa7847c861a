"""The one-pass frame reader: the same frames as a seek per time, in one forward decode."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from action100m.errors import VideoError
from action100m.frames import iter_frames_at
from action100m.samples import make_video


@pytest.fixture(scope="module")
def vfr_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("frames") / "vfr.mp4"
    make_video(path, [3.0, 5.0], vfr=True, seed=3)
    return path


def every_frame(path: Path) -> list[tuple[float, np.ndarray]]:
    """Ground truth: every frame, decoded in order and converted the same way."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [
            (float(f.pts * stream.time_base), f.to_ndarray(width=64, height=48, format="rgb24"))
            for f in container.decode(stream)
        ]
    return sorted(frames, key=lambda item: item[0])


@pytest.mark.parametrize("seek_gap", [0.2, 3.0, 100.0])
def test_each_time_gets_the_frame_on_screen_then(vfr_video: Path, seek_gap: float) -> None:
    shown = every_frame(vfr_video)
    rng = np.random.default_rng(0)
    wanted = sorted({round(float(t), 3) for t in rng.uniform(0.0, 8.5, 60)} | {0.0, 2.999})
    got = list(iter_frames_at(str(vfr_video), "v", wanted + wanted[:5], (64, 48), seek_gap))
    assert [t for t, _, _ in got] == wanted  # each distinct time once, ascending
    for moment, frame, problem in got:
        assert problem is None and frame is not None and frame.shape == (48, 64, 3)
        on_screen, expected = [item for item in shown if item[0] <= moment + 1e-6][-1]
        assert np.array_equal(frame, expected), (moment, on_screen)


def test_unopenable_file_is_a_video_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video at all")
    with pytest.raises(VideoError, match="cannot open"):
        list(iter_frames_at(str(bad), "bad", [1.0], (32, 32)))
