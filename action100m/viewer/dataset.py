"""The dataset report: one self-contained HTML page about a whole store or export, pictures first.

``dataset_stats`` reads release-format records one at a time (the store's documents as the
export writes them, or an export's files) and keeps only counters: videos, hours, nodes per
minute, depth, node durations per level, the share annotated, the LLM's tokens and dollars, and
the vocabulary of ``gpt.action.brief`` (its first word as the verb, the words after it as the
object). ``render_dataset`` draws them as inline SVG (no script, no network) in the run report's
page template.
"""

from __future__ import annotations

import html
import math
import re
from collections import Counter
from collections.abc import Iterable
from typing import Any

from action100m.viewer.render import asset, fill

# Duration bins (seconds, lower edges) for the histogram of each level: 0.5 s to an hour.
BINS = (0.5, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)
SHOWN_LEVELS = 8
TOP_VERBS, TOP_OBJECTS = 12, 5
STOP = {"a", "an", "the", "some", "of", "with", "on", "in", "into", "to", "and", "at", "from",
        "for", "onto", "up", "down", "out", "off", "over", "its", "their", "his", "her", "it"}  # fmt: skip
PALETTE = ("#0b63c5", "#1b7f3b", "#b3261e", "#8a5a00", "#6a3fb5", "#00796b", "#c2185b",
           "#455a64", "#ef6c00", "#2e7d32", "#5d4037", "#1565c0")  # fmt: skip


def verb_object(phrase: str) -> tuple[str, str] | None:
    words = re.findall(r"[a-z][a-z'-]*", phrase.lower())
    if not words or words[0] in ("n/a", "n"):
        return None
    rest = [w for w in words[1:] if w not in STOP]
    return words[0], " ".join(rest[:2]) or "—"


def dataset_stats(
    records: Iterable[dict[str, Any]], usage: Iterable[dict[str, Any]] = ()
) -> dict[str, Any]:
    """Counters over ``records`` (release format) and ``usage`` (``usage.json`` of Stage 3)."""
    videos = nodes = annotated = 0
    seconds = 0.0
    depths: list[int] = []
    per_level: dict[int, Counter[int]] = {}
    verbs: Counter[str] = Counter()
    objects: dict[str, Counter[str]] = {}
    for record in records:
        rows = record.get("nodes") or []
        if not rows:
            continue
        videos += 1
        nodes += len(rows)
        root = min(rows, key=lambda n: int(n["level"]))
        seconds += float(root["end"]) - float(root["start"])
        depths.append(max(int(n["level"]) for n in rows))
        for node in rows:
            length = float(node["end"]) - float(node["start"])
            slot = max((i for i, edge in enumerate(BINS) if length >= edge - 1e-6), default=0)
            per_level.setdefault(int(node["level"]), Counter())[slot] += 1
            gpt = node.get("gpt") or {}
            if gpt:
                annotated += 1
            found = verb_object(str((gpt.get("action") or {}).get("brief") or ""))
            if found:
                verbs[found[0]] += 1
                objects.setdefault(found[0], Counter())[found[1]] += 1
    spent = {"requests": 0, "input_tokens": 0, "output_tokens": 0, "cost_usd": 0.0}
    for item in usage:
        for key in spent:
            spent[key] += item.get(key) or 0
    return {
        "videos": videos,
        "hours": seconds / 3600,
        "nodes": nodes,
        "nodes_per_minute": nodes / (seconds / 60) if seconds else 0.0,
        "max_depth": max(depths, default=0),
        "mean_depth": sum(depths) / len(depths) if depths else 0.0,
        "annotated": annotated,
        "usage": spent,
        "levels": {
            level: [counts[i] for i in range(len(BINS))]
            for level, counts in sorted(per_level.items())
        },
        "verbs": verbs.most_common(TOP_VERBS),
        "objects": {
            v: objects[v].most_common(TOP_OBJECTS) for v, _ in verbs.most_common(TOP_VERBS)
        },
    }


def _esc(value: Any) -> str:
    return html.escape(str(value))


def _cards(stats: dict[str, Any]) -> str:
    spent = stats["usage"]
    share = stats["annotated"] / stats["nodes"] if stats["nodes"] else 0.0
    cards = [
        ("videos", f"{stats['videos']:,}"),
        ("hours", f"{stats['hours']:,.1f}"),
        ("nodes", f"{stats['nodes']:,}"),
        ("nodes per minute", f"{stats['nodes_per_minute']:.1f}"),
        ("depth (mean / max)", f"{stats['mean_depth']:.1f} / {stats['max_depth']}"),
        ("nodes annotated", f"{stats['annotated']:,} ({share:.0%})"),
        ("LLM tokens in / out", f"{spent['input_tokens']:,} / {spent['output_tokens']:,}"),
        ("LLM cost", f"${spent['cost_usd']:,.2f}"),
    ]
    items = "".join(
        f'<div class="card" data-name="{_esc(name)}"><b>{_esc(value)}</b><span>{_esc(name)}</span></div>'
        for name, value in cards
    )
    return f'<div class="cards">{items}</div>'


