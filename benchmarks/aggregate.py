"""Stage 3 cost: calls, tokens (cached too) and estimated USD per node and per video-hour for the
reference sample's tree, against the scripted server (tests/llm_server.py) answering each node
with the release's own annotation (so output sizes are real), through the real client path, with
the default settings.

Printed beside the naive figure of the same run: a prompt in the paper's structure with nothing
budgeted (full metadata and transcript, the global context with whole captions, the node's full
subtree with whole captions), three rounds resending the whole conversation, GPT-4o list prices.
The naive prompt is built from the same imported tree, captions and metadata as ours, with the
same answers and the same token count (characters / 4, as the scripted server counts ours).
Also: each provider path with and without prompt caching and the batch discount, the tokens an
open model served by vLLM would process, and our client path's overhead per call.

    python benchmarks/aggregate.py [--reference ../shared/reference/hySSAAw4t24.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from batch_server import BatchServer  # noqa: E402
from llm_server import LLMServer, Reply, Request  # noqa: E402

from action100m.config import Settings, load_settings  # noqa: E402
from action100m.interop import import_file, read_records  # noqa: E402
from action100m.llm import prompts  # noqa: E402
from action100m.llm.messages import Usage  # noqa: E402
from action100m.llm.prompts import PromptBuilder  # noqa: E402
from action100m.llm.schema import nest  # noqa: E402
from action100m.llm.templates import load_templates  # noqa: E402
from action100m.pipeline import run_aggregate  # noqa: E402
from action100m.sources import load_metadata  # noqa: E402
from action100m.stages.aggregate import annotation_targets  # noqa: E402
from action100m.stages.outputs import finished_artifact, load_tree  # noqa: E402
from action100m.store import ArtifactStore  # noqa: E402
from action100m.tree import Tree  # noqa: E402

# USD per million tokens (list prices when written; batch APIs halve them)
PRICES = {
    "gpt-4o": {"input": 2.5, "cached_input": 1.25, "output": 10.0},
    "claude-sonnet": {"input": 3.0, "cached_input": 0.30, "cache_write": 3.75, "output": 15.0},
}
BATCH = 0.5


def _inputs(settings: Settings, store: ArtifactStore, video_id: str) -> tuple[Tree, dict, dict]:
    """The tree, captions and metadata Stage 3 reads from the store (what both prompts are from)."""
    tree = load_tree(settings, store, video_id)
    uri = finished_artifact(settings, store, video_id, "caption", "captions.json")
    assert uri is not None
    return tree, store.read_json(uri)["nodes"], load_metadata(store, video_id)


def _tokens(system: str, user: str, turns: list[tuple[str, str]]) -> int:
    """Prompt tokens as the scripted server counts them for an OpenAI request (ours too)."""
    messages = [{"role": "user", "content": user}] + [{"role": r, "content": t} for r, t in turns]
    body = {"messages": [{"role": "system", "content": system}, *messages]}
    return len(Request("openai", "/v1/chat/completions", {}, body).prompt) // 4 + 1


def naive_usage(
    settings: Settings, store: ArtifactStore, record: dict, rounds: int = 3
) -> tuple[Usage, dict[str, float]]:
    """The paper's structure with nothing budgeted: the same system text, the full metadata and
    transcript, the global context (the top 3 levels, whole captions), the node's full subtree
    (whole captions), every round resending the conversation so far. Same tree, captions and
    metadata as ours (read from the same store), same answers, same token count, no caching."""
    tree, captions, metadata = _inputs(settings, store, record["video_uid"])
    rows = {r["node_id"]: r for r in record["nodes"]}
    templates = load_templates()
    system = templates.system(0.0, tree.duration, 0.0, tree.duration)
    meta = prompts.render_metadata(tree, metadata, budget=10**9)
    top = prompts.outline(tree, tree.root, captions, 3, None)
    context, after = templates.user(meta, top)
    usage, parts = Usage(), {"metadata": 0.0, "global": 0.0, "subtree": 0.0}
    targets = annotation_targets(tree.nodes, settings.aggregate)
    for node in targets:
        block = prompts.outline(tree, node, captions, None, None) + after
        user = context + block
        answer = json.dumps(_answer(rows[node.node_id]))
        turns: list[tuple[str, str]] = []
        for _ in range(rounds):
            usage.add(Usage(1, _tokens(system, user, turns), 0, 0, len(answer) // 4 + 1))
            turns += [("assistant", answer), ("user", templates.refine)]
        parts["subtree"] += prompts.estimate_tokens(block) / len(targets)
    parts["metadata"] = prompts.estimate_tokens(meta)
    parts["global"] = prompts.estimate_tokens(top)
    return usage, parts


def ours_parts(settings: Settings, store: ArtifactStore, video_id: str) -> dict[str, float]:
    """Our prompt's parts, in tokens: the shared prefix and the mean node block."""
    tree, captions, metadata = _inputs(settings, store, video_id)
    builder = PromptBuilder(tree, captions, metadata, settings.aggregate.max_prompt_tokens)
    targets = annotation_targets(tree.nodes, settings.aggregate)
    blocks = [prompts.estimate_tokens(builder.node_block(n)) for n in targets]
    return {"prefix": prompts.estimate_tokens(builder.context), "block": sum(blocks) / len(blocks)}


