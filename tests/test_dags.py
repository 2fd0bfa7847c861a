"""DAG integrity: both DAGs parse fast, without errors or warnings and without heavy libraries;
pools, queues, retries, timeouts, params and mapping are as docs/architecture.md says."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

import jinja2
import pytest
from airflow_testenv import REPO, use_test_airflow_home

use_test_airflow_home()

DAG_FILES = {"action100m": "action100m_dag.py", "action100m_backfill": "action100m_backfill_dag.py",
             "action100m_maintenance": "action100m_maintenance_dag.py"}  # fmt: skip
HEAVY = ("torch", "transformers", "numpy", "sklearn", "av", "decord", "openai", "anthropic",
         "s3fs", "boto3", "pandas", "pyarrow", "action100m.pipeline", "action100m.config")  # fmt: skip

# Parses each DAG file in a fresh interpreter, as the DAG processor does, and reports what it saw.
PROBE = """
import json, sys, time, warnings
from airflow.dag_processing.dagbag import DagBag
report = {}
for path in sys.argv[1:]:
    before = set(sys.modules)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        start = time.monotonic()
        bag = DagBag(dag_folder=path)
        seconds = time.monotonic() - start
    report[path] = {
        "seconds": seconds, "dags": sorted(bag.dags), "errors": bag.import_errors,
        "warnings": [f"{w.category.__name__}: {w.message}" for w in caught],
        "imported": sorted(set(sys.modules) - before),
    }
