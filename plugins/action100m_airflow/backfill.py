"""Task bodies of the ``action100m_backfill`` DAG: plan shards from a manifest, trigger them, go on.

Only URIs and small summaries go through XCom: each shard's video IDs are written to the store
(``{store}/backfill/{run_id}/shardNNNN.txt``) and the triggered ``action100m`` run gets that URI
(its ``videos_uri`` param). A backfill run plans at most ``max_shards`` shards (below Airflow's
``[core] max_map_length``) from where its ``offset`` points in the manifest; when the manifest goes
on, it triggers a continuation backfill run (same manifest, the next offset, no waiting) which the
DAG's ``max_active_runs=1`` starts once this run is over. Finished videos are left out when a run
plans, so running the same manifest again only does what is still missing: nothing, once all is
done.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import Context, conf, get_current_context
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from action100m_airflow import BACKFILL_DAG_ID, DAG_ID
from action100m_airflow.connections import ArtifactStoreHook
from action100m_airflow.tasks import failures_reported

log = logging.getLogger("action100m.airflow")

FORWARDED_PARAMS = ("source", "metadata", "profile", "overrides")
BACKFILL_PARAMS = ("manifest", "shard_size", "skip_done", "max_shards", "transcripts")
PLAN_TASK_ID = "plan_shards"
PLAN_KEY = "plan"
TRIGGER_TASK_ID = "trigger_shard"
CONTINUE_TASK_ID = "continue_backfill"
_FROM = re.compile(r"__from\d+$")


def continuation_run_id(run_id: str, offset: int) -> str:
    """The run ID of the backfill run going on from ``offset``: the first run's ID (never nested)
    plus ``__fromNNNNNNNN``, so every shard run of one backfill shares the first run's prefix."""
    return f"{_FROM.sub('', run_id)}__from{offset:08d}"


def max_shards_per_run(requested: int) -> int:
    """``requested``, capped by ``[core] max_map_length`` (Airflow refuses to map more)."""
    return max(1, min(requested, conf.getint("core", "max_map_length", fallback=1024)))


def plan_shards() -> list[dict[str, Any]]:
    """One ``{trigger_run_id, conf}`` per shard of the next bounded slice of the manifest; the
    shard's IDs go to the store and only their URI into the conf. The plan's figures (and where
    a continuation starts) are pushed as the XCom ``plan``."""
    from action100m.batch import (
        file_transcripts,
        max_videos_per_run,
        plan_window,
        read_manifest,
        write_video_list,
    )
    from action100m.sources import allowed_locations

    context = get_current_context()
    params, run_id, ti = context["params"], context["run_id"], context["ti"]
    with failures_reported("plan", None):
        size = int(params["shard_size"])
        if size > max_videos_per_run():
            raise AirflowFailException(
                f"shard_size {size} is above the per-run limit of {max_videos_per_run()}"
            )
        max_shards = max_shards_per_run(int(params.get("max_shards") or 1))
        offset = int(params.get("offset") or 0)
        store = ArtifactStoreHook().get_store()
        manifest = str(params["manifest"]).strip()
        allowed = allowed_locations(store.root)  # the manifest too: only where runs may read
        ids = read_manifest(manifest, store.options_for(manifest), allowed=allowed)
        skip_done = bool(params.get("skip_done", True))
        shards, next_offset, scanned = plan_window(store, ids, offset, size, max_shards, skip_done)
        transcripts = str(params.get("transcripts") or "").strip()
        if transcripts:  # HowTo100M's own ASR, filed for the fetch stage of each planned video
            file_transcripts(store, transcripts, [v for vids in shards for v in vids], allowed)
        uris = [store.shard_list_uri(run_id, index + 1) for index in range(len(shards))]
        for uri, videos in zip(uris, shards, strict=True):
            write_video_list(store, uri, videos)
    planned = sum(len(videos) for videos in shards)
    _log_forecast(params, store, [v for vids in shards for v in vids])
    log.info(
        "manifest %s: %d video(s); entries %d-%d looked at: %d already done, %d to do in %d "
        "shard(s) of up to %d (at most %d shard(s) per run)%s",
        manifest, len(ids), offset + 1, offset + scanned, scanned - planned, planned,
        len(shards), size, max_shards,
        f"; the rest (from entry {next_offset + 1}) goes to a continuation run"
        if next_offset is not None else "; this run reaches the end of the manifest",
    )  # fmt: skip
    ti.xcom_push(
        key=PLAN_KEY,
        value={
            "manifest": manifest,
            "total": len(ids),
            "offset": offset,
            "scanned": scanned,
            "next_offset": next_offset,
            "shard_sizes": [len(videos) for videos in shards],
        },
    )
    forwarded = {name: params.get(name) for name in FORWARDED_PARAMS}
    return [
        {
            "trigger_run_id": f"{BACKFILL_DAG_ID}__{run_id}__shard{index + 1:04d}of{len(shards):04d}",
            "conf": {**forwarded, "videos_uri": uri},
        }
        for index, uri in enumerate(uris)
    ]


