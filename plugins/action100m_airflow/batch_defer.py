"""Stage 3 in batch mode under Airflow: while a batch job is out, the aggregate task defers to
:class:`BatchJobTrigger` (no worker slot held), then runs again, which collects the job and
submits the next round (:mod:`action100m.llm.batch_run` keeps the state in the store, so the
rerun never resubmits).

The shape is the official ``openai`` provider's batch operator and trigger (a deferrable task, a
trigger polling ``batches.retrieve`` every ``poll_interval`` until a terminal status or
``end_time``), for both providers and with the library's own adapters doing the polling. The
trigger's kwargs (stored in the metadata database) hold the job, provider, model and endpoint,
never a key: the trigger reads the LLM connection itself when it runs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from airflow.providers.standard.decorators.python import _PythonDecoratedOperator
from airflow.sdk.bases.decorator import task_decorator_factory
from airflow.sdk.exceptions import TaskDeferred
from airflow.triggers.base import BaseTrigger, TriggerEvent

RESUME = "resume_after_batch"
# A batch job ends within 24 h (the providers' completion window); the trigger gives up later.
DEADLINE_S = 26 * 3600


class BatchJobTrigger(BaseTrigger):
    """Polls one batch job until the provider finishes it (or ``end_time`` passes)."""

    def __init__(self, provider: str, model: str, base_url: str | None, job_id: str,
                 poll_interval: float, end_time: float) -> None:  # fmt: skip
        super().__init__()
        self.provider, self.model, self.base_url = provider, model, base_url
        self.job_id, self.poll_interval, self.end_time = job_id, poll_interval, end_time

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__name__}",
            {"provider": self.provider, "model": self.model, "base_url": self.base_url,
             "job_id": self.job_id, "poll_interval": self.poll_interval,
             "end_time": self.end_time},
        )  # fmt: skip

    def _poller(self) -> Callable[[], Any]:
        """A blocking ``state()`` of the job with the connection's key (read here, at run)."""
        from action100m.config import AggregateConfig
        from action100m.llm.batch_api import make_batch_api
        from action100m.services import Services
        from action100m_airflow.connections import model_services

        _, keys = model_services(self.provider)
        cfg = AggregateConfig(provider=self.provider, model=self.model, base_url=self.base_url)  # type: ignore[arg-type]
        api = make_batch_api(cfg, Services.from_environment().overlay(keys))
        return lambda: api.state(self.job_id)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from action100m.errors import ServiceError

        poll = await asyncio.to_thread(self._poller)
        while time.time() < self.end_time:
            try:
                state = await asyncio.to_thread(poll)
            except ServiceError as exc:  # a 429 or a blip: the next poll asks again
                self.log.warning("batch job %s: %s; polling again", self.job_id, exc)
            else:
                if state.finished:
                    yield TriggerEvent({"status": "finished", "job_id": self.job_id,
                                        "provider_status": state.status})  # fmt: skip
                    return
                self.log.info("batch job %s: %s %s", self.job_id, state.status, state.counts)
            await asyncio.sleep(self.poll_interval)
        yield TriggerEvent({"status": "timeout", "job_id": self.job_id})


def defer_for(pending: Any, cfg: Any) -> TaskDeferred:
    """The deferral of an aggregate task whose job is out (``pending``: a ``BatchPending``)."""
    trigger = BatchJobTrigger(cfg.provider, cfg.model, cfg.base_url, pending.job["id"],
                              pending.poll_interval, time.time() + DEADLINE_S)  # fmt: skip
    return TaskDeferred(trigger=trigger, method_name=RESUME)


class _DeferrableStageOperator(_PythonDecoratedOperator):
    """A TaskFlow stage task that may defer on a batch job and, when its trigger fires, runs its
    callable again (which resumes from the store)."""

    def resume_after_batch(self, context: Any, event: dict[str, Any] | None = None) -> Any:
        if event and event.get("status") == "timeout":
            from airflow.sdk.exceptions import AirflowException

            raise AirflowException(
                f"batch job {event.get('job_id')} did not finish within {DEADLINE_S // 3600} h; "
                "the task's retry polls it again"
            )
        return self.execute(context)


def deferrable_task(**kwargs: Any) -> Any:
    """``@task(...)`` for a stage task that may defer on a batch job."""
    return task_decorator_factory(decorated_operator_class=_DeferrableStageOperator, **kwargs)
