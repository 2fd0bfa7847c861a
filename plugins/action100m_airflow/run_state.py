"""What the viewer plugin reads of Airflow's own records (in the API server): a run's task
instances, its videos by map index, the runs of a DAG. Read-only.

A mapped task is labelled with its video once it starts (``map_index_template``); a task that
never starts (``upstream_failed``) keeps its bare map index, so its video is looked up here, by that
index, in the run's ``resolve_videos`` XCom (the list the video group was mapped over).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from action100m_airflow import STAGES, VIDEO_GROUP

RESOLVE_TASK = "resolve_videos"


def task_instances(dag_id: str, run_id: str) -> list[Any]:
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        query = select(TaskInstance).where(
            TaskInstance.dag_id == dag_id, TaskInstance.run_id == run_id
        )
        rows = list(session.scalars(query))
        session.expunge_all()
        return rows


def run_videos(dag_id: str, run_id: str) -> list[str]:
    """The run's video IDs in map-index order (empty before ``resolve_videos`` has finished)."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        query = select(XComModel).where(
            XComModel.dag_id == dag_id,
            XComModel.run_id == run_id,
            XComModel.task_id == RESOLVE_TASK,
            XComModel.key == "return_value",
            XComModel.map_index == -1,
        )
        row = session.scalars(query).first()
        value = XComModel.deserialize_value(row) if row is not None else None
    if not isinstance(value, list):
        return []
    return [str(v.get("video_id")) for v in value if isinstance(v, dict)]


def video_label(ti: Any, videos: list[str]) -> str | None:
    """The video of a video-group task: its rendered label, else its map index in ``videos``."""
    if ti.map_index < 0 or not ti.task_id.startswith(f"{VIDEO_GROUP}."):
        return None
    if ti._rendered_map_index:  # the hybrid property falls back to str(map_index)
        return str(ti._rendered_map_index)
    return videos[ti.map_index] if ti.map_index < len(videos) else None


@dataclass(frozen=True)
class TaskVideo:
    video_id: str | None
    state: str


def task_video(dag_id: str, run_id: str, task_id: str, map_index: int) -> TaskVideo:
    """Which video a task instance works on, and its state (``none`` if there is no such task)."""
    found = [
        ti
        for ti in task_instances(dag_id, run_id)
        if ti.task_id == task_id and ti.map_index == map_index
    ]
    if not found:
        return TaskVideo(None, "none")
    ti = found[0]
    videos = [] if ti._rendered_map_index else run_videos(dag_id, run_id)
    return TaskVideo(video_label(ti, videos), str(ti.state or "none"))


def provisional_report(dag_id: str, run_id: str) -> list[dict[str, Any]]:
    """While the run has not written its report: where each video's tasks are."""
    instances = task_instances(dag_id, run_id)
    videos = run_videos(dag_id, run_id)
    rows: dict[str, dict[str, Any]] = {v: {"video_id": v, "status": "running", "notes": []}
                                       for v in videos}  # fmt: skip
    for ti in sorted(instances, key=lambda t: _stage_order(t.task_id)):
        video_id = video_label(ti, videos)
        if video_id is None:
            continue
        row = rows.setdefault(video_id, {"video_id": video_id, "status": "running", "notes": []})
        stage, state = ti.task_id.split(".", 1)[1], str(ti.state or "none")
        row["notes"].append(f"{stage}: {state}")
        if state in ("failed", "upstream_failed") and row["status"] != "failed":
            row.update(status="failed", stage=stage, reason=f"task {state}")
        elif stage == STAGES[-1] and state == "success" and row["status"] != "failed":
            row["status"] = "done"
    return list(rows.values())


def _stage_order(task_id: str) -> int:
    stage = task_id.split(".", 1)[-1]
    return STAGES.index(stage) if stage in STAGES else len(STAGES)


def dag_runs(dag_ids: list[str], limit: int = 100, prefix: str = "") -> list[dict[str, Any]]:
    """The newest runs of ``dag_ids`` first (run IDs starting with ``prefix``): run ID, DAG,
    state, start and end."""
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        query = (
            select(DagRun)
            .where(DagRun.dag_id.in_(dag_ids), DagRun.run_id.startswith(prefix, autoescape=True))
            .order_by(DagRun.run_after.desc(), DagRun.id.desc())
            .limit(limit)
        )
        return [
            {
                "run_id": run.run_id,
                "dag_id": run.dag_id,
                "state": str(run.state or ""),
                "start_date": run.start_date,
                "end_date": run.end_date,
            }
            for run in session.scalars(query)
        ]


def run_rows(runs: list[dict[str, Any]], store: Any, root: str, ui: str) -> list[dict[str, Any]]:
    """The index's rows of ``runs``: the report's counts (an ``action100m`` run's), start, links
    to the report page (under ``root``) and to the run in Airflow's UI (under ``ui``)."""
    from urllib.parse import quote

    from action100m_airflow import DAG_ID

    rows = []
    for run in runs:
        run_id, dag_id = run["run_id"], run["dag_id"]
        uri = store.report_uri(run_id)
        report = store.read_json(uri) if dag_id == DAG_ID and store.exists(uri) else {}
        start = run["start_date"]
        q = quote(run_id, safe="")
        rows.append({**run, "counts": report.get("counts"),
                     "start": f"{start:%Y-%m-%d %H:%M:%S}" if start else None,
                     "href": f"{root}/runs/{q}?dag_id={quote(dag_id)}",
                     "airflow_href": f"{ui}/dags/{quote(dag_id)}/runs/{q}"})  # fmt: skip
    return rows
