"""Shared by the viewer tests: synthetic per-video documents and a headless Chromium page."""

from __future__ import annotations

import contextlib
import io
import os
import random
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import ROUND_HALF_UP, Decimal
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


_SHARED: dict[str, Any] = {}


@contextmanager
def _launched() -> Iterator[Any]:
    """A headless Chromium (Debian's package driven by Playwright); closed at exit."""
    # A missing browser is a broken set-up (`make test` installs both), never a skipped pass.
    from playwright import sync_api

    if not shutil.which(CHROMIUM) and not Path(CHROMIUM).exists():
        pytest.fail(
            f"no Chromium at {CHROMIUM}: `make test` installs it (apt-get install chromium)"
        )
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@contextmanager
def shared_chromium() -> Iterator[None]:
    """Within it, :func:`chromium_page` opens its pages in one Chromium: a launch costs about
    1.2 s more than a fresh context. Only around tests that run no asyncio meanwhile: a started
    Playwright keeps its event loop running, and ``asyncio.run()`` refuses to start beside it."""
    with _launched() as browser:
        _SHARED["browser"] = browser
        try:
            yield
        finally:
            _SHARED.pop("browser", None)


@contextmanager
def chromium_page(width: int = 1280, height: int = 800) -> Iterator[Any]:
    """A page in a context of its own (cookies, storage, cache: nothing shared with other
    pages), in the shared Chromium if there is one, else in one of its own; closed at exit."""
    with contextlib.ExitStack() as stack:
        browser = _SHARED.get("browser") or stack.enter_context(_launched())
        context = browser.new_context(viewport={"width": width, "height": height})
        stack.callback(context.close)
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.errors = errors
        yield page


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


def page_time(t: float, long: bool = False) -> str:
    """A time as the page should print it: ``m:ss.s`` (``h:mm:ss.s`` for videos of an hour and
    more), tenths rounded half up as JavaScript's ``toFixed`` does."""
    tenths = int((Decimal(t) * 10).quantize(Decimal(1), rounding=ROUND_HALF_UP))
    h, rest = divmod(tenths, 36000)
    m, rest = divmod(rest, 600)
    s = f"{rest // 10:02d}.{rest % 10}"
    return f"{h}:{m:02d}:{s}" if long else f"{h * 60 + m}:{s}"


def fixed(value: float, digits: int) -> str:
    """JavaScript's ``value.toFixed(digits)`` (half up on the exact binary value)."""
    return str(Decimal(value).quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_UP))


def tiny_jpeg(seed: int) -> bytes:
    """A small JPEG whose colour (and so bytes) depends on ``seed``."""
    from PIL import Image

    colour = ((seed * 53) % 256, (seed * 97) % 256, (seed * 29) % 256)
    out = io.BytesIO()
    Image.new("RGB", (32, 18), colour).save(out, format="JPEG")
    return out.getvalue()


def settle(page: Any) -> None:
    """Wait until the page has drawn two animation frames (the canvas redraws on one)."""
    page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")


def visible_range(page: Any) -> tuple[float, float]:
    """The time range the timeline shows, read back from where the page draws the leaves.

    The leaves of the focused subtree are disjoint and cover it: every visible leaf but the
    first and the last lies wholly inside the range, so its bar centre is linear in its midpoint;
    two of them give the range's start and span."""
    found = page.evaluate(
        """() => {
            const N = window.a100m.data.nodes, n = N.id.length, inner = new Uint8Array(n);
            for (let i = 0; i < n; i++) if (N.parent[i] >= 0) inner[N.parent[i]] = 1;
            const r = document.getElementById("canvas").getBoundingClientRect(), seen = [];
            for (let i = 0; i < n; i++) {
                const p = inner[i] ? null : window.a100m.barCenter(i);
                if (p) seen.push([(N.start[i] + N.end[i]) / 2, p.x - r.left, N.start[i]]);
            }
            seen.sort((a, b) => a[2] - b[2]);
            return { inside: seen.slice(1, -1), width: r.width };
        }"""
    )
    inside, width = found["inside"], found["width"]
    assert len(inside) >= 2, f"too few leaves wholly visible to read the range: {inside}"
    (ma, xa), (mb, xb) = inside[0][:2], inside[-1][:2]
    span = width * (mb - ma) / (xb - xa)
    start = ma - xa * span / width
    return start, start + span


def facts(page: Any) -> dict[str, str]:
    """The side panel's facts list (Time, Duration, Level, ...): name -> text."""
    return page.evaluate(
        """() => Object.fromEntries([...document.querySelectorAll('#facts dt')]
            .map(dt => [dt.textContent, dt.nextElementSibling.textContent]))"""
    )


def drag(page: Any, start: tuple[float, float], end: tuple[float, float]) -> None:
    """Press at ``start``, move to ``end`` in steps, release; then let the page's deferred
    end-of-drag timer (``setTimeout(..., 0)`` on mouseup) run, so a next drag starts afresh."""
    page.mouse.move(*start)
    page.mouse.down()
    page.mouse.move(*end, steps=5)
    page.mouse.up()
    page.evaluate("() => new Promise(r => setTimeout(r, 0))")  # queued after the page's timer
