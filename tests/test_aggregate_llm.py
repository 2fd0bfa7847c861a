"""Stage 3 building blocks without a server: answer parsing, prompt budget, rate limits, cost."""

from __future__ import annotations

import email.utils
import re
import time
from pathlib import Path

import pytest
from test_aggregate import build_tree

from action100m.config import load_settings
from action100m.errors import ServiceError
from action100m.llm import prompts
from action100m.llm.messages import ChatRequest, Usage
from action100m.llm.ratelimit import (
    ConnectionFailed,
    EndpointDown,
    RateLimiter,
    RetryPolicy,
    TokenBucket,
    TransientError,
    parse_retry_after,
)
from action100m.llm.schema import AnswerError, parse_answer
from action100m.store import ArtifactStore
from action100m.tree import Node, Tree, make_node_id

GOOD = (
    '{"brief_action": "sand a board", "detailed_action": "Moves the sander along the grain.", '
    '"actor": "a woodworker", "brief_caption": "A woodworker sands.", '
    '"detailed_caption": "A woodworker sands a pine board."}'
)


@pytest.mark.parametrize(
    "text",
    [
        GOOD,
        f"```json\n{GOOD}\n```",
        f"Here is the annotation:\n{GOOD}\nLet me know if you need more.",
        f'{{"annotation": {GOOD}}}',
        GOOD.replace('"brief_action"', '"Brief Action"').replace('"actor"', '"ACTOR"'),
        "{not: json} and then " + GOOD,
    ],
)
def test_parser_copes_with_wrapped_answers(text: str) -> None:
    annotation = parse_answer(text)
    assert annotation.brief_action == "sand a board" and annotation.actor == "a woodworker"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("I'm sorry, I can't help with that.", "refusal"),
        ("The person sands a board.", "no JSON"),
        ('{"foo": 1}', "none of the fields"),
        (GOOD.replace('"actor": "a woodworker", ', ""), "actor"),
        (GOOD.replace('"a woodworker"', '["a", "b"]'), "actor: Value error, must be a string"),
        (GOOD.replace('"a woodworker"', '"  "'), "must not be empty"),
    ],
)
def test_parser_says_what_is_wrong(text: str, reason: str) -> None:
    with pytest.raises(AnswerError, match=reason):
        parse_answer(text)


def test_na_is_a_valid_value() -> None:
    text = GOOD.replace('"sand a board"', '"N/A"').replace('"a woodworker"', '"N/A"')
    assert parse_answer(text).actor == "N/A"


def _deep_tree(levels: int, caption_chars: int) -> tuple[Tree, dict]:
    """A complete binary tree ``levels`` deep over 2**levels seconds, long captions."""
    nodes: list[Node] = []

    def add(start: float, end: float, parent: str | None, level: int) -> str:
        node = Node(make_node_id("deep", start, end), parent, level, start, end)
        nodes.append(node)
        if level < levels:
            mid = (start + end) / 2
            node.children = [
                add(start, mid, node.node_id, level + 1),
                add(mid, end, node.node_id, level + 1),
            ]
        return node.node_id

    add(0.0, float(2**levels), None, 0)
    tree = Tree("deep", float(2**levels), 30.0, "deep.mp4", nodes)
    words = ("word " * caption_chars)[:caption_chars]
    captions = {n.node_id: {"caption": f"<{n.node_id}> {words}", "kind": "segment"} for n in nodes}
    return tree, captions


def _sentences(node_id: str, chars: int) -> str:
    """Real prose of about ``chars`` characters: numbered sentences, so a cut shows where."""
    text, number = f"<{node_id}> A person stands at a workbench.", 1
    while len(text) < chars:
        text += f" In step {number} they sand the board, then wipe off the dust!"
        number += 1
        if number % 3 == 0:
            text += " Is the surface smooth yet?"
    return text


def _assert_cut_only_at_sentence_ends(shown: str, whole: str) -> bool:
    """``shown`` is ``whole`` or ``whole`` cut after a sentence and marked; True when cut."""
    if shown == whole:
        return False
    assert shown.endswith(prompts.MORE), f"cut without the marker: {shown[-60:]!r}"
    kept = shown.removesuffix(prompts.MORE)
    assert whole.startswith(kept) and kept[-1] in ".!?" and whole[len(kept)] == " ", (
        f"cut inside a sentence: ...{kept[-60:]!r}"
    )
    return True


HEADING = re.compile(r"^(?:#{2,} |\*\*)\[[\d.]+s-[\d.]+s\] \([\d.]+ s\)(?:\*\*)?$")


