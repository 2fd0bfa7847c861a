"""Airflow plugin: with ``ACTION100M_PRELOAD=1`` the scheduler imports torch and the model code once,
at start, so the LocalExecutor's task processes (forked from it) inherit them instead of paying
the import in every embed and caption task (about 5 s a task on a small CPU machine).

Only for the LocalExecutor (``airflow standalone``, the embedded setup, the tests): Celery workers
and other executors start their task processes elsewhere and are not affected.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import time
from typing import Any

from airflow.listeners import hookimpl
from airflow.plugins_manager import AirflowPlugin

from action100m.stages import PIPELINE

log = logging.getLogger(__name__)

PRELOAD_MODULES = (
    "torch",
    "transformers",
    "transformers.models.vjepa2.modeling_vjepa2",
    "transformers.models.qwen3_vl.modeling_qwen3_vl",
    "av",
    "action100m.pipeline",
    *(f"action100m.stages.{spec.name}" for spec in PIPELINE),
)


def _is_scheduler() -> bool:
    return sys.argv[1:2] == ["scheduler"]


@hookimpl
def on_starting(component: Any) -> None:
    """Called as each Airflow job starts; preloads in the scheduler only, and only when asked."""
    if os.environ.get("ACTION100M_PRELOAD", "0") != "1" or not _is_scheduler():
        return
    if all(name in sys.modules for name in PRELOAD_MODULES):
        return  # a task process forked from the preloaded scheduler
    started = time.monotonic()
    for name in PRELOAD_MODULES:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            log.warning("action100m preload: cannot import %s (%s)", name, exc)
    log.info("action100m preload: %d modules in %.1f s", len(PRELOAD_MODULES),
             time.monotonic() - started)  # fmt: skip


class Action100MPreloadPlugin(AirflowPlugin):
    name = "action100m_preload"
    listeners = [sys.modules[__name__]]
