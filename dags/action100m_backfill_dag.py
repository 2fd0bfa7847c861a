"""### action100m_backfill: a manifest of videos, in runs of `shard_size`

Reads `manifest` (a list of video IDs, one a line, or the HowTo100M CSV with a `video_id` column),
leaves out finished videos (`skip_done`: published with annotations; a video whose aggregation was
skipped for want of an LLM is not finished), writes each shard of `shard_size` IDs to the store and
triggers one `action100m` run per shard with that list's URI (`videos_uri`), a bounded number at a
time (`ACTION100M_BACKFILL_MAX_ACTIVE_SHARDS`, default 2). One run plans at most `max_shards` shards
(`ACTION100M_BACKFILL_MAX_SHARDS_PER_RUN`, default 256, capped by `[core] max_map_length`) from
manifest entry `offset`; **continue_backfill** triggers a run for the rest (run ID `…__fromNNNNNNNN`),
which starts once this one is over (`max_active_runs=1`), so a 1.2M-video manifest goes through in
a chain of runs. **summary** logs shards done / total and which videos are still missing.
Triggering the same manifest again does no duplicate work. Each shard's wait is deferred to the
triggerer (`airflow triggerer` must run, as in compose): a waiting shard holds no worker slot, and
still counts towards the shards at a time.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

from action100m_airflow import BACKFILL_DAG_ID, DAG_ID, task_defaults
from action100m_airflow import backfill as backfill_tasks
from action100m_airflow.params import backfill_params, run_params
from airflow.sdk import TriggerRule, dag, task

# Two shards keep the pools fed across one shard's tail; each more lengthens every scheduler pass,
# which re-checks every waiting task of every running run (benchmarks/RESULTS.md, Orchestration).
MAX_ACTIVE_SHARDS = int(os.environ.get("ACTION100M_BACKFILL_MAX_ACTIVE_SHARDS", "2"))
POKE_SECONDS = int(os.environ.get("ACTION100M_BACKFILL_POKE_SECONDS", "30"))


@dag(
    dag_id=BACKFILL_DAG_ID,
    schedule=None,
    catchup=False,
    # One backfill run at a time: two runs of the same manifest would start duplicate
    # action100m runs. A continuation run is triggered without waiting and queues behind this one.
    max_active_runs=1,
    doc_md=__doc__,
    default_args=task_defaults(),
    tags=["action100m"],
    params={**backfill_params(), **run_params()},
)
def action100m_backfill() -> None:
    # plan_shards and summary keep the default retries (see dags/action100m_dag.py); a trigger
    # is not retried: its run is there or it is not.
    @task(task_id=backfill_tasks.PLAN_TASK_ID)
    def plan_shards() -> list[dict[str, Any]]:
        return backfill_tasks.plan_shards()

    planned = plan_shards()
    triggered = backfill_tasks.ShardTriggerOperator.partial(
        task_id=backfill_tasks.TRIGGER_TASK_ID,
        trigger_dag_id=DAG_ID,
        wait_for_completion=True,
        # The wait (days) goes to the triggerer, which polls the shard run's state; no worker
        # slot is held meanwhile. Deferred tasks still count in max_active_tis_per_dag.
        deferrable=True,
        poke_interval=POKE_SECONDS,
        fail_when_dag_is_paused=True,
        openlineage_inject_parent_info=False,
        max_active_tis_per_dag=MAX_ACTIVE_SHARDS,
        map_index_template="{{ task.trigger_run_id.rsplit('__', 1)[-1] }}",
        retries=0,
        # Waits for its shard's run, which may take days on one GPU; every task of that run has
        # a timeout of its own, so the wait always ends.
        execution_timeout=None,
    ).expand_kwargs(planned)

    # The rest of the manifest: a backfill run of its own, queued behind this one (no waiting,
    # so max_active_runs=1 cannot deadlock). It goes on when some shard failed, not when all did.
    going_on = backfill_tasks.ContinuationTriggerOperator(
        task_id=backfill_tasks.CONTINUE_TASK_ID,
        trigger_dag_id=BACKFILL_DAG_ID,
        wait_for_completion=False,
        skip_when_already_exists=True,
        openlineage_inject_parent_info=False,
        trigger_rule=TriggerRule.ALL_DONE,
        retries=0,
        execution_timeout=timedelta(minutes=5),
    )

    @task(trigger_rule=TriggerRule.ALL_DONE)
    def summary() -> dict[str, Any]:
        return backfill_tasks.summarize()

    triggered >> [going_on, summary()]


action100m_backfill()
