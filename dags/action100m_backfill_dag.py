"""### action100m_backfill: a manifest of videos, in runs of `shard_size`

Reads `manifest` (a list of video IDs, one a line, or the HowTo100M CSV with a `video_id` column),
leaves out videos whose per-video document exists (`skip_done`), and triggers one `action100m` run
per shard of `shard_size` videos, a bounded number at a time (`ACTION100M_BACKFILL_MAX_ACTIVE_SHARDS`,
default 4). **summary** logs shards done / total and which videos are still missing. Triggering
the same manifest again does no duplicate work. Set `[operators] default_deferrable = True` (with a
triggerer running) so waiting shards hold no worker slot.
"""

from __future__ import annotations

import os
from typing import Any

from action100m_airflow import BACKFILL_DAG_ID, DAG_ID, task_defaults
from action100m_airflow import backfill as backfill_tasks
from action100m_airflow.params import run_params
from airflow.sdk import Param, TriggerRule, dag, task

MAX_ACTIVE_SHARDS = int(os.environ.get("ACTION100M_BACKFILL_MAX_ACTIVE_SHARDS", "4"))
POKE_SECONDS = int(os.environ.get("ACTION100M_BACKFILL_POKE_SECONDS", "30"))


@dag(
    dag_id=BACKFILL_DAG_ID,
    schedule=None,
    catchup=False,
    doc_md=__doc__,
    default_args=task_defaults(),
    tags=["action100m"],
    params={
        "manifest": Param(
            "",
            type="string",
            title="Manifest",
            description="URI or path of a video-ID list (one a line) or the HowTo100M CSV "
            "with a video_id column.",
        ),
        "shard_size": Param(
            64,
            type="integer",
            minimum=1,
            maximum=1024,
            title="Videos per run",
            description="Videos in each triggered action100m run (at most the per-run limit).",
        ),
        "skip_done": Param(
            True,
            type="boolean",
            title="Skip finished videos",
            description="Leave out videos whose per-video document already exists.",
        ),
        **run_params(),
    },
)
def action100m_backfill() -> None:
    @task(retries=0)
    def plan_shards() -> list[dict[str, Any]]:
        return backfill_tasks.plan_shards()

    triggered = backfill_tasks.ShardTriggerOperator.partial(
        task_id=backfill_tasks.TRIGGER_TASK_ID,
        trigger_dag_id=DAG_ID,
        wait_for_completion=True,
        poke_interval=POKE_SECONDS,
        fail_when_dag_is_paused=True,
        openlineage_inject_parent_info=False,
        max_active_tis_per_dag=MAX_ACTIVE_SHARDS,
        map_index_template="{{ task.trigger_run_id.rsplit('__', 1)[-1] }}",
        retries=0,
        execution_timeout=None,
    ).expand_kwargs(plan_shards())

    @task(trigger_rule=TriggerRule.ALL_DONE, retries=0)
    def summary() -> dict[str, Any]:
        return backfill_tasks.summarize()

    triggered >> summary()


action100m_backfill()
