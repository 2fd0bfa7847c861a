"""The tree-of-captions viewer: self-contained pages for a real short video and for the official
sample, driven in headless Chromium (click a bar, read the side panel, breadcrumb back up)."""

from __future__ import annotations

import base64
import io
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from viewer_helpers import (
    FIELDS,
    chromium_page,
    click_node,
    drag,
    facts,
    fixed,
    page_time,
    panel_fields,
    screenshot,
    settle,
    shared_chromium,
    synthetic_document,
    tiny_jpeg,
    visible_range,
)

from action100m.cli import main as cli_main
from action100m.samples import make_video
from action100m.store import ArtifactStore
from action100m.viewer import publish_viewer, read_thumbnail, render_html

REFERENCE = Path(__file__).resolve().parent / "data" / "hySSAAw4t24.json"  # the official sample


@pytest.fixture(scope="module", autouse=True)
def one_chromium() -> Iterator[None]:
    """This module's pages share one Chromium (nothing here runs asyncio)."""
    with shared_chromium():
        yield


@pytest.fixture
def clip_store(store: ArtifactStore, tmp_path: Path) -> tuple[ArtifactStore, dict]:
    """A 9 s video (cuts at 3 s and 6 s) and a pipeline-shaped document for it in the store."""
    video = tmp_path / "clip.mp4"
    make_video(video, [3.0, 3.0, 3.0])
    document = synthetic_document("clip", 9.0, leaf=2.0, source=str(video))
    store.write_json(store.document_uri("clip"), document)
    return store, document


def test_publish_writes_page_and_thumbnails(clip_store: tuple[ArtifactStore, dict]) -> None:
    store, document = clip_store
    uri = publish_viewer(None, store, "clip")
    assert uri == store.viewer_uri("clip") and store.exists(uri)
    index = store.read_json(store.thumbnail_uris("clip")[1])
    assert set(index["nodes"]) == {n["node_id"] for n in document["nodes"]}
    jpeg = read_thumbnail(store, "clip", document["nodes"][0]["node_id"])
    assert jpeg is not None and jpeg[:2] == b"\xff\xd8"
    page = store.read_bytes(uri).decode()
    assert '"mode":"embedded"' in page and "<script" in page
    # A second publish reuses the pack instead of decoding the video again.
    before = store.fs.modified(store.fs._strip_protocol(store.thumbnail_uris("clip")[0]))
    publish_viewer(None, store, "clip")
    assert store.fs.modified(store.fs._strip_protocol(store.thumbnail_uris("clip")[0])) == before


def test_page_escapes_script_breaking_text() -> None:
    document = synthetic_document("x", 5.0, leaf=3.0)
    document["nodes"][0]["caption"] = "</script><script>alert(1)</script> {{DATA}}"
    html = render_html(document)
    assert html.count("</script>") == 2  # the data block and the viewer script only
    assert "{{DATA}}" in html.split('id="a100m-data">', 1)[1]  # kept as text, not substituted


def test_tiny_video_page_in_chromium(
    clip_store: tuple[ArtifactStore, dict], tmp_path: Path
) -> None:
    store, document = clip_store
    out = tmp_path / "clip.html"
    assert cli_main(["--quiet", "--store", store.root, "show", "clip", "--html", str(out)]) == 0
    nodes = document["nodes"]
    with chromium_page() as page:
        page.goto(out.as_uri())
        page.wait_for_function("window.a100m && window.a100m.current() === 0")
        assert page.get_attribute("#panel", "data-node-id") == nodes[0]["node_id"]
        assert page.get_attribute("#thumb img", "src").startswith("data:image/jpeg;base64,")
        target = next(i for i, n in enumerate(nodes) if n["level"] == 2)
        click_node(page, target)
        shown = panel_fields(page)
        assert shown["node_id"] == nodes[target]["node_id"]
        assert shown["caption"] == nodes[target]["caption"]
        annotation = nodes[target]["annotation"]
        if annotation:
            assert {f: shown[f] for f in FIELDS} == annotation
        crumbs = page.locator("#breadcrumb button")
        assert crumbs.count() == 3
        screenshot(page, "viewer-tiny.png")
        crumbs.first.click()
        assert page.get_attribute("#panel", "data-node-id") == nodes[0]["node_id"]
        page.keyboard.press("ArrowDown")
        assert page.evaluate("window.a100m.current()") == 1
        assert not page.errors


