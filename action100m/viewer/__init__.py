"""Tree-of-captions viewer: one self-contained HTML page per video, thumbnails, run reports.

- :func:`render_page` renders a document's page with its thumbnails (the publish stage writes it
  to ``viewer.html``), :func:`write_html` (``action100m show VIDEO_ID --html OUT``) and
  :func:`publish_viewer` write it;
- :func:`render_html` renders the page (the Airflow plugin serves it with thumbnails by URL);
- :func:`render_report` / :func:`render_index` are the run report and the store's index page.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from action100m.store import ArtifactStore
from action100m.viewer.render import EMBED_BUDGET, page_data, render_html
from action100m.viewer.report import render_index, render_report
from action100m.viewer.thumbnails import ensure_thumbnails, read_thumbnail, read_thumbnails

__all__ = [
    "EMBED_BUDGET",
    "ensure_thumbnails",
    "page_data",
    "publish_viewer",
    "read_thumbnail",
    "read_thumbnails",
    "render_html",
    "render_index",
    "render_page",
    "render_report",
    "write_html",
]

log = logging.getLogger(__name__)
MAX_THUMBNAILS = 20_000  # decoded per video at most (the widest spans first)


def render_page(
    document: dict[str, Any], store: ArtifactStore | None, budget: int = EMBED_BUDGET
) -> str:
    """The self-contained page; with ``store``, thumbnails from (and added to) the video's pack."""
    thumbs = ensure_thumbnails(store, document, MAX_THUMBNAILS) if store is not None else {}
    return render_html(document, thumbs, budget=budget)


def write_html(
    document: dict[str, Any],
    out_path: str | Path,
    store: ArtifactStore | None = None,
    *,
    budget: int = EMBED_BUDGET,
) -> str:
    """Write the self-contained page of ``document`` to a local file; returns its path.
    With ``store``, thumbnails come from (and are added to) the video's thumbnail pack."""
    path = Path(out_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_page(document, store, budget), encoding="utf-8")
    return str(path)


def publish_viewer(
    settings: Any, store: ArtifactStore, video_id: str, document: dict[str, Any] | None = None
) -> str:
    """(Re)write a published video's page: thumbnails pack + ``viewer.html``, as the publish stage
    does; returns the page's URI. ``settings`` is accepted for symmetry with the stages."""
    if document is None:
        document = store.read_json(store.document_uri(video_id))
    uri = store.viewer_uri(video_id)
    store.write_bytes(uri, render_page(document, store).encode("utf-8"))
    log.info("video %s: viewer written to %s", video_id, uri)
    return uri
