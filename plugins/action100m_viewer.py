"""Airflow plugin: the tree-of-captions viewer and run reports inside the Airflow UI.

A FastAPI app mounted in the API server under ``/action100m`` reads the store (the
``action100m_store`` connection, else ``ACTION100M_STORE``, else the library default):

- ``/action100m/``                              runs with a report, videos with a document
- ``/action100m/videos/{video_id}``             the viewer page (thumbnails fetched by URL)
- ``/action100m/videos/{video_id}/document.json``  the per-video document (the tree)
- ``/action100m/videos/{video_id}/thumbs/{node_id}.jpg``
- ``/action100m/runs/{run_id}``                 the run report (provisional while it runs)
- ``/action100m/ti/{dag_id}/{run_id}/{task_id}/{map_index}``  a mapped task's video page

Every route needs an Airflow login (a JWT bearer token or the UI's session cookie) with read
access to the DAG. External views add a "Captions" tab to task instances and a "Report" tab to
DAG runs, and an "Action100M" entry to the navigation.
"""

from __future__ import annotations

import logging
import os
from typing import Any
from urllib.parse import quote

from airflow.plugins_manager import AirflowPlugin
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from action100m.errors import VideoError

log = logging.getLogger(__name__)
PREFIX = "/action100m"
DAG_ID = "action100m"
BACKFILL_DAG_ID = "action100m_backfill"


def dags_to_authorise(path_params: Any, query_params: Any) -> list[str]:
    """The DAGs whose read access a request needs: always ``action100m`` (every page shows its
    artifacts), plus any other DAG the request names (a ``/ti/{dag_id}/...`` path, the run
    report's ``?dag_id=``), whose task instances it reads. Naming a DAG never replaces the check."""
    named = [path_params.get("dag_id"), query_params.get("dag_id")]
    return list(dict.fromkeys([DAG_ID, *(str(d) for d in named if d)]))


async def require_login(request: Request) -> None:
    """The caller's Airflow identity (bearer token or session cookie), with read access to the
    DAGs, asked of the auth manager exactly as Airflow's own routes ask it: the DAG's team
    included, so in multi-team mode another team's user is refused here as there."""
    from airflow.api_fastapi.core_api.security import get_user
    from fastapi.security import HTTPAuthorizationCredentials
    from starlette.concurrency import run_in_threadpool

    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    bearer = HTTPAuthorizationCredentials(scheme=scheme, credentials=token) if token else None
    user = await get_user(request, None, bearer)
    dag_ids = dags_to_authorise(request.path_params, request.query_params)
    if not await run_in_threadpool(_may_read, user, dag_ids):  # the team lookup reads the DB
        raise HTTPException(403, "Forbidden")


def _may_read(user: Any, dag_ids: list[str]) -> bool:
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import DagDetails
    from airflow.configuration import conf
    from airflow.models.dag import DagModel

    teams = conf.getboolean("core", "multi_team", fallback=False)
    auth_manager = get_auth_manager()
    return all(
        auth_manager.is_authorized_dag(
            method="GET",
            details=DagDetails(
                id=dag_id, team_name=DagModel.get_team_name(dag_id) if teams else None
            ),
            user=user,
        )
        for dag_id in dag_ids
    )


def get_store() -> Any:
    """The store of the ``action100m_store`` connection, else ACTION100M_STORE / the default."""
    try:
        from action100m_airflow.connections import ArtifactStoreHook

        return ArtifactStoreHook().get_store()
    except Exception as exc:  # no connection support in this process: the environment decides
        log.debug("action100m_store connection not usable here (%s)", exc)
        from action100m.config import Settings
        from action100m.store import ArtifactStore

        return ArtifactStore(os.environ.get("ACTION100M_STORE") or Settings().store)


def _document(store: Any, video_id: str) -> dict[str, Any]:
    uri = store.document_uri(video_id)  # an unsafe ID raises VideoError: a 404
    if not store.exists(uri):
        raise HTTPException(404, f"no document for video {video_id!r} in {store.root}")
    document: dict[str, Any] = store.read_json(uri)
    return document


def _video_href(request: Request, video_id: str) -> str:
    return f"{request.scope.get('root_path', '')}/videos/{quote(video_id, safe='')}"


