"""Stage 3 end to end against the scripted HTTP server, through the real openai/anthropic clients."""

from __future__ import annotations

import functools
import json
import logging
import threading
import time
from collections.abc import Iterator

import pytest
from llm_server import LLMServer, Reply, Request
from pydantic import SecretStr

from action100m.config import Settings, load_settings
from action100m.errors import PermanentError, ServiceError
from action100m.llm import prompts
from action100m.llm.clients import BASE_URL_ENV, DEFAULT_BASE_URL, KEY_ENV, make_client
from action100m.llm.ratelimit import RateLimiter, RetryPolicy
from action100m.llm.templates import load_templates
from action100m.pipeline import run_aggregate as run_stage_aggregate
from action100m.pipeline import run_publish
from action100m.services import Endpoint, Services
from action100m.stages import aggregate
from action100m.stages.aggregate import llm_unavailable_reason
from action100m.stages.outputs import stage_key
from action100m.store import ArtifactStore
from action100m.tree import Node, Tree, make_node_id

VIDEO = "vid1"
# (start, end, children): durations 20, 12, 5, 7, 3, 4, 8, 2, 6 -> seven nodes of 4 s or more
SPANS = (
    0,
    20,
    (
        (0, 12, ((0, 5, ()), (5, 12, ((5, 8, ()), (8, 12, ()))))),
        (12, 20, ((12, 14, ()), (14, 20, ()))),
    ),
)
LONG = 7


def run_aggregate(settings, store, video_id):
    """As `action100m aggregate` does: asked for by name (no LLM is an error), then published."""
    folder = run_stage_aggregate(settings, store, video_id, required=True)
    run_publish(settings, store, video_id)
    return folder


def build_tree(video_id: str, spans: tuple = SPANS) -> Tree:
    nodes: list[Node] = []

    def add(span: tuple, parent: str | None, level: int) -> str:
        start, end, kids = span
        node = Node(make_node_id(video_id, start, end), parent, level, float(start), float(end))
        nodes.append(node)
        node.children = [add(kid, node.node_id, level + 1) for kid in kids]
        return node.node_id

    add(spans, None, 0)
    return Tree(video_id, float(spans[1]), 30.0, f"/videos/{video_id}.mp4", nodes)


def write_inputs(
    settings: Settings,
    store: ArtifactStore,
    video_id: str = VIDEO,
    transcript_lines: int = 3,
    timed: bool = True,
) -> Tree:
    """A finished segment and caption stage, and metadata, for ``video_id``; a transcript
    without times goes whole into the shared prefix (with times: piecewise, per node)."""
    tree = build_tree(video_id)
    folder = store.stage_dir(video_id, "segment", stage_key(settings, "segment"))
    store.write_json(f"{folder}/tree.json", tree.to_json())
    store.mark_done(folder)
    captions = {
        n.node_id: {
            "caption": f"A person works at a bench from {n.start:g} s to {n.end:g} s.",
            "kind": "frame" if n.is_leaf else "segment",
            "error": None,
        }
        for n in tree.nodes
    }
    folder = store.stage_dir(video_id, "caption", stage_key(settings, "caption"))
    store.write_json(f"{folder}/captions.json", {"model": "captioner", "nodes": captions})
    store.mark_done(folder)
    transcript: list = [
        {"time": i * 0.5, "text": f"now we sand the board, step {i}"}
        for i in range(transcript_lines)
    ]
    if not timed:
        transcript = [line["text"] for line in transcript]
    store.write_json(
        f"{store.video_dir(video_id)}/metadata.json",
        {"title": "Sanding a board", "description": "How I sand.", "transcript": transcript},
    )
    return tree


@pytest.fixture
def llm() -> Iterator[LLMServer]:
    with LLMServer() as server:
        yield server


