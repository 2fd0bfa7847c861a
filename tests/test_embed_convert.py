"""``embed.convert=device``: the crop's YUV planes, resized and converted in torch, against
swscale's RGB (``embed.convert=cpu``); and the first window leaving before a whole batch.

Pixel tolerance against swscale with full chroma interpolation (``EXACT``): at most 2 of 255
anywhere, 0.05 on average. swscale works in fixed point (coefficients and sums rounded to 14-15
bits), torch in float32, so single pixels round apart by 1; a wrong geometry, chroma siting or
matrix shows as tens to hundreds (half a chroma pixel off: max 86-226, PSNR 26-37 dB). swscale's
default, which the CPU path uses, is the same for odd output widths (779 for landscape videos);
for even ones (portrait: 438) it halves the chroma's horizontal resolution and rounds about 2
low, so the stage's vectors are compared with a looser bound.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
import torch
from av.video.reformatter import Interpolation

from action100m.config import load_settings
from action100m.models.vjepa2 import load_encoder
from action100m.planes import Converter, PlaneCrop, cut, plane_crop
from action100m.samples import make_video
from action100m.stages.embed import device_planes, embed_file
from action100m.stages.embed_stream import embed_frames, per_window
from action100m.video import iter_sampled_frames, probe, scaled_size

CROP, SHORT = 384, 438  # V-JEPA 2 ViT-g/384's geometry
EXACT = Interpolation.BILINEAR | Interpolation.FULL_CHR_H_INT


def _plan(frame: av.VideoFrame, turns: int = 0) -> PlaneCrop:
    size = (frame.width, frame.height)
    tags = (frame.format.name, frame.colorspace, frame.color_range)
    # A frame made here has no chroma location: swscale reads it centred.
    plan = plane_crop(size, scaled_size(*size, SHORT), CROP, turns, *tags, left_sited=False)
    assert plan is not None
    return plan


def _swscale_crop(frame: av.VideoFrame, plan: PlaneCrop, crop: int = CROP) -> np.ndarray:
    """swscale's ``EXACT`` RGB, turned as shown; its ``crop`` centre (0: whole)."""
    (width, height), top, left = plan.resized, *((r - crop) // 2 for r in plan.resized[::-1])
    if plan.turns % 2:  # swscale scales the stored frame
        width, height = height, width
    image = frame.to_ndarray(width=width, height=height, format="rgb24", interpolation=EXACT)
    image = np.rot90(image, plan.turns)  # as display_frame turns it
    if not crop:
        return image
    return image[top : top + crop, left : left + crop].astype(np.float64)


def _device_crop(packed: np.ndarray, plan: PlaneCrop) -> np.ndarray:
    rgb = Converter(plan, "cpu")(torch.from_numpy(packed)[None])[0]
    return rgb.permute(1, 2, 0).numpy().astype(np.float64)


def _assert_close(device: np.ndarray, cpu: np.ndarray) -> None:
    diff = np.abs(device - cpu)
    assert diff.max() <= 2 and diff.mean() < 0.05, (diff.max(), diff.mean())


def _picture(width: int, height: int, seed: int) -> np.ndarray:
    """Saturated blocks with sharp edges over a gradient: every chroma or geometry error shows."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, (height // 7 + 1, width // 7 + 1, 3))
    sharp = np.kron(blocks, np.ones((7, 7, 1)))[:height, :width]
    ramp = np.linspace(0, 255, width)[None, :, None]
    return (0.7 * sharp + 0.3 * ramp).astype(np.uint8)


@pytest.mark.parametrize(
    ("width", "height", "space", "full"),
    [
        (640, 360, "itu601", False),
        (1280, 720, "itu709", False),
        (641, 361, "itu709", True),  # odd: chroma planes round up
        (333, 500, "itu601", True),  # portrait, odd width
    ],
)
def test_planes_give_swscales_pixels(width: int, height: int, space: str, full: bool) -> None:
    rgb = av.VideoFrame.from_ndarray(_picture(width, height, width), format="rgb24")
    frame = rgb.reformat(
        format="yuv420p", dst_colorspace=space, dst_color_range="JPEG" if full else "MPEG"
    )
    plan = _plan(frame)
    assert plan.full_range is full and (plan.luma_weights[0] == 0.2126) is (space == "itu709")
    packed = cut(frame, plan)
    assert packed.shape == plan.shape and packed.size < width * height * 3 // 2
    _assert_close(_device_crop(packed, plan), _swscale_crop(frame, plan))


def _encode(path: Path, codec: str) -> None:
    """Eight frames of 640x360 through ``codec`` (make_video writes H.264 only)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=24)
        stream.width, stream.height, stream.pix_fmt = 640, 360, "yuv420p"
        for index in range(8):
            rgb = av.VideoFrame.from_ndarray(_picture(640, 360, index), format="rgb24")
            frame = rgb.reformat(format="yuv420p")
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("convert")
    made = {}
    for name, width, height, rotation in [
        ("360p", 640, 360, 0),
        ("720p", 1280, 720, 0),
        ("upright", 640, 360, 90),  # stored 360x640, shown turned
    ]:
        made[name] = folder / f"{name}.mp4"
        make_video(made[name], [0.5, 0.5], width=width, height=height, rotation=rotation)
    for name, codec in [("vp9", "libvpx-vp9"), ("av1", "libsvtav1"), ("hevc", "libx265")]:
        made[name] = folder / f"{name}.mkv"
        _encode(made[name], codec)
    return made


