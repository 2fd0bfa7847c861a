"""Hostile files and strings: release files whose nodes are not a tree, page text that would end
the viewer's script, credentials inside endpoint URLs, an unreadable status record."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest

from action100m.cli import main
from action100m.errors import PermanentError, ServiceError, redact
from action100m.interop import read_records, release_tree
from action100m.status import is_complete
from action100m.store import ArtifactStore
from action100m.viewer import render_html

REFERENCE = Path(__file__).resolve().parent.parent / "data" / "hySSAAw4t24.json"


def _broken_trees() -> dict[str, list[dict]]:
    rows = read_records(str(REFERENCE))[0]["nodes"]
    own_parent = copy.deepcopy(rows)
    own_parent[5]["parent_id"] = own_parent[5]["node_id"]
    twice = [*copy.deepcopy(rows), dict(rows[3])]
    loop = copy.deepcopy(rows)  # two nodes each other's parent, away from the root
    loop[7]["parent_id"], loop[8]["parent_id"] = loop[8]["node_id"], loop[7]["node_id"]
    gap = copy.deepcopy(rows)
    child = next(r for r in gap if r["parent_id"] == gap[0]["node_id"])
    child["end"] = float(child["end"]) - 1.0
    two_roots = copy.deepcopy(rows)
    two_roots[4]["parent_id"] = None
    return {"own parent": own_parent, "listed twice": twice, "loop": loop, "gap": gap,
            "two roots": two_roots}  # fmt: skip


@pytest.mark.timeout(30)
@pytest.mark.parametrize("case", sorted(_broken_trees()))
def test_a_release_that_is_not_a_tree_is_refused_at_once(case: str) -> None:
    with pytest.raises(PermanentError) as caught:
        release_tree("v", {}, _broken_trees()[case])
    assert "\n" not in str(caught.value) and str(caught.value).startswith("video v: ")


HOSTILE = ["<!-- a comment", "</script><script>alert(1)</script>", "line\u2028break", "&amp; <b>"]


def test_page_data_stays_valid_json_whatever_the_text() -> None:
    nodes = [{"node_id": "n0", "parent_id": None, "level": 0, "start": 0.0, "end": 9.0,
              "caption": " ".join(HOSTILE), "caption_kind": "segment",
              "annotation": {f: HOSTILE[i % 4] for i, f in enumerate(
                  ("brief_action", "detailed_action", "actor", "brief_caption",
                   "detailed_caption"))}}]  # fmt: skip
    document = {"video_uid": "v", "metadata": {"title": HOSTILE[0], "duration": 9.0},
                "pipeline": {}, "nodes": nodes}  # fmt: skip
    page = render_html(document)
    assert "</script><script>alert" not in page
    scripts = re.findall(r"<script[^>]*>(.*?)</script>", page, flags=re.S)
    data = [s for s in scripts if "n0" in s]
    assert data, "the page embeds its data in a script"
    payload = data[0].strip()
    start = payload.index("{")
    decoded = json.JSONDecoder().raw_decode(payload[start:])[0]
    assert HOSTILE[1] in json.dumps(decoded, ensure_ascii=False)  # the text itself, intact


def test_page_with_hostile_text_renders_in_chromium(tmp_path: Path) -> None:
    from viewer_helpers import chromium_page, synthetic_document

    document = synthetic_document("hostile", 30.0, leaf=4.0)
    document["metadata"]["title"] = HOSTILE[0]
    for node, text in zip(document["nodes"], HOSTILE * 20, strict=False):
        node["caption"] = text
    page_file = tmp_path / "page.html"
    page_file.write_text(render_html(document))
    with chromium_page() as page:
        page.goto(page_file.as_uri())
        page.wait_for_function("window.a100m !== undefined")
        assert page.errors == []
        assert page.evaluate("window.a100m.barCenter(0)") is not None


def test_credentials_in_urls_are_redacted_everywhere(
    short_video: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert redact("http://bob:s3cret@h/v1?api_key=k1&x=1") == "http://***@h/v1?api_key=***&x=1"
    assert "s3cret" not in str(ServiceError("server http://bob:s3cret@h is down"))
    url = "http://bob:s3cret@127.0.0.1:9/v1"  # nothing listens on port 9
    base = ["--store", str(tmp_path / "store"), "--profile", "tiny",
            "--set", "caption.backend=vllm-server", "--set", f"caption.base_url={url}",
            "--set", "caption.max_retries=0"]  # fmt: skip
    assert main([*base, "caption", str(short_video)]) == 2
    out, err = capsys.readouterr()
    assert "127.0.0.1:9" in err and "s3cret" not in err + out


def test_an_unreadable_status_record_does_not_stop_a_backfill(tmp_path: Path) -> None:
    store = ArtifactStore(str(tmp_path / "store"))
    store.write_bytes(store.status_uri("broken"), b"{not json")
    assert is_complete(store, "broken") is False  # published again, not a traceback


@pytest.mark.parametrize("rotation", [90, -90, 180])
def test_a_phone_video_with_a_display_rotation_is_read_upright(
    tmp_path: Path, rotation: int
) -> None:
    """Stored sideways with a display matrix (a phone held upright): embedding, captions and
    thumbnails all see it as shown."""
    import numpy as np

    from action100m.frames import read_frames_at
    from action100m.samples import make_video, scene_frame
    from action100m.video import DECODERS, probe, quarter_turns

    path = tmp_path / "phone.mp4"
    make_video(path, [0.05, 0.05, 1.0], width=64, height=96, rotation=rotation)
    info = probe(str(path), "phone")
    assert (info.width, info.height) == (64, 96)
    assert quarter_turns(info.rotation) == quarter_turns(rotation)
    upright = scene_frame(2, 0.5, 64, 96).astype(np.float32)  # frame 12 of 24 fps: 0.5 s

    def orientation(frame: np.ndarray) -> int:
        """Which quarter turn of the upright picture ``frame`` is closest to (0: upright)."""
        errors = {k: np.abs(frame.astype(np.float32) - np.rot90(upright, k)).mean()
                  for k in range(4) if np.rot90(upright, k).shape == frame.shape}  # fmt: skip
        return min(errors, key=errors.__getitem__)

    assert orientation(read_frames_at(str(path), "phone", [0.5], (64, 96))[0]) == 0
    for name, decode in DECODERS.items():
        frames = dict(decode(str(path), 1, (64, 96)))
        shown = frames[min(frames, key=lambda t: abs(t - 0.5))]
        assert shown.shape == (96, 64, 3) and orientation(shown) == 0, name