def _captions(text: str) -> list[str]:
    """The caption under each node heading of a rendered tree, in order."""
    lines = text.splitlines()
    return [lines[i + 1] for i, line in enumerate(lines[:-1]) if HEADING.match(line)]


def test_prompt_budget_cuts_by_depth_never_inside_a_caption() -> None:
    tree, _ = _deep_tree(levels=8, caption_chars=0)  # 511 nodes, ~75k tokens of captions
    captions = {
        n.node_id: {"caption": _sentences(n.node_id, 600), "kind": "segment"} for n in tree.nodes
    }
    builder = prompts.PromptBuilder(tree, captions, {"title": "Deep"}, max_tokens=8000)
    block = builder.node_block(tree.root)
    total = prompts.estimate_tokens(builder.system_text + builder.context + block)
    assert total <= 8000
    shown = [n for n in tree.nodes if f"<{n.node_id}>" in block]
    depth = max(n.level for n in shown)
    assert 1 <= depth < 8 and "levels below are left out" in block
    assert len(shown) == 2 ** (depth + 1) - 1  # every node down to that depth, none deeper
    checked = cut = 0
    for text in (block, builder.context):  # every caption, in the subtree and the context
        for line in _captions(text):
            found = re.fullmatch(r"(<([^>]+)>.*)", line)
            assert found, line
            checked += 1
            cut += _assert_cut_only_at_sentence_ends(found[1], captions[found[2]]["caption"])
    assert checked > len(shown)
    assert cut == checked - 2  # all shortened, each after a whole sentence, but the two roots
    root = captions[tree.root.node_id]["caption"]
    assert block.startswith(f"## [0.0s-256.0s] (256.0 s)\n{root}\n")  # its own: whole
    leaf = tree.nodes[-1]
    assert "left out" not in builder.node_block(leaf)


def test_every_caption_of_a_node_reaches_the_prompt() -> None:
    from action100m.interop import _caption  # what `import` keeps of a release's node

    tree = build_tree("v")
    leaf = tree.leaves()[0]
    captions = {
        n.node_id: {"caption": f"Caption {n.start:g}-{n.end:g}.", "kind": "segment"}
        for n in tree.nodes
    }
    # `caption.leaf_segment_caption`: a leaf's frame caption plus the caption of its clip
    captions[leaf.node_id] = {
        "caption": "One frame of a board.",
        "kind": "frame",
        "segment_caption": "A woman sands a board. Dust flies.",
    }
    imported = _caption(
        {"llama3_caption": "A frame.", "plm_caption": "A clip.", "plm_action": "sand a board"},
        leaf=True,
    )
    other = tree.leaves()[1]
    captions[other.node_id] = imported
    builder = prompts.PromptBuilder(tree, captions, {"title": "T"}, 24000)
    block = builder.node_block(tree.root)
    for text in (builder.context, block):
        assert "frame: One frame of a board. / clip: A woman sands a board. Dust flies." in text
        assert "frame: A frame. / clip: A clip. / action: sand a board" in text
    again = prompts.PromptBuilder(tree, captions, {"title": "T"}, 24000)
    assert again.context == builder.context  # the shared prefix is a function of the inputs
    # each caption is cut on its own, at a sentence end
    long = {**captions[leaf.node_id], "segment_caption": "First clip sentence. " * 40}
    line = prompts._caption_of(long, 60)
    assert (
        line
        == "frame: One frame of a board. / clip: First clip sentence. First clip sentence."
        + (prompts.MORE)
    )


