"""Prompt rendering, in the paper's structure, ordered for providers' prompt caching.

The text comes from a prompt module in the release's layout (:mod:`.templates`; ours is
:mod:`.default_prompt`, a user's is ``aggregate.prompt_file``). One request for a node is: the task
and its guidelines (system, ``TASK_TEMPLATE``), then ``INPUT_TEMPLATE`` with the video's metadata as
YAML and the top of its tree (shared by every node of the video), then the node's own tree and the
speech during it; a refine round appends only the previous answer and ``REFINE_INSTRUCTION``. All
before the node's tree is byte-identical for every node of a video (unless the task template names
the node's times), so a provider's prefix cache serves it after the first node; everything but the
last two turns is identical across a node's rounds, so rounds 2 and 3 are cached almost whole.

Trees are Markdown: a heading per node with its time range and duration (levels below the third
as bold lines), its captions below it. What every request pays for is kept short:
- the transcript goes whole into the metadata where it fits ``METADATA_SHARE`` of the budget; a
  longer one whose lines carry times is cut by time window, each node with the lines spoken
  during it;
- the global context shows ``GLOBAL_DEPTH`` levels, captions below the root cut to about
  ``GLOBAL_CHARS``;
- a node's tree shows at most ``SUBTREE_DEPTH`` levels below it and ``SUBTREE_TOKENS`` in all,
  its own caption whole, its parts' captions cut to about ``PART_CHARS``.
A tree is cut by depth, and a caption only at a sentence boundary (marked " [...]"), never
mid-sentence. A node shows every caption it has: the frame caption of a leaf's middle frame, the
caption of its clip, and its short action label.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from typing import Any

import yaml

from action100m.llm.templates import PromptTemplates, load_templates
from action100m.tree import Node, Tree

REPAIR = (
    "That answer could not be used: {reason}. Answer again with one JSON object only, in the "
    'structure asked for: {{"summary": {{"brief", "detailed"}}, "action": {{"brief", "detailed", '
    '"actor"}}}}, every value a string.'
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


def heading(node: Node, depth: int) -> str:
    """A node's heading: its time range and duration, as deep as it is (bold below level 3)."""
    label = f"{span(node.start, node.end)} ({node.duration:.1f} s)"
    return f"{'#' * (depth + 2)} {label}" if depth <= 2 else f"**{label}**"


def outline_lines(
    tree: Tree,
    top: Node,
    captions: dict[str, Any],
    max_depth: int | None,
    part_chars: int | None = None,
) -> Iterable[str]:
    """``top`` and its descendants down to ``max_depth`` levels, depth-first, one Markdown
    section each (join them with blank lines); the captions below ``top`` cut at a sentence after
    ``part_chars`` characters."""
    for node in tree.subtree(top, max_depth):
        limit = None if node is top else part_chars
        caption = _caption_of(captions.get(node.node_id), limit)
        yield f"{heading(node, node.level - top.level)}\n{caption}"


def outline(
    tree: Tree, top: Node, captions: dict[str, Any], depth: int | None, part_chars: int | None
) -> str:
    return "\n\n".join(outline_lines(tree, top, captions, depth, part_chars))


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
    """The video's metadata as the body of a YAML block: every field known (title, description
    cut to ``DESCRIPTION_CHARS``, upload date, duration, counts) and, with ``transcript``, as many
    whole transcript lines as fit ``budget`` tokens."""
    fields: dict[str, Any] = {
        name: metadata[name]
        for name in ("title", "description", "upload_date", "view_count", "like_count")
        if metadata.get(name) not in (None, "")
    }
    description = str(fields.get("description") or "").strip()
    if len(description) > DESCRIPTION_CHARS:
        fields["description"] = description[:DESCRIPTION_CHARS].rsplit("\n", 1)[0] + "\n[...]"
    fields["duration"] = f"{tree.duration:.1f} s"
    text = _yaml(fields)
    lines = _transcript_lines(metadata.get("transcript")) if transcript else []
    if lines:
        kept = _speech(lines, budget - estimate_tokens(text)).splitlines()
        text += "\n" + _yaml({"transcript (speech; it may not match what is shown)": kept})
    return text


def _yaml(value: dict[str, Any]) -> str:
    return yaml.safe_dump(value, allow_unicode=True, sort_keys=False, width=1000).rstrip("\n")


class PromptBuilder:
    """Renders the part shared by a video's nodes once, and each node's tree within the budget.

    The shared part holds the metadata and the global context. A transcript whose lines all carry
    times is shown piecewise instead, each node with the lines spoken during it, when it is too
    long for its share or ``whole_transcript`` is off (``aggregate.transcript=piecewise``: the
    prefix every request pays for, cached or not, stays short)."""

    def __init__(
        self,
        tree: Tree,
        captions: dict[str, Any],
        metadata: dict[str, Any],
        max_tokens: int,
        templates: PromptTemplates | None = None,
        whole_transcript: bool = True,
    ) -> None:
        self.tree, self.captions = tree, captions
        self.templates = templates or load_templates()
        self.system_text = self.system(tree.root)
        budget = max_tokens - estimate_tokens(self.system_text) - RESERVE
        lines = _transcript_lines(metadata.get("transcript"))
        meta_budget = int(budget * METADATA_SHARE)
        whole = render_metadata(tree, metadata, 10**9)
        timed = bool(lines) and all(stamp is not None for stamp, _ in lines)
        piecewise = timed and (not whole_transcript or estimate_tokens(whole) > meta_budget)
        self.speech = sorted(lines, key=lambda line: line[0] or 0.0) if piecewise else []
        meta = render_metadata(tree, metadata, meta_budget, not piecewise)
        if piecewise:
            meta += "\n" + _yaml(
                {"transcript": "given piecewise, with each segment: what is said during it"}
            )
        global_budget = int(budget * GLOBAL_SHARE)
        depth = fit_depth(tree, tree.root, captions, global_budget, GLOBAL_DEPTH, GLOBAL_CHARS)
        top = outline(tree, tree.root, captions, depth, GLOBAL_CHARS)
        self.context, self.after = self.templates.user(meta, top)
        self.node_budget = max(budget - estimate_tokens(self.context + self.after), 0)

    def system(self, node: Node) -> str:
        """The system text for ``node`` (the same for all unless the template names times)."""
        root = self.tree.root
        return self.templates.system(node.start, node.end, root.start, root.end)

    def node_block(self, node: Node) -> str:
        """The node's tree, the speech during it, and what the input template has after it."""
        speech = ""
        said = [self.speech[i] for i in _during(self.speech, node.start, node.end)]
        if said:
            budget = int(self.node_budget * SPEECH_SHARE)
            speech = (
                f"\n\nSpeech during it (it may not match what is shown):\n{_speech(said, budget)}"
            )
        budget = min(self.node_budget - estimate_tokens(speech), SUBTREE_TOKENS)
        depth = fit_depth(self.tree, node, self.captions, budget, SUBTREE_DEPTH, PART_CHARS)
        text = outline(self.tree, node, self.captions, depth, PART_CHARS)
        note = "" if depth is None else f"\n\n(parts more than {depth} levels below are left out)"
        return f"{text}{note}{speech}{self.after}"
