"""The ``action100m`` DAG under a real scheduler (LocalExecutor), DAG processor and API server on
a throwaway PostgreSQL: triggered through the REST API with params. ``dag.test()`` ignores pools;
this checks that the ``gpu`` pool (1 slot) never runs two GPU tasks at once, and that a task
whose first try fails (the LLM answers HTTP 500 once) is retried and succeeds."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psutil
import pytest
from airflow_stack import AirflowStack, shared_stack
from llm_server import LLMServer, Reply

from action100m.samples import make_video

GPU_TASKS = ("video.embed",)


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    return shared_stack(request.config, tmp_path_factory.mktemp("airflow-stack"))


def _interval(ti: dict[str, Any]) -> tuple[datetime, datetime]:
    return datetime.fromisoformat(ti["start_date"]), datetime.fromisoformat(ti["end_date"])


def test_run_through_the_scheduler_honours_pools_and_retries(
    stack: tuple[AirflowStack, LLMServer], tmp_path_factory: pytest.TempPathFactory
) -> None:
    airflow, llm = stack
    folder = tmp_path_factory.mktemp("scheduler-videos")
    videos = []
    for name, scenes in (("sched_a", [4.5, 4.0]), ("sched_b", [5.0, 3.5])):
        make_video(folder / f"{name}.mp4", scenes)
        videos.append(str(folder / f"{name}.mp4"))
    airflow.set_pool("gpu", 1)
    llm.script(Reply.status(500))  # the first LLM request fails; the library does not retry it

    run_id = airflow.trigger(
        "action100m",
        {"videos": videos, "profile": "tiny", "overrides": ["aggregate.max_retries=0"]},
    )
    assert airflow.wait(run_id, "action100m", timeout=400) == "success"

    tis = airflow.task_instances("action100m", run_id)
    by_key = {(ti["task_id"], ti["rendered_map_index"] or ti["map_index"]): ti for ti in tis}
    for video in ("sched_a", "sched_b"):
        for stage in ("embed", "segment", "caption", "aggregate", "publish"):
            assert by_key[(f"video.{stage}", video)]["state"] == "success", (stage, video)
    assert by_key[("report", -1)]["state"] == "success"
    scheduler_log = (airflow.workdir / "logs" / "scheduler.log").read_text(errors="replace")
    assert "action100m preload" in scheduler_log  # task processes inherited torch

    gpu = sorted((_interval(ti) for ti in tis if ti["task_id"] in GPU_TASKS), key=lambda i: i[0])
    assert len(gpu) == 2 and all(ti["pool"] == "gpu" for ti in tis if ti["task_id"] in GPU_TASKS)
    assert all(ti["pool"] == "vlm" for ti in tis if ti["task_id"] == "video.caption")
    for (_, previous_end), (next_start, _) in zip(gpu, gpu[1:], strict=False):
        assert next_start >= previous_end, "two GPU tasks overlapped in a 1-slot pool"

    retried = [ti for ti in tis if ti["task_id"] == "video.aggregate" and ti["try_number"] > 1]
    assert len(retried) == 1
    tries = airflow.tries("action100m", run_id, "video.aggregate", retried[0]["map_index"])
    states = [t["state"] for t in sorted(tries, key=lambda t: t["try_number"])]
    assert states[0] in ("failed", "up_for_retry") and states[-1] == "success"

    _task_logs_tell_what_happened(airflow, run_id, by_key)
    _viewer_pages_of_the_finished_run(airflow, run_id, by_key)


def _task_log(airflow: AirflowStack, run_id: str, ti: dict[str, Any]) -> str:
    path = (
        f"/api/v2/dags/action100m/dagRuns/{run_id}/taskInstances/{ti['task_id']}/logs/"
        f"{ti['try_number']}?map_index={ti['map_index']}&full_content=true"
    )
    return airflow.fetch(path)[1]


def _task_logs_tell_what_happened(
    airflow: AirflowStack, run_id: str, by_key: dict[Any, dict[str, Any]]
) -> None:
    """What a person reads in the UI: stage, video, progress within the step, timings, and where
    the artifacts went."""
    embed = _task_log(airflow, run_id, by_key[("video.embed", "sched_a")])
    assert "video sched_a: encoded" in embed and "windows" in embed
    assert "embed video sched_a: done in" in embed and "/videos/sched_a/embed/" in embed
    caption = _task_log(airflow, run_id, by_key[("video.caption", "sched_b")])
    assert "video sched_b: captioned" in caption and "caption done in" in caption
    aggregate = _task_log(airflow, run_id, by_key[("video.aggregate", "sched_a")])
    assert "video sched_a: annotated" in aggregate
    report = _task_log(airflow, run_id, by_key[("report", -1)])
    assert "run report: 2 done" in report and "report written to" in report


def _viewer_pages_of_the_finished_run(
    airflow: AirflowStack, run_id: str, by_key: dict[Any, dict[str, Any]]
) -> None:
    """The viewer plugin in this API server: the run's Report tab, and a task's Captions tab
    leading to its video's tree."""
    _, report = airflow.fetch(f"/action100m/runs/{quote(run_id, safe='')}?dag_id=action100m")
    assert "sched_a" in report and "sched_b" in report and "(in progress)" not in report
    ti = by_key[("video.caption", "sched_b")]
    url, page = airflow.fetch(f"/action100m/ti/action100m/{run_id}/video.caption/{ti['map_index']}")
    assert "/action100m/videos/sched_b" in url
    _, document = airflow.fetch("/action100m/videos/sched_b/document.json")
    nodes = json.loads(document)["nodes"]
    assert nodes and all(node["node_id"] in page for node in nodes)


# A stand-in for a scheduler whose task runner lives in a process group (a session) of its own,
# as Airflow's supervisor starts it: the runner writes its pid, then both wait.
RUNNER_PARENT = """
import signal, subprocess, sys, time
signal.signal(signal.SIGINT, signal.SIG_DFL)  # end quietly on Ctrl+C, no traceback
runner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"],
                          start_new_session=True)
with open(sys.argv[1] + ".tmp", "w") as out:
    out.write(str(runner.pid))
import os; os.replace(sys.argv[1] + ".tmp", sys.argv[1])
time.sleep(120)
"""


def test_stop_leaves_no_task_runner_behind(tmp_path: Path) -> None:
    """``AirflowStack.stop`` mid-run: a task runner in a process group of its own goes too."""
    stack = AirflowStack(tmp_path)  # not started: no PostgreSQL, only the stand-in process
    pid_file = tmp_path / "runner.pid"
    stack.processes["scheduler"] = subprocess.Popen(
        [sys.executable, "-c", RUNNER_PARENT, str(pid_file)], start_new_session=True
    )
    deadline = time.monotonic() + 60
    while not pid_file.exists():
        assert time.monotonic() < deadline, "the stand-in scheduler never started its runner"
        time.sleep(0.1)
    runner = psutil.Process(int(pid_file.read_text()))
    assert runner.is_running() and runner.status() != psutil.STATUS_ZOMBIE
    stack.stop()
    assert stack.processes["scheduler"].poll() is not None
    gone = not runner.is_running() or runner.status() == psutil.STATUS_ZOMBIE
    if not gone:
        runner.kill()  # never leave it behind, even when the test fails
    assert gone, "the task runner outlived AirflowStack.stop()"
