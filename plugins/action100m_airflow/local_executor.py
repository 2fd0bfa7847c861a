"""Airflow's LocalExecutor, holding a ``parallelism`` slot for each workload it hands a worker.

In the pinned Airflow (3.3.2) ``LocalExecutor._process_workloads`` puts a workload on its workers'
queue without recording it as running (apache/airflow PR #71914, open), so the executor reports
every slot free. The scheduler then queues each ready task at once, and the workers take them
first come, first served: ``[core] parallelism`` bounds nothing, and ``priority_weight`` stops
deciding what runs next, since the choice is made when a slot frees, not when the task is queued
(a real scheduler test saw every video's first stage start before any video's second one).

With the key recorded, the scheduler queues only what a free worker will start, and it picks the
heaviest ready task each time: a started video's next stage before a new video's first. Select it
with ``AIRFLOW__CORE__EXECUTOR=action100m_airflow.local_executor.LocalExecutor``. Drop it once the
pinned Airflow records the key itself (the Celery and Kubernetes executors already do).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.executors import local_executor


class LocalExecutor(local_executor.LocalExecutor):
    def _process_workloads(self, workload_list: Sequence[Any]) -> None:
        super()._process_workloads(workload_list)
        # Freed by change_state when the worker reports the workload's end, as every other
        # executor's running set is.
        self.running.update(workload.key for workload in workload_list)