def _official_annotation(row: dict) -> dict[str, str]:
    gpt = row["gpt"]
    pairs = {"brief_action": ("action", "brief"), "detailed_action": ("action", "detailed"),
             "actor": ("action", "actor"), "brief_caption": ("summary", "brief"),
             "detailed_caption": ("summary", "detailed")}  # fmt: skip
    return {field: gpt[group][key] for field, (group, key) in pairs.items()}


def test_reference_sample_page_in_chromium(tiny_settings, store: ArtifactStore) -> None:  # noqa: ANN001
    from action100m.interop import import_file

    [video_id] = import_file(tiny_settings, store, str(REFERENCE))
    document = store.read_json(store.document_uri(video_id))
    assert len(document["nodes"]) == 917
    uri = publish_viewer(tiny_settings, store, video_id, document)  # no video: no thumbnails
    official = {r["node_id"]: r for r in json.loads(REFERENCE.read_text())["nodes"][0]}
    with store.local_copy(uri) as path, chromium_page() as page:
        page.goto(Path(path).as_uri())
        page.wait_for_function("window.a100m && window.a100m.current() === 0")
        nodes = document["nodes"]
        target = next(
            i for i, n in enumerate(nodes) if n["level"] == 3 and isinstance(n["annotation"], dict)
        )
        click_node(page, target)
        shown = panel_fields(page)
        node_id = nodes[target]["node_id"]
        assert shown["node_id"] == node_id
        assert {f: shown[f] for f in FIELDS} == _official_annotation(official[node_id])
        assert page.locator("#breadcrumb button").count() == 4
        assert "no thumbnail" in page.text_content("#thumb figcaption")
        screenshot(page, "viewer-reference.png")
        page.locator("#breadcrumb button").nth(2).click()
        assert page.get_attribute("#panel", "data-node-id") == nodes[target]["parent_id"]
        assert not page.errors


def test_hour_long_tree_stays_responsive(tmp_path: Path) -> None:
    """About 5,000 nodes over an hour: loads, draws and answers a click quickly."""
    document = synthetic_document("hour", 3600.0, leaf=1.5, seed=3)
    assert 4000 <= len(document["nodes"]) <= 8000
    out = tmp_path / "hour.html"
    out.write_text(render_html(document))
    with chromium_page() as page:
        started = time.monotonic()
        page.goto(out.as_uri())
        page.wait_for_function("window.a100m && window.a100m.current() === 0")
        loaded = time.monotonic() - started
        deepest = max(range(len(document["nodes"])), key=lambda i: document["nodes"][i]["level"])
        chain = []
        i = deepest
        while i >= 0:
            chain.append(i)
            parent = document["nodes"][i]["parent_id"]
            i = next((k for k, n in enumerate(document["nodes"]) if n["node_id"] == parent), -1)
        started = time.monotonic()
        for row in reversed(chain[:-1]):  # click down the tree to the deepest leaf
            click_node(page, row)
        per_click = (time.monotonic() - started) / max(1, len(chain) - 1)
        assert page.evaluate("window.a100m.current()") == deepest
        page.mouse.wheel(0, 300)
        screenshot(page, "viewer-hour.png")
        assert not page.errors
    assert loaded < 5.0, f"page took {loaded:.1f} s to load"
    assert per_click < 0.5, f"a click took {per_click:.2f} s"


def test_many_thumbnails_in_one_pass_match_seeking(tmp_path: Path) -> None:
    """Past SEEK_LIMIT spans the frames come from one decoding pass: the same frames."""
    import numpy as np
    from PIL import Image

    from action100m.viewer.thumbnails import SEEK_LIMIT, middle_frame_jpegs

    video = tmp_path / "pass.mp4"
    make_video(video, [2.0, 2.0])
    spans = [(i * 0.06, i * 0.06 + 0.1) for i in range(SEEK_LIMIT + 12)]
    many = middle_frame_jpegs(str(video), "pass", spans)
    few = middle_frame_jpegs(str(video), "pass", spans[::10])
    assert len(many) == len(spans)
    for a, b in zip(many[::10], few, strict=True):
        pa = np.asarray(Image.open(io.BytesIO(a)), dtype=np.int16)
        pb = np.asarray(Image.open(io.BytesIO(b)), dtype=np.int16)
        assert np.abs(pa - pb).mean() < 3


