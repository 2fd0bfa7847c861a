"""A real Airflow on loopback for tests and benchmarks: a throwaway PostgreSQL cluster (a copy of
a migrated template, :mod:`postgres_cluster`), then the scheduler (LocalExecutor), the DAG
processor, the triggerer (deferred waits) and the API server, with a small REST client.

    with AirflowStack(workdir, env={...}, pools={"gpu": 1}) as stack:
        run_id = stack.trigger("action100m", {"videos": [...], "profile": "tiny"})
        assert stack.wait(run_id, "action100m") == "success"

Every process is started in its own session and stopped by its process-group id at the end,
together with every process it started: Airflow's supervisor puts each task runner in a process
group of its own, which signalling the service's group would miss (:func:`kill_tree`).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import psutil
from postgres_cluster import PostgresCluster, free_port, migrated_template

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
FINISHED = {"success", "failed"}


def descendants(pid: int) -> list[psutil.Process]:
    """Every process below ``pid`` now (empty if it is gone)."""
    try:
        return list(psutil.Process(pid).children(recursive=True))
    except psutil.NoSuchProcess:
        return []


def _tree_cpu(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its descendants, living and reaped."""
    total = 0.0
    with contextlib.suppress(psutil.NoSuchProcess):
        for process in [psutil.Process(pid), *descendants(pid)]:
            with contextlib.suppress(psutil.NoSuchProcess):
                times = process.cpu_times()
                total += times.user + times.system + times.children_user + times.children_system
    return total


def kill_tree(pid: int, known: Iterable[psutil.Process] = ()) -> None:
    """SIGKILL ``pid``, its process group and every descendant (task processes run in groups of
    their own): what happens to a container that dies. ``known``: descendants recorded earlier,
    which outlive a parent that has exited since (they were re-parented away from ``pid``)."""
    found = {process.pid: process for process in known}
    with contextlib.suppress(psutil.NoSuchProcess):
        leader = psutil.Process(pid)
        found.update({process.pid: process for process in [leader, *descendants(pid)]})
    for process in found.values():  # psutil refuses a pid reused by another process
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    psutil.wait_procs(list(found.values()), timeout=10)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