@pytest.fixture
def settings(store: ArtifactStore, llm: LLMServer, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setattr(aggregate, "RetryPolicy", functools.partial(RetryPolicy, base_delay=0.02))
    overrides = {
        "aggregate": {
            "base_url": llm.base_url,
            "model": "scripted",
            "concurrency": 3,
            "timeout": 2.0,
            "max_retries": 3,
            "targets": "all",  # leaves of 4 s too: these tests count every long node
        }
    }
    return load_settings(profile="tiny", store=store.root, environ={}, overrides=overrides)


def annotations(settings: Settings, store: ArtifactStore) -> dict:
    folder = store.stage_dir(VIDEO, "aggregate", stage_key(settings, "aggregate"))
    return store.read_json(f"{folder}/annotations.json")["nodes"]


def usage(settings: Settings, store: ArtifactStore) -> dict:
    folder = store.stage_dir(VIDEO, "aggregate", stage_key(settings, "aggregate"))
    return store.read_json(f"{folder}/usage.json")


def test_annotates_long_nodes_with_three_rounds(settings, store, llm, caplog) -> None:
    tree = write_inputs(settings, store)
    with caplog.at_level(logging.INFO):
        folder = run_aggregate(settings, store, VIDEO)
    assert store.is_done(folder)
    nodes = annotations(settings, store)
    assert set(nodes) == {n.node_id for n in tree.nodes}
    for node in tree.nodes:
        entry = nodes[node.node_id]
        if node.lasts(4.0):
            where = prompts.span(node.start, node.end)
            assert entry["annotation"]["brief_action"] == f"brief_action of {where} v3"
            assert [r["kind"] for r in entry["rounds"]] == ["draft", "refine", "refine"]
        else:
            assert entry == {"annotation": None, "error": None, "rounds": []}
    assert len(llm.requests) == 3 * LONG
    refines = [r for r in llm.requests if r.answers_so_far]
    assert len(refines) == 2 * LONG
    for request in refines:  # the previous answer is shown and the model asked to verify it
        previous = json.loads(request.answers_so_far[-1])  # in the structure asked for
        assert previous["action"]["brief"].startswith("brief_action")
        assert request.last_user == load_templates().refine
        assert len(request.answers_so_far) == 1  # no growing conversation
    # the shared prefix (system + metadata + global context) is byte-identical for every node
    firsts = {r.prompt.split("# Segment to annotate")[0] for r in llm.requests}
    assert len(firsts) == 1 and "Sanding a board" in firsts.pop()
    spent = usage(settings, store)
    assert spent["requests"] == 3 * LONG and spent["nodes_annotated"] == LONG
    assert spent["input_tokens"] > 0 and spent["output_tokens"] > 0 and spent["cost_usd"] > 0
    document = store.read_json(store.document_uri(VIDEO))
    assert sum(1 for n in document["nodes"] if n["annotation"]) == LONG
    assert f"video {VIDEO}: annotated {LONG}/{LONG} nodes" in caplog.text
    assert "sk-test" not in caplog.text


def test_rerun_and_retry_never_pay_twice(settings, store, llm) -> None:
    write_inputs(settings, store)
    folder = run_aggregate(settings, store, VIDEO)
    run_aggregate(settings, store, VIDEO)  # finished: skipped
    assert len(llm.requests) == 3 * LONG
    store.fs.rm(store.fs._strip_protocol(f"{folder}/_SUCCESS"))  # as if the task died before
    run_aggregate(settings, store, VIDEO)
    assert len(llm.requests) == 3 * LONG
    spent = usage(settings, store)
    assert spent["cache_hits"] == 3 * LONG and spent["paid_this_run"]["requests"] == 0
    assert spent["requests"] == 3 * LONG  # the video's usage still counts the cached answers


def test_429_with_retry_after_waits_and_recovers(settings, store, llm) -> None:
    write_inputs(settings, store)
    llm.script(Reply.status(429, retry_after=0.4))
    started = time.monotonic()
    run_aggregate(settings, store, VIDEO)
    assert time.monotonic() - started >= 0.4
    assert len(llm.requests) == 3 * LONG + 1
    assert all(n["error"] is None for n in annotations(settings, store).values())


def test_5xx_timeout_and_broken_body_are_retried(settings, store, llm) -> None:
    write_inputs(settings, store)
    settings.aggregate.timeout = 0.5
    llm.script(Reply.status(503), Reply.hang(5), Reply.garbage())
    run_aggregate(settings, store, VIDEO)
    assert len(llm.requests) == 3 * LONG + 3
    assert usage(settings, store)["nodes_failed"] == 0


def test_service_errors_fail_the_task_and_the_retry_pays_only_the_rest(
    settings, store, llm
) -> None:
    write_inputs(settings, store)
    root = prompts.span(0, 20)
    llm.responder = lambda req: Reply.status(500) if req.segment == root else None
    with pytest.raises(ServiceError, match="1 of 7 nodes"):
        run_aggregate(settings, store, VIDEO)
    folder = store.stage_dir(VIDEO, "aggregate", stage_key(settings, "aggregate"))
    assert not store.is_done(folder)
    assert len(llm.requests) == 3 * (LONG - 1) + 4  # the root's draft tried 1 + 3 times
    llm.responder = None
    llm.reset()
    run_aggregate(settings, store, VIDEO)
    assert len(llm.requests) == 3  # only the root's three rounds are new
    assert usage(settings, store)["paid_this_run"]["requests"] == 3


def _bad_answers(request: Request) -> Reply | None:
    if request.segment == prompts.span(0, 20) and not request.answers_so_far:
        return Reply.text(
            'Sure! Here it is:\n```json\n{"annotation": {"Brief Action": "sand", '
            '"detailed-action": "d", "actor": "a person", "brief_caption": "b", '
            '"detailed_caption": "c"}}\n```\nHope this helps.'
        )
    if request.segment == prompts.span(0, 12) and not request.answers_so_far:
        return Reply.text("{'brief_action': broken")  # repaired by the next turn
    if request.segment == prompts.span(12, 20):
        return Reply.json(
            {"brief_action": "x", "detailed_action": "y", "actor": "z", "brief_caption": "w"}
        )  # never gives detailed_caption
    if request.segment == prompts.span(14, 20):
        return Reply.refusal()
    return None


def test_malformed_answers_are_repaired_or_recorded(settings, store, llm) -> None:
    write_inputs(settings, store)
    llm.responder = _bad_answers
    run_aggregate(settings, store, VIDEO)
    nodes = annotations(settings, store)
    by_span = {prompts.span(n.start, n.end): nodes[n.node_id] for n in build_tree(VIDEO).nodes}
    assert by_span[prompts.span(0, 20)]["rounds"][0]["annotation"]["brief_action"] == "sand"
    repaired = by_span[prompts.span(0, 12)]["rounds"][0]
    assert repaired["annotation"] and len(repaired["attempts"]) == 2
    assert repaired["attempts"][0]["error"].startswith("the answer holds no JSON")
    repairs = [r for r in llm.requests if "could not be used" in r.last_user]
    assert any("{'brief_action': broken" in r.answers_so_far[-1] for r in repairs)
    missing = by_span[prompts.span(12, 20)]
    assert missing["annotation"] is None and "detailed_caption" in missing["error"]
    refused = by_span[prompts.span(14, 20)]
    assert refused["annotation"] is None and "refus" in refused["error"]
    document = store.read_json(store.document_uri(VIDEO))
    assert sum(1 for n in document["nodes"] if n.get("error")) == 2
    assert usage(settings, store)["nodes_failed"] == 2


def test_every_node_failing_fails_the_video(settings, store, llm) -> None:
    write_inputs(settings, store)
    llm.responder = lambda req: Reply.text("I cannot do this.")
    with pytest.raises(PermanentError, match="every node failed"):
        run_aggregate(settings, store, VIDEO)
    assert not store.is_done(store.stage_dir(VIDEO, "aggregate", stage_key(settings, "aggregate")))


def test_invalid_key_fails_fast(settings, store, monkeypatch, caplog) -> None:
    write_inputs(settings, store)
    with LLMServer(api_key="sk-right") as guarded:
        settings.aggregate.base_url = guarded.base_url
        monkeypatch.setenv("OPENAI_API_KEY", "sk-wrong")
        started = time.monotonic()
        with pytest.raises(PermanentError, match="API key") as caught:
            run_aggregate(settings, store, VIDEO)
        assert time.monotonic() - started < 2
        # One line naming the video and the provider (and never the key).
        assert str(caught.value).startswith(f"video {VIDEO}: openai")
        assert "sk-wrong" not in str(caught.value)
        assert len(guarded.requests) <= settings.aggregate.concurrency
    assert "sk-wrong" not in caplog.text


def test_dead_endpoint_is_a_service_error(settings, store) -> None:
    write_inputs(settings, store)
    settings.aggregate.base_url = "http://127.0.0.1:9/v1"
    settings.aggregate.max_retries = 1
    with pytest.raises(ServiceError):
        run_aggregate(settings, store, VIDEO)


def test_anthropic_uses_cache_control_and_records_cached_tokens(
    settings, store, llm, monkeypatch
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
    settings.aggregate.provider = "anthropic"
    settings.aggregate.model = "claude-scripted"
    settings.aggregate.base_url = llm.anthropic_base_url
    # a prefix long enough to be cached: a transcript without times is shared by every node
    write_inputs(settings, store, transcript_lines=400, timed=False)
    run_aggregate(settings, store, VIDEO)
    assert {r.path for r in llm.requests} == {"/v1/messages"}
    for request in llm.requests:
        auth = request.headers.get("x-api-key") or request.headers.get("authorization", "")
        assert auth.endswith("sk-ant-test")
        blocks = request.body["messages"][0]["content"]
        assert [("cache_control" in b) for b in blocks] == [True, True]
        assert blocks[0]["text"] == llm.requests[0].body["messages"][0]["content"][0]["text"]
    spent = usage(settings, store)
    assert spent["provider"] == "anthropic" and spent["requests"] == 3 * LONG
    assert spent["cached_input_tokens"] > spent["cache_write_tokens"] > 0
    uncached = spent["input_tokens"] * settings.aggregate.prices["input"] / 1e6
    assert spent["cost_usd"] < uncached


def test_llm_unavailable_reason(store, monkeypatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("AIRFLOW_CONN_OPENAI_DEFAULT", raising=False)
    settings = load_settings(store=store.root, environ={})
    reason = llm_unavailable_reason(settings)
    assert reason and "OPENAI_API_KEY" in reason and "aggregate.base_url" in reason
    with pytest.raises(PermanentError, match="no LLM configured"):
        run_aggregate(settings, store, VIDEO)
    settings.aggregate.base_url = "http://localhost:8000/v1"
    assert llm_unavailable_reason(settings) is None
    settings.aggregate.base_url = None
    # A key handed over explicitly (as the Airflow plugin does from the openai_default
    # connection): the library never reads Airflow's AIRFLOW_CONN_* variables itself.
    monkeypatch.setenv("AIRFLOW_CONN_OPENAI_DEFAULT", '{"conn_type": "openai", "password": "k"}')
    assert llm_unavailable_reason(settings) is not None
    services = Services().with_llm("openai", Endpoint(api_key=SecretStr("k")))
    assert llm_unavailable_reason(settings, services) is None


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_base_url_variables_empty_or_set(provider, settings, store, llm, monkeypatch) -> None:
    """compose hands every container OPENAI_BASE_URL= and ANTHROPIC_BASE_URL= when unset: an empty
    variable means the provider's own API, not an address of ""; a set one is the endpoint."""
    variable = BASE_URL_ENV[provider]
    cfg = settings.aggregate.model_copy(update={"provider": provider, "base_url": None})
    monkeypatch.setenv(variable, "")  # the SDK itself would read it from here
    monkeypatch.setenv(KEY_ENV[provider], "k")
    client = make_client(cfg)
    assert str(client.client.base_url).rstrip("/") == DEFAULT_BASE_URL[provider]  # type: ignore[attr-defined]
    # Set, it is the endpoint: the whole stage runs against it with no aggregate.base_url.
    write_inputs(settings, store)
    monkeypatch.setenv(variable, llm.base_url)
    settings.aggregate.provider = provider
    settings.aggregate.base_url = None
    assert llm_unavailable_reason(settings) is None
    run_aggregate(settings, store, VIDEO)
    assert len(llm.requests) == 3 * LONG


def test_imported_annotations_are_replaced(settings, store, llm) -> None:
    write_inputs(settings, store)
    folder = store.stage_dir(VIDEO, "aggregate", stage_key(settings, "aggregate"))
    store.write_json(f"{folder}/annotations.json", {"model": "release", "nodes": {}})
    store.mark_done(folder, {"imported": "release.json"})
    run_aggregate(settings, store, VIDEO)
    assert len(llm.requests) == 3 * LONG
    assert not store.done_info(folder).get("imported")


OPENAI_EMPTY = {"id": "x", "object": "chat.completion", "created": 0, "model": "scripted"}


@pytest.mark.parametrize(
    "payload",
    [
        {**OPENAI_EMPTY, "choices": []},
        {**OPENAI_EMPTY, "choices": None, "usage": None},
        {**OPENAI_EMPTY, "choices": [{"index": 0, "message": None, "finish_reason": None}]},
        {**OPENAI_EMPTY, "choices": [None], "usage": {"prompt_tokens": None}},
    ],
)
def test_a_200_without_choices_is_an_empty_answer(settings, store, llm, payload) -> None:
    write_inputs(settings, store)
    llm.script(Reply.raw(payload))  # the first draft; its repair turn gets a valid answer
    run_aggregate(settings, store, VIDEO)
    assert len(llm.requests) == 3 * LONG + 1
    nodes = annotations(settings, store)
    assert all(n["error"] is None for n in nodes.values())
    (repaired,) = [n for n in nodes.values() if n["rounds"] and len(n["rounds"][0]["attempts"]) > 1]
    assert repaired["rounds"][0]["attempts"][0]["error"] == "the answer is empty"


@pytest.mark.parametrize(
    "payload",
    [
        {"type": "message", "role": "assistant", "content": None, "usage": None},
        {"type": "message", "content": [{"type": "text", "text": None}], "usage": {}},
    ],
)
def test_an_anthropic_200_without_content_or_usage_is_an_empty_answer(
    settings, store, llm, monkeypatch, payload
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
    settings.aggregate.provider = "anthropic"
    settings.aggregate.model = "claude-scripted"
    settings.aggregate.base_url = llm.anthropic_base_url
    write_inputs(settings, store)
    llm.script(Reply.raw(payload))
    run_aggregate(settings, store, VIDEO)
    assert len(llm.requests) == 3 * LONG + 1
    assert usage(settings, store)["nodes_failed"] == 0


def test_an_unexpected_error_fails_only_its_node(settings, store, llm, monkeypatch) -> None:
    tree = write_inputs(settings, store)
    real = aggregate.annotate_node

    def broken_for_the_root(session, builder, node, what):
        if node.node_id == tree.root.node_id:
            raise KeyError("something nobody planned for")
        return real(session, builder, node, what)

    monkeypatch.setattr(aggregate, "annotate_node", broken_for_the_root)
    folder = run_aggregate(settings, store, VIDEO)
    assert store.is_done(folder)
    nodes = annotations(settings, store)
    assert "unexpected KeyError" in nodes[tree.root.node_id]["error"]
    assert usage(settings, store)["nodes_annotated"] == LONG - 1
    assert len(llm.requests) == 3 * (LONG - 1)


def test_a_dead_endpoint_stops_every_node_after_a_few_connection_failures(
    settings, store, monkeypatch
) -> None:
    from action100m.llm.clients import OpenAIChat

    write_inputs(settings, store)
    settings.aggregate.base_url = "http://127.0.0.1:9/v1"  # nothing listens: connection refused
    settings.aggregate.max_retries = 6  # 7 attempts per request, were each node on its own
    attempts = []
    real = OpenAIChat.complete

    def counted(self, request):
        attempts.append(1)
        return real(self, request)

    monkeypatch.setattr(OpenAIChat, "complete", counted)
    with pytest.raises(ServiceError, match=f"{LONG} of {LONG} nodes.*connection failures in a row"):
        run_aggregate(settings, store, VIDEO)
    # Not 7 per node: each caller sends at most one attempt per counted failure (a failure sent
    # before the last one was counted does not count), so the endpoint is down after at most
    # concurrency x max_connection_failures attempts however the failures interleave.
    limit = RetryPolicy().max_connection_failures
    assert len(attempts) <= settings.aggregate.concurrency * limit < LONG * 7


def test_an_endpoint_dying_midway_keeps_every_answer_received(
    settings, store, llm, monkeypatch
) -> None:
    import httpx2
    import openai
    from openai.resources.chat.completions import Completions

    write_inputs(settings, store)
    real = Completions.create
    answered: list[int] = []

    def dies_after_ten(self, **options):
        if len(answered) >= 10:
            request = httpx2.Request("POST", llm.base_url)
            raise openai.APIConnectionError(message="Connection refused", request=request)
        result = real(self, **options)
        answered.append(1)
        return result

    monkeypatch.setattr(Completions, "create", dies_after_ten)
    with pytest.raises(ServiceError, match="connection failures in a row"):
        run_aggregate(settings, store, VIDEO)
    assert len(llm.requests) == len(answered) >= 10
    monkeypatch.setattr(Completions, "create", real)
    llm.reset()
    run_aggregate(settings, store, VIDEO)
    assert len(llm.requests) == 3 * LONG - len(answered)  # nothing received was lost
    assert usage(settings, store)["nodes_annotated"] == LONG


def test_a_refused_answer_is_not_cached_so_a_rerun_asks_again(settings, store, llm) -> None:
    write_inputs(settings, store)
    root = prompts.span(0, 20)
    llm.responder = lambda req: Reply.refusal() if req.segment == root else None
    folder = run_aggregate(settings, store, VIDEO)
    assert "refus" in annotations(settings, store)[build_tree(VIDEO).root.node_id]["error"]
    store.fs.rm(store.fs._strip_protocol(f"{folder}/_SUCCESS"))  # e.g. the model was fixed
    llm.responder = None
    llm.reset()
    run_aggregate(settings, store, VIDEO)
    assert len(llm.requests) == 3  # the root's rounds asked again, the rest from the cache
    assert annotations(settings, store)[build_tree(VIDEO).root.node_id]["error"] is None


def test_a_failed_refine_round_is_asked_again_in_the_next_round(settings, store, llm) -> None:
    write_inputs(settings, store)
    root = prompts.span(0, 20)
    empty = {"left": 1 + settings.aggregate.max_repairs}  # round 2 and its repair turns

    def refine_fails_once(request: Request) -> Reply | None:
        if request.segment == root and request.answers_so_far and empty["left"] > 0:
            empty["left"] -= 1
            return Reply.text("")
        return None

    llm.responder = refine_fails_once
    run_aggregate(settings, store, VIDEO)
    entry = annotations(settings, store)[build_tree(VIDEO).root.node_id]
    second, third = entry["rounds"][1], entry["rounds"][2]
    assert second["annotation"] is None and second["error"] == "the answer is empty"
    # round 3 sends round 2's very request again (the draft is still the last valid answer)
    assert third["annotation"] is not None and not third["attempts"][0]["cached"]
    assert entry["annotation"]["brief_action"] == f"brief_action of {root} v2"


class RecordingLimiter(RateLimiter):
    """The stage's real limiter, remembering every pause a 429 set (until when, in its clock)."""

    made: list[RecordingLimiter] = []

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.pauses: list[float] = []
        self.paused = threading.Event()
        RecordingLimiter.made.append(self)

    def pause(self, seconds: float) -> None:
        super().pause(seconds)
        self.pauses.append(self.paused_until)
        self.paused.set()


@pytest.fixture
def limiters(monkeypatch) -> list[RecordingLimiter]:
    made: list[RecordingLimiter] = []
    monkeypatch.setattr(RecordingLimiter, "made", made)
    monkeypatch.setattr(aggregate, "RateLimiter", RecordingLimiter)
    return made


def test_a_429_storm_fails_the_task_and_keeps_every_answer_received(
    settings, store, llm, limiters
) -> None:
    """Every request after the first ten is refused with a Retry-After, for longer than the
    retries last: the task fails naming the video, and the rerun asks only for what is missing."""
    write_inputs(settings, store)
    settings.aggregate.max_retries = 2
    lock = threading.Lock()
    answered = [0]

    def storm_after_ten(request: Request) -> Reply | None:
        with lock:
            if answered[0] < 10:
                answered[0] += 1
                return None  # a valid answer
        return Reply.status(429, retry_after=0.05)

    llm.responder = storm_after_ten
    with pytest.raises(ServiceError, match=rf"video {VIDEO}: \d of {LONG} nodes.*rate limited"):
        run_aggregate(settings, store, VIDEO)
    assert not store.is_done(store.stage_dir(VIDEO, "aggregate", stage_key(settings, "aggregate")))
    refused = len(llm.requests) - 10
    assert refused > 0 and refused % 3 == 0  # every refused request was tried 1 + 2 times
    (limiter,) = limiters
    assert len(limiter.pauses) == refused  # each 429 paused the limiter for its Retry-After
    llm.responder = None
    llm.reset()
    run_aggregate(settings, store, VIDEO)
    assert len(llm.requests) == 3 * LONG - 10  # the ten answers received were not asked again
    assert usage(settings, store)["nodes_annotated"] == LONG
    assert usage(settings, store)["cache_hits"] == 10


def test_a_retry_after_holds_back_every_caller(settings, store, llm, limiters) -> None:
    """The first request is refused with a Retry-After while the other two in flight wait at the
    server until the limiter has paused: every request sent from then on, by any caller, reaches
    the server only once the pause is over (the same clock: no wall-clock assumption)."""
    write_inputs(settings, store)
    lock = threading.Lock()
    seen = [0]

    def refuse_the_first(request: Request) -> Reply | None:
        with lock:
            index = seen[0]
            seen[0] += 1
        if index == 0:
            return Reply.status(429, retry_after=0.3)
        if index < settings.aggregate.concurrency:  # the others first sent: held until the pause
            limiters[0].paused.wait(5.0)
        return None

    llm.responder = refuse_the_first
    run_aggregate(settings, store, VIDEO)
    (limiter,) = limiters
    (until,) = limiter.pauses
    assert len(llm.requests) == 3 * LONG + 1
    first = settings.aggregate.concurrency  # requests sent before anybody had an answer
    later = llm.requests[first:]
    assert {r.segment for r in later} - {llm.requests[0].segment}  # not just the refused caller's
    early = [r.segment for r in later if r.received_at < until]
    assert early == [], f"sent during the Retry-After pause: {early}"
    assert limiter.waited > 0


def test_aggregate_concurrency_is_reached_and_never_exceeded(settings, store, llm) -> None:
    write_inputs(settings, store)
    settings.aggregate.concurrency = 2
    llm.delay = 0.03  # each answer takes a moment, so that requests overlap
    run_aggregate(settings, store, VIDEO)
    assert len(llm.requests) == 3 * LONG
    assert llm.max_in_flight == 2


def test_nodes_without_a_valid_annotation_stay_pending_and_are_asked_again(
    settings, store, llm
) -> None:
    """Invalid answers are node errors, but the video is not finished: the next run asks again
    for those nodes only (valid answers come from the cache), and then it is."""
    write_inputs(settings, store)
    llm.responder = _bad_answers
    run_aggregate(settings, store, VIDEO)
    status = store.read_json(store.status_uri(VIDEO))
    assert status["complete"] is False and "2 node(s)" in status["skipped"]["aggregate"]
    asked = len(llm.requests)
    llm.responder = None  # the endpoint is fixed: every answer valid now
    run_aggregate(settings, store, VIDEO)
    again = llm.requests[asked:]
    # The two failed nodes; and the repaired one pays for its invalid draft again (only valid
    # answers are cached: see stages/aggregate.py). No other node is asked.
    assert {r.segment for r in again} - {prompts.span(0, 12)} == {
        prompts.span(12, 20),
        prompts.span(14, 20),
    }
    assert store.read_json(store.status_uri(VIDEO))["complete"] is True
    assert usage(settings, store)["nodes_failed"] == 0