# -- interaction: zoom, pan, tooltip, panel, keyboard, no network ---------------------------------


def _open(page: Any, path: Path) -> None:
    page.goto(path.as_uri())
    page.wait_for_function("window.a100m && window.a100m.current() === 0")


def _canvas_pixels(page: Any) -> bytes:
    """The timeline canvas as PNG bytes, with the pointer off it (no hover highlight)."""
    page.mouse.move(2, 2)
    settle(page)
    return page.locator("#canvas").screenshot()


def _children(nodes: list[dict]) -> dict[int, list[int]]:
    row = {n["node_id"]: i for i, n in enumerate(nodes)}
    kids: dict[int, list[int]] = {i: [] for i in range(len(nodes))}
    for i, n in enumerate(nodes):
        if n["parent_id"]:
            kids[row[n["parent_id"]]].append(i)
    return kids


def _label(node: dict) -> str:
    """What the page prints for a node: its brief action, else its caption."""
    annotation = node["annotation"] or {}
    return annotation.get("brief_action") or annotation.get("brief_caption") or node["caption"]


@pytest.fixture
def minute_page(tmp_path: Path) -> tuple[Path, dict, dict[str, bytes]]:
    """A 60 s synthetic tree (119 nodes, 7 levels) with a distinct thumbnail on every other node,
    embedded in one self-contained page."""
    document = synthetic_document("minute", 60.0, leaf=1.5, seed=1)
    thumbs = {n["node_id"]: tiny_jpeg(i) for i, n in enumerate(document["nodes"]) if i % 2 == 0}
    out = tmp_path / "minute.html"
    out.write_text(render_html(document, thumbs))
    return out, document, thumbs


def _zoom_in(page: Any, x: float, y: float) -> None:
    before = visible_range(page)
    bar = page.evaluate("window.a100m.barCenter(1)")
    page.mouse.move(x, y)
    page.mouse.wheel(0, -300)  # the page zooms by exp(deltaY * 0.0015): about 0.64 of the span
    page.wait_for_function(  # the wheel event is handled asynchronously
        "x => { const p = window.a100m.barCenter(1); return p === null || p.x !== x; }",
        arg=bar["x"],
    )
    assert visible_range(page) != before


def test_wheel_zooms_toward_the_pointer_and_0_resets(minute_page: tuple) -> None:
    path, _document, _thumbs = minute_page
    with chromium_page() as page:
        _open(page, path)
        assert visible_range(page) == pytest.approx((0.0, 60.0), abs=1e-6)
        full = _canvas_pixels(page)
        box = page.locator("#canvas").bounding_box()
        x, y = box["x"] + box["width"] * 0.4, box["y"] + box["height"] / 2
        under = 60.0 * 0.4  # the time under the pointer, which the zoom keeps in place
        _zoom_in(page, x, y)
        t0, t1 = visible_range(page)
        assert t0 > 0.0 and t1 < 60.0, (t0, t1)
        assert t1 - t0 == pytest.approx(60.0 * 2.718281828 ** (-0.45), rel=1e-3)
        assert t0 + (t1 - t0) * 0.4 == pytest.approx(under, abs=1e-3)
        zoomed = _canvas_pixels(page)
        assert zoomed != full  # the bars were drawn again, wider
        page.keyboard.press("+")  # and the keys: + narrows by 0.7 about the centre
        a0, a1 = visible_range(page)
        assert a1 - a0 == pytest.approx((t1 - t0) * 0.7, rel=1e-3)
        assert (a0 + a1) / 2 == pytest.approx((t0 + t1) / 2, abs=1e-3)
        page.keyboard.press("0")
        assert visible_range(page) == pytest.approx((0.0, 60.0), abs=1e-6)
        assert _canvas_pixels(page) == full
        assert page.evaluate("window.a100m.current()") == 0  # a reset, not a new focus
        assert not page.errors