class ApiError(RuntimeError):
    """An HTTP error answer of the REST API, its status kept."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class AirflowStack:
    """Scheduler + DAG processor + triggerer + API server on PostgreSQL, for this checkout's DAGs."""

    def __init__(
        self, workdir: Path, env: dict[str, str] | None = None, pools: dict[str, int] | None = None
    ) -> None:
        self.workdir = Path(workdir)
        self.extra_env = env or {}
        self.pools = pools or {"gpu": 1, "llm": 2}
        self.postgres = PostgresCluster()
        self.api_port = free_port()
        self.base_url = f"http://127.0.0.1:{self.api_port}"
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self._token: str | None = None

    # -- lifecycle ----------------------------------------------------------------------------
    def environment(self, database_url: str) -> dict[str, str]:
        env = {
            **os.environ,
            "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '')}",
            "AIRFLOW_HOME": str(self.workdir / "home"),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": database_url,
            # Airflow's LocalExecutor holding a slot per started task, so priorities decide.
            "AIRFLOW__CORE__EXECUTOR": "action100m_airflow.local_executor.LocalExecutor",
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__CORE__PARALLELISM": "4",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.base_url}/execution/",
            "AIRFLOW__API__BASE_URL": self.base_url,
            "AIRFLOW__API__PORT": str(self.api_port),
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(16),
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.5",
            "ACTION100M_PRELOAD": "1",  # task processes inherit torch from the scheduler
            # Every action100m run gets its Deadline Alert (created, pruned when the run ends).
            "ACTION100M_SHARD_DEADLINE_HOURS": "24",
            # The maintenance DAG runs when a test triggers it, against this database.
            "ACTION100M_MAINTENANCE_SCHEDULE": "none",
            "AIRFLOW_CONN_ACTION100M_METADATA_DB": database_url.replace(
                "postgresql+psycopg2://", "postgres://"
            ),
        }
        env.update(self.extra_env)
        return env

    def start(self) -> AirflowStack:
        started = time.monotonic()
        self.env = self.environment(self.postgres.url)
        self.postgres.start(template=migrated_template(self.env))
        (self.workdir / "logs").mkdir(parents=True, exist_ok=True)
        pools = [arg for name, slots in self.pools.items() for arg in ("--pool", f"{name}={slots}")]
        subprocess.run(
            [sys.executable, str(REPO / "scripts" / "airflow_setup.py"), "--skip-migrate", *pools],
            env=self.env, check=True, capture_output=True,
        )  # fmt: skip
        for name in ("api-server", "scheduler", "dag-processor", "triggerer"):
            # The child keeps its own copy of the log descriptor; ours closes at once.
            with open(self.workdir / "logs" / f"{name}.log", "wb") as log:
                self.processes[name] = subprocess.Popen(
                    [str(VENV_BIN / "airflow"), name], env=self.env, stdout=log,
                    stderr=subprocess.STDOUT, start_new_session=True,
                )  # fmt: skip
        self._wait_healthy(timeout=120)
        self.startup_seconds = time.monotonic() - started
        return self

    def _wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, process in self.processes.items():
                if process.poll() is not None:
                    raise RuntimeError(f"airflow {name} exited; see {self.workdir}/logs/{name}.log")
            try:
                health = self.request("GET", "/api/v2/monitor/health", auth=False)
                if all(
                    health.get(name, {}).get("status") == "healthy"
                    for name in ("scheduler", "dag_processor", "triggerer")
                ):
                    return
            except OSError:
                pass
            time.sleep(1)
        raise TimeoutError(f"Airflow not healthy after {timeout} s; logs in {self.workdir}/logs")

    def stop(self) -> None:
        """Interrupt each process group we started, then terminate, then kill what is left,
        task runners included (their own process groups, noted before any signal is sent)."""
        started = {name: descendants(p.pid) for name, p in self.processes.items()}
        for sig, grace in ((signal.SIGINT, 15), (signal.SIGTERM, 10)):
            alive = [p for p in self.processes.values() if p.poll() is None]
            for process in alive:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, sig)
            deadline = time.monotonic() + grace
            for process in alive:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=max(0.1, deadline - time.monotonic()))
        for name, process in self.processes.items():  # and whatever outlived its leader
            kill_tree(process.pid, started[name])
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=5)
        self.postgres.stop()

    def __enter__(self) -> AirflowStack:
        try:
            return self.start()
        except BaseException:  # a partial start still stops what it started
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def cpu_seconds(self) -> dict[str, float]:
        """CPU seconds used so far by each service, its task processes and PostgreSQL (user +
        system, reaped children included): what a run costs, whatever else loads the machine."""
        used = {name: _tree_cpu(process.pid) for name, process in self.processes.items()}
        scheduler = self.processes.get("scheduler")
        if scheduler is not None:  # the LocalExecutor's workers and their task processes apart
            with contextlib.suppress(psutil.NoSuchProcess):
                own = psutil.Process(scheduler.pid).cpu_times()
                used["tasks"] = used["scheduler"] - own.user - own.system
                used["scheduler"] = own.user + own.system
        if self.postgres.folder is not None:
            pid_file = self.postgres.folder / "data" / "postmaster.pid"
            with contextlib.suppress(OSError, ValueError):
                used["postgres"] = _tree_cpu(int(pid_file.read_text().split()[0]))
        return used

    # -- REST API -----------------------------------------------------------------------------
    def request(self, method: str, path: str, body: Any = None, auth: bool = True) -> Any:
        headers = {"Content-Type": "application/json"}
        if auth:
            headers["Authorization"] = f"Bearer {self.token()}"
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base_url + path, data, headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:500]
            raise ApiError(exc.code, f"{method} {path}: HTTP {exc.code}: {detail}") from exc

    def fetch(self, path: str) -> tuple[str, str]:
        """``(final URL, body text)`` of a GET with the bearer token, redirects followed: pages
        and task logs, where :meth:`request` reads JSON."""
        headers = {"Authorization": f"Bearer {self.token()}", "Accept": "application/json"}
        request = urllib.request.Request(self.base_url + path, headers=headers)
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.geturl(), response.read().decode(errors="replace")

    def token(self) -> str:
        if self._token is None:
            self._token = self.request("GET", "/auth/token", auth=False)["access_token"]
        return self._token

    def set_pool(self, name: str, slots: int) -> None:
        body = {"pool": name, "slots": slots, "include_deferred": False}
        self.request("PATCH", f"/api/v2/pools/{name}?update_mask=slots", body)

    def wait_for_dag(self, dag_id: str, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self.request("GET", f"/api/v2/dags/{dag_id}")
                return
            except ApiError as exc:  # 404 until the DAG processor has stored it
                if exc.status != 404:
                    raise
            except OSError:
                pass
            time.sleep(1)
        raise TimeoutError(f"DAG {dag_id} not parsed within {timeout} s")

    def trigger(self, dag_id: str, conf: dict[str, Any], run_id: str | None = None) -> str:
        self.wait_for_dag(dag_id)
        body: dict[str, Any] = {"logical_date": None, "conf": conf}
        if run_id:
            body["dag_run_id"] = run_id
        return str(self.request("POST", f"/api/v2/dags/{dag_id}/dagRuns", body)["dag_run_id"])

    def wait(self, run_id: str, dag_id: str, timeout: float = 300) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")["state"]
            if state in FINISHED:
                return str(state)
            time.sleep(1)
        raise TimeoutError(f"{dag_id} run {run_id} not finished within {timeout} s")

    def runs(self, dag_id: str) -> list[dict[str, Any]]:
        return list(self.request("GET", f"/api/v2/dags/{dag_id}/dagRuns?limit=100")["dag_runs"])

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        path = f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances?limit=500"
        return list(self.request("GET", path)["task_instances"])

    def tries(self, dag_id: str, run_id: str, task_id: str, map_index: int) -> list[dict]:
        path = f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/{map_index}/tries"
        return list(self.request("GET", path)["task_instances"])


_shared: dict[str, Any] = {}


def shared_stack(config: Any, workdir: Path) -> tuple[AirflowStack, Any]:
    """One stack (and its scripted LLM server) per pytest session, shared by the test modules that
    need a real scheduler; ``conftest.py`` runs those modules together and stops it after the last
    (:func:`stop_shared_stack`), and the session's end stops it at the latest. ``config`` is
    ``request.config``."""
    if "stack" not in _shared:
        from llm_server import LLMServer

        llm = LLMServer(api_key="sk-stack").start()
        config.add_cleanup(stop_shared_stack)
        connection = {"conn_type": "generic", "password": "sk-stack",
                      "extra": {"base_url": llm.base_url, "model": "gpt-4o"}}  # fmt: skip
        stack = AirflowStack(
            workdir,
            env={
                "ACTION100M_STORE": (workdir / "store").as_uri(),
                # The tests' videos and manifests lie in this session's temporary folders.
                "ACTION100M_ALLOWED_SOURCES": workdir.parent.as_uri(),
                "ACTION100M_RETRY_DELAY_SECONDS": "1",
                "ACTION100M_BACKFILL_MAX_ACTIVE_SHARDS": "2",
                "ACTION100M_BACKFILL_POKE_SECONDS": "2",
                "AIRFLOW_CONN_OPENAI_DEFAULT": json.dumps(connection),
            },
            pools={"gpu": 1, "llm": 2},
        )
        _shared.update(stack=stack, llm=llm)
        try:
            stack.start()
        except BaseException:  # a partial start still stops what it started, the LLM server too
            stop_shared_stack()
            raise
    return _shared["stack"], _shared["llm"]


def stop_shared_stack() -> None:
    """Stop the shared stack and its LLM server, if started: an idle stack still takes about a
    fifth of a core (scheduler passes, DAG processor, PostgreSQL). Safe to call twice."""
    stack, llm = _shared.pop("stack", None), _shared.pop("llm", None)
    if stack is not None:
        stack.stop()
    if llm is not None:
        llm.stop()
