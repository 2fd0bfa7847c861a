"""Housekeeping of Airflow's metadata database: ``airflow db clean`` on a schedule.

A year-long backfill of HowTo100M writes millions of task instances, XComs and audit log rows;
``clean_metadata`` deletes those older than a retention through Airflow's own ``db clean``
(``airflow.utils.db_cleanup.run_cleanup``), never a row of a run still going: the cut-off is
moved back to before the oldest unfinished run started (a backfill run may go on for weeks).

Task code may not use Airflow's own database session (the task runner blocks it), so the
database comes from the connection ``action100m_metadata_db`` (type ``postgres``, ``mysql`` or
``sqlite`` (file in ``host``); extra ``driver`` overrides the SQLAlchemy driver). Its password
never reaches a log line or ``os.environ``. ``remove_old_logs`` does the same for task log files.
"""

from __future__ import annotations

import logging
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from airflow.sdk import BaseHook
from airflow.sdk.exceptions import AirflowFailException, AirflowNotFoundException

log = logging.getLogger("action100m.airflow")

METADATA_CONN_ID = "action100m_metadata_db"
# What grows with every video: runs with their task instances (and, cascading, their tries,
# XComs and rendered fields), the audit log, jobs, triggers, callbacks and deadlines.
CLEAN_TABLES = (
    "dag_run",
    "task_instance",
    "task_instance_history",
    "task_reschedule",
    "xcom",
    "log",
    "job",
    "trigger",
    "callback",
    "deadline",
    "import_error",
)
# Counted before and after, for the log: the tables that grow per video.
COUNTED_TABLES = ("dag_run", "task_instance", "task_instance_history", "xcom", "log", "job")
UNFINISHED_RUNS = ("queued", "running")
DRIVERS = {"postgres": "postgresql+psycopg2", "mysql": "mysql+mysqldb", "sqlite": "sqlite"}


def metadata_url(conn: Any) -> Any:
    """The SQLAlchemy URL (password kept inside the URL object, hidden in its ``repr``)."""
    from sqlalchemy.engine import URL

    driver = conn.extra_dejson.get("driver") or DRIVERS.get(conn.conn_type or "")
    if not driver:
        raise AirflowFailException(
            f"connection {METADATA_CONN_ID}: type {conn.conn_type!r} is not a metadata database "
            f"({', '.join(DRIVERS)})"
        )
    if driver.startswith("sqlite"):
        return URL.create(driver, database=conn.host)
    return URL.create(
        driver,
        username=conn.login or None,
        password=conn.password or None,
        host=conn.host or None,
        port=conn.port or None,
        database=conn.schema or None,
    )


def metadata_engine() -> Any:
    from sqlalchemy import create_engine

    try:
        conn = BaseHook.get_connection(METADATA_CONN_ID)
    except AirflowNotFoundException:
        raise AirflowFailException(
            f"no connection {METADATA_CONN_ID}: add it (UI, CLI or a secrets backend) with the URI "
            "of Airflow's metadata database, e.g. postgres://user:password@host:5432/airflow"
        ) from None
    return create_engine(metadata_url(conn), pool_pre_ping=True)


def count_rows(session: Any, tables: tuple[str, ...] = COUNTED_TABLES) -> dict[str, int]:
    from sqlalchemy import func, select, table

    return {
        name: int(session.scalar(select(func.count()).select_from(table(name)))) for name in tables
    }


def cut_off(session: Any, retention_days: float, now: datetime | None = None) -> datetime:
    """``now - retention``, or just before the oldest unfinished run started if that is earlier."""
    from sqlalchemy import column, func, select, table

    cut = (now or datetime.now(UTC)) - timedelta(days=retention_days)
    runs = table("dag_run", column("start_date"), column("state"))
    oldest = session.scalar(
        select(func.min(runs.c.start_date)).where(runs.c.state.in_(UNFINISHED_RUNS))
    )
    if oldest is not None:
        oldest = oldest if oldest.tzinfo else oldest.replace(tzinfo=UTC)
        if oldest <= cut:
            log.info("a run started %s is still going: keeping everything from then on", oldest)
            cut = oldest - timedelta(seconds=1)
    return cut


def clean_metadata(retention_days: float, dry_run: bool = False, batch_size: int = 10_000) -> dict:
    """Run ``airflow db clean`` for :data:`CLEAN_TABLES` on rows older than ``retention_days``
    (no archive tables). Returns and logs the counts of :data:`COUNTED_TABLES` before and after."""
    import pendulum
    from airflow.utils.db_cleanup import run_cleanup
    from sqlalchemy.orm import Session

    if retention_days < 1:
        raise AirflowFailException(f"retention_days {retention_days} is below one day")
    engine = metadata_engine()
    try:
        with Session(engine) as session:
            before = count_rows(session)
            cut = cut_off(session, retention_days)
            log.info("airflow db clean: %s before %s%s", ", ".join(CLEAN_TABLES), cut.isoformat(),
                     " (dry run)" if dry_run else "")  # fmt: skip
            run_cleanup(
                clean_before_timestamp=pendulum.instance(cut),
                table_names=list(CLEAN_TABLES),
                dry_run=dry_run,
                confirm=False,
                skip_archive=True,
                session=session,
                batch_size=batch_size,
                error_on_cleanup_failure=True,
            )
            session.commit()
            after = count_rows(session)
    finally:
        engine.dispose()
    for name in COUNTED_TABLES:
        log.info("%s: %d row(s) -> %d", name, before[name], after[name])
    return {"before": before, "after": after, "cut_off": cut.isoformat(), "dry_run": dry_run}


def remove_old_logs(folder: str | os.PathLike[str], retention_days: float) -> dict[str, int]:
    """Delete task log files under ``folder`` last written more than ``retention_days`` ago,
    then the folders left empty. Returns the files and bytes removed."""
    root = Path(folder)
    before = datetime.now(UTC).timestamp() - retention_days * 86400
    files = removed = 0
    if not root.is_dir():
        log.info("no log folder %s: nothing to remove", root)
        return {"files": 0, "bytes": 0}
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink() and path.stat().st_mtime < before:
            size = path.stat().st_size
            path.unlink()
            files, removed = files + 1, removed + size
    for path in sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        if not any(path.iterdir()):
            path.rmdir()
    log.info("log folder %s: %d file(s), %d byte(s) older than %s day(s) removed",
             root, files, removed, retention_days)  # fmt: skip
    return {"files": files, "bytes": removed}


def maintenance_params(environ: dict[str, str] | None = None) -> dict[str, Any]:
    """The maintenance DAG's form: retention (``ACTION100M_RETENTION_DAYS``, 30) and a dry run."""
    from airflow.sdk import Param

    env = os.environ if environ is None else environ
    return {
        "retention_days": Param(
            int(env.get("ACTION100M_RETENTION_DAYS", "30")),
            type="integer",
            minimum=1,
            title="Retention (days)",
            description="Runs, task instances, XComs, audit log rows and task log files older "
            "than this are deleted; a run still going is always kept whole.",
        ),
        "dry_run": Param(
            False,
            type="boolean",
            title="Dry run",
            description="Only log what would be deleted.",
        ),
    }


def log_folder() -> str:
    from airflow.sdk import conf

    return str(conf.get("logging", "base_log_folder"))


def maintenance_schedule(environ: dict[str, str] | None = None) -> str | None:
    """``ACTION100M_MAINTENANCE_SCHEDULE`` (cron or preset; ``none``: triggered only), daily."""
    env = os.environ if environ is None else environ
    value = env.get("ACTION100M_MAINTENANCE_SCHEDULE", "@daily").strip()
    return None if value.lower() in ("", "none") else value
