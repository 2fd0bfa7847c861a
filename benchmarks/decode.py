"""Sampled frames per second of our decode path against a plain PyAV decode of the same file.

Both keep 1 of every 4 frames at the encoder's input size (shortest side 438 for 384 crops). The
plain path is the simplest correct PyAV loop; ours (with the default decoder) must reach at least
0.8 of its speed. Both of our decoders are printed.

    python benchmarks/decode.py [--seconds 60] [--height 360]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from action100m.config import EmbedConfig
from action100m.samples import make_video
from action100m.video import DECODERS, iter_sampled_frames, scaled_size


def plain_pyav(path: str, step: int, size: tuple[int, int]) -> int:
    import av

    count = 0
    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for index, frame in enumerate(container.decode(stream)):
            if index % step == 0:
                frame.to_ndarray(width=size[0], height=size[1], format="rgb24")
                count += 1
    return count


def ours(path: str, step: int, short_side: int, decoder: str) -> int:
    return sum(1 for _ in iter_sampled_frames(path, "bench", step, short_side, decoder))


def best_of(runs: int, fn: object, *args: object) -> tuple[float, int]:
    times, count = [], 0
    for _ in range(runs):
        started = time.perf_counter()
        count = fn(*args)  # type: ignore[operator]
        times.append(time.perf_counter() - started)
    return min(times), count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--height", type=int, default=360)
    parser.add_argument("--short-side", type=int, default=438)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    width = args.height * 16 // 9 // 2 * 2
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "bench.mp4")
        make_video(path, [args.seconds / 3] * 3, fps=30, width=width, height=args.height)
        size = scaled_size(width, args.height, args.short_side)
        base_s, base_n = best_of(args.runs, plain_pyav, path, 4, size)
        ours_by_decoder = {
            decoder: best_of(args.runs, ours, path, 4, args.short_side, decoder)
            for decoder in DECODERS
        }
    print(
        f"video: {args.seconds:.0f} s at 30 fps, {width}x{args.height}; output {size[0]}x{size[1]}"
    )
    print(f"{'path':<14} {'frames':>7} {'seconds':>8} {'frames/s':>9} {'vs plain':>9}")
    base_rate = base_n / base_s
    print(f"{'plain PyAV':<14} {base_n:>7} {base_s:>8.2f} {base_rate:>9.1f} {1:>8.2f}x")
    for decoder, (our_s, our_n) in ours_by_decoder.items():
        rate = our_n / our_s
        label = f"ours ({decoder})"
        print(f"{label:<14} {our_n:>7} {our_s:>8.2f} {rate:>9.1f} {rate / base_rate:>8.2f}x")
    default = EmbedConfig().decoder
    our_s, our_n = ours_by_decoder[default]
    ratio = (our_n / our_s) / base_rate
    verdict = "met" if ratio >= 0.8 else "MISSED"
    print(f"ratio ours ({default}, the default)/plain: {ratio:.2f} (target >= 0.8): {verdict}")


if __name__ == "__main__":
    main()
