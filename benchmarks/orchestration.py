"""What Airflow adds per video: N tiny videos through the real scheduler vs ``action100m run``.

    python benchmarks/orchestration.py [--sizes 1 32 128] [--probe 1 32 128] [--top-sql]
                                       [--gpu-slots 1] [--backfill 8 --active-shards 2]
                                       [--json OUT]

For each N, the same N short videos (fresh IDs, so nothing is reused) go (a) through one
``action100m --profile tiny run`` process and (b) through one ``action100m`` DAG run on a real
Airflow (scheduler with LocalExecutor, DAG processor, API server, PostgreSQL; started once, its
start-up reported apart). Printed per N: both wall times, their ratio, the overhead per video
``(airflow - cli) / N``, then where it goes, from Airflow's database: the median waits of a task
(scheduled -> queued, queued -> running), how long the 1-slot ``gpu`` pool sat idle between two
embeds and how much of that passed before the next embed was queued, the median embed and task
durations, SQL statements per task instance and per scheduler pass (``pg_stat_statements``), and
CPU seconds per video of each service (counts that hold on a loaded machine, where timings do not).
``--probe N…`` holds a run of N videos waiting and counts the scheduler's work per pass.
``--backfill S`` sends the N videos through ``action100m_backfill`` instead, in shard runs of S
videos with ``--active-shards`` of them going at once: a fixed number of videos in flight, however
large N (the breakdown then covers every shard run of the backfill).
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
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from airflow_stack import AirflowStack  # noqa: E402

from action100m.samples import make_video  # noqa: E402
from action100m.stages import STAGE_NAMES as STAGES  # noqa: E402

PROBE_WINDOW = 30.0


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


def time_airflow(
    stack: AirflowStack, videos: list[str], shard_size: int = 0
) -> tuple[float, list[str], dict[str, float]]:
    """Wall seconds, the ``action100m`` run IDs and CPU seconds per video of each part of the
    stack: one run of every video, or (``shard_size``) one backfill of them in shard runs."""
    stack.postgres.query("SELECT pg_stat_statements_reset()")
    cpu = stack.cpu_seconds()
    started = time.monotonic()
    if shard_size:
        run_ids = _backfill(stack, videos, shard_size)
    else:
        run_ids = [stack.trigger("action100m", {"videos": videos, "profile": "tiny"})]
        state = stack.wait(run_ids[0], "action100m", timeout=3600)
        if state != "success":
            raise RuntimeError(f"run {run_ids[0]} ended {state}; see {stack.workdir}/home/logs")
    seconds = time.monotonic() - started
    used = {name: (value - cpu.get(name, 0.0)) / len(videos)
            for name, value in stack.cpu_seconds().items()}  # fmt: skip
    return seconds, run_ids, used


def _backfill(stack: AirflowStack, videos: list[str], shard_size: int) -> list[str]:
    """One ``action100m_backfill`` run over a manifest of ``videos`` (files named by their IDs, in
    one folder); the IDs of its shard runs, every one of them successful."""
    folder = Path(videos[0]).parent
    manifest = folder / f"manifest-{Path(videos[0]).stem}.txt"
    manifest.write_text("\n".join(Path(video).stem for video in videos) + "\n")
    conf = {"manifest": str(manifest), "shard_size": shard_size, "profile": "tiny",
            "source": str(folder / "{video_id}.mp4")}  # fmt: skip
    backfill = stack.trigger("action100m_backfill", conf)
    state = stack.wait(backfill, "action100m_backfill", timeout=7200)
    prefix = f"action100m_backfill__{backfill}__"
    shards = [run for run in stack.runs("action100m") if run["dag_run_id"].startswith(prefix)]
    if state != "success" or len(shards) != -(-len(videos) // shard_size):
        raise RuntimeError(f"backfill {backfill} ended {state} with {len(shards)} shard runs")
    failed = [run["dag_run_id"] for run in shards if run["state"] != "success"]
    if failed:
        raise RuntimeError(f"shard runs {failed} failed; see {stack.workdir}/home/logs")
    return [run["dag_run_id"] for run in shards]


def median(values: list[float]) -> float:
    return round(statistics.median(values), 3) if values else float("nan")


def breakdown(stack: AirflowStack, run_ids: list[str]) -> dict[str, Any]:
    """Where the runs' time goes, from Airflow's database: per task instance its waits, and the
    gaps in which the 1-slot gpu pool sat idle between two embeds (the runs' critical path)."""
    rows = stack.postgres.query(
        "SELECT task_id, pool, scheduled_dttm, queued_dttm, start_date, end_date"
        " FROM task_instance WHERE dag_id = 'action100m' AND run_id = ANY(%s)",
        run_ids,
    )
    tis = [
        dict(zip(("task", "pool", "scheduled", "queued", "start", "end"), r, strict=True))
        for r in rows
    ]
    seconds = lambda a, b: (b - a).total_seconds()  # noqa: E731
    embeds = sorted((t for t in tis if t["pool"] == "gpu"), key=lambda t: t["start"])
    pairs = list(zip(embeds, embeds[1:], strict=False))
    statements, passes, dependency_checks = _statement_counts(stack)
    return {
        # a task waiting for the gpu slot is scheduled long before it can be queued: left out
        "scheduled_to_queued_s": median([seconds(t["scheduled"], t["queued"]) for t in tis
                                         if t["pool"] != "gpu" and t["scheduled"]]),
        "queued_to_running_s": median([seconds(t["queued"], t["start"]) for t in tis]),
        "gpu_idle_s": median([seconds(a["end"], b["start"]) for a, b in pairs]),
        "gpu_free_to_queued_s": median([seconds(a["end"], b["queued"]) for a, b in pairs]),
        # of the idle time: the next embed not ready yet (its fetch not done), then Airflow's
        # hand-over once it was (scheduled, or the slot freed, whichever came last -> running)
        "gpu_no_input_s": median([max(0.0, seconds(a["end"], b["scheduled"])) for a, b in pairs]),
        "gpu_handover_s": median([seconds(max(a["end"], b["scheduled"]), b["start"])
                                  for a, b in pairs]),
        "embed_s": median([seconds(t["start"], t["end"]) for t in embeds]),
        "task_s": median([seconds(t["start"], t["end"]) for t in tis]),
        "sql_per_ti": round(int(statements) / len(tis), 1),
        "passes": passes,
        "task_map_per_pass": round(dependency_checks / max(passes, 1), 1),
    }  # fmt: skip


def _statement_counts(stack: AirflowStack) -> tuple[int, int, int]:
    """Since the last reset: statements, scheduler passes, trigger-rule look-ups of mapped TIs."""
    row = stack.postgres.query(
        "SELECT sum(calls) FILTER (WHERE query NOT LIKE '%%pg_stat_statements%%'),"
        # once per scheduler pass: lock the running DAG runs to examine
        " max(calls) FILTER (WHERE query LIKE 'SELECT dag_run.%%OF dag_run SKIP LOCKED'),"
        # once per waiting task instance of a mapped task group, per pass: its trigger rule
        " sum(calls) FILTER (WHERE query LIKE 'SELECT task_map.length%%FROM task_map%%')"
        " FROM pg_stat_statements"
    )[0]
    return int(row[0] or 0), int(row[1] or 0), int(row[2] or 0)


def top_statements(stack: AirflowStack, limit: int = 12) -> list[tuple[int, str]]:
    rows = stack.postgres.query(
        "SELECT calls, left(regexp_replace(query, '\\s+', ' ', 'g'), 160) FROM pg_stat_statements"
        " ORDER BY calls DESC LIMIT %s",
        limit,
    )
    return [(int(calls), text) for calls, text in rows]


def probe_pass(
    stack: AirflowStack, work: Path, size: int, seconds: float
) -> tuple[dict[str, Any], list[tuple[int, str]]]:
    """The scheduler's work per pass while a run of ``size`` videos waits: the ``download`` pool
    closed, so every video's first task stays scheduled and the rest wait on it, as the videos
    behind a busy gpu slot do. Counted over ``PROBE_WINDOW`` seconds, then the run is failed."""
    stack.set_pool("download", 0)
    run_id = stack.trigger("action100m", {"videos": make_videos(work, f"probe{size}", size,
                                                               seconds), "profile": "tiny"})  # fmt: skip
    expected = size * len(STAGES) + 2  # resolve_videos, report and each video's stages
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        count = stack.postgres.query(
            "SELECT count(*) FILTER (WHERE state IS NULL OR state = 'scheduled') FROM task_instance"
            " WHERE dag_id = 'action100m' AND run_id = %s",
            run_id,
        )[0][0]
        if count == expected - 1:  # all but resolve_videos
            break
        time.sleep(1)
    time.sleep(2)
    stack.postgres.query("SELECT pg_stat_statements_reset()")
    cpu = stack.cpu_seconds()
    time.sleep(PROBE_WINDOW)
    used = {name: value - cpu.get(name, 0.0) for name, value in stack.cpu_seconds().items()}
    statements, passes, dependency_checks = _statement_counts(stack)
    top = top_statements(stack)
    stack.request("PATCH", f"/api/v2/dags/action100m/dagRuns/{run_id}", {"state": "failed"})
    stack.set_pool("download", 4)
    passes = max(passes, 1)
    return {
        "n": size,
        "waiting_tis": expected - 1,
        "passes": passes,
        "sql_per_pass": round(statements / passes, 1),
        "task_map_per_pass": round(dependency_checks / passes, 1),
        "scheduler_cpu_ms_per_pass": round(1000 * used.get("scheduler", 0.0) / passes, 1),
        "postgres_cpu_ms_per_pass": round(1000 * used.get("postgres", 0.0) / passes, 1),
    }, [(calls // passes, text) for calls, text in top]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[1, 32, 128])
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each video")
    parser.add_argument("--gpu-slots", type=int, default=1, help="slots of the gpu pool")
    parser.add_argument(
        "--preload", choices=["0", "1"], default="1",
        help="ACTION100M_PRELOAD: the scheduler imports torch once for all task processes",
    )  # fmt: skip
    parser.add_argument(
        "--top-sql",
        action="store_true",
        help="after each run, the statements Airflow sent most often",
    )
    parser.add_argument(
        "--probe",
        type=int,
        nargs="*",
        default=[],
        help="also count the scheduler's work per pass with this many videos waiting",
    )
    parser.add_argument(
        "--backfill", type=int, default=0, metavar="SHARD_SIZE",
        help="send each N through action100m_backfill in shard runs of this many videos",
    )  # fmt: skip
    parser.add_argument(
        "--active-shards", type=int, default=2,
        help="with --backfill: shard runs going at once (ACTION100M_BACKFILL_MAX_ACTIVE_SHARDS)",
    )  # fmt: skip
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="a100m-bench-"))
    stack = AirflowStack(
        work / "airflow",
        env={"ACTION100M_STORE": (work / "airflow-store").as_uri(),
             "ACTION100M_ALLOWED_SOURCES": work.as_uri(),
             "ACTION100M_CACHE": str(work / "models"), "ACTION100M_PRELOAD": args.preload,
             "ACTION100M_BACKFILL_MAX_ACTIVE_SHARDS": str(args.active_shards),
             "ACTION100M_BACKFILL_POKE_SECONDS": "2"},
        pools={"gpu": args.gpu_slots, "llm": 4},
    )  # fmt: skip
    results: list[dict[str, Any]] = []
    try:
        stack.start()
        print(
            f"Airflow stack up in {stack.startup_seconds:.1f} s (not counted below); "
            f"preload {args.preload}"
            + (
                f"; backfill shards of {args.backfill}, {args.active_shards} at once"
                if args.backfill
                else ""
            ),
            flush=True,
        )
        # Warm-up: build the tiny models into the shared cache and parse the DAG once.
        warm = make_videos(work, "warm", 1, args.seconds)
        time_cli(warm, work / "cli-store")
        stack.postgres.query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        time_airflow(stack, warm)
        columns = ("n", "cli_s", "airflow_s", "ratio", "overhead_per_video_s",
                   "scheduled_to_queued_s", "queued_to_running_s", "gpu_idle_s",
                   "gpu_free_to_queued_s", "gpu_no_input_s", "gpu_handover_s", "embed_s", "task_s", "sql_per_ti", "passes",
                   "task_map_per_pass", "cpu_scheduler", "cpu_tasks", "cpu_api-server",
                   "cpu_postgres", "cpu_dag-processor", "cpu_triggerer")  # fmt: skip
        print(" ".join(f"{name:>{max(len(name), 6)}}" for name in columns), flush=True)
        for size in args.sizes:
            cli = time_cli(make_videos(work, f"cli{size}", size, args.seconds), work / "cli-store")
            airflow, run_ids, cpu = time_airflow(
                stack, make_videos(work, f"af{size}", size, args.seconds), args.backfill
            )
            row = {
                "n": size,
                "cli_s": round(cli, 2),
                "airflow_s": round(airflow, 2),
                "ratio": round(airflow / cli, 2),
                "overhead_per_video_s": round((airflow - cli) / size, 2),
                **breakdown(stack, run_ids),
                **{f"cpu_{name}": round(value, 2) for name, value in sorted(cpu.items())},
            }
            results.append(row)
            print(" ".join(f"{row.get(name, '-'):>{max(len(name), 6)}}" for name in columns),
                  flush=True)  # fmt: skip
            if args.top_sql:
                for calls, text in top_statements(stack):
                    print(f"    {calls:>7} {text}", flush=True)
        for size in args.probe:
            row, top = probe_pass(stack, work, size, args.seconds)
            results.append({"probe": True, **row})
            print("probe", json.dumps(row), flush=True)
            if args.top_sql:  # per pass
                for calls, text in top:
                    print(f"    {calls:>7} {text}", flush=True)
    finally:
        stack.stop()
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