def test_prompt_shared_prefix_and_order(monkeypatch: pytest.MonkeyPatch) -> None:
    tree = build_tree("v")
    captions = {
        n.node_id: {"caption": f"c{n.start:g}-{n.end:g}", "kind": "segment"} for n in tree.nodes
    }
    transcript = [
        {"time": "1.5", "text": "hi"},
        {"time": "4", "text": "sanding now"},
        {"time": "12.5", "text": "now  the   second half"},
        {"time": "19.5", "text": "bye"},
    ]
    metadata = {"title": "T", "description": "D", "transcript": transcript}
    whole = prompts.PromptBuilder(tree, captions, metadata, 24000)
    assert "- '[1.5s] hi'\n- '[4.0s] sanding now'" in whole.context  # it fits: whole, in the YAML
    monkeypatch.setattr(prompts, "METADATA_SHARE", 0.001)  # too long for its share: piecewise
    builder = prompts.PromptBuilder(tree, captions, metadata, 24000)
    assert "```yaml\ntitle: T\ndescription: D\n" in builder.context
    assert "## [0.0s-20.0s] (20.0 s)\nc0-20" in builder.context
    assert "] hi" not in builder.context  # timed speech goes with the nodes it is spoken in
    block_node = tree.nodes[1]
    block = builder.node_block(block_node)
    assert block.startswith("## [0.0s-12.0s] (12.0 s)")
    assert "\n### [5.0s-12.0s] (7.0 s)\nc5-12\n\n#### [5.0s-8.0s] (3.0 s)\nc5-8" in block
    assert "[1.5s] hi\n[4.0s] sanding now" in block and "second half" not in block
    inner = builder.node_block(tree.nodes[4])  # [5-8]: a line lasts until the next one
    assert inner.startswith("## [5.0s-8.0s] (3.0 s)")
    assert "[4.0s] sanding now" in inner and "] hi" not in inner
    later = builder.node_block(tree.nodes[-1])  # [14-20]: the line said at 12.5 s goes on
    assert later.startswith("## [14.0s-20.0s] (6.0 s)")
    assert "[12.5s] now the second half\n[19.5s] bye" in later and "sanding" not in later
    late = {"transcript": [{"time": 19.5, "text": "bye"}]}
    assert "Speech" not in prompts.PromptBuilder(tree, captions, late, 24000).node_block(block_node)
    untimed = prompts.PromptBuilder(tree, captions, {"transcript": ["hi", "bye"]}, 24000)
    assert "- hi\n- bye" in untimed.context and "hi\n" not in untimed.node_block(tree.nodes[1])


@pytest.mark.parametrize(
    ("text", "limit", "expected"),
    [
        ("One. Two two. Three three three.", 100, "One. Two two. Three three three."),
        ("One. Two two. Three three three.", 20, "One. Two two. [...]"),
        ("One. Two two. Three three three.", 18, "One. [...]"),
        ("A first sentence that is long. Two.", 5, "A first sentence that is long. [...]"),
        (
            "No sentence end at all, just words and words",
            10,
            "No sentence end at all, just words and words",
        ),
        ("Why? Yes! Fine, then.", 16, "Why? Yes! [...]"),
    ],
)
def test_shorten_cuts_only_at_sentences(text: str, limit: int, expected: str) -> None:
    assert prompts.shorten(text, limit) == expected


def test_subtree_depth_and_part_captions_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    tree, captions = _deep_tree(levels=6, caption_chars=40)
    long = "First part. " + "Then more detail here. " * 40
    captions = {k: {**v, "caption": f"{v['caption']}. {long}"} for k, v in captions.items()}
    builder = prompts.PromptBuilder(tree, captions, {}, max_tokens=24000)
    bounded = builder.node_block(tree.root)
    outline = bounded.split("\n\n(parts more than", 1)[0]
    assert prompts.estimate_tokens(outline) <= prompts.SUBTREE_TOKENS + 20
    assert "levels below are left out" in bounded
    monkeypatch.setattr(prompts, "SUBTREE_TOKENS", 10**6)  # the depth bound alone
    block = builder.node_block(tree.root)
    shown = [n for n in tree.nodes if f"<{n.node_id}>" in block]
    assert max(n.level for n in shown) == prompts.SUBTREE_DEPTH
    assert len(shown) == 2 ** (prompts.SUBTREE_DEPTH + 1) - 1
    assert f"(parts more than {prompts.SUBTREE_DEPTH} levels below are left out)" in block
    own, *parts = _captions(block)
    assert own.endswith(long.strip())  # the node's own caption whole
    for line in parts:  # its parts' captions cut after a whole sentence, marked
        assert line.endswith(". [...]") and len(line) < prompts.PART_CHARS + 60
    assert len(_captions(builder.context)) == 2 ** (prompts.GLOBAL_DEPTH + 1) - 1


def test_request_hash_covers_content_not_identity() -> None:
    request = ChatRequest("s", ("a", "b"), max_tokens=10)
    assert request.cache_key("openai", "m") == ChatRequest(
        "s", ("a", "b"), max_tokens=10
    ).cache_key("openai", "m")
    assert request.cache_key("openai", "m") != request.then("x", "y").cache_key("openai", "m")
    assert request.cache_key("openai", "m") != request.cache_key("openai", "other")


def test_retry_after_forms() -> None:
    assert parse_retry_after({"retry-after": "2"}) == 2.0
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    date = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 < (parse_retry_after({"retry-after": date}) or 0) <= 30
    assert parse_retry_after({}) is None
    assert parse_retry_after({"retry-after": "99999"}) == 300.0


