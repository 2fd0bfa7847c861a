"""The docker-compose topology natively (issue 6): PostgreSQL, Redis, moto's S3 server for MinIO,
and Airflow with the CeleryExecutor as the compose file configures it: scheduler, DAG processor,
API server, a Celery worker on queue ``default`` and one on queue ``gpu`` (concurrency 1).

A run of two tiny videos, triggered through the REST API, runs each task on the worker of its
queue (``embed`` on the GPU worker, the rest on the default one) and publishes the documents to
the bucket. The GPU worker is killed (its whole process tree, as a dying container) while an
``embed`` task is encoding, then started again: the task's missing heartbeat fails that try, the
retry runs on the new worker, the run finishes, the stages finished before the kill are not
written again and no other task runs twice.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import boto3
from celery_stack import CeleryStack

from action100m.samples import make_video
from action100m.stages import PIPELINE

DAG_ID = "action100m"
RUN_ID = "celery_topology"
BUCKET = "action100m"
VIDEOS = ("celery_a", "celery_b")
GPU_WORKER = "airflow-worker-gpu"
# The Celery hostname of the worker each queue's tasks must run on.
WORKER_OF_QUEUE = {"default": "worker", "gpu": "worker-gpu"}


def _successes(s3: Any) -> dict[str, tuple[str, bytes]]:
    """Every ``_SUCCESS`` marker in the bucket: key -> (ETag, content)."""
    found = {}
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix="videos/")
    for page in pages:
        for item in page.get("Contents", []):
            if item["Key"].endswith("/_SUCCESS"):
                body = s3.get_object(Bucket=BUCKET, Key=item["Key"])["Body"].read()
                found[item["Key"]] = (item["ETag"], body)
    return found


def _catch_embed_encoding(stack: CeleryStack, timeout: float = 180) -> dict[str, Any]:
    """The ``embed`` task instance that is encoding (its log shows a finished window) while the
    other video's ``embed`` has succeeded: the moment to kill the GPU worker."""
    logs = stack.workdir / "home" / "logs" / f"dag_id={DAG_ID}" / f"run_id={RUN_ID}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        embeds = [
            ti for ti in stack.task_instances(DAG_ID, RUN_ID) if ti["task_id"] == "video.embed"
        ]
        states = sorted(ti["state"] or "none" for ti in embeds)
        assert "failed" not in states and "up_for_retry" not in states, embeds
        assert states != ["success", "success"], "both embed tasks finished before being caught"
        if states == ["running", "success"]:
            running = next(ti for ti in embeds if ti["state"] == "running")
            log = logs / "task_id=video.embed" / f"map_index={running['map_index']}"
            text = "\n".join(p.read_text(errors="replace") for p in log.glob("attempt=1*.log"))
            if "encoded " in text:
                return running
        time.sleep(0.25)
    raise TimeoutError(f"no embed task caught encoding within {timeout} s")


