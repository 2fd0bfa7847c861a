"""### action100m_maintenance: keep Airflow's metadata database and task logs bounded

Daily (`ACTION100M_MAINTENANCE_SCHEDULE`), **clean_metadata** runs Airflow's own `airflow db clean` for runs, task instances (with
their tries and XComs), the audit log, jobs, triggers, callbacks and deadlines older than
`retention_days` (never a row of a run still going), and **clean_task_logs** deletes task log
files as old from `[logging] base_log_folder` (shared by the workers in compose; a host with
logs of its own needs a run there). The database is the connection `action100m_metadata_db`.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from action100m_airflow import maintenance as housekeeping
from action100m_airflow import task_defaults
from airflow.sdk import dag, get_current_context, task

MAINTENANCE_DAG_ID = "action100m_maintenance"


@dag(
    dag_id=MAINTENANCE_DAG_ID,
    schedule=housekeeping.maintenance_schedule(),  # daily unless the deployment says otherwise
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    default_args={**task_defaults(), "execution_timeout": timedelta(hours=6)},
    tags=["action100m", "maintenance"],
    params=housekeeping.maintenance_params(),
)
def action100m_maintenance() -> None:
    @task
    def clean_metadata() -> dict[str, Any]:
        params = get_current_context()["params"]
        return housekeeping.clean_metadata(params["retention_days"], params["dry_run"])

    @task
    def clean_task_logs() -> dict[str, int]:
        params = get_current_context()["params"]
        if params["dry_run"]:
            return {"files": 0, "bytes": 0}
        return housekeeping.remove_old_logs(housekeeping.log_folder(), params["retention_days"])

    clean_metadata() >> clean_task_logs()


action100m_maintenance()