def test_drag_pans_without_changing_the_span(minute_page: tuple) -> None:
    path, _document, _thumbs = minute_page
    with chromium_page() as page:
        _open(page, path)
        box = page.locator("#canvas").bounding_box()
        cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
        _zoom_in(page, cx, cy)
        t0, t1 = visible_range(page)
        span = t1 - t0
        drag(page, (cx, cy), (cx - 150, cy))  # dragging left brings later times into view
        u0, u1 = visible_range(page)
        assert u1 - u0 == pytest.approx(span, rel=1e-6)
        assert u0 == pytest.approx(t0 + 150 / box["width"] * span, abs=1e-3)
        assert page.evaluate("window.a100m.current()") == 0  # the drag's click focused nothing
        drag(page, (cx, cy), (box["x"] + box["width"] - 1, cy))  # far right: stops at 0 s
        v0, v1 = visible_range(page)
        assert v0 == pytest.approx(0.0, abs=1e-6) and v1 - v0 == pytest.approx(span, rel=1e-6)
        assert page.evaluate("window.a100m.current()") == 0
        assert not page.errors


def test_hover_tooltip_shows_level_times_caption_and_thumbnail(minute_page: tuple) -> None:
    from playwright.sync_api import expect

    path, document, thumbs = minute_page
    nodes = document["nodes"]
    own = next(i for i, n in enumerate(nodes) if n["level"] == 3 and n["node_id"] in thumbs)
    bare = next(i for i, n in enumerate(nodes) if n["level"] == 5 and n["node_id"] not in thumbs)
    with chromium_page() as page:
        _open(page, path)
        tooltip = page.locator("#tooltip")
        assert tooltip.is_hidden()
        for i in (own, bare):
            node = nodes[i]
            point = page.evaluate(f"window.a100m.barCenter({i})")
            page.mouse.move(point["x"], point["y"])
            start, end = page_time(node["start"]), page_time(node["end"])
            expect(tooltip).to_be_visible()
            expect(tooltip.locator(".tt-time")).to_have_text(f"L{node['level']} · {start} – {end}")
            expect(tooltip.locator(".tt-text")).to_have_text(_label(node))
            image = tooltip.locator("img")
            if node["node_id"] in thumbs:
                jpeg = base64.b64encode(thumbs[node["node_id"]]).decode()
                expect(image).to_have_attribute("src", f"data:image/jpeg;base64,{jpeg}")
                expect(image).to_be_visible()
            else:
                assert image.get_attribute("src") is None  # set with the text above
                expect(image).to_be_hidden()
        page.mouse.move(point["x"], 4)  # above the canvas: the tooltip goes
        expect(tooltip).to_be_hidden()
        assert page.evaluate("window.a100m.current()") == 0  # hovering focuses nothing
        assert not page.errors


def test_panel_shows_times_and_facts_of_the_clicked_node(minute_page: tuple) -> None:
    path, document, thumbs = minute_page
    nodes = document["nodes"]
    kids = _children(nodes)
    row = {n["node_id"]: i for i, n in enumerate(nodes)}
    own = next(i for i, n in enumerate(nodes) if n["level"] == 2 and n["node_id"] in thumbs)
    inherited = next(
        i
        for i, n in enumerate(nodes)
        if n["level"] == 4 and n["node_id"] not in thumbs and n["parent_id"] in thumbs
    )
    with chromium_page() as page:
        _open(page, path)
        for i in (own, inherited):
            page.keyboard.press("Home")
            click_node(page, i)
            node = nodes[i]
            assert page.get_attribute("#panel", "data-node-id") == node["node_id"]
            shown = facts(page)
            assert shown == {
                "Time": f"{page_time(node['start'])} – {page_time(node['end'])}",
                "Duration": f"{fixed(node['end'] - node['start'], 2)} s",
                "Level": str(node["level"]),
                "Children": str(len(kids[i])),
                "Caption kind": node["caption_kind"],
                "Node": node["node_id"],
            }
            children = page.locator("#children button")
            assert children.count() == len(kids[i])
            for k, c in enumerate(kids[i]):
                times = f"{page_time(nodes[c]['start'])}–{page_time(nodes[c]['end'])}"
                assert children.nth(k).text_content() == f"{times} {_label(nodes[c])[:60]}"
            source = node["node_id"] if i == own else node["parent_id"]
            jpeg = base64.b64encode(thumbs[source]).decode()
            assert page.get_attribute("#thumb img", "src") == f"data:image/jpeg;base64,{jpeg}"
            caption = page.text_content("#thumb figcaption")
            if i == own:
                assert caption == f"middle frame ({page_time((node['start'] + node['end']) / 2)})"
            else:
                assert caption == "middle frame of the enclosing span"
                assert row[node["parent_id"]] < i
        assert not page.errors