class ShardTriggerOperator(TriggerDagRunOperator):
    """Triggers one shard's ``action100m`` run, logging the backfill's progress first."""

    def execute(self, context: Context) -> Any:
        ti = context["ti"]
        planned = ti.xcom_pull(task_ids=PLAN_TASK_ID) or []
        plan = ti.xcom_pull(task_ids=PLAN_TASK_ID, key=PLAN_KEY) or {}
        run_ids = [entry["trigger_run_id"] for entry in planned]
        done, failed = (
            ti.get_dr_count(dag_id=DAG_ID, run_ids=run_ids, states=[state]) if run_ids else 0
            for state in ("success", "failed")
        )
        index = ti.map_index or 0
        sizes = plan.get("shard_sizes") or []
        log.info(
            "shard %d/%d: %s video(s) listed in %s -> %s run %s; so far %d/%d shard(s) done, "
            "%d failed",
            index + 1, len(run_ids), sizes[index] if index < len(sizes) else "?",
            (self.conf or {}).get("videos_uri"), DAG_ID, self.trigger_run_id, done,
            len(run_ids), failed,
        )  # fmt: skip
        return super().execute(context)


def shard_states(ti: Any, run_id: str, count: int) -> list[str | None]:
    """The state of each of this run's ``count`` shard triggers, in shard order."""
    states = ti.get_task_states(
        dag_id=BACKFILL_DAG_ID, task_ids=[TRIGGER_TASK_ID], run_ids=[run_id]
    ).get(run_id, {})
    return [states.get(f"{TRIGGER_TASK_ID}_{index}") for index in range(count)]


class ContinuationTriggerOperator(TriggerDagRunOperator):
    """Triggers the backfill run going on from where this run's plan stopped, without waiting:
    with ``max_active_runs=1`` it starts when this run is over. Skipped at the manifest's end.

    A run whose every shard failed does not go on: that is a wrong ``source`` template, dead
    store credentials or the like, which would fail the rest of the manifest the same way."""

    def execute(self, context: Context) -> Any:
        ti, params, run_id = context["ti"], context["params"], context["run_id"]
        plan = ti.xcom_pull(task_ids=PLAN_TASK_ID, key=PLAN_KEY)
        if not plan:
            raise AirflowSkipException("no plan (see the plan_shards task's log): not continuing")
        next_offset = plan.get("next_offset")
        if next_offset is None:
            raise AirflowSkipException(f"the manifest ends in this run ({plan['total']} entries)")
        planned = len(plan.get("shard_sizes") or [])
        if planned and not any(s == "success" for s in shard_states(ti, run_id, planned)):
            raise AirflowFailException(
                f"all {planned} shard(s) of this run failed: not going on with the manifest "
                f"(entries {next_offset + 1}-{plan['total']} left). Fix the cause (see each "
                f"{DAG_ID} run's report), then trigger {BACKFILL_DAG_ID} again: finished videos "
                f"are skipped (or start at offset={next_offset})."
            )
        if reason := _budget_spent(params):  # the chain pauses: the next shards would stop too
            raise AirflowSkipException(f"not going on with the manifest: {reason}")
        self.trigger_run_id = continuation_run_id(run_id, int(next_offset))
        self.conf = {
            **{name: params.get(name) for name in (*BACKFILL_PARAMS, *FORWARDED_PARAMS)},
            "offset": int(next_offset),
        }
        log.info(
            "manifest %s: entries %d-%d of %d left to %s run %s",
            plan["manifest"], next_offset + 1, plan["total"], plan["total"], BACKFILL_DAG_ID,
            self.trigger_run_id,
        )  # fmt: skip
        return super().execute(context)


