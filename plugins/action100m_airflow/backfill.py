"""Task bodies of the ``action100m_backfill`` DAG: plan shards from a manifest, then summarise.

Finished videos (their per-video document exists) are left out before sharding, so running the
same manifest again only triggers runs for what is still missing: nothing, once all is done.
"""

from __future__ import annotations

import logging
from typing import Any

from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import Context, get_current_context
from airflow.sdk.exceptions import AirflowFailException

from action100m_airflow import BACKFILL_DAG_ID, DAG_ID
from action100m_airflow.connections import ArtifactStoreHook
from action100m_airflow.tasks import failures_reported

log = logging.getLogger("action100m.airflow")

FORWARDED_PARAMS = ("source", "metadata", "profile", "overrides")
TRIGGER_TASK_ID = "trigger_shard"


def plan_shards() -> list[dict[str, Any]]:
    """One ``{trigger_run_id, conf}`` per shard of the videos still to do."""
    from action100m.batch import max_videos_per_run, pending_videos, read_manifest, shard

    context = get_current_context()
    params, run_id = context["params"], context["run_id"]
    with failures_reported("plan", None):
        size = int(params["shard_size"])
        if size > max_videos_per_run():
            raise AirflowFailException(
                f"shard_size {size} is above the per-run limit of {max_videos_per_run()}"
            )
        store = ArtifactStoreHook().get_store()
        manifest = str(params["manifest"]).strip()
        same_protocol = manifest.split("://")[0] == store.root.split("://")[0]
        ids = read_manifest(manifest, store.storage_options if same_protocol else None)
        todo = pending_videos(store, ids) if params.get("skip_done", True) else ids
    shards = shard(todo, size)
    log.info(
        "manifest %s: %d video(s), %d already done, %d to do in %d shard(s) of up to %d",
        manifest,
        len(ids),
        len(ids) - len(todo),
        len(todo),
        len(shards),
        size,
    )
    conf_base = {name: params.get(name) for name in FORWARDED_PARAMS}
    return [
        {
            "trigger_run_id": f"{BACKFILL_DAG_ID}__{run_id}__shard{index + 1:04d}of{len(shards):04d}",
            "conf": {**conf_base, "videos": videos},
        }
        for index, videos in enumerate(shards)
    ]


class ShardTriggerOperator(TriggerDagRunOperator):
    """Triggers one shard's ``action100m`` run, logging the backfill's progress first."""

    def execute(self, context: Context) -> Any:
        ti = context["ti"]
        planned = ti.xcom_pull(task_ids="plan_shards") or []
        run_ids = [entry["trigger_run_id"] for entry in planned]
        done, failed = (
            ti.get_dr_count(dag_id=DAG_ID, run_ids=run_ids, states=[state]) if run_ids else 0
            for state in ("success", "failed")
        )
        videos = (self.conf or {}).get("videos", [])
        log.info(
            "shard %d/%d: %d video(s) (%s) -> %s run %s; so far %d/%d shard(s) done, %d failed",
            (ti.map_index or 0) + 1, len(run_ids), len(videos), ", ".join(videos[:5]),
            DAG_ID, self.trigger_run_id, done, len(run_ids), failed,
        )  # fmt: skip
        return super().execute(context)


def summarize() -> dict[str, Any]:
    """Shards done / total and videos done / total, in the log; fails if any shard failed."""
    from action100m.batch import pending_videos

    context = get_current_context()
    ti, run_id = context["ti"], context["run_id"]
    planned = ti.xcom_pull(task_ids="plan_shards")
    if planned is None:
        raise AirflowFailException("no plan: see the plan_shards task's log")
    if not planned:
        log.info("backfill: nothing to do, every video in the manifest is already done")
        return {"shards": 0, "succeeded": 0, "failed": 0, "videos_left": 0}
    states = ti.get_task_states(
        dag_id=BACKFILL_DAG_ID, task_ids=[TRIGGER_TASK_ID], run_ids=[run_id]
    ).get(run_id, {})
    shard_states = [states.get(f"{TRIGGER_TASK_ID}_{index}") for index in range(len(planned))]
    succeeded = sum(state == "success" for state in shard_states)
    videos = [vid for entry in planned for vid in entry["conf"]["videos"]]
    left = pending_videos(ArtifactStoreHook().get_store(), videos)
    log.info(
        "backfill: %d/%d shard(s) succeeded; %d/%d video(s) done this backfill%s",
        succeeded,
        len(planned),
        len(videos) - len(left),
        len(videos),
        f"; still missing: {', '.join(left[:20])}{' …' if len(left) > 20 else ''}" if left else "",
    )
    for entry, state in zip(planned, shard_states, strict=True):
        if state != "success":
            log.warning(
                "shard %s (%s run %s): %s",
                entry["trigger_run_id"].rsplit("__", 1)[-1],
                DAG_ID,
                entry["trigger_run_id"],
                state,
            )
    failed = len(planned) - succeeded
    if failed:
        raise AirflowFailException(
            f"{failed} of {len(planned)} shard(s) failed; each {DAG_ID} run's report task says "
            "which videos and why. Trigger the backfill again to retry what is missing."
        )
    return {"shards": len(planned), "succeeded": succeeded, "failed": 0, "videos_left": len(left)}
