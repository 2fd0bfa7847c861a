"""A forecast of Stage 3 before spending: calls, tokens and dollars per provider and mode
(``action100m estimate``), with every assumption shown beside the figures.

Per video, the best source it has: a segmented tree in the store (its annotation targets, counted
exactly; with finished captions, each node's draft prompt built and counted as Stage 3 would send
it), else its duration (``metadata.json``'s ``duration``, an ``ID=SECONDS`` argument, or
``--minutes`` for all the others) times the node density and annotated share measured on the
release. Refine rounds resend the draft's prompt with the previous answer and the instruction.
Answers, the share of input served from the provider's prompt cache, and the prompt of a node
without captions are the measured figures of ``benchmarks/aggregate.py`` on the reference sample.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from action100m.config import Settings
from action100m.errors import Action100MError
from action100m.llm.messages import Usage
from action100m.llm.prompts import PromptBuilder, estimate_tokens
from action100m.sources import load_metadata
from action100m.stages.aggregate import annotation_targets, prompt_templates
from action100m.stages.outputs import load_tree, read_finished
from action100m.store import ArtifactStore

log = logging.getLogger(__name__)

# Measured on the release's sample (hySSAAw4t24, 917 nodes, 11.5 min; benchmarks/RESULTS.md).
NODES_PER_MINUTE = 917 / 11.5  # ~80; the release's 2,000-video preview: ~82
ANNOTATED_SHARE = 262 / 917  # non-leaf nodes of 4 s or more
PROMPT_TOKENS = 5983  # mean input tokens per call (ours, default budgets; 4.703M / 786 calls)
ANSWER_TOKENS = 258  # mean output tokens per call (the release's own answers)
CACHED_SHARE = {"openai": 0.898, "anthropic": 0.910}  # input tokens read from the prompt cache
DEFAULT_MINUTES = 6.7  # HowTo100M: 136k hours over 1.22M videos
# USD per million tokens, list prices when written (the configured provider's come from settings).
LIST_PRICES: dict[str, tuple[str, dict[str, float]]] = {
    "openai": ("gpt-4o", {"input": 2.5, "cached_input": 1.25, "output": 10.0}),
    "anthropic": ("claude-sonnet", {"input": 3.0, "cached_input": 0.30, "output": 15.0}),
}


@dataclass
class VideoForecast:
    video_id: str
    source: str  # "tree+captions" | "tree" | "duration" | "assumed duration"
    minutes: float
    nodes: float
    targets: float
    draft_tokens: float  # input tokens of all draft prompts


@dataclass
class Forecast:
    videos: list[VideoForecast] = field(default_factory=list)
    assumptions: list[str] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)


def _from_tree(settings: Settings, store: ArtifactStore, video_id: str) -> VideoForecast | None:
    try:
        tree = load_tree(settings, store, video_id)
    except Action100MError:
        return None
    cfg = settings.aggregate
    targets = annotation_targets(tree.nodes, cfg)
    captions = read_finished(settings, store, video_id, "caption", "captions.json")
    minutes = tree.duration / 60
    if not captions:
        tokens = float(len(targets) * PROMPT_TOKENS)
        return VideoForecast(video_id, "tree", minutes, len(tree), len(targets), tokens)
    templates = prompt_templates(cfg, store.root)
    builder = PromptBuilder(tree, captions.get("nodes", {}), load_metadata(store, video_id),
                            cfg.max_prompt_tokens, templates)  # fmt: skip
    tokens = sum(
        estimate_tokens("\n".join([builder.system(n), builder.context, builder.node_block(n)]))
        for n in targets
    )
    return VideoForecast(video_id, "tree+captions", minutes, len(tree), len(targets), tokens)


def _from_duration(video_id: str, minutes: float, source: str) -> VideoForecast:
    nodes = minutes * NODES_PER_MINUTE
    targets = nodes * ANNOTATED_SHARE
    return VideoForecast(video_id, source, minutes, nodes, targets, targets * PROMPT_TOKENS)


def forecast_video(
    settings: Settings, store: ArtifactStore, video_id: str, seconds: float | None,
    default_minutes: float,
) -> VideoForecast:  # fmt: skip
    """One video's forecast from the best source it has (see the module's docstring)."""
    found = _from_tree(settings, store, video_id)
    if found is not None:
        return found
    if seconds is None:
        duration = load_metadata(store, video_id).get("duration")
        seconds = float(duration) if isinstance(duration, int | float) and duration > 0 else None
    if seconds is not None:
        return _from_duration(video_id, seconds / 60, "duration")
    return _from_duration(video_id, default_minutes, "assumed duration")


def _usage(settings: Settings, videos: list[VideoForecast], provider: str, cached: bool) -> Usage:
    rounds = settings.aggregate.rounds
    refine_extra = ANSWER_TOKENS + estimate_tokens(prompt_templates(settings.aggregate, "").refine)
    targets = sum(v.targets for v in videos)
    calls = targets * rounds
    tokens_in = sum(v.draft_tokens for v in videos) * rounds + targets * sum(
        refine_extra * r for r in range(rounds)
    )
    share = CACHED_SHARE[provider] if cached else 0.0
    return Usage(round(calls), round(tokens_in), round(tokens_in * share), 0,
                 round(calls * ANSWER_TOKENS))  # fmt: skip


def _prices(settings: Settings, provider: str) -> tuple[str, dict[str, float]]:
    cfg = settings.aggregate
    if provider == cfg.provider:
        return cfg.model, dict(cfg.prices)
    model, prices = LIST_PRICES[provider]
    return model, dict(prices)


def build_forecast(
    settings: Settings, videos: list[VideoForecast], default_minutes: float = DEFAULT_MINUTES
) -> Forecast:
    """Per provider and mode: calls, tokens in (cached), tokens out, USD, USD per video-hour."""
    out = Forecast(videos)
    hours = sum(v.minutes for v in videos) / 60
    discount = settings.aggregate.batch_discount
    for provider in ("openai", "anthropic"):
        model, prices = _prices(settings, provider)
        for mode, cached, factor in (("interactive", True, 1.0), ("batch", False, discount)):
            usage = _usage(settings, videos, provider, cached)
            cost = usage.cost(prices) * factor
            out.rows.append({"provider": provider, "model": model, "mode": mode,
                             **usage.to_json(), "usd": round(cost, 4),
                             "usd_per_video_hour": round(cost / hours, 2) if hours else None})  # fmt: skip
    out.assumptions = _assumptions(settings, videos, default_minutes)
    return out


def _assumptions(
    settings: Settings, videos: list[VideoForecast], default_minutes: float
) -> list[str]:
    cfg = settings.aggregate
    by_source: dict[str, int] = {}
    for video in videos:
        by_source[video.source] = by_source.get(video.source, 0) + 1
    return [
        "videos by source: " + ", ".join(f"{k} {v}" for k, v in sorted(by_source.items())),
        f"without a tree: {NODES_PER_MINUTE:.1f} nodes/min and {ANNOTATED_SHARE:.1%} of them "
        "annotated (non-leaf, >= 4 s; the release's sample: 262 of 917)",
        f"unknown durations: {default_minutes:g} min each (--minutes; HowTo100M's mean: "
        f"{DEFAULT_MINUTES})" if by_source.get("assumed duration") else "no durations assumed",
        f"{cfg.rounds} rounds per node, no repair turns; without captions {PROMPT_TOKENS} input "
        f"tokens per call, {ANSWER_TOKENS} output tokens per call (the reference sample)",
        "interactive: prompt caching at the measured share "
        + ", ".join(f"{p} {s:.0%}" for p, s in CACHED_SHARE.items())
        + " (cache writes not counted); batch: no caching, "
        f"{cfg.batch_discount:g} x the price",
        f"prices per M tokens: {cfg.provider} {cfg.model} from aggregate.prices; the other "
        "provider's list prices",
    ]  # fmt: skip


def format_forecast(forecast: Forecast) -> str:
    minutes = sum(v.minutes for v in forecast.videos)
    targets = sum(v.targets for v in forecast.videos)
    lines = [f"videos: {len(forecast.videos)}, {minutes / 60:.2f} h, {targets:,.0f} nodes to "
             "annotate", "",
             f"{'provider':<10} {'model':<14} {'mode':<12} {'calls':>9} {'tokens in':>13} "
             f"{'(cached)':>13} {'tokens out':>11} {'USD':>11} {'USD/video-h':>12}"]  # fmt: skip
    for row in forecast.rows:
        per_hour = row["usd_per_video_hour"]
        lines.append(
            f"{row['provider']:<10} {row['model']:<14} {row['mode']:<12} {row['requests']:>9,} "
            f"{row['input_tokens']:>13,} {row['cached_input_tokens']:>13,} "
            f"{row['output_tokens']:>11,} {row['usd']:>11,.2f} "
            f"{per_hour if per_hour is not None else 0:>12,.2f}"
        )
    return "\n".join([*lines, "", "assumptions:", *(f"  - {a}" for a in forecast.assumptions)])


def forecast_inputs(
    settings: Settings, store: ArtifactStore, items: list[str], default_minutes: float
) -> list[VideoForecast]:
    """Each video of ``items``: video IDs, ``ID=SECONDS``, or manifests (a file or URI of IDs one
    a line, or a HowTo100M CSV)."""
    from action100m.batch import read_manifest
    from action100m.sources import looks_like_location

    wanted: list[tuple[str, float | None]] = []
    for item in items:
        name, sep, seconds = item.partition("=")
        if sep:
            wanted.append((name, float(seconds)))
        elif looks_like_location(item) or item.endswith((".csv", ".txt")):
            wanted.extend((video_id, None) for video_id in read_manifest(item))
        else:
            wanted.append((item, None))
    unique = {video_id: seconds for video_id, seconds in reversed(wanted)}  # the first wins
    return [forecast_video(settings, store, v, unique[v], default_minutes) for v in dict(wanted)]


def forecast_plan(
    settings: Settings, store: ArtifactStore, video_ids: list[str], sample: int = 200
) -> str:
    """The forecast of a backfill's planned videos, from an even sample of at most ``sample`` of
    them (store reads per video), scaled to all; as text, assumptions included."""
    if not video_ids:
        return "nothing planned: no Stage 3 spend expected"
    step = max(1, len(video_ids) // sample)
    picked = video_ids[::step][:sample]
    videos = [forecast_video(settings, store, v, None, DEFAULT_MINUTES) for v in picked]
    factor = len(video_ids) / len(picked)
    for video in videos:
        video.minutes, video.nodes, video.targets = (
            video.minutes * factor, video.nodes * factor, video.targets * factor)  # fmt: skip
        video.draft_tokens *= factor
    forecast = build_forecast(settings, videos)
    if factor > 1:
        forecast.assumptions.append(
            f"a sample of {len(picked)} of the {len(video_ids)} planned videos, scaled"
        )
    text = format_forecast(forecast)
    return text.replace(f"videos: {len(videos)},", f"videos: {len(video_ids)},", 1)
