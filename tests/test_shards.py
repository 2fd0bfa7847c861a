"""Sharded, incremental, streamed export: bounded files, an index, only what changed."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from action100m import shards
from action100m.cli import main
from action100m.interop import import_file
from action100m.release import SCHEMA, read_records
from action100m.shards import GROUP_VIDEOS, export_shards, read_index
from action100m.store import ArtifactStore

REFERENCE = Path(__file__).resolve().parent / "data" / "hySSAAw4t24.json"


@pytest.fixture
def five_videos(store, tiny_settings, tmp_path) -> list[str]:
    """The release's sample under five IDs, imported."""
    [record] = read_records(str(REFERENCE))
    ids = [f"v{i}" for i in range(5)]
    path = tmp_path / "five.jsonl"
    path.write_text("".join(json.dumps({**record, "video_uid": v}) + "\n" for v in ids))
    import_file(tiny_settings, store, str(path))
    return ids


def _folder(uri: str) -> Path:
    return Path(uri.removeprefix("file://"))


def test_shards_are_bounded_indexed_and_read_as_one_dataset(
    store, five_videos, tmp_path, monkeypatch
) -> None:
    monkeypatch.setattr(shards, "GROUP_NODES", 900)  # a row group per video (917 nodes)
    out = str(tmp_path / "export") + "/"
    summary = export_shards(store, out, max_bytes=1)  # every row group closes its file
    assert summary["added"] == 5 and summary["shards"] == 5
    folder = _folder(summary["out"])
    files = sorted(str(p) for p in folder.glob("part-*.parquet"))
    assert len(files) == 5 and all(pq.read_schema(f) == SCHEMA for f in files)
    table = pads.dataset(files, format="parquet").to_table()
    assert sorted(table.column("video_uid").to_pylist()) == five_videos
    index = read_index(ArtifactStore(summary["out"]))
    assert {v: e["shard"] for v, e in index["videos"].items()} == {
        v: name for name, shard in index["shards"].items() for v in shard["videos"]
    }
    import datasets

    loaded = datasets.load_dataset(
        "parquet", data_files=files, split="train", cache_dir=str(tmp_path / "hf")
    )
    assert loaded.num_rows == 5


def test_a_second_export_adds_only_what_changed(
    store, tiny_settings, five_videos, tmp_path
) -> None:
    out = str(tmp_path / "export") + "/"
    first = export_shards(store, out)
    assert (first["added"], first["shards"]) == (5, 1)
    assert pq.ParquetFile(_folder(first["out"]) / "part-00000.parquet").num_row_groups == 1
    again = export_shards(store, out)  # nothing changed
    assert (again["added"], again["unchanged"], again["shards"]) == (0, 5, 1)
    # publish again with the same content: a new file version, the same digest: skipped
    from action100m.pipeline import run_publish

    run_publish(tiny_settings, store, "v1")
    assert export_shards(store, out)["added"] == 0
    # a changed video: in a new shard, and gone from the old one
    document = store.read_json(store.document_uri("v2"))
    document["metadata"]["title"] = "Changed"
    store.write_json(store.document_uri("v2"), document)
    third = export_shards(store, out)
    assert (third["added"], third["replaced"], third["shards"]) == (1, 1, 2)
    files = sorted(_folder(third["out"]).glob("part-*.parquet"))
    rows = pa.concat_tables([pq.read_table(f) for f in files]).to_pylist()
    assert sorted(r["video_uid"] for r in rows) == five_videos  # each exactly once
    assert next(r for r in rows if r["video_uid"] == "v2")["metadata"]["title"] == "Changed"


def test_the_cli_exports_a_folder(store, five_videos, tmp_path, capsys) -> None:
    out = str(tmp_path / "cli") + "/"
    assert main(["--store", store.root, "export", "--out", out]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["videos"] == 5 and GROUP_VIDEOS >= 5
    assert main(["--store", store.root, "export", "--format", "flat", "--out", out]) != 0