def _log_forecast(params: dict[str, Any], store: Any, video_ids: list[str]) -> None:
    """Stage 3's expected calls, tokens and dollars for the planned videos, in the plan's log."""
    from action100m.config import load_settings, parse_assignments
    from action100m.estimate import forecast_plan

    raw = params.get("overrides") or {}
    user = raw if isinstance(raw, dict) else parse_assignments([str(item) for item in raw])
    try:
        settings = load_settings(profile=params.get("profile") or None, overrides=user,
                                 store=store.root)  # fmt: skip
        log.info("Stage 3 forecast:\n%s", forecast_plan(settings, store, video_ids))
    except Exception as exc:  # a forecast never stops the plan
        log.warning("no Stage 3 forecast: %s", exc)


def _budget_spent(params: dict[str, Any]) -> str | None:
    """Why the backfill's shared Stage 3 budget (``aggregate.budget_scope``) is spent, or None."""
    from action100m.llm.budget import exhausted
    from action100m_airflow.tasks import build_runtime

    runtime = build_runtime(params)
    return exhausted(runtime.store, runtime.settings.aggregate)


def missing_with_reasons(store: Any, video_ids: list[str], shown: int = 20) -> str:
    """``a (published without annotations: no LLM configured …), b (not published)``: the
    reasons the videos' status records give, in the same words as their run reports."""
    from action100m.status import read_status

    parts = []
    for video_id in video_ids[:shown]:
        status = read_status(store, video_id)
        skipped = (status or {}).get("skipped") or {}
        why = "; ".join(f"{stage}: {reason}" for stage, reason in skipped.items())
        why = f"published without every stage ({why})" if why else "not published"
        parts.append(f"{video_id} ({why})")
    more = f" and {len(video_ids) - shown} more" if len(video_ids) > shown else ""
    return ", ".join(parts) + more


def summarize() -> dict[str, Any]:
    """Shards done / total and videos done / total, in the log; fails if any shard failed."""
    from action100m.batch import pending_videos, read_video_list

    context = get_current_context()
    ti, run_id = context["ti"], context["run_id"]
    planned = ti.xcom_pull(task_ids=PLAN_TASK_ID)
    plan = ti.xcom_pull(task_ids=PLAN_TASK_ID, key=PLAN_KEY) or {}
    if planned is None:
        raise AirflowFailException("no plan: see the plan_shards task's log")
    going_on = plan.get("next_offset") is not None
    then = f"; continuing from manifest entry {plan['next_offset'] + 1}" if going_on else ""
    if not planned:
        log.info("backfill: nothing to do, every video looked at is already done%s", then)
        return {"shards": 0, "succeeded": 0, "failed": 0, "videos_left": 0, "continues": going_on}
    states = shard_states(ti, run_id, len(planned))
    succeeded = sum(state == "success" for state in states)
    store = ArtifactStoreHook().get_store()
    videos = [vid for e in planned for vid in read_video_list(store, e["conf"]["videos_uri"])]
    left = pending_videos(store, videos)
    log.info(
        "backfill: %d/%d shard(s) succeeded; %d/%d video(s) done this run%s%s",
        succeeded,
        len(planned),
        len(videos) - len(left),
        len(videos),
        f"; still missing: {missing_with_reasons(store, left)}" if left else "",
        then,
    )
    for entry, state in zip(planned, states, strict=True):
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
    return {
        "shards": len(planned),
        "succeeded": succeeded,
        "failed": 0,
        "videos_left": len(left),
        "continues": going_on,
    }
