"""Task bodies of the ``action100m`` DAG: resolve the videos, run one stage for one video, report.

Only URIs and small summaries go through XCom. A ``PermanentError`` (corrupt video, bad key) or
invalid settings fail the task at once (``AirflowFailException``, no retry); anything else is
retried by Airflow with exponential backoff. Each failure is also pushed as an XCom ``failure``
(stage and reason) for the run report.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from typing import Any

from airflow.sdk import get_current_context
from airflow.sdk.exceptions import AirflowFailException

from action100m_airflow import DAG_ID, LLM_POOL_SLOTS_ENV, STAGES, VIDEO_GROUP
from action100m_airflow.connections import ArtifactStoreHook, model_service_settings

log = logging.getLogger("action100m.airflow")

FAILURE_KEY = "failure"


def build_runtime(params: dict[str, Any]) -> tuple[Any, Any]:
    """``(settings, store)`` for this run: store from its connection, models from the params,
    LLM and vLLM endpoints from their connections. The connections enter as the library's
    ``ACTION100M_SECTION__KEY`` variables, so explicit ``overrides`` win, as they do over env."""
    import os

    from action100m.config import ENV_PREFIX, load_settings, parse_assignments

    raw = params.get("overrides") or {}
    user = raw if isinstance(raw, dict) else parse_assignments([str(item) for item in raw])
    store = ArtifactStoreHook().get_store()
    services = model_service_settings(user.get("aggregate", {}).get("provider"))
    environ = dict(os.environ)
    for dotted, value in services.items():
        environ[ENV_PREFIX + dotted.upper().replace(".", "__")] = value
    share_llm_limits(environ)
    settings = load_settings(
        profile=params.get("profile") or None, overrides=user, store=store.root, environ=environ
    )
    return settings, store


def share_llm_limits(environ: dict[str, str]) -> None:
    """Up to ``LLM_POOL_SLOTS`` aggregate tasks run at once (the ``llm`` pool, sized from the same
    variable), each with its own rate limiter: each keeps that share of the account's limits
    (``aggregate.rate_share``), unless the setting is given explicitly."""
    from action100m.config import ENV_PREFIX

    slots = environ.get(LLM_POOL_SLOTS_ENV, "").strip()
    if slots:
        environ.setdefault(ENV_PREFIX + "AGGREGATE__RATE_SHARE", slots)


def _one_line(exc: BaseException, limit: int = 400) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


@contextlib.contextmanager
def failures_reported(stage: str, video_id: str | None) -> Iterator[None]:
    """Record why a task failed; fail at once (no retry) where a retry cannot help."""
    from action100m.errors import ConfigError, PermanentError

    try:
        yield
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

    params = get_current_context()["params"]
    with failures_reported("resolve", None):
        entries = parse_video_list(params.get("videos"))
        list_uri = str(params.get("videos_uri") or "").strip()
        if list_uri:
            listed = read_video_list(ArtifactStoreHook().get_store(), list_uri)
            log.info("%d video(s) listed in %s", len(listed), list_uri)
            entries.extend(listed)
        videos = resolve_batch(entries, params.get("source"), params.get("metadata"))
    log.info("%d video(s) to process: %s", len(videos), ", ".join(v["video_id"] for v in videos))
    return videos


def _already_done(settings: Any, store: Any, stage: str, video_id: str) -> bool:
    """Whether the stage finished before (its ``_SUCCESS`` exists). The per-video document is
    always rewritten from the finished stages, so ``publish`` never counts as done before."""
    if stage == "publish":
        return False
    return bool(store.is_done(store.stage_dir(video_id, stage, settings.stage_key(stage))))


def _call_stage(settings: Any, store: Any, stage: str, video: dict[str, Any]) -> str | None:
    from action100m import pipeline

    video_id = video["video_id"]
    if stage == "embed":
        pipeline.save_metadata(store, video_id, video.get("metadata"))
        return pipeline.run_embed(settings, store, video_id, video["uri"])
    runner = {
        "segment": pipeline.run_segment,
        "caption": pipeline.run_caption,
        "aggregate": pipeline.run_aggregate,
        "publish": pipeline.run_publish,
    }[stage]
    return runner(settings, store, video_id)


def run_stage(stage: str, video: dict[str, Any]) -> dict[str, Any]:
    """Run ``stage`` for one video; return the video's summary extended with this stage."""
    context = get_current_context()
    video_id = video["video_id"]
    context["video_id"] = video_id  # type: ignore[typeddict-unknown-key]  # map_index_template
    with failures_reported(stage, video_id):
        settings, store = build_runtime(context["params"])
        reused = _already_done(settings, store, stage, video_id)
        log.info(
            "%s video %s: %s (store %s)",
            stage,
            video_id,
            "finished before, reusing" if reused else "starting",
            store.root,
        )
        started = time.monotonic()
        uri = _call_stage(settings, store, stage, video)
        seconds = round(time.monotonic() - started, 3)
    record = {"uri": uri, "reused": reused or uri is None, "seconds": seconds}
    summary = {**video, "stages": {**video.get("stages", {}), stage: record}}
    notes = list(video.get("notes", []))
    if stage == "aggregate":
        if uri is None:
            reason = _llm_unavailable_reason(settings)
            notes.append(f"aggregate skipped: {reason}")
            summary["aggregate_skipped"] = reason
        elif not reused:  # tokens and cost of this run only
            summary["usage"] = _usage(store, uri)
    if stage == "publish":
        summary["document"] = uri
        earlier = [r["reused"] for name, r in summary["stages"].items() if name != "publish"]
        summary["reused_all"] = all(earlier)
    summary["notes"] = notes
    log.info("%s video %s: done in %.1f s -> %s", stage, video_id, seconds, uri or "(skipped)")
    return summary


def _llm_unavailable_reason(settings: Any) -> str:
    try:
        from action100m.stages.aggregate import llm_unavailable_reason
    except ImportError:
        return "no LLM configured"
    return llm_unavailable_reason(settings) or "no LLM configured"


def _usage(store: Any, aggregate_uri: str) -> dict[str, float]:
    """Token counts and cost of the aggregate stage (numbers only, from its ``usage.json``)."""
    from action100m.batch import usage_totals

    return usage_totals(store, aggregate_uri)


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
    from action100m.batch import build_report, format_report, report_uri

    context = get_current_context()
    ti, run_id = context["ti"], context["run_id"]
    videos = ti.xcom_pull(task_ids="resolve_videos")
    if not videos:
        raise AirflowFailException("no videos were resolved; see the resolve_videos task's log")
    results = {r["video_id"]: r for r in _pull_all(ti, f"{VIDEO_GROUP}.publish")}
    failures: dict[str, dict[str, str]] = {}
    for stage in STAGES:
        for failure in _pull_all(ti, f"{VIDEO_GROUP}.{stage}", FAILURE_KEY):
            failures.setdefault(failure["video_id"], failure)
    report = build_report(videos, _states_by_video(ti, run_id, videos), results, failures)
    report.update(dag_id=DAG_ID, run_id=run_id)
    store = ArtifactStoreHook().get_store()
    uri = report_uri(store, run_id)
    store.write_json(uri, report)
    log.info("%s\nreport written to %s", format_report(report), uri)
    failed = report["counts"]["failed"]
    if failed:
        raise AirflowFailException(f"{failed} of {len(videos)} video(s) failed; see {uri}")
    return {"report": uri, "counts": report["counts"]}
