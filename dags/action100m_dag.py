"""### action100m: hierarchical action annotations for a batch of videos

Trigger with `videos` (IDs, paths or URIs; IDs go through the `source` template) and/or `videos_uri`
(the URI of such a list, one a line: how `action100m_backfill` passes a shard). Each video runs
**embed** (pool `gpu`, queue `gpu`) → **segment** → **caption** (pool `gpu`) → **aggregate**
(pool `llm`) → **publish** in its own mapped task group, labelled with its video ID; a failing
video never stops the others. **report** lists every video as done / failed (with the reason) /
skipped and writes it to `{store}/runs/{run_id}/report.json`; where an export is configured
(`action100m_export_uri`), it adds the run's published videos to it; then it updates the asset
`action100m_annotations` for downstream DAGs.

Artifacts go to the store of the `action100m_store` connection (or `ACTION100M_STORE`). The LLM
comes from `openai_default` / `anthropic_default`, the captioning server from `vllm_default`.
For more videos than one run takes, use the `action100m_backfill` DAG with a manifest.
"""

from __future__ import annotations

from typing import Any

from action100m_airflow import (
    ANNOTATIONS_ASSET,
    DAG_ID,
    STAGE_OPTIONS,
    STAGES,
    VIDEO_GROUP,
    run_options,
    task_defaults,
)
from action100m_airflow import tasks as pipeline_tasks
from action100m_airflow.batch_defer import deferrable_task
from action100m_airflow.params import run_params, videos_param, videos_uri_param
from airflow.sdk import TriggerRule, dag, task, task_group

# Rendered by Airflow's task runner before the task executes (from its resolved argument), so a
# running, failed or up-for-retry task is labelled with its video; an upstream-failed one never
# runs, and its Captions tab names the video instead.
VIDEO_LABEL = "{{ task.op_kwargs['video']['video_id'] }}"


def stage_task(stage: str) -> Any:
    """The task running one stage for one video; its map index shows the video ID."""

    # aggregate may defer on a batch job (aggregate.mode=batch): a decorator that can resume.
    decorator = deferrable_task if stage == "aggregate" else task

    @decorator(task_id=stage, map_index_template=VIDEO_LABEL, **STAGE_OPTIONS[stage])
    def run(video: dict[str, Any]) -> dict[str, Any]:
        return pipeline_tasks.run_stage(stage, video)

    return run


@dag(
    dag_id=DAG_ID,
    schedule=None,
    catchup=False,
    doc_md=__doc__,
    default_args=task_defaults(),
    **run_options(),  # runs and tasks at once, failure alerts; priorities: see action100m_airflow
    tags=["action100m"],
    params={
        "videos": videos_param(),
        "videos_uri": videos_uri_param(),
        **run_params(),
    },
)
def action100m() -> None:
    # Every task keeps the default retries: a deliberate failure (a bad parameter, failed videos
    # in the report) is an AirflowFailException, which is never retried; a passing S3 error is.
    @task
    def resolve_videos() -> list[dict[str, Any]]:
        return pipeline_tasks.resolve_videos()

    @task_group(group_id=VIDEO_GROUP)
    def video(item: dict[str, Any]) -> Any:
        summary = item
        for stage in STAGES:
            summary = stage_task(stage)(video=summary)
        return summary

    @task(trigger_rule=TriggerRule.ALL_DONE, outlets=[ANNOTATIONS_ASSET])
    def report() -> dict[str, Any]:
        return pipeline_tasks.write_report()

    video.expand(item=resolve_videos()) >> report()


action100m()
