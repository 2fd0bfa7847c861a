"""The ``action100m_maintenance`` DAG under the real scheduler on PostgreSQL: a run's rows aged
past the retention (its run, task instances, XComs, audit log) are deleted by Airflow's own
``db clean``, the rows of a newer run are kept, and so are the rows of a run still going however
old; task log files older than the retention go, newer ones stay."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from airflow_stack import AirflowStack, shared_stack
from airflow_testenv import REPO, use_test_airflow_home

use_test_airflow_home()

DAG_ID = "action100m_maintenance"
# The tables whose rows of one run the test ages, with the column db clean reads.
AGED = {"dag_run": "start_date", "task_instance": "start_date", "xcom": "timestamp", "log": "dttm"}


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    return shared_stack(request.config, tmp_path_factory.mktemp("airflow-stack"))[0]


@pytest.fixture(scope="module")
def engine(stack: AirflowStack) -> Any:
    from sqlalchemy import create_engine

    made = create_engine(stack.env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
    yield made
    made.dispose()


def _rows(engine: Any, run_id: str) -> dict[str, int]:
    from sqlalchemy import text

    with engine.connect() as conn:
        return {
            name: conn.execute(text(f"SELECT count(*) FROM {name} WHERE run_id = :r"), {"r": run_id})
            .scalar_one()
            for name in AGED
        }  # fmt: skip


def _age(engine: Any, run_id: str, days: int) -> None:
    from sqlalchemy import text

    with engine.begin() as conn:
        for name, column in AGED.items():
            conn.execute(
                text(f"UPDATE {name} SET {column} = {column} - make_interval(days => :d) "
                     "WHERE run_id = :r"), {"d": days, "r": run_id},
            )  # fmt: skip


def _run(stack: AirflowStack, conf: dict[str, Any]) -> str:
    run_id = stack.trigger(DAG_ID, conf)
    assert stack.wait(run_id, DAG_ID, timeout=120) == "success"
    return run_id


def test_old_runs_and_logs_go_recent_and_unfinished_ones_stay(
    stack: AirflowStack, engine: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(REPO / "plugins"))
    logs = Path(stack.env["AIRFLOW_HOME"]) / "logs" / "dag_id=old_dag"
    logs.mkdir(parents=True, exist_ok=True)
    old_log, new_log = logs / "old.log", logs / "new.log"
    old_log.write_text("old"), new_log.write_text("new")
    past = time.time() - 60 * 86400
    os.utime(old_log, (past, past))

    first = _run(stack, {"retention_days": 30})
    assert all(count > 0 for count in _rows(engine, first).values()), _rows(engine, first)
    assert new_log.exists() and not old_log.exists()
    _age(engine, first, 60)
    _guard_keeps_an_unfinished_run(engine, first)

    second = _run(stack, {"retention_days": 30})
    assert _rows(engine, first) == dict.fromkeys(AGED, 0)
    kept = _rows(engine, second)
    assert kept["dag_run"] == 1 and kept["task_instance"] == 2 and kept["xcom"] >= 1, kept
    summary = stack.request(
        "GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{second}/taskInstances/clean_metadata/xcomEntries/"
        "return_value",
    )["value"]  # fmt: skip
    assert summary["after"]["task_instance"] < summary["before"]["task_instance"]
    assert new_log.exists()


def _guard_keeps_an_unfinished_run(engine: Any, run_id: str) -> None:
    """The cut-off moves back to before the oldest run still going, however old it is (seen in a
    transaction rolled back, so the scheduler never sees that run as running)."""
    from action100m_airflow.maintenance import cut_off
    from sqlalchemy import text
    from sqlalchemy.orm import Session

    with Session(engine) as session:
        now = datetime.now(UTC)
        assert now - cut_off(session, 30, now) == timedelta(days=30)
        session.execute(
            text("UPDATE dag_run SET state = 'running' WHERE run_id = :r"), {"r": run_id}
        )
        started = session.execute(
            text("SELECT start_date FROM dag_run WHERE run_id = :r"), {"r": run_id}
        ).scalar_one()
        assert cut_off(session, 30, now) == started - timedelta(seconds=1)
        session.rollback()
