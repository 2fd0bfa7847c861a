"""The command line end to end: ``action100m.cli.main`` on a real video with the tiny models, the
scripted LLM server over real HTTP, a local store, and the exports read back."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from llm_server import LLMServer

from action100m.cli import main
from action100m.interop import read_records
from action100m.llm.prompts import span
from action100m.store import ArtifactStore
from action100m.tree import reaches

REFERENCE = Path(__file__).resolve().parent / "data" / "hySSAAw4t24.json"  # the official sample
LLM_VARIABLES = (
    "OPENAI_API_KEY",
    "OPENAI_BASE_URL",
    "AIRFLOW_CONN_OPENAI_DEFAULT",
    "ACTION100M_AGGREGATE__BASE_URL",
)


def stage_files(store: ArtifactStore, video_id: str) -> dict[str, tuple[int, int]]:
    """Every file the stages wrote (embed, segment, caption, aggregate and their caches), each with
    its size and modification time: what a rerun that recomputes anything would change."""
    root = Path(store.root.removeprefix("file://")) / "videos" / video_id
    return {
        str(path.relative_to(root)): (path.stat().st_size, path.stat().st_mtime_ns)
        for path in root.rglob("*")
        if path.is_file() and path.parent != root  # not the document, status or viewer
    }


def test_run_show_rerun_and_export(
    scene_video: tuple[Path, list[float]],
    store: ArtifactStore,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    video = str(scene_video[0])
    base = ["--store", store.root, "--profile", "tiny"]
    for name in LLM_VARIABLES:
        monkeypatch.delenv(name, raising=False)

    # No LLM: `run` does every other stage, says aggregation was skipped and why, and exits 0 ...
    with caplog.at_level(logging.WARNING, logger="action100m"):
        assert main([*base, "run", video]) == 0
    assert "video scenes: aggregate skipped: no LLM configured" in caplog.text
    summary = json.loads(capsys.readouterr().out)
    assert summary["video_id"] == "scenes" and summary["aggregated"] is False
    document = store.read_json(store.document_uri("scenes"))
    assert "no LLM configured" in document["pipeline"]["skipped"]["aggregate"]
    # ... but `aggregate` asked for by name fails with one line naming the video and the cause.
    before = stage_files(store, "scenes")
    assert main([*base, "aggregate", "scenes"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("action100m: error: video scenes: no LLM configured for aggregation")
    assert err.count("\n") == 1 and "OPENAI_API_KEY" in err
    assert stage_files(store, "scenes") == before  # nothing half-written

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    with LLMServer() as llm:
        base += ["--set", f"aggregate.base_url={llm.base_url}", "--set", "aggregate.model=m"]
        # With an LLM, `run` again does only aggregation (and publishing): the rest is reused.
        assert main([*base, "run", video]) == 0
        assert json.loads(capsys.readouterr().out)["aggregated"] is True
        after = stage_files(store, "scenes")
        assert {k: v for k, v in after.items() if k in before} == before
        assert any(name.startswith("aggregate/") for name in after.keys() - before.keys())
        document = store.read_json(store.document_uri("scenes"))
        parents = {n["parent_id"] for n in document["nodes"]}
        long_nodes = [  # as the release: nodes of 4 s or more that have parts
            n
            for n in document["nodes"]
            if reaches(n["end"] - n["start"], 4.0) and n["node_id"] in parents
        ]
        assert len(long_nodes) >= 2  # the root and a scene's span at least
        assert len(llm.requests) == 3 * len(long_nodes)  # a draft and two refine rounds each
        asked = len(llm.requests)

        # `show`: the outline, one line per node, annotations where there are some.
        assert main([*base, "show", "scenes"]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert lines[0] == f"scenes  (12.0 s, {len(document['nodes'])} nodes)"
        assert len(lines) == 1 + len(document["nodes"])
        root = long_nodes[0]
        assert root["level"] == 0 and root["start"] == 0.0
        where = span(root["start"], root["end"])
        assert lines[1].startswith(f"[   0.00 -   12.00] brief_action of {where} v3 | ")

        # `show --json`: the per-video document, captions on every node, annotations as above.
        assert main([*base, "show", "scenes", "--json"]) == 0
        shown = json.loads(capsys.readouterr().out)
        assert shown == document and shown["video_uid"] == "scenes"
        assert "skipped" not in shown["pipeline"] and shown["pipeline"]["models"]["llm"] == "m"
        assert all(n["caption"] and n["caption_kind"] for n in shown["nodes"])
        for node in shown["nodes"]:
            annotation = node["annotation"]
            if node in long_nodes:
                where = span(node["start"], node["end"])
                assert annotation["actor"] == f"actor of {where} v3"
            else:
                assert annotation is None

        # Stage commands rerun: exit 0, nothing recomputed, no request to the LLM.
        for command in ("caption", "aggregate", "publish"):
            assert main([*base, command, "scenes"]) == 0, command
            printed = capsys.readouterr().out.strip()
            if command == "publish":
                assert printed == store.document_uri("scenes")
            else:
                assert printed.startswith(f"{store.root}/videos/scenes/{command}/"), printed
            assert stage_files(store, "scenes") == after, command
        assert len(llm.requests) == asked
        assert store.read_json(store.document_uri("scenes")) == document

    # Exports, read back: the official format as JSONL, the flat one as Parquet.
    records = tmp_path / "x.jsonl"
    assert main([*base, "export", "--format", "action100m", "--out", str(records)]) == 0
    capsys.readouterr()
    [record] = read_records(str(records))
    assert record["video_uid"] == "scenes" and len(record["nodes"]) == len(document["nodes"])
    gpt = {n["node_id"]: n["gpt"] for n in record["nodes"]}
    assert sum(1 for value in gpt.values() if value) == len(long_nodes)
    flat = tmp_path / "x.parquet"
    assert main([*base, "export", "--format", "flat", "--out", str(flat), "scenes"]) == 0
    rows = pq.read_table(flat).to_pylist()
    assert [r["node_id"] for r in rows] == [n["node_id"] for n in document["nodes"]]
    assert sum(1 for r in rows if r["brief_action"]) == len(long_nodes)
    assert all(r["video_uid"] == "scenes" and r["caption"] for r in rows)


@pytest.mark.skipif(not REFERENCE.exists(), reason="reference sample not present")
def test_import_then_show(
    store: ArtifactStore, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(Path(__file__).resolve().parent.parent)  # the path as a user types it
    assert os.path.exists("tests/data/hySSAAw4t24.json")
    base = ["--store", store.root, "--profile", "tiny"]
    assert main([*base, "import", "tests/data/hySSAAw4t24.json"]) == 0
    assert capsys.readouterr().out.split() == ["hySSAAw4t24"]
    assert main([*base, "show", "hySSAAw4t24", "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["video_uid"] == "hySSAAw4t24" and len(document["nodes"]) == 917
    assert any(n["annotation"] for n in document["nodes"])
    assert main([*base, "show", "hySSAAw4t24"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 1 + 917