def _answer(row: dict) -> dict[str, dict[str, str]]:
    """The release's own answer for the node (N/A where it has none), in the asked structure."""
    gpt = row.get("gpt") or {}
    fields = nest({})
    return {
        g: {k: str((gpt.get(g) or {}).get(k) or "N/A") for k in keys} for g, keys in fields.items()
    }


def _settings(store: ArtifactStore, aggregate: dict | None = None) -> Settings:
    return load_settings(store=store.root, environ={}, overrides={"aggregate": aggregate or {}})


def run_path(
    record: dict, reference: str, provider: str, budget: int | None, **extra: object
) -> tuple[dict, float]:
    """Stage 3 with the default settings (and ``budget`` and ``extra`` aggregate settings if
    given) against the scripted server, which answers each node with the release's own
    annotation."""
    by_span = {prompts.span(r["start"], r["end"]): r for r in record["nodes"]}

    def responder(request: Request) -> Reply | None:
        row = by_span.get(request.segment or "")
        return Reply.json(_answer(row)) if row else None

    with tempfile.TemporaryDirectory() as folder, LLMServer() as llm:
        llm.responder = responder
        store = ArtifactStore(folder)
        url = llm.base_url if provider == "openai" else llm.anthropic_base_url
        os.environ.setdefault(
            "OPENAI_API_KEY" if provider == "openai" else "ANTHROPIC_API_KEY", "sk-benchmark"
        )
        overrides = {
            "provider": provider,
            "model": "bench",
            "base_url": url,
            "concurrency": 1,
            "tokens_per_minute": 10**9,
            "requests_per_minute": 10**6,
        }
        if budget is not None:
            overrides["max_prompt_tokens"] = budget
        overrides.update(extra)
        settings = _settings(store, overrides)
        import_file(settings, store, reference, annotations=False)
        started = time.perf_counter()
        folder_uri = run_aggregate(settings, store, record["video_uid"])
        elapsed = time.perf_counter() - started
        return store.read_json(f"{folder_uri}/usage.json"), elapsed


def run_batch_path(
    record: dict, reference: str, provider: str, price: dict
) -> tuple[dict, int, float]:
    """Stage 3 in ``aggregate.mode=batch`` through the scripted batch server (same answers):
    ``(usage.json, jobs submitted, seconds)``; its cost is the stage's own, at the batch price."""
    by_span = {prompts.span(r["start"], r["end"]): r for r in record["nodes"]}
    with tempfile.TemporaryDirectory() as folder, BatchServer() as server:
        server.llm.responder = lambda request: (
            Reply.json(_answer(by_span[request.segment])) if request.segment in by_span else None
        )
        store = ArtifactStore(folder)
        url = server.base_url if provider == "openai" else server.anthropic_base_url
        settings = _settings(store, {"provider": provider, "model": "bench", "base_url": url,
                                     "mode": "batch", "batch_poll_interval": 0.01,
                                     "prices": price})  # fmt: skip
        import_file(settings, store, reference, annotations=False)
        started = time.perf_counter()
        folder_uri = run_aggregate(settings, store, record["video_uid"])
        elapsed = time.perf_counter() - started
        return store.read_json(f"{folder_uri}/usage.json"), len(server.jobs), elapsed


