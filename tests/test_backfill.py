"""The ``action100m_backfill`` DAG under the real scheduler: a manifest of 5 IDs in shards of 2
gives three ``action100m`` runs and every video done; the same manifest again triggers nothing."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

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
    prefix = f"action100m_backfill__{backfill_run_id}__"
    return [run for run in airflow.runs("action100m") if run["dag_run_id"].startswith(prefix)]


def test_backfill_shards_the_manifest_and_a_rerun_does_nothing(
    stack: tuple[AirflowStack, Any], manifest: tuple[Path, str]
) -> None:
    airflow, _ = stack
    path, source = manifest
    conf = {"manifest": str(path), "shard_size": 2, "source": source, "profile": "tiny"}
    airflow.set_pool("gpu", 2)  # two "GPUs": shards overlap (the 1-slot case is test_scheduler's)

    first = airflow.trigger("action100m_backfill", conf)
    assert airflow.wait(first, "action100m_backfill", timeout=400) == "success"

    runs = _shard_runs(airflow, first)
    assert len(runs) == 3 and all(run["state"] == "success" for run in runs)
    assert sorted(len(run["conf"]["videos"]) for run in runs) == [1, 2, 2]
    store = Path(airflow.env["ACTION100M_STORE"].removeprefix("file://"))
    for video_id in VIDEO_IDS:
        assert (store / "videos" / video_id / "annotations.json").exists(), video_id
    labels = {ti["rendered_map_index"] for ti in airflow.task_instances("action100m_backfill", first)
              if ti["task_id"] == "trigger_shard"}  # fmt: skip
    assert labels == {"shard0001of0003", "shard0002of0003", "shard0003of0003"}

    runs_before = len(airflow.runs("action100m"))
    again = airflow.trigger("action100m_backfill", conf)
    assert airflow.wait(again, "action100m_backfill", timeout=120) == "success"
    assert _shard_runs(airflow, again) == []
    assert len(airflow.runs("action100m")) == runs_before
