"""The per-video page: the document packed into columns, the template filled in, one HTML file.

The page needs no network: CSS, JavaScript and the data are inline; thumbnails are either data URIs
(within a byte budget, the top levels and the widest spans first) or, when served by the Airflow
plugin, URLs fetched lazily as a node is shown.
"""

from __future__ import annotations

import base64
import html
import json
import re
from importlib import resources
from typing import Any

ANNOTATION_FIELDS = (
    "brief_action",
    "detailed_action",
    "actor",
    "brief_caption",
    "detailed_caption",
)
EMBED_BUDGET = 3_000_000  # bytes of JPEG embedded in one self-contained page


def asset(name: str) -> str:
    """A file of ``action100m/viewer/assets`` (package data)."""
    return resources.files("action100m.viewer").joinpath("assets", name).read_text("utf-8")


def fill(template: str, **values: str) -> str:
    """Replace each ``{{NAME}}`` in one pass (a value is never scanned for placeholders)."""
    return re.sub(r"\{\{([A-Z]+)\}\}", lambda m: values.get(m.group(1), m.group(0)), template)


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, list):  # official release values are one-element lists
        return _text(value[0]) if value else None
    return str(value)


def pack_nodes(nodes: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """Columns of the depth-first node list; ``parent`` is a row index (-1 for the root)."""
    row = {node["node_id"]: i for i, node in enumerate(nodes)}
    columns: dict[str, list[Any]] = {
        key: []
        for key in ("id", "parent", "level", "start", "end", "caption", "kind", "ann", "error")
    }
    for node in nodes:
        annotation = node.get("annotation")
        columns["id"].append(node["node_id"])
        columns["parent"].append(row.get(node.get("parent_id") or "", -1))
        columns["level"].append(int(node.get("level") or 0))
        columns["start"].append(round(float(node["start"]), 3))
        columns["end"].append(round(float(node["end"]), 3))
        columns["caption"].append(_text(node.get("caption")))
        columns["kind"].append(node.get("caption_kind"))
        columns["ann"].append(
            [_text(annotation.get(f)) for f in ANNOTATION_FIELDS]
            if isinstance(annotation, dict)
            else None
        )
        columns["error"].append(_text(node.get("error") or node.get("caption_error")))
    return columns


def embedded_thumbnails(
    nodes: list[dict[str, Any]], thumbs: dict[str, bytes], budget: int = EMBED_BUDGET
) -> dict[str, str]:
    """Row index -> base64 JPEG, the top levels and widest spans first, within ``budget`` bytes."""
    order = sorted(
        range(len(nodes)), key=lambda i: (nodes[i]["level"], nodes[i]["start"] - nodes[i]["end"])
    )
    chosen: dict[str, str] = {}
    used = 0
    for i in order:
        data = thumbs.get(nodes[i]["node_id"])
        if data is None or used + len(data) > budget:
            continue
        used += len(data)
        chosen[str(i)] = base64.b64encode(data).decode("ascii")
    return chosen


def page_data(
    document: dict[str, Any],
    thumbs: dict[str, bytes] | None = None,
    thumb_url: str | None = None,
    budget: int = EMBED_BUDGET,
) -> dict[str, Any]:
    """What the page's script reads. ``thumb_url`` (with ``{node_id}``) serves thumbnails by URL
    instead of embedding them; ``thumbs`` says which nodes have one."""
    raw = document.get("metadata") or {}
    metadata: dict[str, Any] = raw[0] if isinstance(raw, list) and raw else dict(raw or {})
    nodes = document["nodes"]
    thumbs = thumbs or {}
    pipeline = document.get("pipeline") or {}
    aggregate = (pipeline.get("config") or {}).get("aggregate") or {}
    data: dict[str, Any] = {
        "video": {
            "uid": _text(document.get("video_uid")),
            "title": _text(metadata.get("title")),
            "duration": metadata.get("duration"),
            "fps": metadata.get("fps"),
            "source": _text(metadata.get("source")),
        },
        "pipeline": {
            "version": pipeline.get("version"),
            "models": pipeline.get("models") or {},
            # Why nodes have no annotation, in the words the status record used.
            "skipped": pipeline.get("skipped") or {},
            "annotate_from": aggregate.get("min_duration"),
            "annotate_leaves": aggregate.get("targets") == "all",
        },
        "fields": list(ANNOTATION_FIELDS),
        "nodes": pack_nodes(nodes),
    }
    if thumb_url:
        has = [i for i, node in enumerate(nodes) if node["node_id"] in thumbs]
        data["thumbs"] = {"mode": "url", "url": thumb_url, "has": has}
    elif thumbs:
        data["thumbs"] = {"mode": "embedded", "data": embedded_thumbnails(nodes, thumbs, budget)}
    else:
        data["thumbs"] = {"mode": "none"}
    return data


# Characters that could end or change a <script> element, written as JSON escapes: the text stays
# valid JSON (and JavaScript) whatever a title, caption or answer contains.
_SCRIPT_UNSAFE = str.maketrans(
    {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
)


def _script_json(value: Any) -> str:
    """JSON safe inside a <script> element."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return text.translate(_SCRIPT_UNSAFE)


def render_html(
    document: dict[str, Any],
    thumbs: dict[str, bytes] | None = None,
    *,
    thumb_url: str | None = None,
    budget: int = EMBED_BUDGET,
    back_link: str | None = None,
) -> str:
    """The viewer page for one per-video document, as one HTML string."""
    data = page_data(document, thumbs, thumb_url, budget)
    title = data["video"]["title"] or data["video"]["uid"] or "video"
    back = f'<a class="back" href="{html.escape(back_link)}">&larr; all</a>' if back_link else ""
    return fill(
        asset("viewer.html"),
        CSS=asset("viewer.css"),
        JS=asset("viewer.js"),
        TITLE=html.escape(f"{title} · action100m"),
        BACK=back,
        DATA=_script_json(data),
    )