def test_compose_topology_on_celery_survives_a_dead_gpu_worker(
    s3_server: dict[str, str], tmp_path: Path
) -> None:
    s3 = boto3.client("s3", endpoint_url=s3_server["endpoint"])
    for seed, name in enumerate(VIDEOS):
        path = tmp_path / f"{name}.mp4"
        make_video(path, [10.0, 10.0, 10.0], seed=seed)  # about 16 encoder windows each
        s3.upload_file(str(path), BUCKET, f"videos/{name}.mp4")

    stack = CeleryStack(
        tmp_path / "airflow",
        services={"minio:9000": urlsplit(s3_server["endpoint"]).netloc},
        env={
            "ACTION100M_RETRY_DELAY_SECONDS": "1",
            # A killed worker's task stops heartbeating: notice it in seconds, not minutes.
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "12",
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "2",
            "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": "2",
            # No LLM: aggregate is skipped, the document is still published.
            "OPENAI_API_KEY": "",
            "OPENAI_BASE_URL": "",
            "ANTHROPIC_API_KEY": "",
            "ANTHROPIC_BASE_URL": "",
        },
        pools={"gpu": 1, "llm": 2},
    )
    try:
        stack.start()
        assert stack.env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
        assert stack.env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://")
        assert stack.env["ACTION100M_STORE"] == f"s3://{BUCKET}"
        started = time.monotonic()
        stack.trigger(
            DAG_ID,
            {
                "videos": list(VIDEOS),
                "source": f"s3://{BUCKET}/videos/{{video_id}}.mp4",
                "profile": "tiny",
                "overrides": ["embed.batch_size=1"],  # one window per step: slow enough to catch
            },
            run_id=RUN_ID,
        )

        interrupted = _catch_embed_encoding(stack)
        # Labelled with its video while still running (the label renders before execution).
        assert interrupted["rendered_map_index"] in VIDEOS, interrupted
        stack.kill_worker(GPU_WORKER)
        finished_before = _successes(s3)  # what the kill must leave alone
        assert any("/embed/" in key for key in finished_before), finished_before
        stack.start_worker(GPU_WORKER)
        stack.wait_worker(GPU_WORKER)

        assert stack.wait(RUN_ID, DAG_ID, timeout=240) == "success"
        run_seconds = time.monotonic() - started
        tis = stack.task_instances(DAG_ID, RUN_ID)
        tries = {
            t["try_number"]: t
            for t in stack.tries(DAG_ID, RUN_ID, "video.embed", interrupted["map_index"])
        }
    finally:
        stack.stop()

    # Each task ran on the worker of its queue; only embed goes to the GPU queue.
    assert len(tis) == 2 + len(VIDEOS) * len(PIPELINE)  # resolve, report; a task per stage
    for ti in tis:
        label = (ti["task_id"], ti["rendered_map_index"])
        assert ti["state"] == "success", label
        assert ti["queue"] == ("gpu" if ti["task_id"] == "video.embed" else "default"), label
        assert ti["hostname"] == WORKER_OF_QUEUE[ti["queue"]], (label, ti["hostname"])

    video = next(
        ti["rendered_map_index"]
        for ti in tis
        if ti["task_id"] == "video.embed" and ti["map_index"] == interrupted["map_index"]
    )
    assert not any(key.startswith(f"videos/{video}/embed/") for key in finished_before), (
        "the interrupted embed had finished before the worker was killed"
    )

    # The interrupted embed: one try lost with the worker, one retry; nothing else ran twice.
    retried = {(ti["task_id"], ti["rendered_map_index"]) for ti in tis if ti["try_number"] > 1}
    assert retried == {("video.embed", video)}, retried
    assert tries[1]["state"] in ("failed", "up_for_retry") and tries[1]["hostname"] == "worker-gpu"
    assert tries[2]["state"] == "success"

    # Nothing finished before the kill was written again; one embed result for the video.
    after = _successes(s3)
    for key, marker in finished_before.items():
        assert after[key] == marker, f"{key} was rewritten"
    assert len([key for key in after if key.startswith(f"videos/{video}/embed/")]) == 1

    for name in VIDEOS:
        document = json.loads(
            s3.get_object(Bucket=BUCKET, Key=f"videos/{name}/annotations.json")["Body"].read()
        )
        assert [node["node_id"] for node in document["nodes"]], name
        # No LLM in this stack: the document and the report say aggregation was skipped and why.
        assert document["pipeline"]["skipped"]["aggregate"].startswith("no LLM configured"), name
    report = json.loads(
        s3.get_object(Bucket=BUCKET, Key=f"runs/{RUN_ID}/report.json")["Body"].read()
    )
    assert report["counts"]["failed"] == 0
    assert report["aggregate_skipped"] == len(VIDEOS)
    assert all(row["aggregate_skipped"].startswith("no LLM") for row in report["videos"])
    print(
        f"celery topology: run finished in {run_seconds:.0f} s, startup {stack.startup_seconds:.0f} s"
    )
