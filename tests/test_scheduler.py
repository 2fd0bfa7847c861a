"""The ``action100m`` DAG under a real scheduler (LocalExecutor), DAG processor and API server on
a throwaway PostgreSQL: triggered through the REST API with params. ``dag.test()`` ignores pools;
this checks that the ``gpu`` pool (1 slot) never runs two GPU tasks at once, and that a task
whose first try fails (the LLM answers HTTP 500 once) is retried and succeeds; a corrupt video
fails alone, its tasks labelled with its ID where Airflow can, and its Captions tab says why."""

from __future__ import annotations

import html
import json
import re
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
    good = (folder / "sched_a.mp4").read_bytes()
    (folder / "sched_broken.mp4").write_bytes(good[: len(good) // 8])  # truncated: fails embed
    videos.append(str(folder / "sched_broken.mp4"))
    airflow.set_pool("gpu", 1)
    llm.script(Reply.status(500))  # the first LLM request fails; the library does not retry it

    run_id = airflow.trigger(
        "action100m",
        {"videos": videos, "profile": "tiny", "overrides": ["aggregate.max_retries=0"]},
    )
    assert airflow.wait(run_id, "action100m", timeout=400) == "failed"  # one video failed

    tis = airflow.task_instances("action100m", run_id)
    by_key = {(ti["task_id"], ti["rendered_map_index"] or ti["map_index"]): ti for ti in tis}
    for video in ("sched_a", "sched_b"):
        for stage in ("embed", "segment", "caption", "aggregate", "publish"):
            assert by_key[(f"video.{stage}", video)]["state"] == "success", (stage, video)
    assert by_key[("report", -1)]["state"] == "failed"
    # The corrupt video: its failed task is labelled; the tasks after it never ran, so Airflow
    # keeps their bare map index (they are named on their Captions tab, below).
    broken = by_key[("video.embed", "sched_broken")]
    assert broken["state"] == "failed" and broken["try_number"] == 1
    index = broken["map_index"]
    for stage in ("segment", "caption", "aggregate", "publish"):
        assert by_key[(f"video.{stage}", str(index))]["state"] == "upstream_failed", stage
    scheduler_log = (airflow.workdir / "logs" / "scheduler.log").read_text(errors="replace")
    assert "action100m preload" in scheduler_log  # task processes inherited torch

    gpu = sorted((_interval(ti) for ti in tis if ti["task_id"] in GPU_TASKS), key=lambda i: i[0])
    assert len(gpu) == 3 and all(ti["pool"] == "gpu" for ti in tis if ti["task_id"] in GPU_TASKS)
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
    _a_failed_videos_tabs(airflow, run_id, index)
    _the_index_lists_runs_newest_first(airflow, run_id)
    _the_first_hour_in_chromium(airflow, run_id, index, tmp_path_factory.mktemp("screens"))


@pytest.mark.parametrize(
    ("conf", "param"),
    [
        ({"videos": ["ok_id", "   "]}, "videos"),  # a blank line
        ({"videos": [f"v{i}" for i in range(1025)]}, "videos"),  # over max_map_length
        ({"videos": ["ok_id"], "overrides": ["caption backend"]}, "overrides"),
        ({"videos": ["ok_id"], "overrides": ["backend=x"]}, "overrides"),  # no section
    ],
)
def test_the_trigger_form_refuses_bad_params_at_once(
    stack: tuple[AirflowStack, LLMServer], conf: dict[str, Any], param: str
) -> None:
    """What the form takes is checked when the run is triggered (HTTP 400 naming the param), not
    by a task failing later; no run is created."""
    airflow, _ = stack
    before = len(airflow.runs("action100m"))
    with pytest.raises(RuntimeError, match=f"HTTP 400.*Invalid input for param {param}"):
        airflow.trigger("action100m", conf)
    assert len(airflow.runs("action100m")) == before


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
    assert "run report: 2 done" in report and "1 failed" in report
    assert "report written to" in report


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


def _a_failed_videos_tabs(airflow: AirflowStack, run_id: str, index: int) -> None:
    """The Captions tab of the corrupt video's tasks: a short page naming the video, the task's
    state and a link to the run report, whether the task failed or never ran."""
    report = f"/action100m/runs/{quote(run_id, safe='')}?dag_id=action100m"
    for stage, why in (("embed", "this task failed"), ("publish", "an earlier stage")):
        url, page = airflow.fetch(f"/action100m/ti/action100m/{run_id}/video.{stage}/{index}")
        assert "Video sched_broken: " + why in page, (stage, page[-600:])
        assert quote(run_id, safe="") in page and "the run report" in page
    _, page = airflow.fetch(report)
    assert "sched_broken" in page and 'href="/action100m/videos/sched_broken"' not in page


def _the_index_lists_runs_newest_first(airflow: AirflowStack, run_id: str) -> None:
    """Browse → Action100M: Airflow's runs newest first, as Airflow names them, with state,
    start, the report's counts and a link to the run in Airflow."""
    runs = sorted(airflow.runs("action100m") + airflow.runs("action100m_backfill"),
                  key=lambda r: r["run_after"], reverse=True)  # fmt: skip
    _, page = airflow.fetch("/action100m/")
    listed = re.findall(r'<tr data-run-id="([^"]+)">', page)
    assert [html.unescape(r) for r in listed[: len(runs)]] == [r["dag_run_id"] for r in runs]
    row = page[page.index(f'<tr data-run-id="{html.escape(run_id)}">') :].split("</tr>")[0]
    assert '"status failed"' in row and "2 done, 0 skipped, 1 failed" in row, row
    assert f'href="/dags/action100m/runs/{quote(run_id, safe="")}"' in row, row


def _the_first_hour_in_chromium(airflow: AirflowStack, run_id: str, index: int, out: Path) -> None:
    """What a new user looks at, in a real browser: Airflow's list of a mapped task's instances
    (labelled with the videos), then the plugin's index and the corrupt video's Captions tab.
    Screenshots go to ``out``."""
    from playwright.sync_api import expect
    from viewer_helpers import chromium_page

    run = quote(run_id, safe="")
    with chromium_page() as page:
        page.goto(f"{airflow.base_url}/dags/action100m/runs/{run}/tasks/video.embed/mapped")
        for video in ("sched_a", "sched_b", "sched_broken"):  # not map indexes
            expect(page.get_by_text(video, exact=True).first).to_be_visible(timeout=20_000)
        page.screenshot(path=str(out / "1-mapped-embed-labelled.png"))
        page.set_extra_http_headers({"Authorization": f"Bearer {airflow.token()}"})
        page.goto(f"{airflow.base_url}/action100m/")
        expect(page.locator(f'tr[data-run-id="{run_id}"] .status')).to_have_text("failed")
        page.screenshot(path=str(out / "2-action100m-index.png"))
        page.goto(f"{airflow.base_url}/action100m/ti/action100m/{run}/video.publish/{index}")
        expect(page.locator("p.summary")).to_contain_text("Video sched_broken: an earlier stage")
        page.get_by_role("link", name="the run report").click()
        expect(page.locator('tr[data-video-id="sched_broken"] .status')).to_have_text("failed")
        page.screenshot(path=str(out / "3-run-report.png"))
        assert not page.errors
    _the_form_refuses_a_malformed_override(airflow, out)


def _the_form_refuses_a_malformed_override(airflow: AirflowStack, out: Path) -> None:
    """The trigger form itself: Videos is not marked required, and a malformed override is
    refused when Trigger is pressed (Airflow 3.3's form says only "Bad Request"; the REST
    answer names the param, see the test above); no run is created."""
    from playwright.sync_api import expect
    from viewer_helpers import chromium_page

    before = len(airflow.runs("action100m"))
    with chromium_page() as page:
        page.goto(f"{airflow.base_url}/dags/action100m")
        page.get_by_role("button", name="Trigger").first.click()
        videos = page.locator("#element_videos")
        expect(videos).to_be_visible(timeout=20_000)
        label = page.locator("label.chakra-field__label")  # the asterisk: data-required
        assert label.filter(has_text="Videos").first.get_attribute("data-required") is None
        assert label.filter(has_text="Model profile").first.get_attribute("data-required") == ""
        videos.fill("some_video")
        page.locator("#element_overrides").fill("caption backend")
        page.get_by_role("button", name="Trigger").last.click()
        # Chakra may render the toast twice (its region and a live copy): any one will do.
        expect(page.get_by_text("Failed to Trigger Dag").first).to_be_visible(timeout=10_000)
        page.screenshot(path=str(out / "4-form-refuses-override.png"))
    assert len(airflow.runs("action100m")) == before


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