print("PROBE" + json.dumps(report))
"""


@pytest.fixture(scope="module")
def parse_report() -> dict[str, Any]:
    paths = [str(REPO / "dags" / name) for name in DAG_FILES.values()]
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *paths], capture_output=True, text=True, check=True
    )
    line = next(line for line in done.stdout.splitlines() if line.startswith("PROBE"))
    return dict(json.loads(line[len("PROBE") :]))


@pytest.mark.parametrize("dag_id", sorted(DAG_FILES))
def test_dag_file_parses_fast_and_clean(parse_report: dict[str, Any], dag_id: str) -> None:
    result = parse_report[str(REPO / "dags" / DAG_FILES[dag_id])]
    assert result["errors"] == {}
    assert result["dags"] == [dag_id]
    assert result["warnings"] == []
    assert result["seconds"] < 1.0, f"{dag_id} took {result['seconds']:.2f} s to parse"
    heavy = [m for m in result["imported"] if m.split(".")[0] in HEAVY or m in HEAVY]
    assert heavy == [], f"imported at parse time: {heavy}"


@pytest.fixture(scope="module")
def dags() -> dict[str, Any]:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert bag.import_errors == {}
    return dict(bag.dags)


def test_per_video_tasks_pools_queues_and_retries(dags: dict[str, Any]) -> None:
    dag = dags["action100m"]
    expected = {
        "video.fetch": ("download", "default"),
        "video.embed": ("gpu", "gpu"),
        "video.segment": ("default_pool", "default"),
        "video.caption": ("vlm", "default"),
        "video.aggregate": ("llm", "default"),
        "video.publish": ("default_pool", "default"),
    }
    for task_id, (pool, queue) in expected.items():
        task = dag.get_task(task_id)
        assert (task.pool, task.queue) == (pool, queue), task_id
        assert task.retries >= 2 and task.retry_exponential_backoff > 1, task_id
        assert task.execution_timeout and task.execution_timeout <= timedelta(hours=4), task_id
        # The label comes from the task's resolved argument, which Airflow's task runner has
        # before execution, so running, failed and up-for-retry tasks are labelled too (the
        # pre-execution context has no ``video_id`` of its own).
        resolved = SimpleNamespace(op_kwargs={"video": {"video_id": "vid_1"}})
        label = jinja2.Template(task.map_index_template, undefined=jinja2.StrictUndefined)
        assert label.render(task=resolved) == "vid_1", task_id
    fetch, embed = dag.get_task("video.fetch"), dag.get_task("video.embed")
    assert dag.get_task("video.segment").upstream_task_ids == {"video.embed"}
    assert embed.upstream_task_ids == {"video.fetch"}
    assert fetch.upstream_task_ids == {"resolve_videos"}
    report = dag.get_task("report")
    assert report.trigger_rule == "all_done"
    assert [asset.name for asset in report.outlets] == ["action100m_annotations"]
    assert report.upstream_task_ids == {"video.publish"}
    assert all(task.execution_timeout for task in dag.tasks)
    # Besides the shard triggers (a run is there or not), every task of both DAGs retries what
    # may pass, and has a timeout; deliberate failures are AirflowFailException, never retried.
    backfill = dags["action100m_backfill"]
    for task in [*dag.tasks, *backfill.tasks]:
        if task.task_id not in ("trigger_shard", "continue_backfill"):
            assert task.retries >= 2 and task.retry_exponential_backoff > 1, task.task_id


def test_params_have_a_form(dags: dict[str, Any]) -> None:
    for dag_id, names in {
        "action100m": ["videos", "videos_uri", "source", "metadata", "profile", "overrides"],
        "action100m_backfill": ["manifest", "shard_size", "skip_done", "max_shards", "offset"]
        + ["source", "profile"],
    }.items():
        params = dags[dag_id].params
        for name in names:
            param = params.get_param(name)
            assert param.schema["type"] and param.schema["title"], (dag_id, name)
            assert param.description, (dag_id, name)
    # The form marks a field required unless its type allows null: neither Videos (a run may
    # take a Video list URI instead) nor Setting overrides is required.
    for name in ("videos", "overrides", "videos_uri"):
        assert "null" in dags["action100m"].params.get_param(name).schema["type"], name
    assert dags["action100m"].params["profile"] == os.environ.get("ACTION100M_PROFILE", "paper")
    assert dags["action100m_backfill"].params["shard_size"] == 64
    assert dags["action100m_backfill"].params["skip_done"] is True
    assert 1 <= dags["action100m_backfill"].params["max_shards"] <= 1024  # max_map_length
    assert dags["action100m_backfill"].params["offset"] == 0


def test_backfill_triggers_bounded_runs_of_the_video_dag(dags: dict[str, Any]) -> None:
    dag = dags["action100m_backfill"]
    trigger = dag.get_task("trigger_shard")
    assert trigger.partial_kwargs["trigger_dag_id"] == "action100m"
    assert trigger.partial_kwargs["wait_for_completion"] is True
    assert trigger.partial_kwargs["deferrable"] is True  # the triggerer waits, not a worker
    assert 1 <= trigger.partial_kwargs["max_active_tis_per_dag"] <= 16
    assert dag.get_task("summary").trigger_rule == "all_done"
    # One backfill run at a time (no duplicate shard runs); the rest of a long manifest goes to
    # a continuation run triggered without waiting, so max_active_runs=1 cannot deadlock.
    assert dag.max_active_runs == 1
    going_on = dag.get_task("continue_backfill")
    assert going_on.trigger_dag_id == "action100m_backfill"
    assert going_on.wait_for_completion is False
    assert going_on.trigger_rule == "all_done"
    assert going_on.upstream_task_ids == {"trigger_shard"}


@pytest.fixture
def plugins_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """The plugins folder on sys.path, as Airflow puts it (alone, a test has no DagBag to do so)."""
    monkeypatch.syspath_prepend(str(REPO / "plugins"))


@pytest.mark.usefixtures("plugins_on_path")
def test_backfill_continuation_run_ids_do_not_nest() -> None:
    from action100m_airflow.backfill import continuation_run_id, max_shards_per_run

    first = "manual__2026-01-01T00:00:00+00:00"
    second = continuation_run_id(first, 128)
    assert second == f"{first}__from00000128"
    assert continuation_run_id(second, 256) == f"{first}__from00000256"
    assert max_shards_per_run(100_000) == 1024  # Airflow's [core] max_map_length


@pytest.mark.usefixtures("plugins_on_path")
def test_aggregate_tasks_split_the_llm_limits_by_the_pool_slots() -> None:
    from action100m_airflow.tasks import share_llm_limits

    from action100m.config import load_settings

    environ = {"LLM_POOL_SLOTS": "4"}
    share_llm_limits(environ)
    assert load_settings(environ=environ).aggregate.rate_share == 4
    explicit = {"LLM_POOL_SLOTS": "4", "ACTION100M_AGGREGATE__RATE_SHARE": "2"}
    share_llm_limits(explicit)
    assert load_settings(environ=explicit).aggregate.rate_share == 2
    unset: dict[str, str] = {}
    share_llm_limits(unset)
    assert load_settings(environ=unset).aggregate.rate_share == 1


class _RunSoFar:
    """What the continuation task reads of its run: the plan and the shard triggers' states."""

    def __init__(self, plan: dict[str, Any], states: dict[str, str]) -> None:
        self.plan, self.states = plan, states

    def xcom_pull(self, task_ids: str, key: str = "return_value") -> Any:
        return self.plan if key == "plan" else None

    def get_task_states(self, dag_id: str, task_ids: list[str], run_ids: list[str]) -> Any:
        return {run_ids[0]: self.states}


