"""Stage 3's batch mode under Airflow: the aggregate task defers to a trigger that polls the job
(no key in its stored kwargs), resumes by running again, and a spent budget skips the video."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from airflow_testenv import use_test_airflow_home
from batch_server import BatchServer

use_test_airflow_home()

KEY = "sk-batch-secret"


@pytest.fixture(autouse=True)
def plugins_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """The plugins folder on sys.path, as Airflow puts it (a test alone has no DagBag to)."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "plugins"))


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[BatchServer]:
    with BatchServer() as batch:
        conn = {"conn_type": "generic", "password": KEY,
                "extra": {"base_url": batch.base_url, "model": "scripted"}}  # fmt: skip
        monkeypatch.setenv("AIRFLOW_CONN_OPENAI_DEFAULT", json.dumps(conn))
        monkeypatch.delenv("OPENAI_API_KEY", raising=False)
        yield batch


def _events(trigger: Any) -> list[Any]:
    async def collect() -> list[Any]:
        return [event async for event in trigger.run()]

    return asyncio.run(collect())


def test_the_trigger_polls_until_the_job_ends_and_stores_no_key(server: BatchServer) -> None:
    from action100m_airflow.batch_defer import BatchJobTrigger
    from pydantic import SecretStr

    from action100m.config import AggregateConfig
    from action100m.llm.batch_api import make_batch_api
    from action100m.llm.messages import ChatRequest
    from action100m.services import Endpoint, Services

    cfg = AggregateConfig(base_url=server.base_url, model="scripted")
    services = Services().with_llm("openai", Endpoint(api_key=SecretStr(KEY)))
    job_id = make_batch_api(cfg, services).submit({"k1": ChatRequest("sys", ("hello",))}, "t")
    server.polls_before_done = 2
    server.fail_next(429)  # a rate-limited poll is polled again, not a failure
    trigger = BatchJobTrigger("openai", "scripted", server.base_url, job_id, 0.01, 4e9)
    path, kwargs = trigger.serialize()
    assert KEY not in json.dumps(kwargs) and path.endswith("BatchJobTrigger")
    events = _events(trigger)
    assert [e.payload["status"] for e in events] == ["finished"]
    assert events[0].payload["provider_status"] == "completed"
    polls = [p for m, p in server.requests if m == "GET" and p.endswith(job_id)]
    assert len(polls) == 4  # the 429, two "in progress", the end
    expired = BatchJobTrigger("openai", "scripted", server.base_url, job_id, 0.01, 0.0)
    assert [e.payload["status"] for e in _events(expired)] == ["timeout"]


def test_a_pending_job_defers_and_a_spent_budget_skips(server: BatchServer) -> None:
    from action100m_airflow.batch_defer import RESUME, BatchJobTrigger
    from action100m_airflow.tasks import _run_or_defer, failures_reported
    from airflow.sdk.exceptions import AirflowSkipException, TaskDeferred

    from action100m.config import load_settings
    from action100m.llm.batch_run import BatchPending
    from action100m.llm.budget import BudgetReached
    from action100m.stages import get_stage
    from action100m.stages.base import Runtime
    from action100m.store import ArtifactStore

    settings = load_settings(
        environ={}, overrides=["aggregate.mode=batch", "aggregate.budget_usd=1"]
    )
    runtime = Runtime(settings, ArtifactStore("memory://batch"))
    context = {"params": {}, "run_id": "manual__1"}
    seen: list[bool] = []

    def pending(stage: Any, rt: Runtime, target: Any) -> Any:
        seen.append(rt.defer_batches)
        raise BatchPending("job out", {"id": "batch_9", "number": 1}, 5.0)

    with pytest.raises(TaskDeferred) as deferred:
        _run_or_defer(pending, get_stage("aggregate"), runtime, None, context)
    assert seen == [True] and deferred.value.method_name == RESUME
    trigger = deferred.value.trigger
    assert isinstance(trigger, BatchJobTrigger) and trigger.job_id == "batch_9"
    assert trigger.poll_interval == 5.0
    assert settings.aggregate.budget_scope == "manual__1"  # the run's videos share the budget

    def spent(stage: Any, rt: Runtime, target: Any) -> Any:
        raise BudgetReached("video v: aggregate.budget_usd $1.00 reached: $1.02 spent")

    with pytest.raises(AirflowSkipException, match=r"\$1\.02 spent"):
        _run_or_defer(spent, get_stage("aggregate"), runtime, None, context)
    with pytest.raises(AirflowSkipException), failures_reported("aggregate", "v"):
        _run_or_defer(spent, get_stage("aggregate"), runtime, None, context)  # not a failure


def test_the_aggregate_task_can_resume_after_its_trigger() -> None:
    from airflow.dag_processing.dagbag import DagBag
    from airflow_testenv import REPO

    bag = DagBag(dag_folder=str(REPO / "dags" / "action100m_dag.py"))
    task = bag.dags["action100m"].get_task("video.aggregate")
    assert callable(getattr(task, "resume_after_batch", None))
    assert not hasattr(bag.dags["action100m"].get_task("video.caption"), "resume_after_batch")


def test_a_spent_backfill_budget_pauses_the_chain(tmp_path, monkeypatch) -> None:
    from action100m_airflow.backfill import _budget_spent

    from action100m.store import ArtifactStore

    store = ArtifactStore(tmp_path.as_uri())
    monkeypatch.setenv("ACTION100M_STORE", store.root)
    monkeypatch.delenv("AIRFLOW_CONN_ACTION100M_STORE", raising=False)
    params = {"overrides": ["aggregate.budget_usd=1", "aggregate.budget_scope=hf"]}
    assert _budget_spent(params) is None
    store.write_json(f"{store.root}/budget/hf/a.json", {"spent_usd": 0.6})
    assert _budget_spent(params) is None
    store.write_json(f"{store.root}/budget/hf/b.json", {"spent_usd": 0.5})
    reason = _budget_spent(params)
    assert reason is not None and "$1.1000" in reason and "larger aggregate.budget_usd" in reason
    assert _budget_spent({"overrides": ["aggregate.budget_usd=1"]}) is None  # no shared scope
