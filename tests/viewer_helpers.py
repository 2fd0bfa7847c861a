"""Shared by the viewer tests: synthetic per-video documents and a headless Chromium page."""

from __future__ import annotations

import os
import random
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from action100m.tree import make_node_id

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = os.environ.get("ACTION100M_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]  # fmt: skip
FIELDS = ("brief_action", "detailed_action", "actor", "brief_caption", "detailed_caption")


def synthetic_document(
    video_id: str, duration: float, leaf: float, source: str | None = None, seed: int = 0
) -> dict[str, Any]:
    """A binary tree over [0, duration] split at random points until spans are under ``leaf``
    seconds; nodes of 4 s and more are annotated, as the pipeline does."""
    rng = random.Random(seed)
    nodes: list[dict[str, Any]] = []

    def add(start: float, end: float, parent: str | None, level: int) -> None:
        node_id = make_node_id(video_id, start, end)
        long = end - start >= 4.0
        tag = f"{level}:{start:.2f}"
        nodes.append(
            {
                "node_id": node_id, "parent_id": parent, "level": level, "start": start,
                "end": end, "caption": f"caption of {tag}",
                "caption_kind": "segment" if end - start >= leaf else "frame",
                "annotation": {f: f"{f} of {tag}" for f in FIELDS} if long else None,
            }
        )  # fmt: skip
        if end - start >= leaf:
            cut = round(start + (end - start) * rng.uniform(0.35, 0.65), 3)
            add(start, cut, node_id, level + 1)
            add(cut, end, node_id, level + 1)

    add(0.0, duration, None, 0)
    return {
        "video_uid": video_id,
        "metadata": {"duration": duration, "fps": 24.0, "source": source, "title": video_id},
        "pipeline": {"version": "test", "models": {"captioner": "tiny"}},
        "nodes": nodes,
    }


@contextmanager
def chromium_page(width: int = 1280, height: int = 800) -> Iterator[Any]:
    """A page of a headless Chromium (Debian's package driven by Playwright); closed at exit."""
    # A missing browser is a broken set-up (`make test` installs both), never a skipped pass.
    from playwright import sync_api

    if not shutil.which(CHROMIUM) and not Path(CHROMIUM).exists():
        pytest.fail(
            f"no Chromium at {CHROMIUM}: `make test` installs it (apt-get install chromium)"
        )
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.errors = errors
            yield page
        finally:
            browser.close()


def click_node(page: Any, index: int) -> None:
    """Click the bar of row ``index`` on the timeline canvas."""
    point = page.evaluate(f"window.a100m.barCenter({index})")
    assert point is not None, f"node {index} is not visible"
    page.mouse.click(point["x"], point["y"])


def panel_fields(page: Any) -> dict[str, str]:
    """The side panel: node id and each field's text."""
    fields = page.evaluate(
        """() => Object.fromEntries([...document.querySelectorAll('#fields .field')]
            .map(e => [e.dataset.field, e.querySelector('p').textContent]))"""
    )
    return {"node_id": page.get_attribute("#panel", "data-node-id"), **fields}


def screenshot(page: Any, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=False)
    return path
