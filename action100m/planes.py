"""The centre crop as YUV 4:2:0 planes: cut on the CPU, turned into RGB on the encoder's device.

The stage's frame is the ``crop`` x ``crop`` centre of the decoded frame resized to ``resized``
(shortest side ``crop * 256 / 224``). ``embed.convert=device`` keeps only the source pixels that
centre is computed from, as one packed uint8 array per frame (:func:`cut`), and the device resizes
and converts them (:class:`Converter`) the way swscale's bilinear scaler and colour matrix do for
``embed.convert=cpu``: the same output grid, a triangle filter widened when shrinking
(antialiased, as torchvision's resize in the V-JEPA 2 processor), the stream's matrix and range,
chroma at full resolution (swscale's ``FULL_CHR_H_INT``; without it, for even output widths,
swscale halves the chroma's horizontal resolution and rounds about 2 of 255 low).

Packed layout, (h + h / 2, w) uint8 with h, w even: rows [0, h) the luma region; below it the two
chroma regions side by side, U in columns [0, w / 2), V in [w / 2, w).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

# (Kr, Kb) per FFmpeg AVColorSpace; anything else (unspecified included) is BT.601, as in swscale.
LUMA_WEIGHTS = {1: (0.2126, 0.0722), 4: (0.30, 0.11), 7: (0.212, 0.087), 9: (0.2627, 0.0593)}
BT601 = (0.299, 0.114)
FULL_RANGE = 2  # AVCOL_RANGE_JPEG
FORMATS = {"yuv420p": False, "yuvj420p": True}  # 8-bit 4:2:0, and whether full range by name
# Where the decoder puts 4:2:0 chroma (and swscale reads it) when the stream does not say; PyAV
# does not expose a frame's chroma location, so it goes by codec: H.264's sits left of its luma
# pair, VP9's and AV1's centred (each checked against swscale in tests/test_embed_convert.py).
# Other codecs' frames are converted on the CPU.
CHROMA_LEFT = {"h264": True, "vp9": False, "av1": False, "libdav1d": False}
# Left-sited: a quarter of a chroma pixel along the stored width, per displayed axis and turn.
SITING = {0: (0.25, 0.0), 1: (0.0, -0.25), 2: (-0.25, 0.0), 3: (0.0, 0.25)}


@dataclass(frozen=True)
class PlaneCrop:
    """Where one video's centre crop comes from in its planes, and how to convert it."""

    size: tuple[int, int]  # displayed (width, height) of the decoded frame
    resized: tuple[int, int]  # (width, height) the CPU path scales to before cropping
    crop: int
    turns: int  # counter-clockwise quarter turns from stored to displayed
    box: tuple[int, int, int, int]  # luma region (x0, y0, x1, y1) in displayed pixels, even
    luma_weights: tuple[float, float]  # (Kr, Kb)
    full_range: bool
    chroma_shift: tuple[float, float]  # chroma siting (x, y), chroma pixels

    @staticmethod
    def for_video(
        size: tuple[int, int],
        resized: tuple[int, int],
        crop: int,
        turns: int,
        codec: str,
        tags: tuple[str, int, int],
    ) -> PlaneCrop | None:
        """:func:`plane_crop` for a decoded stream: None for a codec whose chroma siting is not
        known here."""
        if codec not in CHROMA_LEFT:
            return None
        return plane_crop(size, resized, crop, turns, *tags, left_sited=CHROMA_LEFT[codec])

    @property
    def shape(self) -> tuple[int, int]:
        x0, y0, x1, y1 = self.box
        return (y1 - y0) * 3 // 2, x1 - x0


