"""The embed stage against a stand-in device: how busy the GPU would be kept (issue 14).

The device is V-JEPA 2's interface at the real width (1,408) with a sleep of ``--per-window``
seconds per window in place of the model (0.15 s is the H100 floor of ViT-g/384; 0.08 s stands for
a faster device, where decoding becomes the bound), working on its
own thread the way a GPU works while the CPU goes on. Everything else is the stage's real code:
PyAV decoding of generated 360p and 720p H.264 files (``testsrc2``), 1 frame in 4 at 779x438, the
windows, the accumulator. Four ways, in the same run:

- ``today``: the code before issue 14 (``embed_baseline.py``): decode and encode in series, two
  ``np.stack`` copies per window, a float64 accumulator regrown on every window;
- ``serial``: the current code with ``embed.prefetch=0`` (decoding in the stage's thread);
- ``prefetch``: the current code as configured by default (a decoding thread 128 frames ahead);
- ``device``: ``prefetch`` with ``embed.convert=device``: the decoding thread only cuts the crop's
  YUV planes; their conversion would be the GPU's (a few ms a batch, not modelled).

Each prints wall seconds, the device's busy share, sampled frames/s and the speed-up over
``today``; ``decode only`` (decode, convert and crop, nothing else; ``planes`` for ``device``)
and the device's own time give the bound max(decode, encode). Then the accumulator at a one-hour
video's 27k frames: ours measured, the old one measured at smaller counts and extrapolated as n^2
from the largest (a lower bound: it grows faster than n^2 once its arrays leave the caches; 27k
takes many minutes).

    python benchmarks/embed_pipeline.py [--seconds 90] [--heights 360 720] [--per-window 0.15 0.08]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from embed_baseline import OldAccumulator, old_embed_frames  # noqa: E402

from action100m.config import EmbedConfig  # noqa: E402
from action100m.planes import cut  # noqa: E402
from action100m.stages.embed import (  # noqa: E402
    FrameFeatureAccumulator,
    device_planes,
    embed_file,
    window_starts,
)
from action100m.video import VideoInfo, iter_sampled_frames, probe  # noqa: E402

WIDTH = 1408  # ViT-g's hidden size


def make_testsrc(path: Path, height: int, seconds: float, fps: int) -> None:
    """An H.264 file of ffmpeg's ``testsrc2`` pattern (16:9), made with PyAV's filters."""
    import av

    width = height * 16 // 9
    graph = av.filter.Graph()
    source = graph.add("testsrc2", f"size={width}x{height}:rate={fps}:duration={seconds}")
    sink = graph.add("buffersink")
    source.link_to(sink)
    graph.configure()
    partial = path.with_suffix(".partial.mp4")
    with av.open(str(partial), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "veryfast"}
        while True:
            try:
                frame = sink.pull()
            except (av.error.EOFError, av.error.BlockingIOError):
                break
            frame = frame.reformat(format="yuv420p")
            frame.pts = None
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    partial.rename(path)


class StandInDevice:
    """The encoder's interface with ``seconds`` of sleep per window on a device thread."""

    crop_size, resize_size, tubelet_size = 384, 438, 2

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.busy = 0.0
        self.device = ThreadPoolExecutor(1, thread_name_prefix="stand-in-device")
        self.staging = np.empty(0, np.uint8)

    def centre_crop(self, frame: np.ndarray) -> np.ndarray:
        top = (frame.shape[0] - self.crop_size) // 2
        left = (frame.shape[1] - self.crop_size) // 2
        return np.ascontiguousarray(frame[top : top + self.crop_size, left : left + self.crop_size])

    def _run(self, count: int, window: int) -> np.ndarray:
        started = time.perf_counter()
        time.sleep(count * self.seconds)
        self.busy += time.perf_counter() - started
        return np.ones((count, window, WIDTH), np.float32)

    def submit(
        self, span: np.ndarray, offsets: list[int], window: int, *, planes: object = None
    ) -> Future[np.ndarray]:
        # The real encoder copies the span into pinned memory before it returns.
        if self.staging.size < span.size:
            self.staging = np.empty(span.size, np.uint8)
        self.staging[: span.size] = span.reshape(-1)
        return self.device.submit(self._run, len(offsets), window)

    def encode(self, windows: np.ndarray) -> np.ndarray:
        """Before issue 14: the caller waited for every batch."""
        return self._run(len(windows), windows.shape[1])


def run_today(path: str, info: VideoInfo, device: StandInDevice, cfg: EmbedConfig) -> int:
    frames = (
        frame
        for _, frame in iter_sampled_frames(
            path, "bench", cfg.frame_step, device.resize_size, cfg.decoder, info
        )
    )
    features = old_embed_frames(
        frames, device.encode, window=cfg.window, stride=cfg.stride, batch_size=cfg.batch_size
    )
    return len(features)


WAYS = {"serial": {"prefetch": 0}, "prefetch": {}, "device": {"convert": "device"}}


