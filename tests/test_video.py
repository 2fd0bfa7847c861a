"""Decoding and bad input: every bad video ends in one clear error, a non-zero exit, no _SUCCESS."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from action100m.cli import main
from action100m.config import Settings
from action100m.errors import VideoError
from action100m.frames import read_frames_at
from action100m.pipeline import run_embed
from action100m.samples import make_video
from action100m.store import ArtifactStore
from action100m.video import (
    DECODERS,
    _decord_frames,
    _pyav_frames,
    iter_sampled_frames,
    scaled_size,
)


def test_variable_frame_rate_times_are_real(tmp_path: Path) -> None:
    path = tmp_path / "vfr.mp4"
    make_video(path, [3.0], vfr=True, seed=3)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        truth = [float(f.pts * stream.time_base) for f in container.decode(stream)][::4]
    sampled = list(iter_sampled_frames(str(path), "vfr", 4, 48))
    times = [t for t, _ in sampled]
    assert np.allclose(times, np.array(truth) - truth[0], atol=1e-3)
    assert np.diff(times).std() > 0.01  # irregular spacing survived
    # Resized so the shortest side is 48, aspect kept (128x96 -> 64x48).
    assert sampled[0][1].shape == (48, 64, 3)


@pytest.mark.parametrize("container", ["mp4", "ts"])
def test_both_decoders_count_time_from_the_stream_start(tmp_path: Path, container: str) -> None:
    """MPEG-TS streams start well after 0 (here 0.083 s): times are still seconds from the start,
    the same origin decord uses, so one decoder can take over where the other stopped."""
    path = tmp_path / f"scenes.{container}"
    make_video(path, [2.0, 2.0])
    size = scaled_size(128, 96, 48)
    pyav_times = [t for t, _ in _pyav_frames(str(path), 4, size)]
    assert pyav_times[0] == pytest.approx(0.0, abs=1e-6)
    assert np.allclose(np.diff(pyav_times), 4 / 24, atol=1e-3)
    if container == "mp4":  # decord cannot finish MPEG-TS files (PyAV takes over there)
        decord_times = [t for t, _ in _decord_frames(str(path), 4, size)]
        assert np.allclose(decord_times, pyav_times, atol=1e-3)


@pytest.mark.parametrize("first", ["pyav", "decord"])
def test_a_decoder_that_stops_midway_is_continued_without_repeats(
    scene_video: tuple[Path, list[float]], monkeypatch: pytest.MonkeyPatch, first: str
) -> None:
    path, _ = scene_video
    whole = list(iter_sampled_frames(str(path), "s", 4, 48, first))
    real = DECODERS[first]

    def dies_after_ten(*args: Any) -> Iterator[tuple[float, np.ndarray]]:
        for index, item in enumerate(real(*args)):
            if index == 10:
                raise RuntimeError("decoder died")
            yield item

    monkeypatch.setitem(DECODERS, first, dies_after_ten)
    resumed = list(iter_sampled_frames(str(path), "s", 4, 48, first))
    assert [t for t, _ in resumed] == pytest.approx([t for t, _ in whole], abs=1e-3)
    # Same pictures too (the decoders may round colours differently by a few levels).
    for (_, a), (_, b) in zip(resumed, whole, strict=True):
        assert np.abs(a.astype(int) - b.astype(int)).mean() < 8


def test_a_file_cut_short_is_truncated_not_a_shorter_video(tmp_path: Path) -> None:
    """An interrupted download of an MP4 with its index first still opens and decodes: the frames
    just stop. That must be an error, not a tree stretched over time that was never seen."""
    whole = tmp_path / "whole.mp4"
    make_video(whole, [4.0, 4.0], faststart=True)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    for decoder in DECODERS:
        with pytest.raises(VideoError, match=r"video cut: truncated: decoded frames end at"):
            list(iter_sampled_frames(str(cut), "cut", 4, 48, decoder))
    assert len(list(iter_sampled_frames(str(whole), "whole", 4, 48))) == 48


def test_read_frames_at_seeks_the_right_scene(scene_video: tuple[Path, list[float]]) -> None:
    path, _ = scene_video  # scenes: red 0-4 s, green 4-8 s, blue 8-12 s
    frames = read_frames_at(str(path), "s", [2.0, 6.0, 10.0, 2.0], (32, 32))
    dominant = [int(np.argmax(f.reshape(-1, 3).mean(axis=0))) for f in frames]
    assert dominant == [0, 1, 2, 0]
    assert all(f.shape == (32, 32, 3) for f in frames)


def _bad_inputs(tmp_path: Path, scene: Path) -> dict[str, tuple[Path, str]]:
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(scene.read_bytes()[:2000])
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(np.random.default_rng(0).bytes(50_000))
    audio = tmp_path / "audio.m4a"
    with av.open(str(audio), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="flt")
        frame.sample_rate = 16000
        for _ in range(20):
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    tiny = tmp_path / "blink.mp4"
    make_video(tiny, [0.3])
    whole = tmp_path / "whole.mp4"
    make_video(whole, [2.0, 2.0], faststart=True)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    return {
        "missing": (tmp_path / "nope.mp4", "file not found"),
        "empty": (empty, "empty file"),
        "truncated": (truncated, "cannot open"),
        "garbage": (garbage, "cannot open"),
        "audio": (audio, "no video stream"),
        "blink": (tiny, "too short"),
        "cut": (cut, "truncated"),
    }


def test_bad_inputs_fail_clearly_and_write_nothing(
    tmp_path: Path,
    scene_video: tuple[Path, list[float]],
    store: ArtifactStore,
    tiny_settings: Settings,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name, (path, reason) in _bad_inputs(tmp_path, scene_video[0]).items():
        with pytest.raises(VideoError) as caught:
            run_embed(tiny_settings, store, name, str(path))
        message = str(caught.value)
        assert message.startswith(f"video {name}:") and reason in message, message
        assert "\n" not in message
        assert not store.exists(store.video_dir(name))
        # The command line: one line on stderr, non-zero exit.
        code = main(["-q", "--store", store.root, "--profile", "tiny", "segment", str(path)])
        err = capsys.readouterr().err.strip().splitlines()
        assert code != 0 and len(err) == 1 and reason in err[0], err
        assert not store.exists(store.video_dir(path.stem))


def test_read_frames_at_picks_the_frame_on_screen_in_vfr_video(tmp_path: Path) -> None:
    """With B-frames a seek can land after the target; the frame returned must still be the last
    one shown at or before the target time."""
    path = tmp_path / "vfr.mp4"
    make_video(path, [2.0, 2.0, 2.0], vfr=True, seed=5, gop=6)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        decoded = [
            (float(f.pts * stream.time_base), f.to_ndarray(format="rgb24"))
            for f in container.decode(stream)
        ]
    targets = [t + 0.003 for t, _ in decoded[10::3]]
    frames = read_frames_at(str(path), "vfr", targets, (128, 96))
    for target, frame in zip(targets, frames, strict=True):
        expected = [image for t, image in decoded if t <= target][-1]
        assert np.array_equal(frame, expected), target
