"""Stage 3 cost: calls, tokens (cached too) and estimated USD per node and per video-hour for the
reference sample's tree, against the scripted server (tests/llm_server.py) answering each node
with the release's own annotation (so output sizes are real), through the real client path.

Printed beside the naive figure of the same run: a prompt in the paper's structure with the full
transcript and full subtrees, three rounds resending the whole conversation, GPT-4o list prices.
Also: each provider path with and without prompt caching and the batch discount, the tokens an
open model served by vLLM would process, and our client path's overhead per call.

    python benchmarks/aggregate.py [--reference ../shared/reference/hySSAAw4t24.json]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from llm_server import LLMServer, Reply, Request  # noqa: E402

from action100m.config import load_settings  # noqa: E402
from action100m.interop import OFFICIAL, import_file, read_records, release_tree  # noqa: E402
from action100m.llm import prompts  # noqa: E402
from action100m.llm.messages import Usage  # noqa: E402
from action100m.stages.aggregate import run_aggregate  # noqa: E402
from action100m.store import ArtifactStore  # noqa: E402

# USD per million tokens (list prices when written; batch APIs halve them)
PRICES = {
    "gpt-4o": {"input": 2.5, "cached_input": 1.25, "output": 10.0},
    "claude-sonnet": {"input": 3.0, "cached_input": 0.30, "cache_write": 3.75, "output": 15.0},
}
BATCH = 0.5


def naive_usage(record: dict, min_duration: float, rounds: int = 3) -> Usage:
    """Full transcript, full subtree, every round resending the conversation so far."""
    tree = release_tree(record["video_uid"], record["metadata"], record["nodes"])
    rows = {r["node_id"]: r for r in record["nodes"]}
    captions = {
        n.node_id: {"caption": rows[n.node_id]["plm_caption"] or rows[n.node_id]["llama3_caption"]}
        for n in tree.nodes
    }
    meta = prompts.render_metadata(tree, record["metadata"], budget=10**9)
    usage = Usage()
    for node in tree.nodes:
        if node.duration < min_duration:
            continue
        subtree = "\n".join(prompts.outline_lines(tree, node, captions, None))
        prompt = prompts.estimate_tokens(prompts.SYSTEM + meta + subtree + prompts.DRAFT)
        answer = prompts.estimate_tokens(str(_answer(rows[node.node_id])))
        refine = prompts.estimate_tokens(prompts.REFINE)
        conversation = prompt
        for _ in range(rounds):
            usage.add(Usage(1, conversation, 0, 0, answer))
            conversation += answer + refine
    return usage


def _answer(row: dict) -> dict[str, str]:
    gpt = row.get("gpt") or {}
    return {f: str((gpt.get(g) or {}).get(k) or "N/A") for f, (g, k) in OFFICIAL.items()}


def run_path(record: dict, reference: str, provider: str, budget: int) -> tuple[dict, float]:
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
        settings = load_settings(
            store=store.root,
            environ={},
            overrides={
                "aggregate": {
                    "provider": provider,
                    "model": "bench",
                    "base_url": url,
                    "concurrency": 1,
                    "tokens_per_minute": 10**9,
                    "max_prompt_tokens": budget,
                    "requests_per_minute": 10**6,
                }
            },
        )
        import_file(settings, store, reference, annotations=False)
        started = time.perf_counter()
        folder_uri = run_aggregate(settings, store, record["video_uid"])
        elapsed = time.perf_counter() - started
        return store.read_json(f"{folder_uri}/usage.json"), elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--reference", default=str(ROOT.parent / "shared/reference/hySSAAw4t24.json")
    )
    parser.add_argument("--max-prompt-tokens", type=int, default=24000)
    args = parser.parse_args()
    record = read_records(args.reference)[0]
    hours = record["nodes"][0]["end"] / 3600
    nodes = sum(1 for r in record["nodes"] if r["end"] - r["start"] >= 4.0)
    print(
        f"reference {record['video_uid']}: {len(record['nodes'])} nodes, {nodes} of 4 s or more, "
        f"{hours * 60:.1f} min\n"
    )

    def line(name: str, usage: Usage, prices: dict, discount: float = 1.0) -> float:
        per_hour = usage.cost(prices) * discount / hours
        print(
            f"{name:<44} calls {usage.requests:>5}  in {usage.input_tokens / 1e6:7.3f}M "
            f"(cached {usage.cached_input_tokens / 1e6:6.3f}M)  out {usage.output_tokens / 1e6:6.3f}M"
            f"  ${per_hour:8.2f}/video-hour  ${usage.cost(prices) * discount / nodes:.4f}/node"
        )
        return per_hour

    naive = naive_usage(record, 4.0)
    base = line("naive (full context, resent conversation)", naive, PRICES["gpt-4o"])
    for provider, price in (("openai", PRICES["gpt-4o"]), ("anthropic", PRICES["claude-sonnet"])):
        data, elapsed = run_path(record, args.reference, provider, args.max_prompt_tokens)
        usage = Usage.from_json(data)
        uncached = Usage(usage.requests, usage.input_tokens, 0, 0, usage.output_tokens)
        label = f"ours, {provider} ({'GPT-4o' if provider == 'openai' else 'Claude Sonnet'})"
        line(f"{label}, no caching", uncached, price)
        ours = line(f"{label}, prompt caching", usage, price)
        line(f"{label}, batch API (no caching)", uncached, price, BATCH)
        if provider == "openai":
            print(f"{'':<44} -> {base / ours:.1f}x below naive at equal input content")
            tokens = (usage.input_tokens + usage.output_tokens) / hours
            print(
                f"{'open model on vLLM':<44} {tokens / 1e6:.2f}M tokens/video-hour "
                f"(naive {(naive.input_tokens + naive.output_tokens) / hours / 1e6:.2f}M)"
            )
        print(
            f"{'':<44} client path: {elapsed / usage.requests * 1000:.1f} ms per call "
            f"(loopback server, prompt build, cache write, parse)\n"
        )


if __name__ == "__main__":
    main()
