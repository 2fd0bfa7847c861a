"""The embed stream against straightforward references: accumulator, windows, decoding thread,
the encoder's span path; and the decoder's errors reaching the stage as they did in series."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest

from action100m.config import load_settings
from action100m.errors import VideoError
from action100m.models.vjepa2 import load_encoder
from action100m.pipeline import run_embed
from action100m.samples import make_video
from action100m.stages.embed import embed_file
from action100m.stages.embed_stream import (
    FrameFeatureAccumulator,
    embed_frames,
    per_window,
    prefetched,
    window_starts,
    windows_of,
)
from action100m.store import ArtifactStore
from action100m.video import probe


def reference(frames: np.ndarray, encode, window: int, stride: int) -> np.ndarray:  # type: ignore[no-untyped-def]
    """Every window stacked and encoded on its own, summed in float64, averaged per frame."""
    total = len(frames)
    sums = np.zeros((total, 0))
    counts = np.zeros(total)
    for start in window_starts(total, window, stride):
        clip = list(frames[start : start + window])
        clip += [clip[-1]] * (window - len(clip))
        feats = encode(np.stack(clip)[None])[0].astype(np.float64)
        if sums.shape[1] == 0:
            sums = np.zeros((total, feats.shape[-1]))
        valid = min(window, total - start)
        sums[start : start + valid] += feats[:valid]
        counts[start : start + valid] += 1
    return sums / counts[:, None]


@pytest.mark.parametrize("expected", [0, 5, 400])
def test_accumulator_matches_float64_sums_and_grows_past_the_guess(expected: int) -> None:
    """Random vectors over overlapping windows, a tail window overlapping the last regular one
    and a final partial window: float32 sums in one buffer give the float64 averages."""
    rng = np.random.default_rng(1)
    total, window, width = 203, 16, 24
    starts = [*window_starts(total, window, 4), total - 5]  # the last one covers 5 frames
    acc = FrameFeatureAccumulator(expected)
    sums, counts = np.zeros((total, width)), np.zeros(total)
    for start in starts:
        feats = rng.standard_normal((window, width)).astype(np.float32) * 100
        valid = min(window, total - start)
        acc.add(start, feats, valid)
        sums[start : start + valid] += feats[:valid]
        counts[start : start + valid] += 1
    out = acc.result()
    assert out.dtype == np.float32 and out.shape == (total, width)
    np.testing.assert_allclose(out, sums / counts[:, None], rtol=1e-5, atol=1e-4)


def test_windows_are_views_when_evenly_spaced() -> None:
    span = np.arange(40).reshape(20, 2)
    view = windows_of(span, [0, 3, 6], 5)
    assert np.shares_memory(view, span) and not view.flags.writeable
    assert (view[2] == span[6:11]).all()
    uneven = windows_of(span, [0, 3, 15], 5)
    assert (uneven[2] == span[15:20]).all() and (uneven[1] == span[3:8]).all()


def _random_encode(windows: np.ndarray) -> np.ndarray:
    """A vector per frame that depends on the frame and its place in the window."""
    pixels = windows.reshape(*windows.shape[:2], -1).astype(np.float32)
    position = np.arange(windows.shape[1], dtype=np.float32)[None, :, None]
    return np.concatenate([pixels[..., :3] * 0.37, pixels[..., 3:4] + position], axis=-1)


@pytest.mark.parametrize("total", [7, 16, 17, 61, 300])
@pytest.mark.parametrize(("batch_size", "prefetch"), [(1, 0), (3, 0), (3, 5), (4, 64)])
def test_stream_matches_window_by_window(total: int, batch_size: int, prefetch: int) -> None:
    frames = np.random.default_rng(total).integers(0, 255, (total, 2, 2, 3), dtype=np.uint8)
    out = embed_frames(
        iter(frames),
        per_window(_random_encode),
        window=16,
        stride=4,
        batch_size=batch_size,
        prefetch=prefetch,
        expected_frames=total // 2,
    )
    np.testing.assert_allclose(out, reference(frames, _random_encode, 16, 4), rtol=1e-6)


def test_a_producer_error_is_raised_as_itself_and_a_consumer_error_stops_the_producer() -> None:
    def failing() -> Iterator[np.ndarray]:
        yield np.zeros((2, 2, 3), np.uint8)
        raise VideoError("v", "decoding failed after 1 frames (boom)")

    with pytest.raises(VideoError, match=r"^video v: decoding failed after 1 frames \(boom\)$"):
        list(prefetched(failing(), 4))
    produced = [0]

    def endless() -> Iterator[np.ndarray]:
        while True:
            produced[0] += 1
            yield np.zeros((2, 2, 3), np.uint8)

    def broken(span: np.ndarray, offsets: Sequence[int], window: int) -> np.ndarray:
        raise RuntimeError("device lost")

    with pytest.raises(RuntimeError, match="device lost"):
        embed_frames(endless(), broken, window=8, stride=4, batch_size=1, prefetch=4)
    stopped_at = produced[0]
    assert stopped_at < 30  # the producer stopped once the consumer gave up


def test_encoder_span_path_equals_stacked_windows(tmp_path: Path) -> None:
    """The tiny V-JEPA 2: windows built on the device from one cropped span give the vectors
    the old path (each window stacked, cropped and normalised on its own) gave."""
    import torch

    settings = load_settings(profile="tiny", store=str(tmp_path), environ={})
    encoder = load_encoder(settings.embed)
    size = (encoder.resize_size, encoder.resize_size + 30)
    rng = np.random.default_rng(0)
    span = rng.integers(0, 255, (40, *size, 3), dtype=np.uint8)
    offsets = [0, 8, 16, 24]
    windows = np.stack([span[o : o + 16] for o in offsets])
    with torch.inference_mode():
        tokens = encoder.model.get_vision_features(encoder.preprocess(windows))
    old = tokens.reshape(4, 8, -1, tokens.shape[-1]).mean(dim=2).repeat_interleave(2, dim=1)
    cropped = np.stack([encoder.centre_crop(frame) for frame in span])
    new = encoder.submit(cropped, offsets, 16).result()
    assert cropped.shape[1:3] == (encoder.crop_size, encoder.crop_size)
    assert np.array_equal(new, old.numpy())
    assert np.array_equal(encoder.encode(windows), new)


@pytest.fixture(scope="module")
def cut_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("cut")
    whole = folder / "whole.mp4"
    make_video(whole, [4.0, 4.0], faststart=True)
    cut = folder / "cut.mp4"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    return cut


def test_a_truncated_file_fails_with_the_same_line_decoded_ahead_or_not(
    cut_video: Path, tmp_path: Path
) -> None:
    messages = []
    for prefetch in (0, 8):
        store = ArtifactStore(str(tmp_path / f"store{prefetch}"))
        settings = load_settings(
            profile="tiny", store=store.root, environ={}, overrides=[f"embed.prefetch={prefetch}"]
        )
        with pytest.raises(VideoError) as caught:
            run_embed(settings, store, "cut", str(cut_video))
        messages.append(str(caught.value))
    assert messages[0] == messages[1] and "\n" not in messages[0]
    assert messages[0].startswith("video cut: truncated: decoded frames end at")


def test_the_stage_gives_the_same_vectors_decoded_ahead_or_not(scene_video, tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = str(scene_video[0])
    info = probe(path, "s")
    results = []
    for prefetch in (0, 128):
        settings = load_settings(
            profile="tiny",
            store=str(tmp_path),
            environ={},
            overrides=[f"embed.prefetch={prefetch}"],
        )
        results.append(embed_file(path, "s", settings.embed, info, load_encoder(settings.embed)))
    (times_a, feats_a), (times_b, feats_b) = results
    assert times_a == times_b and len(times_a) == feats_a.shape[0]
    assert np.array_equal(feats_a, feats_b)
