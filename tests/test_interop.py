"""The official Action100M format: import the reference sample, re-aggregate it, export, read back."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from llm_server import LLMServer

from action100m.config import load_settings
from action100m.errors import PermanentError
from action100m.interop import export, import_file, read_records
from action100m.pipeline import run_aggregate, run_publish
from action100m.store import ArtifactStore

REFERENCE = Path(__file__).resolve().parent / "data" / "hySSAAw4t24.json"  # the official sample
VIDEO = "hySSAAw4t24"
pytestmark = pytest.mark.skipif(not REFERENCE.exists(), reason="reference sample not present")


@pytest.fixture(scope="module")
def original() -> dict:
    return read_records(str(REFERENCE))[0]


def _by_id(record: dict) -> dict[str, dict]:
    return {node["node_id"]: node for node in record["nodes"]}


def test_import_keeps_the_tree_and_captions(store, tiny_settings, original) -> None:
    assert import_file(tiny_settings, store, str(REFERENCE)) == [VIDEO]
    document = store.read_json(store.document_uri(VIDEO))
    assert len(document["nodes"]) == len(original["nodes"]) == 917
    source = _by_id(original)
    seen: set[str] = set()
    for node in document["nodes"]:  # depth-first pre-order: a parent comes before its children
        assert node["parent_id"] is None or node["parent_id"] in seen
        seen.add(node["node_id"])
        row = source[node["node_id"]]
        assert (node["start"], node["end"], node["level"]) == (
            row["start"],
            row["end"],
            row["level"],
        )
    kinds = {n["caption_kind"] for n in document["nodes"]}
    assert kinds == {"frame", "segment"}
    annotated = sum(1 for row in original["nodes"] if row["gpt"])
    assert sum(1 for n in document["nodes"] if n["annotation"]) == annotated
    assert document["metadata"]["title"] == original["metadata"]["title"]


@pytest.mark.parametrize("suffix", ["jsonl", "parquet"])
def test_official_format_round_trips(store, tiny_settings, original, tmp_path, suffix) -> None:
    import_file(tiny_settings, store, str(REFERENCE))
    out = export(tiny_settings, store, "action100m", str(tmp_path / f"out.{suffix}"))
    [record] = read_records(out)
    assert record["video_uid"] == VIDEO
    assert record["metadata"]["transcript"] == original["metadata"]["transcript"]
    exported, source = _by_id(record), _by_id(original)
    assert exported.keys() == source.keys()
    for node_id, row in source.items():
        mine = exported[node_id]
        for name in ("parent_id", "level", "start", "end", "plm_caption", "llama3_caption", "gpt"):
            assert mine[name] == row[name], (node_id, name)
    # the export imports again into another store, unchanged
    again = ArtifactStore(str(tmp_path / "again"))
    import_file(tiny_settings, again, out)
    second = export(tiny_settings, again, "action100m", str(tmp_path / f"again.{suffix}"))
    assert read_records(second)[0]["nodes"] == record["nodes"]


def test_reaggregate_then_export_flat(store, original, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    with LLMServer() as llm:
        settings = load_settings(
            profile="tiny",
            store=store.root,
            environ={},
            overrides={
                "aggregate": {
                    "base_url": llm.base_url,
                    "model": "open-model",
                    "rounds": 1,
                    "tokens_per_minute": 10**9,
                    "concurrency": 4,
                }
            },
        )
        import_file(settings, store, str(REFERENCE), annotations=False)
        run_aggregate(settings, store, VIDEO)
        run_publish(settings, store, VIDEO)
        # the release's choice of nodes: those it gave a `gpt`, exactly (not every node >= 4 s)
        long_nodes = [r for r in original["nodes"] if r["gpt"]]
        assert (
            len(llm.requests)
            == len(long_nodes)
            < sum(1 for r in original["nodes"] if r["end"] - r["start"] >= 4.0)
        )
    for suffix in ("jsonl", "parquet"):
        out = export(settings, store, "flat", str(tmp_path / f"flat.{suffix}"), [VIDEO])
        if suffix == "parquet":
            rows = pq.read_table(out.removeprefix("file://")).to_pylist()
        else:
            lines = Path(out.removeprefix("file://")).read_text().splitlines()
            rows = [json.loads(line) for line in lines]
        assert len(rows) == 917
        annotated = [r for r in rows if r["brief_action"]]
        assert {r["node_id"] for r in annotated} == {r["node_id"] for r in long_nodes}
        assert all(r["brief_action"].endswith("v1") for r in annotated)
        assert {
            "video_uid",
            "node_id",
            "start",
            "end",
            "caption",
            "actor",
            "detailed_caption",
        } <= rows[0].keys()
    document = store.read_json(store.document_uri(VIDEO))
    assert document["pipeline"]["models"]["llm"] == "open-model"


def test_export_of_a_missing_video_says_so(store, tiny_settings, tmp_path) -> None:
    with pytest.raises(PermanentError, match="nope"):
        export(tiny_settings, store, "flat", str(tmp_path / "x.jsonl"), ["nope"])