def provisional_report(dag_id: str, run_id: str, store: Any) -> dict[str, Any]:
    """While the run has not written its report: where each video's tasks are (task instances),
    and for a published video what its status record says."""
    from action100m_airflow.run_state import provisional_report as rows_of

    from action100m.status import read_status

    rows = rows_of(dag_id, run_id)
    for row in rows:  # published: the status record says what it holds
        status = read_status(store, row["video_id"]) if row["status"] == "done" else None
        if reason := ((status or {}).get("skipped") or {}).get("aggregate"):
            row["aggregate_skipped"] = reason
    counts = {s: sum(r["status"] == s for r in rows) for s in ("done", "failed", "running")}
    return {"run_id": run_id, "dag_id": dag_id, "videos": rows, "counts": counts, "usage": {}}


# No /docs, /redoc or /openapi.json: they would answer without the login every route requires.
app = FastAPI(
    title="action100m viewer",
    dependencies=[Depends(require_login)],
    docs_url=None,
    redoc_url=None,
    openapi_url=None,
)


@app.exception_handler(VideoError)
def _unsafe_video_id(request: Request, exc: VideoError) -> Response:
    """An ID that is not a safe path segment names no video (never a path outside its folder)."""
    return JSONResponse({"detail": str(exc)}, status_code=404)


@app.get("/", response_class=HTMLResponse)
def index(request: Request) -> str:
    """Runs newest first (Airflow's runs of both DAGs, with state, start, the report's video
    counts, links to the report and to the run in Airflow; then runs only the store knows), and
    every video with a document."""
    from action100m_airflow.run_state import dag_runs, run_rows

    from action100m.layout import path_safe
    from action100m.viewer import render_index

    store, root = get_store(), request.scope.get("root_path", "")
    runs = dag_runs([DAG_ID, BACKFILL_DAG_ID])
    rows = run_rows(runs, store, root, root.removesuffix(PREFIX))
    seen = {path_safe(run["run_id"]) for run in runs}
    for name in sorted(u.rstrip("/").rsplit("/", 1)[-1] for u in store.list(store.runs_dir())):
        if name not in seen:  # a run Airflow no longer lists (or one from the command line)
            uri = store.report_uri(name)
            report = store.read_json(uri) if store.exists(uri) else {}
            rows.append({"run_id": name, "counts": report.get("counts"),
                         "href": f"{root}/runs/{quote(name, safe='')}"})  # fmt: skip
    videos = [u.rstrip("/").rsplit("/", 1)[-1] for u in store.list(store.videos_dir())]
    return render_index(rows, [(v, _video_href(request, v)) for v in sorted(videos)], store.root)


@app.get("/videos/{video_id}", response_class=HTMLResponse)
def video_page(request: Request, video_id: str) -> Any:
    from action100m.viewer import render_html
    from action100m.viewer.report import render_notice
    from action100m.viewer.thumbnails import read_index

    store = get_store()
    uri = store.document_uri(video_id)
    if not store.exists(uri):  # a short page, not a raw 404 JSON
        page = render_notice(
            f"video {video_id}",
            f"No document for video {video_id} yet: it has not been published (its run failed "
            "or is still going; the run's Report tab says which).",
            ("all runs and videos", f"{request.scope.get('root_path', '')}/"),
        )
        return HTMLResponse(page, status_code=404)
    document = store.read_json(uri)
    index = read_index(store, video_id) or {}
    have = dict.fromkeys((index.get("nodes") or {}), b"")
    thumb_url = f"{_video_href(request, video_id)}/thumbs/{{node_id}}.jpg"
    back = f"{request.scope.get('root_path', '')}/"
    return render_html(document, have, thumb_url=thumb_url if have else None, back_link=back)


@app.get("/videos/{video_id}/document.json")
def video_document(video_id: str) -> JSONResponse:
    return JSONResponse(_document(get_store(), video_id))


@app.get("/videos/{video_id}/thumbs/{node_id}.jpg")
def thumbnail(video_id: str, node_id: str) -> Response:
    from action100m.viewer import read_thumbnail

    data = read_thumbnail(get_store(), video_id, node_id)
    if data is None:
        raise HTTPException(404, "no thumbnail")
    return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=86400"})