def test_keyboard_moves_between_parent_child_and_siblings(minute_page: tuple) -> None:
    """↓ the first child, ↑ the parent, → ← the next and previous node of the level (the
    existing tiny-page test checks one ↓ from the root only)."""
    path, document, _thumbs = minute_page
    nodes = document["nodes"]
    kids = _children(nodes)
    with chromium_page() as page:
        _open(page, path)

        def shown() -> str | None:
            return page.get_attribute("#panel", "data-node-id")

        def crumbs() -> list[str]:
            return page.eval_on_selector_all(
                "#breadcrumb button", "bs => bs.map(b => b.dataset.nodeId)"
            )

        page.keyboard.press("ArrowUp")  # the root has no parent: nothing moves
        assert shown() == nodes[0]["node_id"]
        first, second = kids[0]
        page.keyboard.press("ArrowDown")
        assert shown() == nodes[first]["node_id"]
        assert crumbs() == [nodes[0]["node_id"], nodes[first]["node_id"]]
        page.keyboard.press("ArrowRight")
        assert shown() == nodes[second]["node_id"]
        assert crumbs() == [nodes[0]["node_id"], nodes[second]["node_id"]]
        page.keyboard.press("ArrowRight")  # the last of its level: nothing moves
        assert shown() == nodes[second]["node_id"]
        page.keyboard.press("ArrowDown")
        grandchild = kids[second][0]
        assert shown() == nodes[grandchild]["node_id"]
        page.keyboard.press("ArrowRight")
        assert shown() == nodes[kids[second][1]]["node_id"]
        page.keyboard.press("ArrowLeft")
        assert shown() == nodes[grandchild]["node_id"]
        page.keyboard.press("ArrowUp")
        assert shown() == nodes[second]["node_id"]
        page.keyboard.press("ArrowLeft")
        assert shown() == nodes[first]["node_id"]
        assert visible_range(page) == pytest.approx(
            (nodes[first]["start"], nodes[first]["end"]), abs=1e-6
        )
        page.keyboard.press("ArrowUp")
        assert shown() == nodes[0]["node_id"] and crumbs() == [nodes[0]["node_id"]]
        assert not page.errors


def test_page_from_a_file_makes_no_network_request(minute_page: tuple) -> None:
    path, document, _thumbs = minute_page
    with chromium_page() as page:
        requests: list[str] = []
        page.on("request", lambda request: requests.append(request.url))
        _open(page, path)
        deep = max(range(len(document["nodes"])), key=lambda i: document["nodes"][i]["level"])
        point = page.evaluate(f"window.a100m.barCenter({deep})")
        page.mouse.move(point["x"], point["y"])  # a tooltip with a thumbnail
        click_node(page, 2)
        page.mouse.wheel(0, -200)
        settle(page)
        assert requests and requests[0] == path.as_uri()
        elsewhere = [u for u in requests if u.split("#")[0] != path.as_uri()]
        assert all(u.startswith("data:") for u in elsewhere), elsewhere
        assert not page.errors


@pytest.mark.parametrize(
    ("end", "shown"), [(59.96, "0:00.0 – 1:00.0"), (7199.96, "0:00:00.0 – 2:00:00.0")]
)
def test_times_that_round_up_carry_into_the_next_minute(
    tmp_path: Path, end: float, shown: str
) -> None:
    """59.96 s is 1:00.0, not 0:60.0; 7199.96 s is 2:00:00.0, not 1:59:60.0."""
    document = synthetic_document("carry", end, leaf=end / 3, seed=2)
    out = tmp_path / "carry.html"
    out.write_text(render_html(document, {}))
    with chromium_page() as page:
        _open(page, out)
        assert facts(page)["Time"] == shown
        assert page_time(end, long=end >= 3600) == shown.split(" – ")[1]


