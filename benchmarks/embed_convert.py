"""Where the embed stage's CPU time goes per sampled frame: decoding vs the conversion to RGB.

PyAV decodes the generated ``testsrc2`` file (``embed_pipeline.py``'s, made if missing), keeps 1
frame in 4 and converts it as the stage does (779x438 RGB, then the 384x384 centre crop) with
each swscale interpolation, against no conversion at all (the YUV planes as decoded: what a
device-side conversion would leave the CPU). Figures for choosing the next conversion path.

    python benchmarks/embed_convert.py [--height 720] [--frames 300]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from embed_pipeline import make_testsrc  # noqa: E402

INTERPOLATIONS = [None, "FAST_BILINEAR", "BILINEAR", "BICUBIC", "AREA", "POINT"]


def sampled_rate(
    path: Path, interpolation: str | None, frames: int, rgb: bool
) -> tuple[float, float]:
    """(sampled frames/s, ms of conversion per sampled frame)."""
    import av

    kept, converting = 0, 0.0
    started = time.perf_counter()
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for index, frame in enumerate(container.decode(stream)):
            if index % 4:
                continue
            began = time.perf_counter()
            if rgb:
                options = {} if interpolation is None else {"interpolation": interpolation}
                image = frame.to_ndarray(width=779, height=438, format="rgb24", **options)
                np.ascontiguousarray(image[27:411, 197:581])
            else:
                frame.to_ndarray(format="yuv420p")
            converting += time.perf_counter() - began
            kept += 1
            if kept >= frames:
                break
    return kept / (time.perf_counter() - started), converting / kept * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--frames", type=int, default=300, help="sampled frames per way")
    parser.add_argument("--workdir", default="/tmp/action100m-embed-pipeline")
    args = parser.parse_args()
    path = Path(args.workdir) / f"testsrc2_{args.height}p_90s_30fps.mp4"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        make_testsrc(path, args.height, 90, 30)
    for interpolation in INTERPOLATIONS:
        rate, ms = sampled_rate(path, interpolation, args.frames, rgb=True)
        label = interpolation or "default"
        print(f"RGB 779x438 + crop, {label:<13} {rate:6.1f} sampled f/s, convert {ms:4.1f} ms")
    rate, ms = sampled_rate(path, None, args.frames, rgb=False)
    print(f"YUV planes only (no conversion)    {rate:6.1f} sampled f/s, copy {ms:4.1f} ms")


if __name__ == "__main__":
    main()
