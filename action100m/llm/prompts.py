"""Prompt text and rendering, in the paper's structure, ordered for providers' prompt caching.

One request for a node is: the task and its guidelines (system), then the video's metadata and
global context (the top of its tree), then the node's own block (its subtree and the speech during
it), then the instruction; a refine round appends only the previous answer and a short
instruction. All before the node's block is byte-identical for every node of a video, so a
provider's prefix cache serves it after the first node; everything but the last two turns is
identical across a node's rounds, so rounds 2 and 3 are cached almost whole.

What every request pays for (cached tokens still cost: half price at OpenAI) is kept short:
- a transcript whose lines carry times is shown piecewise, each node with the lines spoken
  during it, not whole in the shared prefix (speech elsewhere in the video is the part of it
  that matters least for a segment; title and description stay in the prefix);
- the global context shows ``GLOBAL_DEPTH`` levels, captions below the root cut to about
  ``GLOBAL_CHARS``;
- a node's subtree shows at most ``SUBTREE_DEPTH`` levels below it and ``SUBTREE_TOKENS`` in all,
  its own caption whole, its parts' captions cut to about ``PART_CHARS``.
Trees are rendered as Markdown outlines with time ranges. A subtree is cut by depth, and a caption
only at a sentence boundary (marked " [...]"), never mid-sentence. A node shows every caption it has:
a leaf's frame caption and its clip caption (``caption.leaf_segment_caption``, or the release's
``plm_caption`` after ``import``), and the release's ``plm_action`` when imported.
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
    "Verify that answer against the captions and video information above and the guidelines: "
    "fix any field that most captions do not support, that is not visible in this segment, or "
    "that is vaguer than the evidence allows. Answer with the complete JSON object only "
    "(unchanged if it is right)."
)
REPAIR = (
    "That answer could not be used: {reason}. Answer again with one JSON object only, holding the "
    "five string fields brief_action, detailed_action, actor, brief_caption and detailed_caption."
)

# The defaults below are measured with benchmarks/aggregate.py on the reference sample.
GLOBAL_DEPTH = 3  # levels of the tree shown as global context, at most
GLOBAL_CHARS = (
    200  # a caption in the global context is cut at a sentence after this (not the root's)
)
SUBTREE_DEPTH = 3  # levels below the node shown in its subtree, at most
SUBTREE_TOKENS = 1500  # tokens for a node's outline, at most (the prompt budget may cut it further)
PART_CHARS = 400  # a caption below the node is cut at a sentence after this many characters
METADATA_SHARE = 0.3  # of the prompt budget, at most, for title, description and transcript
GLOBAL_SHARE = 0.15  # of the prompt budget, at most, for the global context
SPEECH_SHARE = 0.25  # of a node's budget, at most, for the speech during it
RESERVE = 1200  # tokens kept for the instruction, a previous answer and a repair turn
DESCRIPTION_CHARS = 2000
LINE_SECONDS = 10.0  # a transcript line lasts until the next one, at most this long
MORE = " [...]"


def estimate_tokens(text: str) -> int:
    """A cheap, tokenizer-free estimate (about four characters per token for English)."""
    return math.ceil(len(text) / 4)


def span(start: float, end: float) -> str:
    return f"[{start:.1f}s-{end:.1f}s]"


def _one_line(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=\S)")


def shorten(text: str, max_chars: int | None) -> str:
    """``text`` cut after its last whole sentence within ``max_chars`` (the first sentence is
    always kept whole), marked with " [...]" where something was left out. Never mid-sentence."""
    if max_chars is None or len(text) <= max_chars:
        return text
    kept = 0
    for match in _SENTENCE_END.finditer(text):
        if match.start() > max_chars - len(MORE):
            break
        kept = match.start()
    if kept == 0:  # the first sentence alone is too long: keep it whole
        found = _SENTENCE_END.search(text)
        kept = found.start() if found else len(text)
    return text if kept >= len(text) else text[:kept] + MORE


def _caption_of(entry: dict[str, Any] | None, max_chars: int | None = None) -> str:
    """Every caption of a node on one line, each cut on its own: ``frame: … / clip: … / action:
    …`` for a leaf with all three (a function of the entry alone, so the shared prefix stays
    byte-identical)."""
    entry = entry or {}
    parts = []
    if entry.get("caption"):
        prefix = "frame: " if entry.get("kind") == "frame" else ""
        parts.append(prefix + shorten(_one_line(str(entry["caption"])), max_chars))
    if entry.get("segment_caption"):
        parts.append("clip: " + shorten(_one_line(str(entry["segment_caption"])), max_chars))
    if entry.get("action"):  # the release's plm_action, kept by `import`
        parts.append("action: " + shorten(_one_line(str(entry["action"])), max_chars))
    return " / ".join(parts) or "(no caption)"


def outline_lines(
    tree: Tree,
    top: Node,
    captions: dict[str, Any],
    max_depth: int | None,
    part_chars: int | None = None,
) -> Iterable[str]:
    """``top`` and its descendants down to ``max_depth`` levels, depth-first, one line each;
    the captions below ``top`` cut at a sentence after ``part_chars`` characters."""
    for node in tree.subtree(top, max_depth):
        indent = "  " * (node.level - top.level)
        limit = None if node is top else part_chars
        caption = _caption_of(captions.get(node.node_id), limit)
        yield f"{indent}- {span(node.start, node.end)} {caption}"


def fit_depth(
    tree: Tree,
    top: Node,
    captions: dict[str, Any],
    budget: int,
    max_depth: int | None = None,
    part_chars: int | None = None,
) -> int | None:
    """The deepest level below ``top`` (at most ``max_depth``) whose outline fits ``budget``
    tokens (at least 0); None when the whole subtree fits within ``max_depth``."""
    per_level: dict[int, int] = {}
    lines = outline_lines(tree, top, captions, None, part_chars)
    for node, line in zip(tree.subtree(top), lines, strict=True):
        depth = node.level - top.level
        per_level[depth] = per_level.get(depth, 0) + estimate_tokens(line) + 1
    used = 0
    for depth in sorted(per_level):
        used += per_level[depth]
        if used > budget:
            return max(depth - 1, 0)
        if max_depth is not None and depth >= max_depth and depth < max(per_level):
            return max_depth
    return None


def _transcript_lines(transcript: Any) -> list[tuple[float | None, str]]:
    """``(time or None, one line of text)`` for each item of a transcript."""
    lines: list[tuple[float | None, str]] = []
    for item in transcript or []:
        if isinstance(item, dict):
            text = _one_line(str(item.get("text", "")))
            time = item.get("time", item.get("start"))
            try:
                stamp = float(time) if time is not None else None
            except (TypeError, ValueError):
                stamp = None
            if text:
                lines.append((stamp, text))
        elif str(item).strip():
            lines.append((None, _one_line(str(item))))
    return lines


def _speech(lines: list[tuple[float | None, str]], budget: int) -> str:
    """Whole transcript lines, as many as fit ``budget`` tokens, each with its time."""
    kept: list[str] = []
    used = 0
    for number, (stamp, text) in enumerate(lines):
        line = (f"[{stamp:.1f}s] " if stamp is not None else "") + text
        used += estimate_tokens(line) + 1
        if used > budget:
            kept.append(f"[... {len(lines) - number} more lines left out]")
            break
        kept.append(line)
    return "\n".join(kept)


def _during(lines: list[tuple[float | None, str]], start: float, end: float) -> list[int]:
    """Indexes of the timed lines spoken during ``[start, end)``: a line lasts until the next
    one, at most ``LINE_SECONDS``."""
    found = []
    for index, (stamp, _) in enumerate(lines):
        if stamp is None:
            continue
        after = lines[index + 1][0] if index + 1 < len(lines) else None
        until = min(after if after is not None else math.inf, stamp + LINE_SECONDS)
        if stamp < end and until > start:
            found.append(index)
    return found


def render_metadata(
    tree: Tree, metadata: dict[str, Any], budget: int, transcript: bool = True
) -> str:
    """Title, duration, description and (``transcript``) as much of the transcript (whole lines)
    as fits ``budget`` tokens."""
    parts = ["# The video", f"Duration: {tree.duration:.1f} s"]
    if metadata.get("title"):
        parts.append(f"Title: {_one_line(str(metadata['title']))}")
    description = str(metadata.get("description") or "").strip()
    if description:
        if len(description) > DESCRIPTION_CHARS:
            description = description[:DESCRIPTION_CHARS].rsplit("\n", 1)[0] + "\n[...]"
        parts += ["", "## Description", description]
    text = "\n".join(parts)
    lines = _transcript_lines(metadata.get("transcript")) if transcript else []
    if lines:
        text += "\n\n## Transcript (speech; it may not match what is shown)\n"
        text += _speech(lines, budget - estimate_tokens(text))
    return text


class PromptBuilder:
    """Renders the shared prefix once per video and each node's block within the budget.

    The prefix (after the system text) holds the metadata and the global context; a transcript
    whose lines all carry times is shown piecewise instead, each node with the lines spoken during
    it, so the prefix every request pays for (cached or not) stays short."""

    def __init__(
        self, tree: Tree, captions: dict[str, Any], metadata: dict[str, Any], max_tokens: int
    ) -> None:
        self.tree = tree
        self.captions = captions
        budget = max_tokens - estimate_tokens(SYSTEM) - RESERVE
        lines = _transcript_lines(metadata.get("transcript"))
        timed = bool(lines) and all(stamp is not None for stamp, _ in lines)
        self.speech = sorted(lines, key=lambda line: line[0] or 0.0) if timed else []
        meta = render_metadata(tree, metadata, int(budget * METADATA_SHARE), not timed)
        if timed:
            meta += (
                "\n\nThe transcript is given piecewise: with each segment, what is said during it."
            )
        global_budget = int(budget * GLOBAL_SHARE)
        depth = fit_depth(tree, tree.root, captions, global_budget, GLOBAL_DEPTH, GLOBAL_CHARS)
        outline = "\n".join(outline_lines(tree, tree.root, captions, depth, GLOBAL_CHARS))
        self.context = (
            f"{meta}\n\n# Global context: the top of the video's segment tree\n{outline}\n"
        )
        self.node_budget = max(budget - estimate_tokens(self.context), 0)

    def node_block(self, node: Node) -> str:
        head = f"# Segment to annotate: {span(node.start, node.end)}, {node.duration:.1f} s\n"
        speech = ""
        said = [self.speech[i] for i in _during(self.speech, node.start, node.end)]
        if said:
            budget = int(self.node_budget * SPEECH_SHARE)
            speech = (
                f"Speech during it (it may not match what is shown):\n{_speech(said, budget)}\n"
            )
        budget = self.node_budget - estimate_tokens(head + speech)
        budget = min(budget, SUBTREE_TOKENS)
        depth = fit_depth(self.tree, node, self.captions, budget, SUBTREE_DEPTH, PART_CHARS)
        lines = "\n".join(outline_lines(self.tree, node, self.captions, depth, PART_CHARS))
        note = "" if depth is None else f"\n(parts more than {depth} levels below are left out)"
        return f"{head}Its caption, then its parts depth-first:\n{lines}{note}\n{speech}"
