"""Where the embed stage's CPU time goes per sampled frame, by conversion path (issue 14).

PyAV decodes the generated ``testsrc2`` file (``embed_pipeline.py``'s, made if missing) and keeps
1 frame in 4. Every kept frame goes through each way in turn (same frames, same load, so the
ratios hold even on a busy box), timed on the CPU thread, and its 384x384 RGB crop is compared
with today's (max / mean absolute difference, PSNR):

- ``today``: swscale to 779x438 RGB (bilinear, ``embed.convert=cpu``), then the centre crop;
- ``fast_bilinear`` .. ``point``: the same with another swscale interpolation;
- ``full chroma``: bilinear with ``FULL_CHR_H_INT`` (what ``planes.Converter`` matches; the
  default halves the chroma's horizontal resolution where the output width is even);
- ``crop first``: the source region of the crop cut from the YUV planes, then swscale to 384x384
  (the region rounded to whole pixels, so the geometry shifts by up to half a source pixel);
- ``planes``: what ``embed.convert=device`` leaves the CPU (``planes.cut``: the region's planes,
  one copy); their RGB comes from ``planes.Converter`` (torch, here on the CPU: its time is
  shown apart, on a GPU it is the device's);
- ``yuv420p whole``: ``to_ndarray(format="yuv420p")`` of the whole frame, for scale.

    python benchmarks/embed_convert.py [--heights 360 720] [--frames 200] [--device cuda]

``--device cuda`` runs ``planes.Converter`` on the GPU (a batch of 64 frames at a time, timed
with a synchronise): the figure a GPU session needs before making ``device`` the default.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from av.video.reformatter import Interpolation

sys.path.insert(0, str(Path(__file__).parent))
from embed_pipeline import make_testsrc  # noqa: E402

from action100m.planes import Converter, PlaneCrop, cut  # noqa: E402
from action100m.video import scaled_size  # noqa: E402

CROP, SHORT = 384, 438
FLAGS = ["FAST_BILINEAR", "BICUBIC", "AREA", "POINT"]


def ways(plan: PlaneCrop) -> dict[str, Callable[[Any], np.ndarray]]:
    """Each way: a decoded frame -> what the CPU thread hands on."""
    (width, height), (rw, rh) = plan.size, plan.resized
    top, left = (rh - CROP) // 2, (rw - CROP) // 2

    def scaled(interpolation: object) -> Callable[[Any], np.ndarray]:
        def run(frame: Any) -> np.ndarray:
            options = {"interpolation": interpolation} if interpolation else {}
            image = frame.to_ndarray(width=rw, height=rh, format="rgb24", **options)
            return np.ascontiguousarray(image[top : top + CROP, left : left + CROP])

        return run

    # The crop's source region in whole pixels, even for 4:2:0.
    x0, x1 = (round(v * width / rw / 2) * 2 for v in (left, left + CROP))
    y0, y1 = (round(v * height / rh / 2) * 2 for v in (top, top + CROP))

    def crop_first(frame: Any) -> np.ndarray:
        import av

        yuv = frame.to_ndarray(format="yuv420p")  # (h * 3 / 2, w): Y, then U and V flattened
        u = yuv[height:].reshape(2, height // 2, width // 2)
        parts = [yuv[y0:y1, x0:x1], *(p[y0 // 2 : y1 // 2, x0 // 2 : x1 // 2] for p in u)]
        packed = np.concatenate([p.reshape(-1) for p in parts]).reshape(-1, x1 - x0)
        region = av.VideoFrame.from_ndarray(packed, format="yuv420p")
        region.colorspace, region.color_range = frame.colorspace, frame.color_range
        return region.to_ndarray(width=CROP, height=CROP, format="rgb24")

    table: dict[str, Callable[[Any], np.ndarray]] = {"today": scaled(None)}
    table.update({flag.lower(): scaled(flag) for flag in FLAGS})
    table["full chroma"] = scaled(Interpolation.BILINEAR | Interpolation.FULL_CHR_H_INT)
    table["crop first"] = crop_first
    table["planes"] = lambda frame: cut(frame, plan)
    table["yuv420p whole"] = lambda frame: frame.to_ndarray(format="yuv420p")
    return table


def measure(path: Path, frames: int, device: str | None) -> None:
    import av
    import torch

    torch.set_num_threads(1)  # the conversion's CPU time is for information only
    cut_planes: list[np.ndarray] = []
    seconds: dict[str, float] = {}
    diffs: dict[str, list[np.ndarray]] = {}
    converter: Converter | None = None
    device_s, kept, decode_s = 0.0, 0, 0.0
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        decoded = container.decode(stream)
        began = time.perf_counter()
        for index, frame in enumerate(decoded):
            if index % 4:
                continue
            decode_s += time.perf_counter() - began
            if converter is None:
                size = (frame.width, frame.height)
                tags = (frame.format.name, frame.colorspace, frame.color_range)
                resized = scaled_size(*size, SHORT)
                codec = stream.codec_context.name
                plan = PlaneCrop.for_video(size, resized, CROP, 0, codec, tags)
                assert plan is not None
                table, converter = ways(plan), Converter(plan, "cpu")
            outputs = {}
            for name, way in table.items():
                started = time.perf_counter()
                outputs[name] = way(frame)
                seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - started
            cut_planes.append(outputs["planes"])
            started = time.perf_counter()
            rgb = converter(torch.from_numpy(outputs["planes"])).permute(1, 2, 0).numpy()
            device_s += time.perf_counter() - started
            outputs["planes"] = rgb.astype(np.uint8)
            for name, image in outputs.items():
                if image.shape == outputs["today"].shape and name != "today":
                    diff = image.astype(np.float64) - outputs["today"]
                    diffs.setdefault(name, []).append(diff.reshape(-1))
            kept += 1
            if kept >= frames:
                break
            began = time.perf_counter()
    today = seconds["today"] / kept * 1000
    print(f"{path.name}: {kept} sampled frames, decoding {decode_s / kept * 1000:.1f} ms each")
    for name, total in seconds.items():
        ms = total / kept * 1000
        line = f"  {name:<14} {ms:6.2f} ms  {ms / today:5.2f}x today"
        if name in diffs:
            diff = np.abs(np.concatenate(diffs[name]))
            psnr = 10 * np.log10(255**2 / max(float((diff**2).mean()), 1e-12))
            line += f"  vs today: max {diff.max():3.0f} mean {diff.mean():.3f} PSNR {psnr:.1f} dB"
        print(line)
    print(f"  (planes -> RGB in torch on this CPU: {device_s / kept * 1000:.2f} ms a frame)")
    if device is not None:
        on_device = Converter(converter.plan, device)
        batch = torch.from_numpy(np.stack(cut_planes[:64])).to(device)
        sync = torch.cuda.synchronize if device.startswith("cuda") else lambda: None
        on_device(batch)  # warm-up
        sync()
        started = time.perf_counter()
        for _ in range(10):
            on_device(batch)
        sync()
        ms = (time.perf_counter() - started) / (10 * len(batch)) * 1000
        print(f"  planes -> RGB on {device}: {ms:.3f} ms a frame (batches of {len(batch)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--heights", type=int, nargs="+", default=[360, 720])
    parser.add_argument("--frames", type=int, default=200, help="sampled frames per file")
    parser.add_argument("--workdir", default="/tmp/action100m-embed-pipeline")
    parser.add_argument("--device", help="also time the conversion in batches there (cuda)")
    args = parser.parse_args()
    for height in args.heights:
        path = Path(args.workdir) / f"testsrc2_{height}p_90s_30fps.mp4"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            make_testsrc(path, height, 90, 30)
        measure(path, args.frames, args.device)


if __name__ == "__main__":
    main()