@pytest.mark.usefixtures("plugins_on_path")
def test_a_backfill_whose_every_shard_failed_does_not_go_on() -> None:
    """A wrong source template fails every shard; going on would fail the whole manifest."""
    from action100m_airflow.backfill import ContinuationTriggerOperator
    from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

    going_on = ContinuationTriggerOperator(
        task_id="continue_backfill", trigger_dag_id="action100m_backfill"
    )
    plan = {"manifest": "m.txt", "total": 10, "next_offset": 4, "shard_sizes": [2, 2]}
    failed = {"trigger_shard_0": "failed", "trigger_shard_1": "failed"}
    context: Any = {"ti": _RunSoFar(plan, failed), "params": {}, "run_id": "manual__1"}
    with pytest.raises(AirflowFailException, match=r"all 2 shard\(s\) .* offset=4"):
        going_on.execute(context)
    context["ti"] = _RunSoFar({**plan, "next_offset": None}, failed)
    with pytest.raises(AirflowSkipException, match="the manifest ends"):
        going_on.execute(context)


def test_dags_serialize_for_the_scheduler(dags: dict[str, Any]) -> None:
    from airflow.serialization.serialized_objects import DagSerialization

    for dag in dags.values():
        restored = DagSerialization.deserialize_dag(DagSerialization.serialize_dag(dag))
        assert set(restored.task_ids) == set(dag.task_ids)


def test_the_video_group_is_the_library_stage_list(dags: dict[str, Any]) -> None:
    """One list of stages: the DAG's task group is built from it, in its order, with each
    stage's resource mapped to a pool and queue and its timeout kept."""
    from action100m.stages import PIPELINE

    dag = dags["action100m"]
    names = [spec.name for spec in PIPELINE]
    group = sorted(t.task_id for t in dag.tasks if t.task_id.startswith("video."))
    assert group == sorted(f"video.{name}" for name in names)
    for before, after in zip(names, names[1:], strict=False):
        assert dag.get_task(f"video.{after}").upstream_task_ids == {f"video.{before}"}
    for spec in PIPELINE:
        task = dag.get_task(f"video.{spec.name}")
        assert task.execution_timeout == timedelta(minutes=spec.timeout_minutes)
        assert (task.pool == "gpu") == (spec.resource == "gpu"), spec
        assert (task.queue == "gpu") == (spec.resource == "gpu"), spec
        assert (task.pool == "download") == (spec.resource == "download"), spec


