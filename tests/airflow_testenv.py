"""An Airflow home for in-process tests (``DagBag``, ``dag.test()``): SQLite in a temporary folder,
this checkout's DAGs and plugins, short retry delays. Call :func:`use_test_airflow_home` before
anything imports ``airflow`` (Airflow reads its configuration once, at import)."""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
_MARKER = "ACTION100M_TEST_AIRFLOW_HOME"


def use_test_airflow_home() -> Path:
    """Configure (once per process) and return the test Airflow home."""
    if os.environ.get(_MARKER):
        return Path(os.environ[_MARKER])
    if "airflow" in sys.modules:
        raise RuntimeError("airflow was imported before the test Airflow home was configured")
    home = Path(tempfile.mkdtemp(prefix="a100m-airflow-home-"))
    atexit.register(shutil.rmtree, home, ignore_errors=True)
    os.environ.update(
        {
            _MARKER: str(home),
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
            "ACTION100M_RETRY_DELAY_SECONDS": "0.5",
        }
    )
    return home


def migrate_metadata_database(home: Path | str, settings: dict[str, str]) -> None:
    """``airflow db migrate`` with ``home`` as ``AIRFLOW_HOME`` and ``settings`` (the database's
    URL among them) over this process's environment."""
    env = {**os.environ, "AIRFLOW_HOME": str(home), "AIRFLOW__CORE__LOAD_EXAMPLES": "False"}
    env.update(settings)
    airflow = str(Path(sys.executable).parent / "airflow")
    subprocess.run([airflow, "db", "migrate"], check=True, capture_output=True, env=env)


@functools.cache
def migrated_sqlite_database() -> Path:
    """An ``airflow.db`` holding Airflow's migrated schema, made once per process in a home of
    its own (removed at exit). A fresh home copies it instead of running ``db migrate``."""
    home = Path(tempfile.mkdtemp(prefix="a100m-sqlite-template-"))
    atexit.register(shutil.rmtree, home, ignore_errors=True)
    database = home / "airflow.db"
    migrate_metadata_database(
        home, {"AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{database}"}
    )
    return database


def migrated_airflow_home() -> Path:
    """The test home with its SQLite metadata database created (once per process)."""
    home = use_test_airflow_home()
    if not (home / ".migrated").exists():
        shutil.copyfile(migrated_sqlite_database(), home / "airflow.db")
        (home / ".migrated").touch()
    return home


def run_dag_test(
    conf: dict[str, Any], dag_id: str = "action100m"
) -> tuple[str, dict[tuple[str, str], Any]]:
    """``dag.test()`` of this checkout's DAG with ``conf``: the run's ID and its task instances
    by (task ID, label), the label being the video's ID where Airflow rendered one."""
    from airflow.dag_processing.dagbag import DagBag

    dag = DagBag(dag_folder=str(REPO / "dags")).dags[dag_id]
    run = dag.test(run_conf=conf)
    instances = {(ti.task_id, ti.rendered_map_index or str(ti.map_index)): ti
                 for ti in run.get_task_instances()}  # fmt: skip
    return str(run.run_id), instances