@contextlib.contextmanager
def whole_captions() -> Iterator[None]:
    """Our prompt without cutting any caption at a sentence: the same content per shown node as
    the naive prompt, so what remains of the saving is order, caching, depth and no resending."""
    saved = prompts.PART_CHARS, prompts.GLOBAL_CHARS
    prompts.PART_CHARS = prompts.GLOBAL_CHARS = None  # type: ignore[assignment]
    try:
        yield
    finally:
        prompts.PART_CHARS, prompts.GLOBAL_CHARS = saved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--reference", default=str(ROOT.parent / "shared/reference/hySSAAw4t24.json")
    )
    parser.add_argument(
        "--max-prompt-tokens", type=int, default=None, help="default: aggregate.max_prompt_tokens"
    )
    args = parser.parse_args()
    record = read_records(args.reference)[0]
    hours = record["nodes"][0]["end"] / 3600
    with tempfile.TemporaryDirectory() as folder:
        store = ArtifactStore(folder)
        settings = _settings(store)
        if args.max_prompt_tokens is not None:
            settings.aggregate.max_prompt_tokens = args.max_prompt_tokens
        import_file(settings, store, args.reference, annotations=False)
        naive, naive_parts = naive_usage(settings, store, record)
        parts = ours_parts(settings, store, record["video_uid"])
    nodes = naive.requests // 3
    print(
        f"reference {record['video_uid']}: {len(record['nodes'])} nodes, {nodes} of "
        f"{settings.aggregate.min_duration:g} s or more, {hours * 60:.1f} min; "
        f"aggregate.max_prompt_tokens {settings.aggregate.max_prompt_tokens}\n"
        f"prompt parts (tokens): naive: system {prompts.estimate_tokens(load_templates().system(0, 1, 0, 1))}, "
        f"metadata+transcript {naive_parts['metadata']:.0f}, global {naive_parts['global']:.0f}, "
        f"subtree {naive_parts['subtree']:.0f} (mean); ours: system "
        f"{prompts.estimate_tokens(load_templates().system(0, 1, 0, 1))}, shared prefix {parts['prefix']:.0f}, "
        f"node block (subtree + its speech) {parts['block']:.0f} (mean)\n"
    )

    def line(name: str, usage: Usage, prices: dict, discount: float = 1.0) -> float:
        per_hour = usage.cost(prices) * discount / hours
        print(
            f"{name:<48} calls {usage.requests:>5}  in {usage.input_tokens / 1e6:6.3f}M "
            f"(cached {usage.cached_input_tokens / 1e6:5.3f}M)  out {usage.output_tokens / 1e6:5.3f}M"
            f"  ${per_hour:7.2f}/video-hour  ${usage.cost(prices) * discount / nodes:.4f}/node"
            f"  {base / per_hour if base else 1:4.1f}x below naive"
        )
        return per_hour

    base = 0.0
    base = line("naive GPT-4o (full context, resent conversation)", naive, PRICES["gpt-4o"])
    for provider, price in (("openai", PRICES["gpt-4o"]), ("anthropic", PRICES["claude-sonnet"])):
        data, elapsed = run_path(record, args.reference, provider, args.max_prompt_tokens)
        usage = Usage.from_json(data)
        uncached = Usage(usage.requests, usage.input_tokens, 0, 0, usage.output_tokens)
        label = f"ours, {'GPT-4o' if provider == 'openai' else 'Claude Sonnet'}"
        line(f"{label}, no caching", uncached, price)
        line(f"{label}, prompt caching", usage, price)
        line(f"{label}, batch API (no caching)", uncached, price, BATCH)
        batch, jobs, seconds = run_batch_path(record, args.reference, provider, price)
        batch_usage = Usage.from_json(batch)
        per_hour = line(f"{label}, aggregate.mode=batch (measured)", batch_usage, price, BATCH)
        print(
            f"{'':<48} batch: {jobs} jobs, usage.json cost ${batch['cost_usd']:.4f} "
            f"(${batch['cost_usd'] / hours:.2f}/video-hour; line above {per_hour:.2f}), "
            f"{seconds:.1f} s against the scripted server"
        )
        if provider == "openai":
            with whole_captions():
                whole, _ = run_path(record, args.reference, provider, args.max_prompt_tokens)
            whole_usage = Usage.from_json(whole)
            line(f"{label}, whole captions, prompt caching", whole_usage, price)
            pieces, _ = run_path(
                record, args.reference, provider, args.max_prompt_tokens, transcript="piecewise"
            )
            line(f"{label}, piecewise transcript, prompt caching", Usage.from_json(pieces), price)
            tokens = (usage.input_tokens + usage.output_tokens) / hours
            naive_tokens = (naive.input_tokens + naive.output_tokens) / hours
            print(
                f"{'open model on vLLM':<48} {tokens / 1e6:.2f}M tokens/video-hour "
                f"(naive {naive_tokens / 1e6:.2f}M, {naive_tokens / tokens:.1f}x more)"
            )
        print(
            f"{'':<48} client path: {elapsed / usage.requests * 1000:.1f} ms per call "
            f"(loopback server, prompt build, cache write, parse)\n"
        )


if __name__ == "__main__":
    main()
