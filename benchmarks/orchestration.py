"""What Airflow adds per video: N tiny videos through the real scheduler vs ``action100m run``.

    python benchmarks/orchestration.py [--sizes 1 8 32] [--gpu-slots 1] [--json OUT]

For each N, the same N short videos (fresh IDs, so nothing is reused) go (a) through one
``action100m --profile tiny run`` process and (b) through one ``action100m`` DAG run on a real
Airflow (scheduler with LocalExecutor, DAG processor, API server, PostgreSQL; started once, its
start-up reported apart). Printed per N: both wall times, their ratio, the overhead per video
``(airflow - cli) / N``, and the scheduling latency per task (queued -> running), which is the
part Airflow itself adds; the rest is each task being its own process (Python, torch, models).
No LLM is configured, so aggregate is skipped in both.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from airflow_stack import AirflowStack  # noqa: E402

from action100m.samples import make_video  # noqa: E402


def make_videos(folder: Path, prefix: str, count: int, seconds: float) -> list[str]:
    template = folder / "template.mp4"
    if not template.exists():
        make_video(template, [seconds / 2, seconds / 2])
    paths = []
    for index in range(count):
        path = folder / f"{prefix}_{index:03d}.mp4"
        shutil.copy(template, path)
        paths.append(str(path))
    return paths


def time_cli(videos: list[str], store: Path) -> float:
    started = time.monotonic()
    subprocess.run(
        [str(Path(sys.executable).parent / "action100m"), "--store", store.as_uri(),
         "--profile", "tiny", "-q", "run", *videos],
        check=True, capture_output=True,
    )  # fmt: skip
    return time.monotonic() - started


def time_airflow(stack: AirflowStack, videos: list[str]) -> tuple[float, list[float]]:
    started = time.monotonic()
    run_id = stack.trigger("action100m", {"videos": videos, "profile": "tiny"})
    state = stack.wait(run_id, "action100m", timeout=3600)
    seconds = time.monotonic() - started
    if state != "success":
        raise RuntimeError(f"run {run_id} ended {state}; see {stack.workdir}/home/logs")
    latencies = [
        (
            datetime.fromisoformat(ti["start_date"]) - datetime.fromisoformat(ti["queued_when"])
        ).total_seconds()
        for ti in stack.task_instances("action100m", run_id)
        if ti.get("queued_when") and ti.get("start_date")
    ]
    return seconds, latencies


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each video")
    parser.add_argument("--gpu-slots", type=int, default=1, help="slots of the gpu pool")
    parser.add_argument(
        "--preload", choices=["0", "1"], default="1",
        help="ACTION100M_PRELOAD: the scheduler imports torch once for all task processes",
    )  # fmt: skip
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="a100m-bench-"))
    stack = AirflowStack(
        work / "airflow",
        env={"ACTION100M_STORE": (work / "airflow-store").as_uri(),
             "ACTION100M_ALLOWED_SOURCES": work.as_uri(),
             "ACTION100M_CACHE": str(work / "models"), "ACTION100M_PRELOAD": args.preload},
        pools={"gpu": args.gpu_slots, "llm": 4},
    )  # fmt: skip
    results: list[dict[str, Any]] = []
    try:
        stack.start()
        print(
            f"Airflow stack up in {stack.startup_seconds:.1f} s (not counted below); "
            f"preload {args.preload}",
            flush=True,
        )
        # Warm-up: build the tiny models into the shared cache and parse the DAG once.
        warm = make_videos(work, "warm", 1, args.seconds)
        time_cli(warm, work / "cli-store")
        time_airflow(stack, warm)
        print(f"{'N':>4} {'cli s':>8} {'airflow s':>10} {'ratio':>6} {'overhead/video s':>17} "
              f"{'queue->run s':>13}")  # fmt: skip
        for size in args.sizes:
            cli = time_cli(make_videos(work, f"cli{size}", size, args.seconds), work / "cli-store")
            airflow, latencies = time_airflow(
                stack, make_videos(work, f"af{size}", size, args.seconds)
            )
            row = {
                "n": size,
                "cli_s": round(cli, 2),
                "airflow_s": round(airflow, 2),
                "ratio": round(airflow / cli, 2),
                "overhead_per_video_s": round((airflow - cli) / size, 2),
                "median_queue_to_run_s": round(statistics.median(latencies), 3),
            }
            results.append(row)
            print(f"{size:>4} {cli:>8.1f} {airflow:>10.1f} {row['ratio']:>6.2f} "
                  f"{row['overhead_per_video_s']:>17.2f} {row['median_queue_to_run_s']:>13.3f}",
                  flush=True)  # fmt: skip
    finally:
        stack.stop()
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
