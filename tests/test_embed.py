"""Windowing, overlap averaging and the V-JEPA 2 wiring at the paper's shapes."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest

from action100m.config import load_settings
from action100m.errors import ConfigError
from action100m.models import vjepa2
from action100m.models.vjepa2 import VJEPA2Encoder
from action100m.pipeline import run_embed
from action100m.stages.embed import embed_frames, per_window, window_starts
from action100m.stages.embed_stream import windows_of
from action100m.store import ArtifactStore


@pytest.mark.parametrize(
    ("frames", "expected"),
    [(30, [0]), (64, [0]), (72, [0, 8]), (100, [0, 8, 16, 24, 32, 36])],
)
def test_window_starts_cover_the_tail(frames: int, expected: list[int]) -> None:
    assert window_starts(frames, 64, 8) == expected


@pytest.mark.parametrize("total", [1, 40, 64, 65, 100, 201])
@pytest.mark.parametrize("batch_size", [1, 3])
def test_overlapping_windows_average_per_frame(total: int, batch_size: int) -> None:
    """Encode each frame as its own index plus the window's start: the average over the
    windows covering a frame is then index + mean(start of covering windows)."""
    starts_seen: list[list[int]] = []

    def encode(windows: np.ndarray) -> np.ndarray:
        index = windows[:, :, 0, 0, 0].astype(np.float32)
        start = index[:, :1]
        starts_seen.append(list(start[:, 0]))
        return np.stack([index, np.broadcast_to(start, index.shape)], axis=-1)

    frames = (np.full((2, 2, 3), i, np.uint8) for i in range(total))
    out = embed_frames(frames, per_window(encode), window=64, stride=8, batch_size=batch_size)
    assert out.shape == (total, 2)
    assert np.allclose(out[:, 0], np.arange(total))
    starts = window_starts(total, 64, 8)
    assert sorted(s for batch in starts_seen for s in batch) == starts
    for frame in range(total):
        covering = [s for s in starts if s <= frame < s + 64]
        assert out[frame, 1] == pytest.approx(np.mean(covering))
    assert max(len(batch) for batch in starts_seen) <= batch_size + 1


def test_paper_shapes_reach_the_encoder(tmp_path: Path) -> None:
    """64 frames at 384 px with tubelet 2 and patch 16 -> 32 x 24 x 24 tokens; pooled back to
    one vector per frame. A tiny-width model keeps it cheap; the shapes are the paper's."""
    import torch
    from transformers import VJEPA2Config, VJEPA2Model

    config = VJEPA2Config(
        crop_size=384,
        frames_per_clip=64,
        patch_size=16,
        tubelet_size=2,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=1,
        mlp_ratio=1,
        pred_hidden_size=16,
        pred_num_hidden_layers=1,
        pred_num_attention_heads=1,
    )
    VJEPA2Model(config).save_pretrained(tmp_path / "model")
    encoder = VJEPA2Encoder(str(tmp_path / "model"), device="cpu")
    assert (encoder.crop_size, encoder.resize_size) == (384, 438)
    frames = np.random.default_rng(0).integers(0, 255, (1, 64, 438, 520, 3), dtype=np.uint8)
    pixels = encoder.preprocess(frames)
    assert tuple(pixels.shape) == (1, 64, 3, 384, 384)
    with torch.inference_mode():
        tokens = encoder.model.get_vision_features(pixels)
    assert tuple(tokens.shape) == (1, 32 * 24 * 24, 16)
    per_frame = encoder.encode(frames)
    assert per_frame.shape == (1, 64, 16)
    assert np.allclose(per_frame[0, 0], per_frame[0, 1]) and not np.allclose(
        per_frame[0, 0], per_frame[0, 2]
    )


def test_a_window_the_encoder_cannot_split_into_tubelets_is_refused(
    short_video: Path, store: ArtifactStore
) -> None:
    """63 frames make 31.5 tubelets of 2: one clear settings error, nothing written."""
    settings = load_settings(profile="tiny", store=store.root, overrides=["embed.window=63"])
    with pytest.raises(ConfigError, match=r"embed.window \(63\) must be a multiple of .* \(2\)"):
        run_embed(settings, store, "short", str(short_video))
    assert not store.exists(store.video_dir("short"))