def test_token_bucket_spreads_requests() -> None:
    now = [0.0]
    bucket = TokenBucket(60, clock=lambda: now[0])  # one per second, a burst of 60
    assert all(bucket.reserve(1) == 0 for _ in range(60))
    assert bucket.reserve(1) == pytest.approx(1.0)
    assert bucket.reserve(1) == pytest.approx(2.0)
    now[0] = 10.0
    assert bucket.reserve(1) == 0  # refilled meanwhile
    assert TokenBucket(100, clock=lambda: 0.0).reserve(10_000) == 0  # clamped to capacity


def test_cost_counts_cached_and_written_tokens() -> None:
    prices = {"input": 2.0, "cached_input": 1.0, "output": 10.0}
    usage = Usage(
        requests=1, input_tokens=1_000_000, cached_input_tokens=500_000, output_tokens=100_000
    )
    assert usage.cost(prices) == pytest.approx(0.5 * 2 + 0.5 * 1 + 0.1 * 10)
    written = Usage(requests=1, input_tokens=1_000_000, cache_write_tokens=1_000_000)
    assert written.cost(prices) == pytest.approx(2.5)


def _limiter(max_retries: int = 6) -> RateLimiter:
    return RateLimiter(1000, 10**7, 4, RetryPolicy(max_retries=max_retries), sleep=lambda s: None)


def test_a_dead_endpoint_stops_every_caller_after_a_few_connection_failures() -> None:
    limiter = _limiter()
    calls = []

    def refused() -> str:
        calls.append(1)
        raise ConnectionFailed("openai: cannot connect: connection refused")

    with pytest.raises(EndpointDown, match="3 connection failures in a row"):
        limiter.call(refused, 10, "node 1")  # not 7 attempts: 3 are enough
    assert len(calls) == 3
    for number in range(2, 6):  # every other node fails at once, without a request
        with pytest.raises(ServiceError, match=f"node {number}: not sent"):
            limiter.call(refused, 10, f"node {number}")
    assert len(calls) == 3


def test_connection_failures_count_across_callers_and_a_success_resets_them() -> None:
    limiter = _limiter(max_retries=0)
    refused = ConnectionFailed("openai: cannot connect")

    def fail() -> str:
        raise refused

    for _ in range(2):
        with pytest.raises(ServiceError, match="gave up after 1 attempts"):
            limiter.call(fail, 10, "a node")
    assert limiter.call(lambda: "answer", 10, "another node") == "answer"
    for _ in range(2):  # counted afresh: the endpoint answered in between
        with pytest.raises(ServiceError, match="gave up"):
            limiter.call(fail, 10, "a node")
    with pytest.raises(EndpointDown):
        limiter.call(fail, 10, "a third node")  # three in a row, from three callers


def test_5xx_and_timeouts_still_get_every_retry() -> None:
    limiter = _limiter(max_retries=6)
    calls = []

    def overloaded() -> str:
        calls.append(1)
        raise TransientError("openai: HTTP 503: server error")

    with pytest.raises(ServiceError, match="gave up after 7 attempts"):
        limiter.call(overloaded, 10, "node")
    assert len(calls) == 7 and limiter.down is None


def test_each_task_keeps_its_share_of_the_account_limits(tmp_path: Path) -> None:
    """Four aggregate tasks at once, each with its own buckets: together they stay within the
    account's limits only if each keeps a quarter of them (bursts included)."""
    from action100m.stages.aggregate import _session

    overrides = {
        "aggregate": {
            "base_url": "http://127.0.0.1:9/v1",
            "requests_per_minute": 400,
            "tokens_per_minute": 100_000,
            "rate_share": 4,
        }
    }
    settings = load_settings(store=str(tmp_path), environ={}, overrides=overrides)
    limiter = _session(settings, ArtifactStore(str(tmp_path))).limiter
    assert limiter.requests.capacity == 100 and limiter.tokens.capacity == 25_000
    assert limiter.requests.rate == pytest.approx(100 / 60)


def test_one_blip_failing_every_request_in_flight_counts_once() -> None:
    """A proxy reset fails all eight concurrent requests at the same moment: that is one
    connection failure, not three in a row, and each of them retries after its backoff."""
    import threading

    limiter = RateLimiter(1000, 10**7, 8, RetryPolicy(max_retries=1), sleep=lambda s: None)
    blip = threading.Barrier(8)
    first_tries = threading.Semaphore(8)

    def fails_together_then_answers() -> str:
        if first_tries.acquire(blocking=False):
            blip.wait(timeout=5)  # all eight are in flight before any fails
            raise ConnectionFailed("openai: cannot connect: server disconnected")
        return "answer"

    results: list[str] = []

    def node() -> None:
        results.append(limiter.call(fails_together_then_answers, 1, "node"))

    threads = [threading.Thread(target=node) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == ["answer"] * 8
    assert limiter.down is None and limiter.connection_failures == 0
