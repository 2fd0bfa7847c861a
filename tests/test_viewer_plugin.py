"""The viewer plugin inside a real Airflow API server: SQLite, simple auth manager, a JWT from
``POST /auth/token``; pages, the tree and thumbnails fetched through HTTP from a store."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from airflow_testenv import migrated_sqlite_database
from viewer_helpers import chromium_page, click_node, panel_fields, screenshot, synthetic_document

from action100m.samples import make_video
from action100m.store import ArtifactStore
from action100m.viewer import publish_viewer

REPO = Path(__file__).resolve().parent.parent
AIRFLOW = str(Path(sys.executable).parent / "airflow")
RUN_ID = "manual__2026-01-01T00:00:00+00:00"


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Interrupt the server's process group, then terminate, then kill what is left."""
    for sig, grace in ((signal.SIGINT, 15), (signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        if process.poll() is not None:
            break
        try:
            os.killpg(process.pid, sig)
            process.wait(timeout=grace)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
    with contextlib.suppress(ProcessLookupError):  # workers that outlived their leader
        os.killpg(process.pid, signal.SIGKILL)


class Server:
    def __init__(self, base: str, token: str) -> None:
        self.base, self.token = base, token

    def get(self, path: str, auth: bool = True) -> tuple[int, str, bytes]:
        headers = {"Authorization": f"Bearer {self.token}"} if auth else {}
        request = urllib.request.Request(self.base + path, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, response.headers["content-type"], response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.headers.get("content-type", ""), error.read()


@pytest.fixture(scope="module")
def store_root(tmp_path_factory: pytest.TempPathFactory) -> ArtifactStore:
    """A store with a finished video (document, thumbnails, viewer) and its run's report."""
    folder = tmp_path_factory.mktemp("viewer-store")
    video = folder / "clip.mp4"
    make_video(video, [3.0, 3.0, 3.0])
    store = ArtifactStore(str(folder / "store"))
    store.write_json(store.document_uri("clip"), synthetic_document("clip", 9.0, 2.0, str(video)))
    publish_viewer(None, store, "clip")
    usage = {"input_tokens": 1200, "output_tokens": 340, "cost_usd": 0.0123}
    report = {
        "run_id": RUN_ID,
        "videos": [
            {"video_id": "clip", "source": str(video), "status": "done", "usage": usage},
            {"video_id": "broken", "source": "x.mp4", "status": "failed", "stage": "embed",
             "reason": "file not found: x.mp4"},
        ],
        "counts": {"done": 1, "failed": 1, "skipped": 0},
        "usage": usage,
    }  # fmt: skip
    store.write_json(store.report_uri(RUN_ID), report)
    return store


@contextlib.contextmanager
def _api_server(
    home: Path, store_root: ArtifactStore, settings: dict[str, str], seed: str | None = None
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A real API server on loopback over a fresh SQLite home (``seed``: Python run against the
    migrated database first); yields its base URL and process, stopped at exit."""
    (home / "dags").mkdir(parents=True)
    port = _free_port()
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__WORKERS": "1",
        "ACTION100M_STORE": store_root.root,
        **settings,
    }
    env.pop("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS", None)
    shutil.copyfile(migrated_sqlite_database(), home / "airflow.db")  # = `airflow db migrate`
    if seed:
        subprocess.run([sys.executable, "-c", seed], env=env, check=True, capture_output=True)
    log = open(home / "api-server.log", "wb")  # noqa: SIM115 (closed below)
    process = subprocess.Popen(
        [AIRFLOW, "api-server"], env=env, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    try:
        yield f"http://127.0.0.1:{port}", process
    finally:
        _stop(process)
        log.close()


@pytest.fixture(scope="module")
def server(store_root: ArtifactStore, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("airflow-home")
    users = {"AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin"}
    with _api_server(home, store_root, users) as (base, process):
        yield Server(base, _login(base, home, process))


def _login(base: str, home: Path, process: subprocess.Popen[bytes], username: str = "admin") -> str:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"api-server exited; see {home / 'api-server.log'}")
        passwords = home / "simple_auth_manager_passwords.json.generated"
        try:
            urllib.request.urlopen(f"{base}/api/v2/monitor/health", timeout=5).read()
            password = json.loads(passwords.read_text())[username]
            body = json.dumps({"username": username, "password": password}).encode()
            request = urllib.request.Request(
                f"{base}/auth/token", body, {"Content-Type": "application/json"}, method="POST"
            )
            with urllib.request.urlopen(request, timeout=10) as response:
                return str(json.loads(response.read())["access_token"])
        except (OSError, ValueError, KeyError):
            time.sleep(1)
    raise TimeoutError(f"api-server not up in 120 s; see {home / 'api-server.log'}")


def test_plugin_is_registered(server: Server) -> None:
    status, _, body = server.get("/api/v2/plugins")
    assert status == 200
    plugin = next(p for p in json.loads(body)["plugins"] if p["name"] == "action100m_viewer")
    assert {v["destination"] for v in plugin["external_views"]} == {
        "nav",
        "dag_run",
        "task_instance",
    }
    assert plugin["fastapi_apps"][0]["url_prefix"] == "/action100m"


def test_pages_need_a_login(server: Server) -> None:
    assert server.get("/action100m/videos/clip", auth=False)[0] == 401
    assert server.get("/action100m/videos/clip/document.json", auth=False)[0] == 401
    # The app's generated API docs are not served at all (they answered without a login).
    for path in ("/action100m/docs", "/action100m/redoc", "/action100m/openapi.json"):
        for auth in (False, True):
            assert server.get(path, auth=auth)[0] in (401, 404), (path, auth)


def test_an_unsafe_video_id_names_no_video(server: Server) -> None:
    for unsafe in ("..", "%2E%2E", "..%2F..%2Fetc", "a%5Cb"):
        for suffix in ("", "/document.json", "/thumbs/n.jpg"):
            status, _, body = server.get(f"/action100m/videos/{unsafe}{suffix}")
            assert status == 404, (unsafe, suffix, body[:200])


def test_tree_page_and_thumbnails(server: Server, store_root: ArtifactStore) -> None:
    document = store_root.read_json(store_root.document_uri("clip"))
    status, kind, body = server.get("/action100m/videos/clip/document.json")
    assert status == 200 and json.loads(body)["nodes"] == document["nodes"]
    status, kind, body = server.get("/action100m/videos/clip")
    assert status == 200 and kind.startswith("text/html")
    assert '"mode":"url"' in body.decode() and document["nodes"][3]["node_id"] in body.decode()
    status, kind, body = server.get(
        f"/action100m/videos/clip/thumbs/{document['nodes'][3]['node_id']}.jpg"
    )
    assert status == 200 and kind == "image/jpeg" and body[:2] == b"\xff\xd8"
    assert server.get("/action100m/videos/missing")[0] == 404
    status, _, body = server.get("/action100m/")
    assert status == 200 and b"/action100m/videos/clip" in body


def test_run_report(server: Server) -> None:
    status, _, body = server.get(f"/action100m/runs/{RUN_ID}")
    page = body.decode()
    assert status == 200
    assert 'href="/action100m/videos/clip"' in page and "file not found: x.mp4" in page
    assert "1,200" in page and "0.0123" in page and "failed" in page
    assert 'href="/action100m/videos/broken"' not in page  # no document: no dead link
    broken = page[page.index('<tr data-video-id="broken">') :].split("</tr>")[0]
    assert broken.count('<td class="num">—</td>') == 4  # nodes, tokens, cost: none, not blank


def test_index_lists_a_run_only_the_store_knows(server: Server) -> None:
    """No Airflow run of that ID in this server's database: the store's report is still listed,
    with its counts, and no link into Airflow."""
    _, _, body = server.get("/action100m/")
    page = body.decode()
    row = page[page.index('<tr data-run-id="manual__2026-01-01T00_00_00_00_00">') :]
    row = row.split("</tr>")[0]
    assert "1 done, 1 failed, 0 skipped" in row and "in Airflow" not in row


def test_tabs_without_a_video_get_a_short_page_not_raw_json(server: Server) -> None:
    """The Captions tab of the report task (``{MAP_INDEX}`` unrendered, or -1) and a video that
    was never published: a short HTML page saying where to look, not a raw 422 or 404 JSON."""
    for index in ("%7BMAP_INDEX%7D", "-1"):
        status, kind, body = server.get(f"/action100m/ti/action100m/{RUN_ID}/report/{index}")
        assert status == 200 and kind.startswith("text/html"), (index, body[:200])
        assert b"the run report" in body and b"/action100m/runs/" in body
    status, kind, body = server.get("/action100m/videos/broken")
    assert status == 404 and kind.startswith("text/html") and b"not been published" in body


def test_served_page_in_chromium(server: Server, store_root: ArtifactStore) -> None:
    nodes = store_root.read_json(store_root.document_uri("clip"))["nodes"]
    with chromium_page() as page:
        page.set_extra_http_headers({"Authorization": f"Bearer {server.token}"})
        page.goto(f"{server.base}/action100m/videos/clip")
        page.wait_for_function("window.a100m && window.a100m.current() === 0")
        click_node(page, 1)
        assert panel_fields(page)["node_id"] == nodes[1]["node_id"]
        page.wait_for_function("document.querySelector('#thumb img').naturalWidth > 0")
        screenshot(page, "viewer-plugin.png")
        assert not page.errors


def _viewer_module() -> Any:
    """The plugin module itself, for unit tests that need no API server."""
    from airflow_testenv import use_test_airflow_home

    use_test_airflow_home()
    spec = importlib.util.spec_from_file_location(
        "action100m_viewer_under_test", REPO / "plugins" / "action100m_viewer.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("path", "query", "path_params", "needed"),
    [
        ("/videos/clip", b"dag_id=other", {"video_id": "clip"}, ["action100m", "other"]),
        ("/videos/clip/document.json", b"", {"video_id": "clip"}, ["action100m"]),
        ("/ti/other/r/t/0", b"", {"dag_id": "other", "run_id": "r"}, ["action100m", "other"]),
        ("/runs/r", b"dag_id=action100m", {"run_id": "r"}, ["action100m"]),
    ],
)
def test_access_is_checked_against_the_action100m_dag_whatever_the_request_names(
    monkeypatch: pytest.MonkeyPatch,
    path: str,
    query: bytes,
    path_params: dict[str, str],
    needed: list[str],
) -> None:
    """A user who may read some other DAG but not ``action100m`` gets no page by naming that
    DAG in ``?dag_id=``; a DAG named in the request is checked as well, never instead."""
    viewer = _viewer_module()
    from fastapi import HTTPException
    from starlette.requests import Request

    readable = {"other"}
    checked: list[str] = []

    class AuthManager:
        def is_authorized_dag(self, *, method: str, details: Any, user: Any) -> bool:
            checked.append(details.id)
            return bool(details.id in readable)

    async def get_user(*args: Any) -> str:
        return "viewer-of-other"

    monkeypatch.setattr("airflow.api_fastapi.app.get_auth_manager", lambda: AuthManager())
    monkeypatch.setattr("airflow.api_fastapi.core_api.security.get_user", get_user)
    scope = {"type": "http", "method": "GET", "path": path, "query_string": query,
             "headers": [(b"authorization", b"Bearer t")], "path_params": path_params}  # fmt: skip
    with pytest.raises(HTTPException) as denied:
        asyncio.run(viewer.require_login(Request(scope)))
    assert denied.value.status_code == 403 and checked[0] == "action100m"

    readable.add("action100m")
    checked.clear()
    asyncio.run(viewer.require_login(Request(scope)))  # may read both: allowed
    assert checked == needed


SEED_TEAMS = """
from airflow.models.dag import DagModel
from airflow.models.dagbundle import DagBundleModel
from airflow.models.team import Team
from airflow.utils.session import create_session

with create_session() as session:
    team_a = Team(name="team_a")
    bundle = DagBundleModel(name="team-a-dags")
    bundle.teams.append(team_a)
    session.add_all([team_a, Team(name="team_b"), bundle])
    session.flush()
    session.add(DagModel(dag_id="action100m", bundle_name="team-a-dags", fileloc="/dags/a.py"))
"""


def test_multi_team_another_teams_user_is_refused_as_by_airflow(
    store_root: ArtifactStore, tmp_path: Path
) -> None:
    """Multi-team mode: the action100m DAG belongs to team_a. A user of team_b gets 403 from
    Airflow's own API for it, and the same from every page, JSON and thumbnail of the plugin."""
    home = tmp_path / "home"
    settings = {
        "AIRFLOW__CORE__MULTI_TEAM": "True",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "alice:viewer:team_a,bob:viewer:team_b",
    }
    node = store_root.read_json(store_root.document_uri("clip"))["nodes"][0]["node_id"]
    paths = ["/action100m/", "/action100m/videos/clip", "/action100m/videos/clip/document.json",
             f"/action100m/videos/clip/thumbs/{node}.jpg", f"/action100m/runs/{RUN_ID}"]  # fmt: skip
    with _api_server(home, store_root, settings, SEED_TEAMS) as (base, process):
        alice = Server(base, _login(base, home, process, "alice"))
        bob = Server(base, _login(base, home, process, "bob"))
        assert bob.get("/api/v2/dags/action100m")[0] == 403  # Airflow's own answer
        for path in paths:
            assert bob.get(path)[0] == 403, path
            assert alice.get(path)[0] == 200, path