def test_a_missing_annotation_says_why_in_the_recorded_words(tmp_path: Path) -> None:
    """One voice: the reason the status record gives (no LLM configured), or the threshold."""
    document = synthetic_document("why", 60.0, leaf=3.0)
    reason = "no LLM configured for aggregation: set OPENAI_API_KEY"
    document["pipeline"].update(skipped={"aggregate": reason},
                                config={"aggregate": {"min_duration": 4.0}})  # fmt: skip
    for node in document["nodes"]:
        node["annotation"] = None
    short = next(i for i, n in enumerate(document["nodes"]) if n["end"] - n["start"] < 4.0)
    path = tmp_path / "why.html"
    path.write_text(render_html(document))
    with chromium_page() as page:
        _open(page, path)
        click_node(page, 0)
        assert page.text_content("#no-annotation") == (
            f"No annotation: published without annotations ({reason})."
        )
        page.evaluate(f"window.a100m.focus({short})")
        click_node(page, short)
        assert page.text_content("#no-annotation") == (
            "No annotation: shorter than 4 s, the annotation threshold."
        )


def test_a_long_leaf_says_leaves_are_not_annotated(tmp_path: Path) -> None:
    document = synthetic_document("leafy", 60.0, leaf=6.0)
    document["pipeline"]["config"] = {"aggregate": {"min_duration": 4.0, "targets": "release"}}
    parents = {n["parent_id"] for n in document["nodes"]}
    leaf = next(
        i
        for i, n in enumerate(document["nodes"])
        if n["node_id"] not in parents and n["end"] - n["start"] >= 4.0
    )
    document["nodes"][leaf]["annotation"] = None
    path = tmp_path / "leafy.html"
    path.write_text(render_html(document))
    with chromium_page() as page:
        _open(page, path)
        page.evaluate(f"window.a100m.focus({leaf})")
        click_node(page, leaf)
        assert page.text_content("#no-annotation").startswith(
            "No annotation: leaves are not annotated, as in the release"
        )


def _node_under(page: Any, nodes: list[dict], x: float, y: float) -> int | None:
    """The node whose drawn bar holds the point, from the drawing alone: the visible range gives
    the time under x; the bars' centres give each level's row."""
    t0, t1 = visible_range(page)
    box = page.locator("#canvas").bounding_box()
    t = t0 + (x - box["x"]) / box["width"] * (t1 - t0)
    centres = {i: page.evaluate(f"window.a100m.barCenter({i})") for i, n in enumerate(nodes)
               if n["start"] <= t < n["end"]}  # fmt: skip
    rows = sorted({round(c["y"], 3) for c in centres.values() if c})
    half = (rows[1] - rows[0]) / 2 if len(rows) > 1 else 10.0
    near = [(abs(c["y"] - y), i) for i, c in centres.items() if c and abs(c["y"] - y) < half]
    return min(near)[1] if near else None


def test_tooltip_follows_keyboard_zoom_and_moves(minute_page: tuple) -> None:
    """With the mouse still, "+" (zoom about the middle) and ↓ (focus a child) move the view: the
    tooltip then describes the bar under the mouse, or goes if there is none, never the old one."""
    from playwright.sync_api import expect

    path, document, _ = minute_page
    nodes = document["nodes"]
    # A narrow bar near the left edge: zooming about the middle slides other bars under it.
    left = min((i for i, n in enumerate(nodes) if n["level"] == 4), key=lambda i: nodes[i]["start"])
    with chromium_page() as page:
        _open(page, path)
        tooltip = page.locator("#tooltip")
        point = page.evaluate(f"window.a100m.barCenter({left})")
        x, y = point["x"], point["y"]
        page.mouse.move(x, y)
        expect(tooltip.locator(".tt-text")).to_have_text(_label(nodes[left]))
        seen = set()
        for key in ("+", "+", "+", "ArrowDown", "ArrowRight"):
            page.keyboard.press(key)
            settle(page)
            under = _node_under(page, nodes, x, y)
            seen.add(under)
            if under is None:
                expect(tooltip).to_be_hidden()
            else:
                node = nodes[under]
                start, end = page_time(node["start"]), page_time(node["end"])
                expect(tooltip).to_be_visible()
                expect(tooltip.locator(".tt-time")).to_have_text(
                    f"L{node['level']} · {start} – {end}"
                )
        assert seen - {left}, "the view never moved another bar under the mouse"
        screenshot(page, "viewer-tooltip-after-keys.png")
        assert not page.errors
