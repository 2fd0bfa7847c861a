"""Task bodies of the ``action100m`` DAG: resolve the videos, run one stage for one video, report.

Only URIs and small records go through XCom: the video (ID, source URI, metadata URI), each stage's
record (its output's URI, reused or not, seconds, why skipped) and, from publish, the video's status
record. A ``PermanentError`` (corrupt video, bad key) or
invalid settings fail the task at once (``AirflowFailException``, no retry); anything else is
retried by Airflow with exponential backoff. Each failure is also pushed as an XCom ``failure``
(stage and reason) for the run report.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

from airflow.sdk import get_current_context
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from action100m_airflow import (
    ANNOTATIONS_ASSET,
    DAG_ID,
    EXPORT_ENV,
    EXPORT_VARIABLE,
    LLM_POOL_SLOTS_ENV,
    STAGES,
    VIDEO_GROUP,
)
from action100m_airflow.connections import ArtifactStoreHook, model_services

log = logging.getLogger("action100m.airflow")

FAILURE_KEY = "failure"


def build_runtime(params: dict[str, Any]) -> Any:
    """The library's ``Runtime`` for this run: the store from its connection, models from the
    params, endpoints and models of the LLM and vLLM connections as a settings layer under the
    params' explicit ``overrides``, and their keys as the runtime's services."""
    import os

    from action100m.config import load_settings, parse_assignments
    from action100m.errors import redact_logs
    from action100m.services import Services
    from action100m.stages.base import Runtime

    redact_logs()  # whatever a library logs in this task, keys in URLs are masked
    raw = params.get("overrides") or {}
    user = raw if isinstance(raw, dict) else parse_assignments([str(item) for item in raw])
    refuse_deployment_settings(user)
    store = ArtifactStoreHook().get_store()
    deployment, connection_keys = model_services(user.get("aggregate", {}).get("provider"))
    environ = dict(os.environ)  # a copy: the share below is for these settings only
    share_llm_limits(environ)
    settings = load_settings(
        profile=params.get("profile") or None,
        overrides=user,
        store=store.root,
        environ=environ,
        deployment=deployment,
    )
    own = Services.from_environment(
        vlm_key_env=settings.caption.api_key_env, asr_key_env=settings.fetch.asr_api_key_env
    )
    return Runtime(settings, store, own.overlay(connection_keys))


# Where workers connect and which keys they send: the deployment's (its variables and
# connections), never a run parameter, so whoever may trigger a run can neither make a worker
# fetch from internal addresses nor send a service's key to a server of their choosing.
DEPLOYMENT_SETTINGS = {
    "fetch": ("allowed_hosts", "asr_base_url", "asr_api_key_env"),
    "caption": ("base_url", "api_key_env"),
    "aggregate": ("base_url",),
    "embed": ("service_url",),
}


def refuse_deployment_settings(overrides: dict[str, Any]) -> None:
    """A run's ``overrides`` may not set any of :data:`DEPLOYMENT_SETTINGS`."""
    from action100m.config import ENV_PREFIX
    from action100m.errors import ConfigError

    for section, names in DEPLOYMENT_SETTINGS.items():
        given = overrides.get(section)
        for name in names:
            if isinstance(given, dict) and name in given:
                variable = f"{ENV_PREFIX}{section}__{name}".upper()
                raise ConfigError(
                    f"{section}.{name} is the deployment's setting ({variable}), "
                    "not a run parameter"
                )


def share_llm_limits(environ: dict[str, str]) -> None:
    """Up to ``LLM_POOL_SLOTS`` aggregate tasks run at once (the ``llm`` pool, sized from the same
    variable), each with its own rate limiter: each keeps that share of the account's limits
    (``aggregate.rate_share``), unless the setting is given explicitly."""
    from action100m.config import ENV_PREFIX

    slots = environ.get(LLM_POOL_SLOTS_ENV, "").strip()
    if slots:
        environ.setdefault(ENV_PREFIX + "AGGREGATE__RATE_SHARE", slots)


