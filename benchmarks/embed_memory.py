"""Peak memory of Stage 1 (embed with the tiny model) on synthetic videos of growing length.

Frames are streamed through the encoder, so peak memory must stay flat as the video grows: only
the per-frame vectors (a few hundred bytes a frame with the tiny model) grow with length. Each
video runs in a fresh process so each peak is its own. The first (shortest) video also shows the
allocators' warm-up, so flatness is judged from the second length on.

    python benchmarks/embed_memory.py [--minutes 1 10 60]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import tempfile
import time
from pathlib import Path


def _run(path: str, root: str, queue: mp.Queue) -> None:
    from action100m.config import load_settings
    from action100m.pipeline import run_embed
    from action100m.store import ArtifactStore

    settings = load_settings(profile="tiny", store=root, environ={})
    started = time.perf_counter()
    run_embed(settings, ArtifactStore(root), Path(path).stem, path)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    queue.put((time.perf_counter() - started, peak_mib))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, nargs="+", default=[1, 10, 60])
    parser.add_argument("--fps", type=int, default=24)
    args = parser.parse_args()
    from action100m.samples import make_video

    os.environ.setdefault("ACTION100M_CACHE", tempfile.mkdtemp(prefix="a100m-models-"))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for minutes in args.minutes:
            path = str(Path(tmp) / f"video_{minutes:g}min.mp4")
            seconds = minutes * 60
            made = time.perf_counter()
            make_video(path, [seconds / 6] * 6, fps=args.fps, width=160, height=120)
            made = time.perf_counter() - made
            context = mp.get_context("spawn")
            queue = context.Queue()
            process = context.Process(target=_run, args=(path, f"{tmp}/store", queue))
            process.start()
            elapsed, peak = queue.get()
            process.join()
            rows.append((minutes, elapsed, peak))
            print(
                f"{minutes:>6g} min: embed {elapsed:7.1f} s, peak RSS {peak:7.0f} MiB "
                f"(video made in {made:.0f} s)",
                flush=True,
            )
    base = rows[0][2]
    print(f"\n{'minutes':>8} {'seconds':>8} {'peak MiB':>9} {'vs first':>9}")
    for minutes, elapsed, peak in rows:
        print(f"{minutes:>8g} {elapsed:>8.1f} {peak:>9.0f} {peak / base:>8.2f}x")
    # The allocators (torch's CPU caches, glibc arenas) fill during the first ~100 windows, so the
    # shortest video can peak lower; flatness is judged from the second length on.
    steady = rows[1] if len(rows) > 1 else rows[0]
    per_minute = (rows[-1][2] - steady[2]) / max(rows[-1][0] - steady[0], 1e-9)
    growth = rows[-1][2] / steady[2]
    print(
        f"peak memory {steady[0]:g} -> {rows[-1][0]:g} min: {growth:.2f}x, "
        f"{per_minute:+.2f} MiB per extra minute (flat target <= 1.10x): "
        f"{'met' if growth <= 1.10 else 'MISSED'}"
    )


if __name__ == "__main__":
    main()
