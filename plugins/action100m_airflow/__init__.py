"""Airflow glue for action100m: connections to settings, stage tasks, run report, backfill.

Imported by the DAG files at parse time, so this package's ``__init__`` stays light: constants and
task defaults only. The library (``action100m``) is imported inside the task functions.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

from action100m.stages import PIPELINE, STAGE_NAMES

DAG_ID = "action100m"
BACKFILL_DAG_ID = "action100m_backfill"
VIDEO_GROUP = "video"
STAGES = STAGE_NAMES  # the library's list, in order: one task per stage in each video's group
GPU_POOL = "gpu"
LLM_POOL = "llm"
DOWNLOAD_POOL = "download"  # concurrent downloads (fetch): the video sites' limits
FETCH_CONN_ID = "action100m_fetch"  # the fetch stage's proxy and cookies
FETCH_COOKIES_VARIABLE = "action100m_fetch_cookies"
# Slots of the `llm` pool where the deployment sets them (compose's .env, scripts/airflow_env.sh);
# aggregate tasks split the account's rate limits by it.
LLM_POOL_SLOTS_ENV = "LLM_POOL_SLOTS"
GPU_QUEUE = "gpu"
STORE_CONN_ID = "action100m_store"
LLM_CONN_IDS = {"openai": "openai_default", "anthropic": "anthropic_default"}
VLLM_CONN_ID = "vllm_default"
# Caption tasks only send requests to the vLLM server: a slot of its own pool (VLM_POOL_SLOTS,
# sized to the server's capacity), not one of the GPU workers' gpu pool.
VLM_POOL = "vlm"
ASR_CONN_ID = "asr_default"

# Where each kind of stage runs: a model on the GPU needs a GPU host (queue) and a GPU slot
# (pool); a GPU server's client needs only the slot; the LLM's client a slot of the llm pool.
RESOURCE_OPTIONS: dict[str, dict[str, Any]] = {
    "gpu": {"pool": GPU_POOL, "queue": GPU_QUEUE},
    "gpu_service": {"pool": VLM_POOL},
    "llm": {"pool": LLM_POOL},
    "download": {"pool": DOWNLOAD_POOL},
    "cpu": {},
}
# Each stage's task options, from the library's stage list: pool, queue and a timeout per try.
STAGE_OPTIONS: dict[str, dict[str, Any]] = {
    spec.name: {
        **RESOURCE_OPTIONS[spec.resource],
        "execution_timeout": timedelta(minutes=spec.timeout_minutes),
    }
    for spec in PIPELINE
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