def _one_line(exc: BaseException, limit: int = 400) -> str:
    from action100m.errors import redact

    text = redact(" ".join(str(exc).split())) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


@contextlib.contextmanager
def failures_reported(stage: str, video_id: str | None) -> Iterator[None]:
    """Record why a task failed; fail at once (no retry) where a retry cannot help."""
    from action100m.errors import ConfigError, PermanentError

    try:
        yield
    except AirflowSkipException:  # a spent budget: the video stays pending, nothing failed
        raise
    except Exception as exc:
        permanent = isinstance(exc, PermanentError | ConfigError)
        reason = _one_line(exc)
        context = get_current_context()
        context["ti"].xcom_push(
            key=FAILURE_KEY,
            value={"video_id": video_id, "stage": stage, "error": reason, "permanent": permanent},
        )
        if permanent:
            raise AirflowFailException(f"{stage} failed, not retried: {reason}") from exc
        raise


def resolve_videos() -> list[dict[str, Any]]:
    """The run's videos as ``{video_id, uri, metadata}``, from the params: ``videos`` and the
    list at ``videos_uri`` (a backfill shard: only its URI travels through the conf)."""
    from action100m.batch import parse_video_list, read_video_list, resolve_batch
    from action100m.sources import allowed_locations

    params = get_current_context()["params"]
    with failures_reported("resolve", None):
        store = ArtifactStoreHook().get_store()
        # Whoever triggers a run reads only the store and the deployment's allowed prefixes.
        allowed = allowed_locations(store.root)
        entries = parse_video_list(params.get("videos"))
        list_uri = str(params.get("videos_uri") or "").strip()
        if list_uri:
            listed = read_video_list(store, list_uri, allowed)
            log.info("%d video(s) listed in %s", len(listed), list_uri)
            entries.extend(listed)
        videos = resolve_batch(
            entries, params.get("source"), params.get("metadata"), allowed=allowed
        )
    log.info("%d video(s) to process: %s", len(videos), ", ".join(v["video_id"] for v in videos))
    return videos


def run_stage(stage: str, video: dict[str, Any]) -> dict[str, Any]:
    """Run ``stage`` for one video; return the video with this stage's record added (and, from
    publish, the video's status record)."""
    from action100m.stages import get_stage
    from action100m.stages.base import Video
    from action100m.stages.base import run_stage as run
    from action100m.status import read_status

    context = get_current_context()
    video_id = video["video_id"]
    context["video_id"] = video_id  # type: ignore[typeddict-unknown-key]  # map_index_template
    with failures_reported(stage, video_id):
        runtime = build_runtime(context["params"])
        log.info("%s video %s: starting (store %s)", stage, video_id, runtime.store.root)
        target = Video(video_id, video.get("uri"), video.get("metadata"))
        record = _run_or_defer(run, get_stage(stage), runtime, target, context)
        status = read_status(runtime.store, video_id) if stage == STAGES[-1] else None
    summary = {**video, "stages": {**video.get("stages", {}), stage: record.to_json()}}
    if status is not None:
        summary["status"] = status
    outcome = (
        "reused" if record.reused else f"skipped ({record.skipped})" if record.skipped else "done"
    )
    log.info("%s video %s: %s in %.1f s -> %s", stage, video_id, outcome, record.seconds,
             record.uri or "(nothing)")  # fmt: skip
    return summary


def _run_or_defer(run: Any, stage: Any, runtime: Any, target: Any, context: Any) -> Any:
    """Run the stage; Stage 3 in batch mode defers while its job is out (the trigger polls it, the
    task runs again when it ends); a spent ``aggregate.budget_usd`` skips the video's rest (it
    stays pending) with the message saying how much was spent and how to go on."""
    import dataclasses

    from action100m.llm.batch_run import BatchPending
    from action100m.llm.budget import BudgetReached
    from action100m_airflow.batch_defer import defer_for

    cfg = runtime.settings.aggregate
    if stage.name == "aggregate" and cfg.budget_usd is not None and not cfg.budget_scope:
        cfg.budget_scope = str(context["params"].get("budget_scope") or context["run_id"])
    try:
        return run(stage, dataclasses.replace(runtime, defer_batches=stage.name == "aggregate"),
                   target)  # fmt: skip
    except BatchPending as pending:
        log.info("%s; deferring (polled every %.0f s)", pending, pending.poll_interval)
        raise defer_for(pending, cfg) from None
    except BudgetReached as exc:
        raise AirflowSkipException(str(exc)) from None