@pytest.mark.usefixtures("plugins_on_path")
def test_connections_reach_the_library_as_arguments_not_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Store keys become storage options, LLM keys a SecretStr in the runtime's services,
    endpoints and models a settings layer under the params' overrides; os.environ is untouched."""
    llm = {"conn_type": "generic", "password": "sk-conn",
           "extra": {"base_url": "http://127.0.0.1:9/v1", "model": "from-connection"}}  # fmt: skip
    store = {"conn_type": "aws", "login": "AKIA-conn", "password": "secret-conn",
             "extra": {"endpoint_url": "http://127.0.0.1:9", "root": "s3://bucket/store"}}  # fmt: skip
    monkeypatch.setenv("AIRFLOW_CONN_OPENAI_DEFAULT", json.dumps(llm))
    monkeypatch.setenv("AIRFLOW_CONN_ACTION100M_STORE", json.dumps(store))
    for name in (
        "OPENAI_API_KEY",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_ENDPOINT_URL",
    ):
        monkeypatch.delenv(name, raising=False)
    before = dict(os.environ)
    from action100m_airflow.tasks import build_runtime

    runtime = build_runtime({"profile": "tiny", "overrides": ["aggregate.rounds=2"]})
    assert dict(os.environ) == before
    assert runtime.settings.aggregate.base_url == "http://127.0.0.1:9/v1"
    assert runtime.settings.aggregate.model == "from-connection"
    assert runtime.settings.aggregate.rounds == 2
    assert runtime.services.llm_endpoint("openai").key() == "sk-conn"
    assert runtime.store.root == "s3://bucket/store"
    assert runtime.store.storage_options["key"] == "AKIA-conn"
    assert runtime.store.storage_options["client_kwargs"]["endpoint_url"] == "http://127.0.0.1:9"
    assert "sk-conn" not in repr(runtime.services)
    explicit = build_runtime({"profile": "tiny", "overrides": ["aggregate.model=explicit"]})
    assert explicit.settings.aggregate.model == "explicit"  # the params win over the connection


@pytest.mark.usefixtures("plugins_on_path")
def test_the_backfill_summary_says_why_a_video_is_still_missing(tmp_path: Any) -> None:
    from action100m_airflow.backfill import missing_with_reasons

    from action100m.store import ArtifactStore

    store = ArtifactStore(str(tmp_path / "store"))
    reason = "no LLM configured for aggregation: set OPENAI_API_KEY"
    store.write_json(
        store.status_uri("bare"), {"complete": False, "skipped": {"aggregate": reason}}
    )
    text = missing_with_reasons(store, ["bare", "never"])
    assert text == (
        f"bare (published without every stage (aggregate: {reason})), never (not published)"
    )


@pytest.mark.usefixtures("plugins_on_path")
def test_the_fetch_proxy_and_cookies_come_from_a_connection_and_hosts_from_the_deployment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The fetch stage's proxy and cookies reach it as secrets from ``action100m_fetch``; a
    run's parameters cannot widen ``fetch.allowed_hosts``."""
    from action100m.errors import ConfigError

    cookies = "# Netscape HTTP Cookie File\n.youtube.com\tTRUE\t/\tTRUE\t0\tSID\tcookie-secret\n"
    fetch = {"conn_type": "http", "host": "proxy.internal", "port": 3128, "login": "user",
             "password": "proxy-secret", "extra": {"cookies": cookies}}  # fmt: skip
    monkeypatch.setenv("AIRFLOW_CONN_ACTION100M_FETCH", json.dumps(fetch))
    monkeypatch.setenv("ACTION100M_FETCH__ALLOWED_HOSTS", "www.youtube.com,media.internal")
    before = dict(os.environ)
    from action100m_airflow.tasks import build_runtime

    runtime = build_runtime({"profile": "tiny"})
    assert dict(os.environ) == before
    access = runtime.services.fetch
    assert access.proxy is not None and access.cookies is not None
    assert access.proxy.get_secret_value() == "http://user:proxy-secret@proxy.internal:3128"
    assert access.cookies.get_secret_value() == cookies
    assert "secret" not in repr(runtime.services)
    assert runtime.settings.fetch.allowed_hosts == ["www.youtube.com", "media.internal"]
    with pytest.raises(ConfigError, match="fetch.allowed_hosts is the deployment's"):
        build_runtime({"profile": "tiny", "overrides": ["fetch.allowed_hosts=10.0.0.1"]})
    for setting in ("caption.base_url", "aggregate.base_url", "embed.service_url",
                    "fetch.asr_base_url", "caption.api_key_env"):  # fmt: skip
        with pytest.raises(ConfigError, match=rf"{setting} is the deployment's setting \(ACTION"):
            build_runtime({"profile": "tiny", "overrides": [f"{setting}=http://10.0.0.1/v1"]})