def _histograms(levels: dict[int, list[int]]) -> str:
    """One small bar chart per level: how many nodes of each duration (log bins)."""
    charts = []
    width, height, bar = 260, 90, 260 / len(BINS)
    for level, counts in list(levels.items())[:SHOWN_LEVELS]:
        top = max(counts) or 1
        bars = "".join(
            f'<rect x="{i * bar + 1:.1f}" y="{height - 14 - (height - 24) * c / top:.1f}" '
            f'width="{bar - 2:.1f}" height="{(height - 24) * c / top:.1f}" fill="#0b63c5">'
            f"<title>{_esc(f'{BINS[i]:g} s and more: {c:,} nodes')}</title></rect>"
            for i, c in enumerate(counts)
        )
        labels = "".join(
            f'<text x="{i * bar + bar / 2:.1f}" y="{height - 2}" font-size="8" '
            f'text-anchor="middle">{BINS[i]:g}</text>'
            for i in range(0, len(BINS), 2)
        )
        charts.append(
            f'<figure class="hist" data-level="{level}"><svg viewBox="0 0 {width} {height}" '
            f'width="{width}" height="{height}">{bars}{labels}</svg>'
            f"<figcaption>level {level}: {sum(counts):,} nodes (s, log bins)</figcaption></figure>"
        )
    return f'<div class="hists">{"".join(charts)}</div>'


def _arc(cx: float, cy: float, r0: float, r1: float, a0: float, a1: float) -> str:
    """An SVG path for the ring sector between radii r0..r1 and angles a0..a1 (radians)."""
    large = 1 if a1 - a0 > math.pi else 0
    p = [
        (cx + r * math.sin(a), cy - r * math.cos(a))
        for r, a in ((r1, a0), (r1, a1), (r0, a1), (r0, a0))
    ]
    return (
        f"M{p[0][0]:.1f},{p[0][1]:.1f} A{r1},{r1} 0 {large} 1 {p[1][0]:.1f},{p[1][1]:.1f} "
        f"L{p[2][0]:.1f},{p[2][1]:.1f} A{r0},{r0} 0 {large} 0 {p[3][0]:.1f},{p[3][1]:.1f} Z"
    )


def _sunburst(verbs: list[tuple[str, int]], objects: dict[str, list[tuple[str, int]]]) -> str:
    """Verbs on the inner ring, their commonest objects on the outer one, by frequency."""
    if not verbs:
        return '<p class="muted">No action.brief annotations yet.</p>'
    total = sum(count for _, count in verbs)
    cx = cy = 210
    parts, angle = [], 0.0
    for index, (verb, count) in enumerate(verbs):
        span = 2 * math.pi * count / total
        colour = PALETTE[index % len(PALETTE)]
        parts.append(
            f'<path class="verb" data-verb="{_esc(verb)}" d="{_arc(cx, cy, 60, 130, angle, angle + span)}" '
            f'fill="{colour}" stroke="#fff"><title>{_esc(f"{verb}: {count:,}")}</title></path>'
        )
        middle = angle + span / 2
        if span > 0.18:
            x, y = cx + 95 * math.sin(middle), cy - 95 * math.cos(middle)
            parts.append(f'<text x="{x:.1f}" y="{y:.1f}" font-size="11" fill="#fff" '
                         f'text-anchor="middle">{_esc(verb)}</text>')  # fmt: skip
        inner = angle
        for thing, seen in objects.get(verb, []):
            piece = span * seen / count
            parts.append(
                f'<path class="object" d="{_arc(cx, cy, 132, 200, inner, inner + piece)}" fill="{colour}" '
                f'fill-opacity="0.55" stroke="#fff"><title>{_esc(f"{verb} {thing}: {seen:,}")}</title></path>'
            )
            inner += piece
        angle += span
    return f'<svg class="sunburst" viewBox="0 0 420 420" width="420" height="420">{"".join(parts)}</svg>'


STYLE = """<style>
.cards { display: flex; flex-wrap: wrap; gap: 10px; margin: 10px 0 18px; }
.card { border: 1px solid #e3e6ea; border-radius: 6px; padding: 8px 12px; min-width: 120px; }
.card b { display: block; font-size: 20px; } .card span { color: #6b7480; font-size: 12px; }
.hists { display: flex; flex-wrap: wrap; gap: 12px; } figure { margin: 0; }
figcaption { font-size: 12px; color: #6b7480; }
</style>"""


def render_dataset(stats: dict[str, Any], title: str) -> str:
    verbs = ", ".join(f"{v} ({c:,})" for v, c in stats["verbs"]) or "none yet"
    body = (
        STYLE
        + _cards(stats)
        + "<h2>The vocabulary of action.brief</h2>"
        + _sunburst(stats["verbs"], stats["objects"])
        + f'<p class="muted">Commonest verbs: {_esc(verbs)}.</p>'
        + "<h2>Node durations per level</h2>"
        + _histograms(stats["levels"])
    )
    return fill(asset("report.html"), TITLE=_esc(title), BODY=body)