def _video_plan(path: str, name: str) -> PlaneCrop | None:
    info = probe(path, name)
    size = (info.width, info.height)
    tags = (info.pixel_format, info.colorspace, info.color_range)
    turns = round(info.rotation / 90) % 4
    assert turns == (1 if name == "upright" else 0)
    return PlaneCrop.for_video(size, scaled_size(*size, SHORT), CROP, turns, info.codec, tags)


@pytest.mark.parametrize("name", ["360p", "720p", "upright", "vp9", "av1"])
def test_decoded_planes_give_the_cpu_paths_crops(videos: dict[str, Path], name: str) -> None:
    """H.264 (chroma left of its luma pair, also turned by a display rotation), VP9 and AV1
    (centred)."""
    path = str(videos[name])
    info = probe(path, name)
    plan = _video_plan(path, name)
    assert plan is not None

    def keep(frame: av.VideoFrame) -> Any:  # the stored frame, for swscale to convert after it
        return frame

    stored = iter_sampled_frames(path, name, 4, SHORT, "pyav", info, keep)
    device = iter_sampled_frames(path, name, 4, SHORT, "pyav", info, lambda f: cut(f, plan))
    for (time_a, frame), (time_b, packed) in zip(stored, device, strict=True):
        assert time_a == time_b
        _assert_close(_device_crop(packed, plan), _swscale_crop(frame, plan))


def test_other_formats_and_codecs_stay_on_the_cpu(videos: dict[str, Path]) -> None:
    for pixel_format in ("yuv444p", "yuv420p10le", "nv12"):
        args = ((640, 360), (779, 438), CROP, 0, pixel_format, 1, 1)
        assert plane_crop(*args, left_sited=True) is None
    # HEVC's decoded chroma siting does not match either rule against swscale: not converted.
    assert _video_plan(str(videos["hevc"]), "hevc") is None


@pytest.mark.parametrize("name", ["360p", "upright"])
def test_the_stage_gives_the_vectors_of_swscales_exact_pixels(
    videos: dict[str, Path], name: str, tmp_path: Path
) -> None:
    """The tiny model (64 crop of 73) with ``embed.convert=device`` against the same encoder fed
    swscale's ``EXACT`` crops. Pixels within 1 of 255 move the vectors by well under 1 % of their
    spread across the video. (The CPU path's default swscale halves the chroma at this even
    output width, 130: its vectors are about 5 % of the spread away from both.)"""
    path = str(videos[name])
    info = probe(path, name)
    settings = load_settings(
        profile="tiny", store=str(tmp_path), environ={}, overrides=["embed.convert=device"]
    )
    cfg, encoder = settings.embed, load_encoder(settings.embed)
    planes = device_planes(name, cfg, info, encoder)
    assert planes is not None
    times, device = embed_file(path, name, cfg, info, encoder)

    def exact(frame: av.VideoFrame) -> np.ndarray:
        return encoder.centre_crop(np.ascontiguousarray(_swscale_crop(frame, planes, 0)))

    crops = iter_sampled_frames(path, name, cfg.frame_step, 0, "pyav", info, exact)
    reference = embed_frames(
        (crop for _, crop in crops),
        encoder.submit,
        window=cfg.window,
        stride=cfg.stride,
        batch_size=cfg.batch_size,
    )
    assert reference.shape == device.shape == (len(times), encoder.hidden_size)
    relative = np.linalg.norm(device - reference) / np.linalg.norm(
        reference - reference.mean(axis=0)
    )
    assert relative < 0.01, relative


def test_the_first_window_leaves_as_soon_as_it_is_complete() -> None:
    """Batches of 4 windows of 16 at stride 4: the device gets window 0 after 16 frames, not 28;
    the vectors are those of the windows encoded one by one."""
    pulled = [0]
    seen: list[tuple[int, list[int]]] = []

    def frames() -> Iterator[np.ndarray]:
        rng = np.random.default_rng(3)
        for _ in range(60):
            pulled[0] += 1
            yield rng.integers(0, 255, (2, 2, 3), dtype=np.uint8)

    def encode(windows: np.ndarray) -> np.ndarray:
        return windows.reshape(*windows.shape[:2], -1).astype(np.float32)

    plain = per_window(encode)

    def submit(span: np.ndarray, offsets: Sequence[int], window: int) -> np.ndarray:
        seen.append((pulled[0], list(offsets)))
        return plain(span, offsets, window)

    out = embed_frames(frames(), submit, window=16, stride=4, batch_size=4)
    one_by_one = embed_frames(frames(), plain, window=16, stride=4, batch_size=1)
    assert seen[0] == (16, [0]) and seen[1][0] == 32 and len(seen[1][1]) == 4
    assert np.array_equal(out, one_by_one)
