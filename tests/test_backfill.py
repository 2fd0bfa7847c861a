"""The ``action100m_backfill`` DAG under the real scheduler: a manifest of 5 IDs in shards of 2, at
most 2 shards per backfill run, gives a backfill run with two ``action100m`` runs, a continuation
backfill run (same manifest, from entry 5) with the third, and every video done; each shard's IDs
travel as a list in the store, never in the conf. The same manifest again triggers nothing.
While the shard runs go, their triggers wait in the triggerer (deferred), holding no slot."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from airflow_stack import AirflowStack, shared_stack

from action100m.samples import make_video

VIDEO_IDS = [f"bf_{index}" for index in range(5)]


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    return shared_stack(request.config, tmp_path_factory.mktemp("airflow-stack"))


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    folder = tmp_path_factory.mktemp("backfill")
    make_video(folder / "template.mp4", [1.5, 1.5])  # short: no node reaches the LLM
    for video_id in VIDEO_IDS:
        shutil.copy(folder / "template.mp4", folder / f"{video_id}.mp4")
    path = folder / "manifest.txt"
    path.write_text("# five videos\n" + "\n".join(VIDEO_IDS) + "\n")
    return path, str(folder / "{video_id}.mp4")


def _shard_runs(airflow: AirflowStack, backfill_run_id: str) -> list[dict[str, Any]]:
    """The action100m runs of a backfill and of its continuations (they share its prefix)."""
    prefix = f"action100m_backfill__{backfill_run_id}__"
    return [run for run in airflow.runs("action100m") if run["dag_run_id"].startswith(prefix)]


def _labels(airflow: AirflowStack, run_id: str) -> set[str]:
    return {ti["rendered_map_index"] for ti in airflow.task_instances("action100m_backfill", run_id)
            if ti["task_id"] == "trigger_shard"}  # fmt: skip


def _watch_waits(airflow: AirflowStack, run_id: str, timeout: float = 400) -> list[dict]:
    """Until the backfill run ends: each poll's shard triggers (state, their shard run's state)
    and the default pool's slots, where the triggers run."""
    prefix = f"action100m_backfill__{run_id}__"
    seen: list[dict] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = airflow.request("GET", f"/api/v2/dags/action100m_backfill/dagRuns/{run_id}")
        if state["state"] in ("success", "failed"):
            return seen
        runs = {r["dag_run_id"].rsplit("__", 1)[-1]: r["state"] for r in airflow.runs("action100m")
                if r["dag_run_id"].startswith(prefix)}  # fmt: skip
        tis = airflow.task_instances("action100m_backfill", run_id)
        triggers = {ti["rendered_map_index"]: (ti["state"], runs.get(ti["rendered_map_index"]))
                    for ti in tis if ti["task_id"] == "trigger_shard"}  # fmt: skip
        pool = airflow.request("GET", "/api/v2/pools/default_pool")
        seen.append({"triggers": triggers, "pool": pool})
        time.sleep(0.5)
    raise TimeoutError(f"backfill run {run_id} not finished within {timeout} s")


def _waits_held_no_slot(seen: list[dict]) -> None:
    """Both shard runs going while both triggers were deferred: the waits were the triggerer's,
    not a worker's (a deferred task counts in no pool slot and runs no process)."""
    both = [s for s in seen if len(s["triggers"]) == 2
            and all(run == "running" for _, run in s["triggers"].values())]  # fmt: skip
    assert both, seen[-5:]
    waiting = [s for s in both if all(ti == "deferred" for ti, _ in s["triggers"].values())]
    assert len(waiting) >= len(both) / 2, both  # running only to trigger, then to finish
    assert all(s["pool"]["deferred_slots"] == 2 for s in waiting)


def test_backfill_shards_the_manifest_goes_on_in_a_continuation_and_a_rerun_does_nothing(
    stack: tuple[AirflowStack, Any], manifest: tuple[Path, str]
) -> None:
    airflow, _ = stack
    path, source = manifest
    conf = {"manifest": str(path), "shard_size": 2, "max_shards": 2, "source": source,
            "profile": "tiny"}  # fmt: skip
    airflow.set_pool("gpu", 2)  # two "GPUs": shards overlap (the 1-slot case is test_scheduler's)

    first = airflow.trigger("action100m_backfill", conf)
    _waits_held_no_slot(_watch_waits(airflow, first))
    assert airflow.wait(first, "action100m_backfill", timeout=400) == "success"
    # Two shards (4 videos) filled this run; entry 5 onwards went to a continuation run.
    continuation = f"{first}__from00000004"
    assert airflow.wait(continuation, "action100m_backfill", timeout=400) == "success"
    backfills = {run["dag_run_id"]: run for run in airflow.runs("action100m_backfill")}
    assert backfills[continuation]["conf"]["offset"] == 4
    assert backfills[continuation]["conf"]["manifest"] == str(path)
    assert not any(run_id.startswith(f"{continuation}__") for run_id in backfills)

    runs = _shard_runs(airflow, first)
    assert len(runs) == 3 and all(run["state"] == "success" for run in runs)
    store = Path(airflow.env["ACTION100M_STORE"].removeprefix("file://"))
    listed = []
    for run in runs:
        assert "videos" not in run["conf"], run["conf"]  # IDs stay out of conf and XCom
        uri = run["conf"]["videos_uri"]
        assert uri.startswith(airflow.env["ACTION100M_STORE"] + "/backfill/"), uri
        listed.append(Path(uri.removeprefix("file://")).read_text().split())
    assert sorted(len(videos) for videos in listed) == [1, 2, 2]
    assert sorted(v for videos in listed for v in videos) == VIDEO_IDS
    for video_id in VIDEO_IDS:
        assert (store / "videos" / video_id / "annotations.json").exists(), video_id
    assert _labels(airflow, first) == {"shard0001of0002", "shard0002of0002"}
    assert _labels(airflow, continuation) == {"shard0001of0001"}
    # The backfill run's Report tab: its shards and their runs, not an empty "(in progress)".
    path_of = f"/action100m/runs/{quote(first, safe='')}?dag_id=action100m_backfill"
    _, page = airflow.fetch(path_of)
    assert "(in progress)" not in page and "2 shard run(s)" in page
    for shard in ("shard0001of0002", "shard0002of0002"):
        row = page[page.index(f'<tr data-run-id="action100m_backfill__{first}__{shard}">') :]
        assert '"status success"' in row.split("</tr>")[0] and "done" in row.split("</tr>")[0]

    runs_before = len(airflow.runs("action100m"))
    again = airflow.trigger("action100m_backfill", conf)
    assert airflow.wait(again, "action100m_backfill", timeout=120) == "success"
    assert _shard_runs(airflow, again) == []
    assert len(airflow.runs("action100m")) == runs_before
    again_runs = [r["dag_run_id"] for r in airflow.runs("action100m_backfill")]
    assert [run_id for run_id in again_runs if run_id.startswith(again)] == [again]  # no sequel
