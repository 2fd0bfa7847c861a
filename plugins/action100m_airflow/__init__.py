"""Airflow glue for action100m: connections to settings, stage tasks, run report, backfill.

Imported by the DAG files at parse time, so this package's ``__init__`` stays light: constants and
task defaults only. The library (``action100m``) is imported inside the task functions.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

DAG_ID = "action100m"
BACKFILL_DAG_ID = "action100m_backfill"
VIDEO_GROUP = "video"
STAGES = ("embed", "segment", "caption", "aggregate", "publish")
GPU_POOL = "gpu"
LLM_POOL = "llm"
# Slots of the `llm` pool where the deployment sets them (compose's .env, scripts/airflow_env.sh);
# aggregate tasks split the account's rate limits by it.
LLM_POOL_SLOTS_ENV = "LLM_POOL_SLOTS"
GPU_QUEUE = "gpu"
STORE_CONN_ID = "action100m_store"
LLM_CONN_IDS = {"openai": "openai_default", "anthropic": "anthropic_default"}
VLLM_CONN_ID = "vllm_default"

# Where each stage runs, and how long one try may take (the paper profile on a real GPU).
STAGE_OPTIONS: dict[str, dict[str, Any]] = {
    "embed": {"pool": GPU_POOL, "queue": GPU_QUEUE, "execution_timeout": timedelta(hours=2)},
    "segment": {"execution_timeout": timedelta(minutes=30)},
    "caption": {"pool": GPU_POOL, "execution_timeout": timedelta(hours=4)},
    "aggregate": {"pool": LLM_POOL, "execution_timeout": timedelta(hours=4)},
    "publish": {"execution_timeout": timedelta(minutes=15)},
}


def task_defaults(environ: dict[str, str] | None = None) -> dict[str, Any]:
    """``default_args`` of both DAGs: retries with exponential backoff and a timeout on every task.

    ``ACTION100M_RETRIES`` and ``ACTION100M_RETRY_DELAY_SECONDS`` tune them (tests use short delays).
    """
    env = os.environ if environ is None else environ
    delay = float(env.get("ACTION100M_RETRY_DELAY_SECONDS", "60"))
    return {
        "owner": "action100m",
        "retries": int(env.get("ACTION100M_RETRIES", "3")),
        "retry_delay": timedelta(seconds=delay),
        "retry_exponential_backoff": 2.0,
        "max_retry_delay": timedelta(minutes=30),
        "execution_timeout": timedelta(hours=1),
    }
