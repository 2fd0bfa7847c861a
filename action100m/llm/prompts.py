"""Prompt text and rendering, in the paper's structure, ordered for providers' prompt caching.

One request for a node is: the task and its guidelines (system), then the video's metadata and
global context (the top of its tree), then the node's own subtree, then the instruction. All before
the node's subtree is byte-identical for every node of a video, so a provider's prefix cache serves
it after the first node; the subtree is identical across a node's rounds. Trees are rendered as
Markdown outlines with time ranges; a long subtree is cut by depth, never inside a caption.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from typing import Any

from action100m.tree import Node, Tree

SYSTEM = """\
You annotate one segment of a video for an action-understanding dataset. You do not see the \
video: you see captions that vision-language models wrote for the segment and for the shorter \
parts it splits into, and what is known about the video. From them, write one JSON object with \
exactly these five string fields:
- "brief_action": the main action of the segment as a short verb phrase (for example "slice an \
onion"), or "N/A" when nobody performs an action.
- "detailed_action": one or two sentences on how the action is done: steps, tools, objects.
- "actor": who performs the action, as a short noun phrase, or "N/A".
- "brief_caption": one sentence that describes the segment.
- "detailed_caption": a paragraph that describes what is visible over the segment, in temporal \
order.

Guidelines:
1. Describe what can be seen in this segment. The title, description and transcript help you \
name things and understand the intent; they do not prove that something is on screen.
2. The captions come from different models and may contradict each other. Where they disagree, \
follow what most of them say and leave out details that only one of them mentions.
3. Times written inside captions are unreliable; rely on the time ranges in brackets.
4. Each item covers its whole time range; the items indented below it are its parts in temporal \
order. A "frame" caption describes a single frame from the middle of a short part.
5. Write "N/A" for brief_action, detailed_action and actor when the segment shows no action (a \
title card, scenery, a static object).
6. Answer with the JSON object only: no Markdown fence, no text before or after it."""

DRAFT = "Write the JSON object for the segment to annotate."
REFINE = (
    "Check that answer against the captions and the video information above, following the "
    "guidelines: is every field supported by most of the captions, visible in this segment, and "
    "as specific as the evidence allows? Correct what is wrong or missing, and answer with the "
    "complete revised JSON object only (repeat it unchanged if it is already right)."
)
REPAIR = (
    "That answer could not be used: {reason}. Answer again with one JSON object only, holding the "
    "five string fields brief_action, detailed_action, actor, brief_caption and detailed_caption."
)

GLOBAL_DEPTH = 3  # levels of the tree shown as global context, at most
METADATA_SHARE = 0.3  # of the prompt budget, at most, for title, description and transcript
GLOBAL_SHARE = 0.15  # of the prompt budget, at most, for the global context
RESERVE = 1200  # tokens kept for the instruction, a previous answer and a repair turn
DESCRIPTION_CHARS = 2000


def estimate_tokens(text: str) -> int:
    """A cheap, tokenizer-free estimate (about four characters per token for English)."""
    return math.ceil(len(text) / 4)


def span(start: float, end: float) -> str:
    return f"[{start:.1f}s-{end:.1f}s]"


def _one_line(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def _caption_of(entry: dict[str, Any] | None) -> str:
    if not entry or not entry.get("caption"):
        return "(no caption)"
    prefix = "frame: " if entry.get("kind") == "frame" else ""
    return prefix + _one_line(str(entry["caption"]))


def outline_lines(
    tree: Tree, top: Node, captions: dict[str, Any], max_depth: int | None
) -> Iterable[str]:
    """``top`` and its descendants down to ``max_depth`` levels, depth-first, one line each."""
    for node in tree.subtree(top, max_depth):
        indent = "  " * (node.level - top.level)
        yield f"{indent}- {span(node.start, node.end)} {_caption_of(captions.get(node.node_id))}"


def fit_depth(tree: Tree, top: Node, captions: dict[str, Any], budget: int) -> int | None:
    """The deepest level below ``top`` whose outline fits ``budget`` tokens (at least 0); None
    when the whole subtree fits."""
    per_level: dict[int, int] = {}
    for node, line in zip(tree.subtree(top), outline_lines(tree, top, captions, None), strict=True):
        depth = node.level - top.level
        per_level[depth] = per_level.get(depth, 0) + estimate_tokens(line) + 1
    used = 0
    for depth in sorted(per_level):
        used += per_level[depth]
        if used > budget:
            return max(depth - 1, 0)
    return None


def _transcript_lines(transcript: Any) -> list[str]:
    lines = []
    for item in transcript or []:
        if isinstance(item, dict):
            text = _one_line(str(item.get("text", "")))
            time = item.get("time", item.get("start"))
            try:
                stamp = f"[{float(time):.1f}s] " if time is not None else ""
            except (TypeError, ValueError):
                stamp = ""
            if text:
                lines.append(stamp + text)
        elif str(item).strip():
            lines.append(_one_line(str(item)))
    return lines


def render_metadata(tree: Tree, metadata: dict[str, Any], budget: int) -> str:
    """Title, duration, description and as much of the transcript (whole lines) as fits."""
    parts = ["# The video", f"Duration: {tree.duration:.1f} s"]
    if metadata.get("title"):
        parts.append(f"Title: {_one_line(str(metadata['title']))}")
    description = str(metadata.get("description") or "").strip()
    if description:
        if len(description) > DESCRIPTION_CHARS:
            description = description[:DESCRIPTION_CHARS].rsplit("\n", 1)[0] + "\n[...]"
        parts += ["", "## Description", description]
    text = "\n".join(parts)
    lines = _transcript_lines(metadata.get("transcript"))
    if lines:
        text += "\n\n## Transcript (speech; it may not match what is shown)\n"
        used, kept = estimate_tokens(text), list[str]()
        for line in lines:
            used += estimate_tokens(line) + 1
            if used > budget:
                kept.append(f"[... {len(lines) - len(kept)} more lines left out]")
                break
            kept.append(line)
        text += "\n".join(kept)
    return text


class PromptBuilder:
    """Renders the shared prefix once per video and each node's subtree within the budget."""

    def __init__(
        self, tree: Tree, captions: dict[str, Any], metadata: dict[str, Any], max_tokens: int
    ) -> None:
        self.tree = tree
        self.captions = captions
        budget = max_tokens - estimate_tokens(SYSTEM) - RESERVE
        meta = render_metadata(tree, metadata, int(budget * METADATA_SHARE))
        global_budget = int(budget * GLOBAL_SHARE)
        depth = fit_depth(tree, tree.root, captions, global_budget)
        depth = GLOBAL_DEPTH if depth is None else min(depth, GLOBAL_DEPTH)
        outline = "\n".join(outline_lines(tree, tree.root, captions, depth))
        self.context = (
            f"{meta}\n\n# Global context: the top of the video's segment tree\n{outline}\n"
        )
        self.node_budget = max(budget - estimate_tokens(self.context), 0)

    def node_block(self, node: Node) -> str:
        depth = fit_depth(self.tree, node, self.captions, self.node_budget)
        lines = "\n".join(outline_lines(self.tree, node, self.captions, depth))
        note = "" if depth is None else f"\n(parts more than {depth} levels below are left out)"
        return (
            f"# Segment to annotate: {span(node.start, node.end)}, {node.duration:.1f} s\n"
            f"Its caption, then its parts depth-first:\n{lines}{note}\n"
        )
