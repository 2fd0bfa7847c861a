"""The tree-of-captions viewer: self-contained pages for a real short video and for the official
sample, driven in headless Chromium (click a bar, read the side panel, breadcrumb back up)."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import pytest
from viewer_helpers import (
    FIELDS,
    chromium_page,
    click_node,
    panel_fields,
    screenshot,
    synthetic_document,
)

from action100m.cli import main as cli_main
from action100m.samples import make_video
from action100m.store import ArtifactStore
from action100m.viewer import publish_viewer, read_thumbnail, render_html, viewer_uri
from action100m.viewer.thumbnails import pack_uris

REFERENCE = Path(__file__).resolve().parent / "data" / "hySSAAw4t24.json"  # the official sample


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
    assert uri == viewer_uri(store, "clip") and store.exists(uri)
    index = store.read_json(pack_uris(store, "clip")[1])
    assert set(index["nodes"]) == {n["node_id"] for n in document["nodes"]}
    jpeg = read_thumbnail(store, "clip", document["nodes"][0]["node_id"])
    assert jpeg is not None and jpeg[:2] == b"\xff\xd8"
    page = store.read_bytes(uri).decode()
    assert '"mode":"embedded"' in page and "<script" in page
    # A second publish reuses the pack instead of decoding the video again.
    before = store.fs.modified(store.fs._strip_protocol(pack_uris(store, "clip")[0]))
    publish_viewer(None, store, "clip")
    assert store.fs.modified(store.fs._strip_protocol(pack_uris(store, "clip")[0])) == before


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