def run_now(
    path: str, info: VideoInfo, device: StandInDevice, cfg: EmbedConfig, way: dict[str, object]
) -> int:
    settings = cfg.model_copy(update=way)
    times, _ = embed_file(path, "bench", settings, info, device)  # type: ignore[arg-type]
    return len(times)


def decode_only(path: str, info: VideoInfo, device: StandInDevice, cfg: EmbedConfig) -> int:
    """Sampled frames decoded and converted as ``cfg.convert`` says, nothing else."""
    planes = device_planes("bench", cfg, info, device)  # type: ignore[arg-type]
    convert = (lambda frame: cut(frame, planes)) if planes else None
    frames = iter_sampled_frames(
        path, "bench", cfg.frame_step, device.resize_size, "pyav", info, convert
    )
    return sum(1 for _, frame in frames if planes or device.centre_crop(frame) is not None)


def timed_decode(path: Path, info: VideoInfo, cfg: EmbedConfig) -> tuple[int, float]:
    started = time.perf_counter()
    sampled = decode_only(str(path), info, StandInDevice(0), cfg)
    return sampled, time.perf_counter() - started


def bench_file(path: Path, per_window: list[float]) -> list[str]:
    cfg = EmbedConfig()
    info = probe(str(path), "bench")
    sampled, decode_s = timed_decode(path, info, cfg)
    _, planes_s = timed_decode(path, info, cfg.model_copy(update={"convert": "device"}))
    windows = len(window_starts(sampled, cfg.window, cfg.stride))
    lines = [
        f"{path.name}: {sampled} sampled frames, {windows} windows; "
        f"decode only {decode_s:.1f} s ({sampled / decode_s:.0f} f/s), "
        f"planes {planes_s:.1f} s ({sampled / planes_s:.0f} f/s)"
    ]
    print(lines[-1], flush=True)
    for seconds in per_window:
        encode_s = windows * seconds
        lines.append(f" device {seconds * 1000:.0f} ms/window: {encode_s:.1f} s")
        print(lines[-1], flush=True)
        today = None
        for name in ("today", *WAYS):
            device = StandInDevice(seconds)
            bound = max(planes_s if name == "device" else decode_s, encode_s)
            started = time.perf_counter()
            if name == "today":
                frames = run_today(str(path), info, device, cfg)
            else:
                frames = run_now(str(path), info, device, cfg, WAYS[name])
            wall = time.perf_counter() - started
            today = today or wall
            lines.append(
                f"  {name:<9} wall {wall:6.1f} s  device busy {device.busy / wall:5.1%}  "
                f"{frames / wall:6.1f} sampled f/s  {today / wall:5.2f}x today  "
                f"wall/bound {wall / bound:4.2f}"
            )
            print(lines[-1], flush=True)
    return lines


def accumulate(acc: OldAccumulator | FrameFeatureAccumulator, frames: int) -> float:
    features = np.ones((64, WIDTH), np.float32)
    started = time.perf_counter()
    for start in window_starts(frames, 64, 8):
        acc.add(start, features, min(64, frames - start))
    acc.result()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=90)
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--heights", type=int, nargs="+", default=[360, 720])
    parser.add_argument(
        "--per-window", type=float, nargs="+", default=[0.15, 0.08], help="device s a window"
    )
    parser.add_argument("--workdir", default="/tmp/action100m-embed-pipeline")
    parser.add_argument("--frames", type=int, default=27_000, help="accumulator: sampled frames")
    parser.add_argument("--old-frames", type=int, nargs="+", default=[2000, 4000, 8000])
    parser.add_argument("--skip-files", action="store_true", help="accumulator only")
    args = parser.parse_args()

    report: list[str] = []
    if not args.skip_files:
        Path(args.workdir).mkdir(parents=True, exist_ok=True)
        for height in args.heights:
            path = Path(args.workdir) / f"testsrc2_{height}p_{args.seconds:g}s_{args.fps}fps.mp4"
            if not path.exists():
                made = time.perf_counter()
                make_testsrc(path, height, args.seconds, args.fps)
                print(f"made {path.name} in {time.perf_counter() - made:.0f} s", flush=True)
            report += bench_file(path, args.per_window)

    ours = accumulate(FrameFeatureAccumulator(args.frames), args.frames)
    report.append(f"accumulator, {args.frames} frames x {WIDTH}: ours {ours:.2f} s")
    old = [(n, accumulate(OldAccumulator(), n)) for n in args.old_frames]
    for n, seconds in old:
        report.append(f"  old at {n} frames: {seconds:.2f} s")
    n, seconds = old[-1]
    squared = seconds * (args.frames / n) ** 2
    line = f"  old at {args.frames} frames, extrapolated from {n}: n^2 {squared:.0f} s"
    if len(old) > 1:  # the growth measured between the smallest and largest count
        power = math.log(seconds / old[0][1]) / math.log(n / old[0][0])
        fitted = seconds * (args.frames / n) ** power
        line += f", n^{power:.2f} (measured) {fitted:.0f} s = {fitted / ours:.0f}x ours"
    report.append(line)
    print("\n".join(["", *report]))


if __name__ == "__main__":
    main()