def plane_crop(
    size: tuple[int, int],
    resized: tuple[int, int],
    crop: int,
    turns: int,
    pixel_format: str,
    colorspace: int,
    color_range: int,
    *,
    left_sited: bool,
) -> PlaneCrop | None:
    """The plan for a video, or None where its frames are not 8-bit 4:2:0 (then the CPU
    converts)."""
    if pixel_format not in FORMATS:
        return None
    shift = SITING[turns] if left_sited else (0.0, 0.0)
    box = []
    for axis in (0, 1):  # x, then y
        luma = taps(size[axis], resized[axis], crop)
        chroma = taps((size[axis] + 1) // 2, resized[axis], crop, shift[axis])
        used_l, used_c = np.flatnonzero(luma.any(axis=0)), np.flatnonzero(chroma.any(axis=0))
        start = min(used_l[0], 2 * used_c[0]) // 2 * 2
        end = max(used_l[-1] + 1, 2 * (used_c[-1] + 1))
        box.append((int(start), int(end + end % 2)))
    (x0, x1), (y0, y1) = box
    weights = LUMA_WEIGHTS.get(colorspace, BT601)
    full = FORMATS[pixel_format] or color_range == FULL_RANGE
    return PlaneCrop(size, resized, crop, turns, (x0, y0, x1, y1), weights, full, shift)


def taps(length: int, resized: int, crop: int, shift: float = 0.0) -> np.ndarray:
    """(crop, length) weights: output pixel i of the centre crop of an axis of ``length`` pixels
    scaled to ``resized`` (a 4:2:0 chroma axis: ``length`` halved, same output grid, ``shift``
    its siting). Centres align as in swscale and torchvision; the triangle widens by the scale
    when shrinking."""
    scale = length / resized
    left = (resized - crop) // 2
    centres = (left + np.arange(crop) + 0.5) * scale + shift
    support = max(scale, 1.0)
    source = np.arange(length) + 0.5
    weights = np.clip(1 - np.abs(source[None] - centres[:, None]) / support, 0, None)
    return weights / weights.sum(axis=1, keepdims=True)


def _plane(frame: Any, index: int, turns: int) -> np.ndarray:
    """Plane ``index`` of a decoded frame as a view, turned to its displayed orientation."""
    plane = frame.planes[index]
    rows = np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)
    view = rows[: plane.height, : plane.width]
    return np.rot90(view, turns) if turns else view


def cut(frame: Any, plan: PlaneCrop) -> np.ndarray:
    """The packed planes of ``plan.box`` from a decoded (PyAV) frame: one copy of the pixels
    the device needs, nothing converted."""
    x0, y0, x1, y1 = plan.box
    h, w = y1 - y0, x1 - x0
    packed = np.zeros((h * 3 // 2, w), np.uint8)  # a box past an odd edge leaves zeros
    luma = _plane(frame, 0, plan.turns)[y0:y1, x0:x1]
    packed[: luma.shape[0], : luma.shape[1]] = luma
    for index, left in ((1, 0), (2, w // 2)):
        chroma = _plane(frame, index, plan.turns)[y0 // 2 : y1 // 2, x0 // 2 : x1 // 2]
        packed[h : h + chroma.shape[0], left : left + chroma.shape[1]] = chroma
    return packed


class Converter:
    """The device's resize and conversion for one plan, its filter weights made once."""

    def __init__(self, plan: PlaneCrop, device: str) -> None:
        import torch

        x0, y0, x1, y1 = plan.box
        (width, height), crop = plan.size, plan.crop

        def weights(
            length: int, resized: int, start: int, end: int, shift: float = 0.0
        ) -> torch.Tensor:
            full = taps(length, resized, crop, shift)
            cut = np.zeros((crop, end - start), np.float32)
            kept = full[:, start : min(end, length)]
            cut[:, : kept.shape[1]] = kept
            return torch.from_numpy(cut).to(device)

        self.plan = plan
        self.luma = (
            weights(height, plan.resized[1], y0, y1),
            weights(width, plan.resized[0], x0, x1).T.contiguous(),
        )
        shift_x, shift_y = plan.chroma_shift
        self.chroma = (
            weights((height + 1) // 2, plan.resized[1], y0 // 2, y1 // 2, shift_y),
            weights((width + 1) // 2, plan.resized[0], x0 // 2, x1 // 2, shift_x).T.contiguous(),
        )
        kr, kb = plan.luma_weights
        kg = 1 - kr - kb
        # Rows R, G, B; columns Y, Cb, Cr (after the range is undone).
        matrix = [
            [1.0, 0.0, 2 * (1 - kr)],
            [1.0, -2 * kb * (1 - kb) / kg, -2 * kr * (1 - kr) / kg],
            [1.0, 2 * (1 - kb), 0.0],
        ]
        self.matrix = torch.tensor(matrix, device=device)

    def __call__(self, packed: torch.Tensor) -> torch.Tensor:
        """(..., h * 3 / 2, w) uint8 packed planes -> (..., 3, crop, crop) float RGB in 0..255,
        rounded as the CPU path's uint8 is."""
        import torch

        h = packed.shape[-2] * 2 // 3
        w = packed.shape[-1]
        pixels = packed.float()
        rows, cols = self.luma
        luma = rows @ pixels[..., :h, :] @ cols
        rows, cols = self.chroma
        cb = rows @ pixels[..., h:, : w // 2] @ cols - 128
        cr = rows @ pixels[..., h:, w // 2 :] @ cols - 128
        if self.plan.full_range:
            ycc = torch.stack([luma, cb, cr], dim=-3)
        else:
            ycc = torch.stack([(luma - 16) * (255 / 219), cb * (255 / 224), cr * (255 / 224)], -3)
        rgb = torch.einsum("ck,...khw->...chw", self.matrix, ycc)
        return rgb.round().clamp(0, 255)
