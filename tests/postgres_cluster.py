"""Throwaway PostgreSQL clusters for the Airflow stacks of tests and benchmarks.

Each stack gets a cluster of its own (a port, a folder, nothing shared), started from a copy of a
template made once per process: a stopped cluster whose ``airflow`` database already holds
Airflow's migrated schema. Copying it takes well under a second where ``initdb`` plus
``airflow db migrate`` take seconds of CPU per stack.
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from airflow_testenv import migrate_metadata_database

PG_BIN = Path(os.environ.get("ACTION100M_PG_BIN", "/usr/lib/postgresql/15/bin"))
# Settings that change what ``airflow db migrate`` creates (FAB adds its own tables), by default.
_SCHEMA_SETTINGS = {
    "AIRFLOW__CORE__AUTH_MANAGER": (
        "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
    ),
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PostgresCluster:
    """``initdb`` (or a template's copy) + ``pg_ctl start`` as the ``postgres`` user in a
    temporary folder."""

    def __init__(self) -> None:
        self.folder: Path | None = None  # made by start(), so an unstarted cluster leaves nothing
        self.port = free_port()
        self.as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    @property
    def url(self) -> str:
        """SQLAlchemy URL of the ``airflow`` database."""
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/airflow"

    def _run(self, *command: str) -> None:
        subprocess.run([*self.as_postgres, *command], check=True, capture_output=True)

    def start(self, template: Path | None = None) -> str:
        """Start the cluster, a copy of ``template``'s data folder if given, else a fresh one
        with an empty ``airflow`` database; returns the database's SQLAlchemy URL."""
        self.folder = Path(tempfile.mkdtemp(prefix="a100m-pg-"))
        if self.as_postgres:
            shutil.chown(self.folder, "postgres")
        self.folder.chmod(0o755)
        data = str(self.folder / "data")
        if template is None:
            self._run(str(PG_BIN / "initdb"), "-D", data, "-A", "trust", "-U", "postgres")
        else:  # as root, cp -a keeps the postgres user's ownership and the 0700 mode
            subprocess.run(["cp", "-a", str(template), data], check=True, capture_output=True)
        # pg_stat_statements: benchmarks count the SQL statements Airflow sends per task.
        options = (
            f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off"
            " -c shared_preload_libraries=pg_stat_statements"
        )
        self._run(
            str(PG_BIN / "pg_ctl"), "-D", data, "-o", options, "-w",
            "-l", str(self.folder / "postgres.log"), "start",
        )  # fmt: skip
        if template is None:
            self._run(str(PG_BIN / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "airflow")
        return self.url

    def query(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        """Rows of one statement on the ``airflow`` database (its own connection, committed)."""
        import psycopg2

        connection = psycopg2.connect(host="127.0.0.1", port=self.port, user="postgres",
                                      dbname="airflow")  # fmt: skip
        try:
            with connection, connection.cursor() as cursor:
                cursor.execute(sql, args)
                return list(cursor.fetchall()) if cursor.description else []
        finally:
            connection.close()

    def shut_down(self) -> None:
        """Stop the server, keeping the data folder."""
        if self.folder is not None and (self.folder / "data").exists():
            subprocess.run(
                [*self.as_postgres, str(PG_BIN / "pg_ctl"), "-D", str(self.folder / "data"),
                 "-m", "fast", "-w", "stop"],
                capture_output=True,
            )  # fmt: skip

    def stop(self) -> None:
        if self.folder is None:
            return
        self.shut_down()
        shutil.rmtree(self.folder, ignore_errors=True)
        self.folder = None


def migrated_template(env: dict[str, str]) -> Path:
    """The data folder of a stopped cluster whose ``airflow`` database Airflow's schema was
    migrated into under ``env``'s schema settings; made once per process, removed at its exit."""
    return _migrated_template(
        tuple((name, env.get(name) or default) for name, default in _SCHEMA_SETTINGS.items())
    )


@functools.cache
def _migrated_template(settings: tuple[tuple[str, str], ...]) -> Path:
    cluster = PostgresCluster()
    try:
        url = cluster.start()
        home = tempfile.mkdtemp(prefix="a100m-pg-template-home-")
        try:
            migrate_metadata_database(
                home, {**dict(settings), "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": url}
            )
        finally:
            shutil.rmtree(home, ignore_errors=True)
        cluster.shut_down()
    except BaseException:
        cluster.stop()
        raise
    assert cluster.folder is not None
    atexit.register(shutil.rmtree, cluster.folder, ignore_errors=True)
    return cluster.folder / "data"