@pytest.mark.parametrize(("window", "stride", "batch_size"), [(64, 8, 4), (16, 4, 1), (8, 8, 3)])
@pytest.mark.parametrize("prefetch", [0, 16])
def test_only_the_frames_of_windows_in_flight_are_kept(
    window: int, stride: int, batch_size: int, prefetch: int
) -> None:
    """A long video streams through in bounded memory: each frame the generator yields is freed
    once copied into the frame buffer (at most the prefetch queue's worth are alive), and the
    buffer the encoder reads from is the same size for 2,000 frames as for 200."""
    import weakref

    alive = [0]
    peak = [0]
    spans: list[int] = []

    def freed() -> None:
        alive[0] -= 1

    def frames(count: int) -> Iterator[np.ndarray]:
        for i in range(count):
            frame = np.full((2, 2, 3), i % 256, np.uint8)
            alive[0] += 1
            peak[0] = max(peak[0], alive[0])
            weakref.finalize(frame, freed)
            yield frame
            del frame

    def submit(span: np.ndarray, offsets: Sequence[int], length: int) -> np.ndarray:
        spans.append(id(span.base))
        return windows_of(span, offsets, length)[:, :, 0, 0, :1].astype(np.float32)

    buffers = []
    for count in (200, 2000):
        spans.clear()
        out = embed_frames(
            frames(count),
            submit,
            window=window,
            stride=stride,
            batch_size=batch_size,
            prefetch=prefetch,
        )
        assert out.shape == (count, 1)
        assert np.allclose(out[:, 0], np.arange(count) % 256)
        buffers.append(len(set(spans)))
    assert buffers == [1, 1]  # every batch read from one buffer, allocated once
    assert peak[0] <= prefetch + 3, peak[0]
    assert alive[0] == 0


def test_attention_kernels_and_compile_give_the_same_vectors(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The tiny V-JEPA 2 on the CPU: transformers' own attention loop, SDPA and the compiled
    encoder agree with the default load (rounding aside), and say which kernel they run. The
    compiled one is traced by TorchDynamo but run eagerly: inductor's C++ build takes a
    minute on this CPU (it agreed too when run once; on a GPU ``benchmarks/encoder_gpu.py``)."""
    import torch

    compile_module = torch.nn.Module.compile
    monkeypatch.setattr(
        torch.nn.Module, "compile", lambda self: compile_module(self, backend="eager")
    )
    model = "tiny-random/vjepa2"
    windows = np.random.default_rng(3).integers(0, 255, (2, 16, 64, 64, 3), dtype=np.uint8)
    default = VJEPA2Encoder(model, "cpu")
    expected = default.encode(windows)
    assert default.model.config._attn_implementation == "sdpa"
    for attn, compiled in (("eager", False), ("sdpa", False), ("auto", True)):
        encoder = VJEPA2Encoder(model, "cpu", attn_implementation=attn, compile=compiled)
        assert encoder.model.config._attn_implementation == (attn if attn != "auto" else "sdpa")
        assert (encoder.model.encoder._compiled_call_impl is not None) == compiled
        np.testing.assert_allclose(encoder.encode(windows), expected, rtol=1e-4, atol=1e-5)


def test_an_attention_kernel_not_installed_is_one_settings_line() -> None:
    with pytest.raises(ConfigError) as caught:
        VJEPA2Encoder("tiny-random/vjepa2", "cpu", attn_implementation="flash_attention_2")
    message = str(caught.value)
    assert message.startswith("embed.attn_implementation=flash_attention_2 is not available")
    assert "\n" not in message


def test_weights_are_converted_once_and_kept(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A bf16 load converts the stored fp32 weights once, keeps the copy in ACTION100M_CACHE, and
    later loads read it (half the bytes, nothing to convert) with the same vectors."""
    import shutil

    from safetensors import safe_open

    monkeypatch.setenv("ACTION100M_CACHE", str(tmp_path))
    windows = np.random.default_rng(5).integers(0, 255, (1, 16, 64, 64, 3), dtype=np.uint8)
    first = VJEPA2Encoder("tiny-random/vjepa2", "cpu", dtype="bfloat16")
    kept = tmp_path / "converted" / "tiny-random_vjepa2-bfloat16"
    with safe_open(str(kept / "model.safetensors"), "pt") as weights:
        name = next(iter(weights.keys()))
        assert str(weights.get_tensor(name).dtype) == "torch.bfloat16"
    shutil.rmtree(tmp_path / "tiny")  # the original is gone: only the converted copy can serve
    monkeypatch.setattr(vjepa2, "resolve_model", lambda name, builders: "/nowhere")
    second = VJEPA2Encoder("tiny-random/vjepa2", "cpu", dtype="bfloat16")
    np.testing.assert_array_equal(second.encode(windows), first.encode(windows))