def _pull_all(ti: Any, task_id: str, key: str = "return_value") -> list[dict[str, Any]]:
    """Every XCom value of a mapped task, whatever the map index (values carry the video ID)."""
    values = ti.xcom_pull(task_ids=[task_id], key=key)
    if values is None:
        return []
    if isinstance(values, dict):
        return [values]
    return [value for value in values if isinstance(value, dict)]


def _states_by_video(ti: Any, run_id: str, videos: list[dict[str, Any]]) -> dict[str, dict]:
    task_ids = [f"{VIDEO_GROUP}.{stage}" for stage in STAGES]
    found = ti.get_task_states(dag_id=DAG_ID, task_ids=task_ids, run_ids=[run_id]).get(run_id, {})
    states: dict[str, dict[str, str | None]] = {}
    for index, video in enumerate(videos):
        states[video["video_id"]] = {
            stage: found.get(f"{VIDEO_GROUP}.{stage}_{index}") for stage in STAGES
        }
    return states


def write_report() -> dict[str, Any]:
    """Per video done / failed (with the reason) / skipped, tokens and cost; logged, written to
    ``{store}/runs/{run_id}/report.json``. Fails the task (and so the run) if any video failed."""
    from action100m.report import build_report, format_report, published_result

    context = get_current_context()
    ti, run_id = context["ti"], context["run_id"]
    videos = ti.xcom_pull(task_ids="resolve_videos")
    if not videos:
        raise AirflowFailException("no videos were resolved; see the resolve_videos task's log")
    store = ArtifactStoreHook().get_store()
    results = {
        r["video_id"]: published_result(store, r.get("stages", {}), r.get("status"))
        for r in _pull_all(ti, f"{VIDEO_GROUP}.{STAGES[-1]}")
    }
    failures: dict[str, dict[str, str]] = {}
    for stage in STAGES:
        for failure in _pull_all(ti, f"{VIDEO_GROUP}.{stage}", FAILURE_KEY):
            failures.setdefault(failure["video_id"], failure)
    report = build_report(videos, _states_by_video(ti, run_id, videos), results, failures)
    report.update(dag_id=DAG_ID, run_id=run_id)
    uri = store.report_uri(run_id)
    store.write_json(uri, report)
    log.info("%s\nreport written to %s", format_report(report), uri)
    exported = export_finished(store, report)
    context["outlet_events"][ANNOTATIONS_ASSET].extra = {"report": uri, "export": exported}
    failed = report["counts"]["failed"]
    if failed:
        raise AirflowFailException(f"{failed} of {len(videos)} video(s) failed; see {uri}")
    return {"report": uri, "counts": report["counts"], "export": exported}


def export_uri() -> str | None:
    """Where runs keep the dataset export: the variable, else the setting, else nowhere."""
    import os

    try:
        from airflow.sdk import Variable

        value = Variable.get(EXPORT_VARIABLE, default=None)
    except Exception:  # no variable backend here: the setting decides
        value = None
    return str(value or os.environ.get(EXPORT_ENV) or "") or None


def export_finished(store: Any, report: dict[str, Any]) -> dict[str, Any] | None:
    """Add this run's published videos to the configured export (incremental, in shards), so a
    backfill's export grows shard by shard; None where no export is configured."""
    target = export_uri()
    published = [v["video_id"] for v in report.get("videos", []) if v.get("status") == "done"]
    if target is None or not published:
        return None
    from action100m.shards import export_shards

    summary = export_shards(store, target, published)
    log.info("export %s: %d added, %d replaced, %d videos in all", summary["out"],
             summary["added"], summary["replaced"], summary["videos"])  # fmt: skip
    return summary
