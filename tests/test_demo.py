"""The embedded default as a user runs it: `make demo` (scripts/demo.sh) offline, then the real UI
on the same Airflow home (`airflow standalone`), with the DAG listed, its params form, and a run
triggered through the REST API the UI uses. Every process started here is stopped by its id."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from airflow_stack import REPO, VENV_BIN, descendants, free_port, kill_tree

from action100m.samples import make_video
from action100m.store import ArtifactStore

FORM = ["videos", "videos_uri", "source", "metadata", "profile", "overrides"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str], str]:
    """``scripts/demo.sh`` (what `make demo` runs) in a folder of its own, no LLM configured."""
    folder = tmp_path_factory.mktemp("demo")
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("AIRFLOW", "ACTION100M_", "OPENAI_", "ANTHROPIC_", "AWS_"))
    }
    env.update(ACTION100M_DEMO=str(folder), PATH=f"{VENV_BIN}{os.pathsep}{env['PATH']}")
    done = subprocess.run(
        ["bash", "scripts/demo.sh"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return folder, env, done.stdout


def test_make_demo_runs_the_dag_offline_and_prints_the_tree(
    demo: tuple[Path, dict[str, str], str],
) -> None:
    folder, _, out = demo
    assert "run report: 1 done, 0 skipped, 0 failed" in out
    assert "done (aggregate skipped)" in out and "no LLM configured for aggregation" in out
    assert "demo_cooking  (12.0 s, " in out  # the result tree
    assert "== action100m export (the release's format)" in out  # and its release fields
    assert "  plm_action      " in out and "  llama3_caption  " in out
    store = ArtifactStore(f"file://{folder}/artifacts")
    document = store.read_json(store.document_uri("demo_cooking"))
    assert f"per-video document: {store.document_uri('demo_cooking')}" in out
    # The sample's scene cuts at 4 s and 8 s are tree boundaries (within half a second).
    starts = {round(node["start"], 2) for node in document["nodes"]}
    for cut in (4.0, 8.0):
        assert min(abs(start - cut) for start in starts) <= 0.5, (cut, sorted(starts))
    assert document["pipeline"]["skipped"]["aggregate"].startswith("no LLM configured")


class _UI:
    """``airflow standalone`` on the demo's home, as the README starts it."""

    def __init__(self, env: dict[str, str], folder: Path) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.home = folder / "airflow"
        self.env = {
            **env,
            "AIRFLOW__API__PORT": str(self.port),
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.base_url}/execution/",
        }
        self.log = folder / "standalone.log"
        self.token = ""

    @contextlib.contextmanager
    def running(self) -> Iterator[_UI]:
        with open(self.log, "wb") as log:
            process = subprocess.Popen(
                ["bash", "-c", "source scripts/airflow_env.sh && exec airflow standalone"],
                cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        try:
            self._wait_ready(process)
            yield self
        finally:
            below = descendants(process.pid)
            with contextlib.suppress(ProcessLookupError):  # the README's Ctrl+C
                os.killpg(process.pid, signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=20)
            kill_tree(process.pid, below)

    def _wait_ready(self, process: subprocess.Popen[bytes], timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"airflow standalone exited; see {self.log}")
            try:
                health = self.request("GET", "/api/v2/monitor/health")
                passwords = self.home / "simple_auth_manager_passwords.json.generated"
                if health["scheduler"]["status"] == "healthy" and passwords.exists():
                    password = json.loads(passwords.read_text())["admin"]
                    body = {"username": "admin", "password": password}
                    self.token = self.request("POST", "/auth/token", body)["access_token"]
                    return
            except (OSError, KeyError, json.JSONDecodeError):
                pass
            time.sleep(1)
        raise TimeoutError(f"airflow standalone not ready after {timeout} s; see {self.log}")

    def request(self, method: str, path: str, body: Any = None) -> Any:
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base_url + path, data, headers, method=method)
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read() or b"null")

    def wait_for(self, path: str, timeout: float = 120) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.request("GET", path)
            except urllib.error.HTTPError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)


def test_airflow_standalone_lists_the_dag_with_its_form_and_runs_it(
    demo: tuple[Path, dict[str, str], str],
) -> None:
    folder, env, _ = demo
    video = folder / "videos" / "standalone_clip.mp4"
    make_video(video, [2.5, 2.5])
    with _UI(env, folder).running() as ui:
        dag = ui.wait_for("/api/v2/dags/action100m")
        assert dag["is_paused"] is False
        params = ui.request("GET", "/api/v2/dags/action100m/details")["params"]
        assert list(params)[: len(FORM)] == FORM
        assert all(params[name].get("description") for name in FORM)  # the trigger form's help
        body = {"logical_date": None, "conf": {"videos": [str(video)], "profile": "tiny"}}
        run_id = ui.request("POST", "/api/v2/dags/action100m/dagRuns", body)["dag_run_id"]
        deadline, state = time.monotonic() + 240, "queued"
        while state not in ("success", "failed") and time.monotonic() < deadline:
            time.sleep(2)
            with contextlib.suppress(TimeoutError):  # standalone's SQLite stalls under load
                state = ui.request("GET", f"/api/v2/dags/action100m/dagRuns/{run_id}")["state"]
        assert state == "success", f"run {run_id} ended {state}; see {ui.log} and {ui.home}/logs"
    store = ArtifactStore(f"file://{folder}/artifacts")
    assert store.exists(store.document_uri("standalone_clip"))
