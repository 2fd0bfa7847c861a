"""Failure visibility: a video failing for good, a shard run failing, a shard run far overdue.

Each is one log line (``action100m.alerts``) and, where the deployment configured them, a call
of every Airflow notifier listed in the variable ``action100m_notifiers`` (or, without it, the
setting ``ACTION100M_NOTIFIERS``): a JSON list of ``{"class": "dotted.path.Notifier", "kwargs":
{...}}``, e.g. ``airflow.providers.slack.notifications.slack.SlackNotifier`` with its
``slack_conn_id``; secrets stay in the notifiers' connections. A notifier that fails is logged
and never fails the task or the run. Imported at parse time: light imports only.

The overdue alert is a Deadline Alert on each ``action100m`` run (``shard_deadline``): queued
more than ``ACTION100M_SHARD_DEADLINE_HOURS`` ago and not finished, the triggerer calls
:func:`shard_overdue`. Off unless that setting is given (compose's .env.example and the Helm values
give 24): in Airflow 3.3.2 ``airflow dags test`` / ``dag.test()`` of a DAG with a Deadline Alert
fails when the run succeeds (it looks the alerts up by the definitions instead of their IDs,
``DeadlineAlert.get_by_id``), which would break the demo; the real scheduler is not affected.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import os
from collections.abc import Callable
from datetime import timedelta
from typing import Any

log = logging.getLogger("action100m.alerts")

NOTIFIERS_VARIABLE = "action100m_notifiers"
NOTIFIERS_ENV = "ACTION100M_NOTIFIERS"


def notifier_spec() -> str:
    """The configured list (JSON text): the variable, else the setting, else none."""
    try:
        from airflow.sdk import Variable

        value = Variable.get(NOTIFIERS_VARIABLE, default=None)
    except Exception:  # no variable backend here (e.g. outside a task): the setting decides
        value = None
    return str(value or os.environ.get(NOTIFIERS_ENV) or "[]")


def load_notifiers(spec: str) -> list[Callable[[Any], Any]]:
    """The notifiers a JSON list names, made with their kwargs; a bad entry is logged, skipped."""
    try:
        entries = json.loads(spec)
    except ValueError as exc:
        log.error("%s is not JSON (%s): no notifier called", NOTIFIERS_VARIABLE, exc)
        return []
    made = []
    for entry in entries if isinstance(entries, list) else [entries]:
        try:
            module, _, name = str(entry["class"]).rpartition(".")
            made.append(
                getattr(importlib.import_module(module), name)(**(entry.get("kwargs") or {}))
            )
        except Exception as exc:
            log.error("notifier %r cannot be made: %s", entry, exc)
    return made


def notify(message: str, context: Any, notifiers: list[Callable[[Any], Any]] | None = None) -> int:
    """Log ``message`` as an error and call each notifier with the context; returns how many
    notifiers were called without an error."""
    log.error("%s", message)
    called = 0
    for notifier in load_notifiers(notifier_spec()) if notifiers is None else notifiers:
        try:
            _call(notifier, context)
            called += 1
        except Exception as exc:
            log.error("notifier %s failed: %s", type(notifier).__name__, exc)
    return called


def _call(notifier: Callable[[Any], Any], context: Any) -> None:
    """``notifier(context)``: a ``BaseNotifier`` renders its templates first, which needs the
    SDK's DAG in the context; where a DAG callback has only the scheduler's (``dag.test()``), its
    ``notify`` is called with the fields as written."""
    try:
        notifier(context)
    except AttributeError as exc:
        if "get_template_env" not in str(exc) or not hasattr(notifier, "notify"):
            raise
        notifier.notify(context)


def _reason(context: Any) -> str:
    exc = context.get("exception")
    return f"{type(exc).__name__}: {exc}"[:400] if exc is not None else "see the task's log"


def video_failed(context: Any) -> None:
    """``on_failure_callback`` of each stage task: called once its retries are spent."""
    ti = context["ti"]
    video = ti.rendered_map_index or f"map index {ti.map_index}"
    notify(
        f"video {video} failed for good at stage {ti.task_id.rsplit('.', 1)[-1]} "
        f"(run {context['run_id']}, try {ti.try_number}): {_reason(context)}",
        context,
    )


def shard_failed(context: Any) -> None:
    """``on_failure_callback`` of the ``action100m`` DAG: a run (a backfill's shard) failed."""
    run = context.get("dag_run")
    run_id = getattr(run, "run_id", None) or context.get("run_id")
    notify(
        f"action100m run {run_id} failed ({context.get('reason') or 'a task failed'}); its "
        "report task lists each video's reason",
        context,
    )


async def shard_overdue(context: dict[str, Any] | None = None, **_: Any) -> None:
    """The Deadline Alert's callback (in the triggerer): a run still going past its deadline."""
    run = (context or {}).get("dag_run") or {}
    deadline = (context or {}).get("deadline") or {}
    message = (
        f"action100m run {run.get('dag_run_id')} is overdue: queued {run.get('queued_at')}, "
        f"still {run.get('state')} past its deadline {deadline.get('deadline_time')}"
    )
    await asyncio.to_thread(notify, message, context or {})


def shard_deadline(environ: dict[str, str] | None = None) -> Any:
    """The Deadline Alert of each ``action100m`` run (``ACTION100M_SHARD_DEADLINE_HOURS``;
    unset or 0: none)."""
    from airflow.sdk.definitions.callback import AsyncCallback
    from airflow.sdk.definitions.deadline import DeadlineAlert, DeadlineReference

    env = os.environ if environ is None else environ
    hours = float(env.get("ACTION100M_SHARD_DEADLINE_HOURS") or 0)
    if hours <= 0:
        return None
    return DeadlineAlert(
        reference=DeadlineReference.DAGRUN_QUEUED_AT,
        interval=timedelta(hours=hours),
        callback=AsyncCallback(shard_overdue),
        name="action100m run overdue",
    )