def _scheduled_weights(dag: Any, task_ids: list[str]) -> list[int]:
    """The priority weight the scheduler gives each task's instances: computed, as it does, from
    the serialized DAG's task and its weight rule."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.serialization.serialized_objects import DagSerialization
    from airflow.task.priority_strategy import validate_and_load_priority_weight_strategy

    restored = DagSerialization.deserialize_dag(DagSerialization.serialize_dag(dag))
    weights = []
    for task_id in task_ids:
        task = restored.get_task(task_id)
        rule = task.weight_rule
        rule = (
            rule
            if hasattr(rule, "get_weight")
            else validate_and_load_priority_weight_strategy(rule)
        )
        ti = TaskInstance(task=task, run_id="r", map_index=0, dag_version_id=None)
        weights.append(rule.get_weight(ti))
    return weights


def test_the_gpu_feed_leads_then_videos_half_done_outrank_new_ones(dags: dict[str, Any]) -> None:
    """Fetch and embed (up to the GPU stage) outrank every later stage, so the GPU's next video is
    ready when it frees; after them each stage weighs more than the one before it, whatever the
    DAG's shape (absolute rule), so a later stage of a begun video goes before an earlier stage of
    another (Airflow's default, downstream, would rank fetch highest and publish lowest)."""
    from action100m.stages import PIPELINE

    dag = dags["action100m"]
    stages = [f"video.{spec.name}" for spec in PIPELINE]
    lead = 1 + [spec.resource for spec in PIPELINE].index("gpu")
    assert stages[:lead] == ["video.fetch", "video.embed"]
    weights = _scheduled_weights(dag, ["resolve_videos", *stages])
    assert _scheduled_weights(dag, ["report"]) == [1]
    resolve, leads, tail = weights[0], weights[1 : 1 + lead], weights[1 + lead :]
    assert leads == sorted(set(leads)) and tail == sorted(set(tail)), weights  # strictly rising
    assert resolve < min(tail) and max(tail) < min(leads), weights
    backfill = dags["action100m_backfill"]
    shards = backfill.get_task("trigger_shard").partial_kwargs["max_active_tis_per_dag"]
    assert shards <= dag.max_active_runs <= 16  # every shard run of a backfill can be active
    assert 16 <= dag.max_active_tasks <= 256


def test_a_backfill_keeps_the_scheduler_pass_short(dags: dict[str, Any]) -> None:
    """Each scheduler pass re-checks every waiting task of every running run, several queries a
    task (benchmarks/RESULTS.md, Orchestration): by default a backfill has at most 128 videos in
    running shards, and at least two shards so the pools stay fed across one shard's tail."""
    backfill = dags["action100m_backfill"]
    shards = backfill.get_task("trigger_shard").partial_kwargs["max_active_tis_per_dag"]
    assert shards >= 2
    assert shards * backfill.params["shard_size"] <= 128


@pytest.mark.usefixtures("plugins_on_path")
def test_failures_and_overdue_runs_are_told(dags: dict[str, Any]) -> None:
    """A video failing for good (each stage task), a failed run, and a run queued more than the
    deadline ago (a Deadline Alert, called in the triggerer) reach the notify module."""
    dag = dags["action100m"]
    for task in dag.tasks:
        if task.task_id.startswith("video."):
            assert [f.__name__ for f in task.on_failure_callback] == ["video_failed"], task
    assert dag.on_failure_callback.__name__ == "shard_failed"
    assert not dag.deadline  # off by default: dag.test() of a DAG with one fails in 3.3.2
    from action100m_airflow import run_options

    alert = run_options({"ACTION100M_SHARD_DEADLINE_HOURS": "24"})["deadline"]
    assert alert.interval == timedelta(hours=24)
    assert alert.callback.path == "action100m_airflow.notify.shard_overdue"
    assert type(alert.reference).__name__ == "DagRunQueuedAtDeadline"
