"""Stage 3 through the providers' batch APIs against a scripted server (real HTTP, the real
``openai``/``anthropic`` clients): three rounds as three jobs, partial failures and expiry retried
in the next job, a resumed task that never resubmits, and the spending budget."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from batch_server import BatchServer, Job
from llm_server import LLMServer, Reply, Request
from test_aggregate import LONG, VIDEO, annotations, run_aggregate, usage, write_inputs

from action100m.config import Settings, load_settings
from action100m.errors import ServiceError
from action100m.llm import prompts
from action100m.llm.batch_run import BatchPending
from action100m.llm.budget import BudgetReached
from action100m.llm.messages import Usage
from action100m.services import Services
from action100m.stages import get_stage
from action100m.stages.base import Runtime, Video, run_stage
from action100m.stages.outputs import stage_key
from action100m.store import ArtifactStore


@pytest.fixture
def server() -> Iterator[BatchServer]:
    with BatchServer() as batch:
        yield batch


def batch_settings(store: ArtifactStore, server: BatchServer, provider: str = "openai",
                   **extra: object) -> Settings:  # fmt: skip
    url = server.base_url if provider == "openai" else server.anthropic_base_url
    aggregate = {"provider": provider, "base_url": url, "model": "scripted", "mode": "batch",
                 "batch_poll_interval": 0.01, "targets": "all", "timeout": 5.0, **extra}  # fmt: skip
    return load_settings(
        profile="tiny", store=store.root, environ={}, overrides={"aggregate": aggregate}
    )


def segment_of(job: Job) -> list[str]:
    return [Request(job.api, "", {}, body).segment or "?" for body in job.items.values()]


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_three_rounds_are_three_jobs_and_match_interactive(
    provider, store, server, tmp_path
) -> None:
    settings = batch_settings(store, server, provider)
    tree = write_inputs(settings, store)
    run_aggregate(settings, store, VIDEO)
    assert [len(job.items) for job in server.jobs] == [LONG, LONG, LONG]
    assert all(job.api == provider for job in server.jobs)
    drafts, refines = server.jobs[0], server.jobs[2]
    assert all(not Request(provider, "", {}, b).answers_so_far for b in drafts.items.values())
    assert all(
        len(Request(provider, "", {}, b).answers_so_far) == 1 for b in refines.items.values()
    )
    nodes = annotations(settings, store)
    for node in tree.nodes:
        if node.lasts(4.0):
            where = prompts.span(node.start, node.end)
            assert (
                nodes[node.node_id]["annotation"]["brief_action"] == f"brief_action of {where} v3"
            )
    spent = usage(settings, store)
    assert spent["mode"] == "batch" and spent["requests"] == 3 * LONG
    assert spent["nodes_annotated"] == LONG and spent["cache_hits"] == 0
    full = Usage.from_json(spent).cost(settings.aggregate.prices)
    assert spent["cost_usd"] == pytest.approx(full / 2, rel=1e-3) and spent["cost_usd"] > 0
    if provider == "anthropic":
        return
    # The same video annotated interactively gets the same annotations, rounds and usage shape.
    other = ArtifactStore((tmp_path / "interactive").as_uri())
    with LLMServer() as llm:
        interactive = load_settings(profile="tiny", store=other.root, environ={}, overrides={
            "aggregate": {"base_url": llm.base_url, "model": "scripted", "targets": "all"}})  # fmt: skip
        write_inputs(interactive, other)
        run_aggregate(interactive, other, VIDEO)
    theirs = annotations(interactive, other)
    assert {k: v["annotation"] for k, v in theirs.items()} == {
        k: v["annotation"] for k, v in nodes.items()
    }
    assert set(usage(interactive, other)) | {"mode"} == set(spent) | {"mode"}


def test_failed_expired_and_invalid_items_go_into_the_next_job(store, server) -> None:
    settings = batch_settings(store, server)
    write_inputs(settings, store)
    # In the first job: [0.0s-5.0s]'s draft errors, [5.0s-12.0s]'s expires, [14.0s-20.0s]'s
    # answer is not JSON (a repair turn follows, in the next job).
    fates = {"[0.0s-5.0s]": "error", "[5.0s-12.0s]": "expire"}
    server.outcome = lambda req, job: fates.get(req.segment or "") if job.number == 1 else None
    server.llm.responder = lambda req: (
        Reply.text("not json")
        if req.segment == "[14.0s-20.0s]" and not req.answers_so_far
        else None
    )
    run_aggregate(settings, store, VIDEO)
    assert server.jobs[0].status == "expired"  # OpenAI: a job with unreached items expires
    second = segment_of(server.jobs[1])
    assert second.count("[0.0s-5.0s]") == 1 and second.count("[5.0s-12.0s]") == 1
    assert second.count("[14.0s-20.0s]") == 1  # its repair
    assert len(server.jobs) == 4  # the retried drafts finish one job later
    nodes = annotations(settings, store)
    assert all(v["error"] is None for v in nodes.values())
    assert sum(1 for v in nodes.values() if v["annotation"]) == LONG
    spent = usage(settings, store)
    assert spent["requests"] == 3 * LONG + 1  # failed items cost nothing; the invalid draft did


def test_a_dead_server_and_an_unreadable_output_line(store, server) -> None:
    settings = batch_settings(store, server)
    write_inputs(settings, store)
    dead = batch_settings(store, server, base_url="http://127.0.0.1:9/v1")
    with pytest.raises(ServiceError, match=r"^openai: cannot connect") as down:
        run_aggregate(dead, store, VIDEO)
    assert "\n" not in str(down.value)
    server.garbage_line = b"{not json\n"  # every output file: one line nobody can read
    run_aggregate(settings, store, VIDEO)
    assert [len(job.items) for job in server.jobs] == [LONG, LONG, LONG]
    assert all(v["error"] is None for v in annotations(settings, store).values())


def test_an_item_failing_in_every_job_fails_its_node_only(store, server) -> None:
    settings = batch_settings(store, server, batch_max_attempts=2)
    write_inputs(settings, store)
    server.outcome = lambda req, job: "error" if req.segment == "[0.0s-5.0s]" else None
    run_aggregate(settings, store, VIDEO)
    nodes = annotations(settings, store)
    failed = [v for v in nodes.values() if v["error"]]
    assert len(failed) == 1 and "no answer in 2 batch jobs" in failed[0]["error"]
    assert sum(1 for v in nodes.values() if v["annotation"]) == LONG - 1


def _step(settings: Settings, store: ArtifactStore) -> object:
    runtime = Runtime(settings, store, Services.from_environment({}), defer_batches=True)
    return run_stage(get_stage("aggregate"), runtime, Video(VIDEO))


def test_a_retried_task_polls_the_same_job_and_never_resubmits(store, server) -> None:
    settings = batch_settings(store, server)
    write_inputs(settings, store)
    server.polls_before_done = 2
    with pytest.raises(BatchPending) as first:
        _step(settings, store)
    job_id = first.value.job["id"]
    for _ in range(2):  # the task retried (or resumed by its trigger) while the job runs
        with pytest.raises(BatchPending) as again:
            _step(settings, store)
        assert again.value.job["id"] == job_id
    assert len(server.jobs) == 1
    server.fail_next(429)
    with pytest.raises(ServiceError, match=r"HTTP 429") as limited:
        _step(settings, store)
    assert "\n" not in str(limited.value)
    seen = [job_id]
    for _ in range(20):
        try:
            record = _step(settings, store)
            break
        except BatchPending as pending:
            seen.append(pending.job["id"])
    assert len(server.jobs) == 3 and sorted(set(seen)) == [j.id for j in server.jobs]
    assert store.is_done(record.uri)  # type: ignore[attr-defined]
    state_uri = f"{record.uri}/batch/state.json"  # type: ignore[attr-defined]
    state = store.read_json(state_uri)
    assert [j["status"] for j in state["jobs"]] == ["collected"] * 3
    store.fs.rm(store.fs._strip_protocol(f"{record.uri}/_SUCCESS"))  # type: ignore[attr-defined]
    _step(settings, store)  # every answer is collected or cached: nothing is submitted
    assert len(server.jobs) == 3


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_a_task_dying_between_submit_and_record_finds_its_job(
    provider, store, server, monkeypatch
) -> None:
    from action100m.llm.batch_run import BatchRun

    settings = batch_settings(store, server, provider)
    write_inputs(settings, store)
    record = BatchRun._record
    calls = {"n": 0}

    def dies_once(self: BatchRun, state: dict, job_id: str) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise KeyboardInterrupt("worker killed")  # after the provider created the job
        record(self, state, job_id)

    monkeypatch.setattr(BatchRun, "_record", dies_once)
    with pytest.raises(KeyboardInterrupt):
        _step(settings, store)
    assert len(server.jobs) == 1
    with pytest.raises(BatchPending) as resumed:
        _step(settings, store)
    assert resumed.value.job["id"] == server.jobs[0].id and len(server.jobs) == 1
    run_aggregate(settings, store, VIDEO)
    assert len(server.jobs) == 3


def test_budget_stops_interactive_aggregation_and_a_larger_one_goes_on(store, caplog) -> None:
    with LLMServer() as llm:
        overrides = {"aggregate": {"base_url": llm.base_url, "model": "scripted", "targets": "all",
                                   "concurrency": 1, "budget_usd": 0.0005, "budget_scope": "b1"}}  # fmt: skip
        settings = load_settings(profile="tiny", store=store.root, environ={}, overrides=overrides)
        write_inputs(settings, store)
        with pytest.raises(
            BudgetReached, match=r"budget_usd \$0\.00 reached: \$0\.\d+ spent"
        ) as stop:
            run_aggregate(settings, store, VIDEO)
        assert "run again with a larger aggregate.budget_usd" in str(stop.value)
        paid = len(llm.requests)
        assert 0 < paid < 3 * LONG
        folder = store.stage_dir(VIDEO, "aggregate", stage_key(settings, "aggregate"))
        assert not store.is_done(folder)  # the video stays pending
        ledger = store.read_json(f"{store.root}/budget/b1/{VIDEO}.json")
        assert ledger["spent_usd"] >= 0.0005
        settings.aggregate.budget_usd = 1.0
        run_aggregate(settings, store, VIDEO)
        assert len(llm.requests) == 3 * LONG  # the answers bought before are not bought again
        assert json.dumps(store.read_json(f"{store.root}/budget/b1/{VIDEO}.json"))


def test_budget_stops_before_the_next_batch_job(store, server) -> None:
    settings = batch_settings(store, server, budget_usd=0.0001, budget_scope="b2")
    write_inputs(settings, store)
    with pytest.raises(BudgetReached, match="reached"):
        run_aggregate(settings, store, VIDEO)
    assert len(server.jobs) == 1  # the drafts were bought; no refine job was submitted
