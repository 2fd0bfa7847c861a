"""Airflow glue for action100m: connections to settings, stage tasks, run report, backfill.

Imported by the DAG files at parse time, so this package's ``__init__`` stays light: constants and
task defaults only. The library (``action100m``) is imported inside the task functions.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

from airflow.sdk import Asset

from action100m.stages import PIPELINE, STAGE_NAMES
from action100m_airflow import notify, pods

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
# Every finished action100m run updates this asset (its event's extra: the report and, where an
# export is configured, what the export added), so downstream DAGs can be scheduled on it.
ANNOTATIONS_ASSET = Asset(name="action100m_annotations")  # no URI scheme: no provider lookup
# Where runs add their published videos to a sharded, incremental export (none when unset).
EXPORT_VARIABLE = "action100m_export_uri"
EXPORT_ENV = "ACTION100M_EXPORT_URI"
LLM_CONN_IDS = {"openai": "openai_default", "anthropic": "anthropic_default"}
VLLM_CONN_ID = "vllm_default"
# Caption tasks only send requests to the vLLM server: a slot of its own pool (VLM_POOL_SLOTS,
# sized to the server's capacity), not one of the GPU workers' gpu pool.
VLM_POOL = "vlm"
ASR_CONN_ID = "asr_default"
# The encoder service (embed.backend=service): host or extra base_url, password = its key.
ENCODER_CONN_ID = "encoder_default"

# Where each kind of stage runs: a model on the GPU needs a GPU host (queue) and a GPU slot
# (pool); a GPU server's client needs only the slot; the LLM's client a slot of the llm pool.
RESOURCE_OPTIONS: dict[str, dict[str, Any]] = {
    "gpu": {"pool": GPU_POOL, "queue": GPU_QUEUE},
    "gpu_service": {"pool": VLM_POOL},
    "llm": {"pool": LLM_POOL},
    "download": {"pool": DOWNLOAD_POOL},
    "cpu": {},
}
# Priorities. The stages up to the first GPU stage (fetch, embed) lead: they outrank every later
# stage, so the GPU's next video is downloaded while it encodes this one and a freed GPU slot never
# waits for a download behind CPU work. Their pools (download, gpu) bound them, so leading takes
# at most those slots from the others, and a fetched video is kept in the store anyway. After
# them a stage weighs more the later it comes, so begun videos finish before later ones go on.
# Weights are absolute (a task's weight does not depend on how many siblings the DAG has); among
# tasks of one weight the scheduler queues the oldest run's, then the lowest map index, first.
# Airflow's default rule (downstream) would rank fetch highest and every stage by how many tasks
# follow it, so every video would start before any began one finished.
STAGE_WEIGHT_STEP = 10
# How many stages lead: the first ``gpu`` stage and those before it (none without a GPU stage).
LEAD_STAGES = next((i + 1 for i, spec in enumerate(PIPELINE) if spec.resource == "gpu"), 0)


def stage_weight(position: int) -> int:
    """The priority weight of the stage at ``position`` (0: the first) in ``PIPELINE``."""
    lead = STAGE_WEIGHT_STEP * len(PIPELINE) if position < LEAD_STAGES else 0
    return lead + STAGE_WEIGHT_STEP * (position + 1)


# Each stage's task options, from the library's stage list: pool, queue, a timeout per try and
# its priority.
STAGE_OPTIONS: dict[str, dict[str, Any]] = {
    spec.name: {
        **RESOURCE_OPTIONS[spec.resource],
        "execution_timeout": timedelta(minutes=spec.timeout_minutes),
        "priority_weight": stage_weight(position),
        "weight_rule": "absolute",
        "on_failure_callback": notify.video_failed,  # once the retries are spent
        **pods.executor_options(spec.resource),  # the GPU pod under the KubernetesExecutor
    }
    for position, spec in enumerate(PIPELINE)
}


def run_options(environ: dict[str, str] | None = None) -> dict[str, Any]:
    """``max_active_runs`` / ``max_active_tasks`` of the ``action100m`` DAG, its failure
    callback and its Deadline Alert (:mod:`action100m_airflow.notify`).

    Runs: the backfill keeps ``ACTION100M_BACKFILL_MAX_ACTIVE_SHARDS`` (2) shard runs going, plus
    room for manual runs, so 8 (``ACTION100M_MAX_ACTIVE_RUNS``); more would only spread
    the pools' slots over more half-done videos. Tasks per run: one run alone must be able to
    fill every pool (GPU hosts, the vLLM server, the LLM account, downloads) and keep the CPU
    stages going beside them; the pools, not this cap, bound each resource, so the cap is the
    size of a shard (64 videos, ``ACTION100M_MAX_ACTIVE_TASKS``), which stops one run of a
    thousand videos from taking every executor slot from the others.
    """
    env = os.environ if environ is None else environ
    return {
        "max_active_runs": int(env.get("ACTION100M_MAX_ACTIVE_RUNS", "8")),
        "max_active_tasks": int(env.get("ACTION100M_MAX_ACTIVE_TASKS", "64")),
        "on_failure_callback": notify.shard_failed,
        "deadline": notify.shard_deadline(environ),
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
        # Weight 1 for every task the stages' weights do not set: under the default rule
        # (downstream) resolve_videos would outweigh them all and start new runs first.
        "weight_rule": "absolute",
    }
