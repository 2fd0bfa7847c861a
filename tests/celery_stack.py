"""The compose topology natively: ``AirflowStack`` with the CeleryExecutor, a Redis broker and one
Celery worker per compose worker service, configured from ``docker-compose.yaml`` itself.

    with CeleryStack(workdir, services={"minio:9000": "127.0.0.1:PORT"}) as stack:
        run_id = stack.trigger("action100m", {...})
        stack.kill_worker("airflow-worker-gpu")    # as if its container died
        stack.start_worker("airflow-worker-gpu")

The Airflow environment is the ``x-airflow-common`` block of the compose file (executor, broker,
result backend, default queue, store, ...) with each compose hostname replaced by a loopback
address; the worker commands are those of the compose services. Each worker gets a hostname of its
own (``--celery-hostname`` and, as in a container, ``HOSTNAME``, which task instances record).
Every process is started in its own session and stopped by its id; a worker is stopped with
the task processes it started (those run in process groups of their own).
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml
from airflow_stack import REPO, VENV_BIN, AirflowStack, free_port, kill_tree
from postgres_cluster import PG_BIN, PostgresCluster

COMPOSE_FILE = REPO / "docker-compose.yaml"
WORKER_SERVICES = ("airflow-worker", "airflow-worker-gpu")
# Compose settings that only make sense inside the containers: a password file under /opt, a
# health-check port every scheduler would share, secrets the stack generates itself.
CONTAINER_ONLY = {
    "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS",
    "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE",
    "AIRFLOW__CORE__FERNET_KEY",
    "AIRFLOW__API_AUTH__JWT_SECRET",
    "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK",
}
_DEFAULTED = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}")


def container_hostname() -> str:
    """``[core] hostname_callable`` of the workers: ``HOSTNAME`` as a container sets it."""
    return os.environ.get("HOSTNAME") or socket.getfqdn()


def compose_file() -> dict[str, Any]:
    return dict(yaml.safe_load(COMPOSE_FILE.read_text()))


def _interpolate(value: str) -> str:
    """``${VAR:-default}`` -> ``default`` (no ``.env``: the compose file's own defaults)."""
    return _DEFAULTED.sub(lambda m: m.group(2) or "", value).replace("$$", "$")


def compose_environment(services: dict[str, str]) -> dict[str, str]:
    """The ``x-airflow-common`` environment with each ``host[:port]`` key of ``services``
    replaced by its loopback address, container-only settings left out."""
    env: dict[str, str] = {}
    for key, raw in compose_file()["x-airflow-common"]["environment"].items():
        if key in CONTAINER_ONLY:
            continue
        value = _interpolate(str(raw))
        if "://" in value:
            parts = urlsplit(value)
            userinfo, _, hostport = parts.netloc.rpartition("@")
            hostport = services.get(hostport, hostport)
            value = parts._replace(
                netloc=f"{userinfo}@{hostport}" if userinfo else hostport
            ).geturl()
        env[key] = value
    return env


def worker_command(service: str) -> list[str]:
    """``airflow`` + the compose service's command, e.g. ``celery worker --queues gpu ...``."""
    command = compose_file()["services"][service]["command"]
    words = command if isinstance(command, list) else shlex.split(str(command))
    return [str(VENV_BIN / "airflow"), *words]


class ComposePostgres(PostgresCluster):
    """The throwaway cluster with the compose file's role (``airflow``) and database."""

    def start(self, template: Path | None = None) -> str:
        url = super().start(template)
        self._run(
            str(PG_BIN / "createuser"), "-h", "127.0.0.1", "-p", str(self.port), "-s", "airflow"
        )
        return url


class RedisServer:
    """``redis-server`` on a loopback port, no persistence, stopped by its process id."""

    def __init__(self) -> None:
        self.port = free_port()
        self.folder = Path(tempfile.mkdtemp(prefix="a100m-redis-"))
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server not found: `make system-deps` installs it")
        with open(self.folder / "redis.log", "wb") as log:  # the child keeps its own copy
            self.process = subprocess.Popen(
                [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", str(self.folder)],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited; see {self.folder}/redis.log")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock,
            ):
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return self
            time.sleep(0.2)
        raise TimeoutError(f"redis-server not answering after {timeout} s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.folder, ignore_errors=True)


class CeleryStack(AirflowStack):
    """Scheduler, DAG processor, API server and the compose file's Celery workers."""

    def __init__(
        self,
        workdir: Path,
        services: dict[str, str] | None = None,
        env: dict[str, str] | None = None,
        pools: dict[str, int] | None = None,
        worker_concurrency: int = 2,
    ) -> None:
        super().__init__(workdir, env=env, pools=pools)
        self.postgres = ComposePostgres()
        self.redis = RedisServer()
        self.services = dict(services or {})
        self.worker_concurrency = worker_concurrency
        self.worker_hostnames = {name: name.removeprefix("airflow-") for name in WORKER_SERVICES}

    def environment(self, database_url: str) -> dict[str, str]:
        services = {
            "postgres": f"127.0.0.1:{self.postgres.port}",
            "redis:6379": f"127.0.0.1:{self.redis.port}",
            "airflow-apiserver:8080": f"127.0.0.1:{self.api_port}",
            **self.services,
        }
        env = super().environment(database_url)
        env.update(compose_environment(services))
        env.update(
            {
                "ACTION100M_PRELOAD": "0",  # the scheduler forks no tasks under Celery
                "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(self.worker_concurrency),
                "AIRFLOW__CELERY__SYNC_PARALLELISM": "1",
            }
        )
        env.update(self.extra_env)
        return env

    def start(self) -> CeleryStack:
        """Redis, then the Airflow services, then the workers; on failure stops what started."""
        try:
            self.redis.start()
            super().start()
            for service in WORKER_SERVICES:
                self.start_worker(service)
            for service in WORKER_SERVICES:
                self.wait_worker(service)
        except BaseException:
            self.stop()
            raise
        return self

    def worker_log(self, service: str) -> Path:
        return self.workdir / "logs" / f"{service}.log"

    def start_worker(self, service: str) -> None:
        hostname = self.worker_hostnames[service]
        env = {
            **self.env,
            "HOSTNAME": hostname,
            "AIRFLOW__CORE__HOSTNAME_CALLABLE": f"{__name__}.container_hostname",
            "PYTHONPATH": os.pathsep.join(
                p for p in (str(Path(__file__).parent), self.env.get("PYTHONPATH")) if p
            ),
        }
        command = [
            *worker_command(service),
            "--celery-hostname", hostname,
            "--pid", str(self.workdir / f"{service}.pid"),
            "--skip-serve-logs",  # one host: the API server reads the task logs from disk
        ]  # fmt: skip
        with open(self.worker_log(service), "ab") as log:  # the child keeps its own copy
            self.processes[service] = subprocess.Popen(
                command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def wait_worker(self, service: str, timeout: float = 120) -> None:
        """Until the worker answers a Celery ping through the broker."""
        from celery import Celery

        node = f"celery@{self.worker_hostnames[service]}"
        app = Celery(broker=self.env["AIRFLOW__CELERY__BROKER_URL"])
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if self.processes[service].poll() is not None:
                    raise RuntimeError(f"{service} exited; see {self.worker_log(service)}")
                with contextlib.suppress(OSError):
                    if app.control.ping(destination=[node], timeout=1.0):
                        return
                time.sleep(0.5)
        finally:
            app.close()
        raise TimeoutError(f"{service} not ready after {timeout} s; see {self.worker_log(service)}")

    def kill_worker(self, service: str) -> None:
        process = self.processes.pop(service)
        kill_tree(process.pid)
        process.wait(timeout=10)

    def stop(self) -> None:
        try:
            for service in WORKER_SERVICES:  # the workers and their task processes first
                if service in self.processes:
                    self.kill_worker(service)
            super().stop()
        finally:
            self.redis.stop()