@app.get("/runs/{run_id:path}", response_class=HTMLResponse)
def run_report(request: Request, run_id: str, dag_id: str = DAG_ID) -> str:
    from action100m.viewer import render_report
    from action100m.viewer.report import node_count

    store = get_store()
    if dag_id == BACKFILL_DAG_ID:  # its shards: the action100m runs it triggered
        return backfill_report(request, run_id, store)
    uri = store.report_uri(run_id)
    if store.exists(uri):
        report, title = store.read_json(uri), f"run {run_id}"
    else:
        report = provisional_report(dag_id, run_id, store)
        title = f"run {run_id} (in progress)"
    nodes = {v["video_id"]: node_count(store, v["video_id"]) for v in report.get("videos", [])}
    return render_report(report, lambda v: _video_href(request, v), nodes, title)


def backfill_report(request: Request, run_id: str, store: Any) -> str:
    """A backfill run's Report tab: its shards (``action100m`` runs named after it), each with
    its state, counts and links; its continuation runs have their own."""
    from action100m_airflow.run_state import dag_runs, run_rows

    from action100m.viewer.report import render_runs

    root = request.scope.get("root_path", "")
    prefix = f"{BACKFILL_DAG_ID}__{run_id}__"
    found = dag_runs([DAG_ID], limit=1024, prefix=prefix)
    shards = [run for run in found if "__" not in run["run_id"].removeprefix(prefix)]  # own only
    shards.sort(key=lambda run: run["run_id"])
    rows = run_rows(shards, store, root, root.removesuffix(PREFIX))
    return render_runs(f"backfill {run_id}", rows, f"{len(rows)} shard run(s) triggered so far")


@app.get("/ti/{dag_id}/{run_id}/{task_id}/{map_index}")
def task_video(request: Request, dag_id: str, run_id: str, task_id: str, map_index: str) -> Any:
    """The video page of a mapped task. Its video is its rendered map index, or (a task that never
    ran: upstream failed) the run's video at its map index. A video not published, or a task with
    no video (``report``, a backfill's task: ``{MAP_INDEX}`` or -1) gets a short page naming the
    video and its task's state, pointing at the run's report, never a raw 422 or 404."""
    from action100m_airflow.run_state import task_video as find

    from action100m.viewer.report import render_notice

    root = request.scope.get("root_path", "")
    report = f"{root}/runs/{quote(run_id, safe='')}?dag_id={quote(dag_id)}"
    index = int(map_index) if map_index.lstrip("-").isdigit() else -1
    found = find(dag_id, run_id, task_id, index) if index >= 0 else None
    if found is None or found.video_id is None:
        text = (
            f"Task {task_id} has no video page: captions belong to a video's tasks, and this one "
            "is not one, or its video has not started. See the run's report:"
        )
        return HTMLResponse(
            render_notice(f"{task_id} · {run_id}", text, ("the run report", report))
        )
    video_id = found.video_id
    store = get_store()
    if store.exists(store.document_uri(video_id)):
        return RedirectResponse(_video_href(request, video_id))
    why = {
        "upstream_failed": "an earlier stage of this video failed, so this task never ran",
        "failed": "this task failed",
        "up_for_retry": "this task failed and waits to be retried",
    }.get(found.state, f"this task is {found.state.replace('_', ' ')}")
    text = (
        f"Video {video_id}: {why}. It has not been published; the run's report says which stage "
        "failed and why:"
    )
    page = render_notice(f"video {video_id} · {task_id}", text, ("the run report", report))
    return HTMLResponse(page)


class Action100MViewerPlugin(AirflowPlugin):
    name = "action100m_viewer"
    fastapi_apps = [{"app": app, "url_prefix": PREFIX, "name": "action100m viewer"}]
    external_views = [
        {"name": "Action100M", "href": "action100m/", "destination": "nav",
         "category": "browse", "url_route": "action100m"},
        {"name": "Report", "href": "action100m/runs/{RUN_ID}?dag_id={DAG_ID}",
         "destination": "dag_run", "url_route": "action100m_report"},
        {"name": "Captions", "href": "action100m/ti/{DAG_ID}/{RUN_ID}/{TASK_ID}/{MAP_INDEX}",
         "destination": "task_instance", "url_route": "action100m_captions"},
    ]  # fmt: skip
