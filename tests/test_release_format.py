"""The release's exact format: our export concatenates with the official file, bad files are one
line, import keeps what a release node has and does not silently replace a video."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from action100m.errors import PermanentError
from action100m.interop import export, import_file
from action100m.release import SCHEMA, read_records

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference"
PARQUET = REFERENCE / "hySSAAw4t24.parquet"
JSON = Path(__file__).resolve().parent / "data" / "hySSAAw4t24.json"
VIDEO = "hySSAAw4t24"


@pytest.fixture
def release_parquet(tmp_path: Path) -> Path:
    """The release's Parquet sample; built from the JSON sample in the release's schema where the
    shared folder is not beside this checkout (a clean clone)."""
    if PARQUET.exists():
        return PARQUET
    out = tmp_path / "release.parquet"
    pq.write_table(pa.Table.from_pylist(read_records(str(JSON)), schema=SCHEMA), out)
    return out


def test_export_of_an_imported_release_video_is_the_release_file(
    store, tiny_settings, tmp_path, release_parquet
) -> None:
    import_file(tiny_settings, store, str(release_parquet))
    out = export(tiny_settings, store, "action100m", str(tmp_path / "ours.parquet"))
    ours = pq.read_table(out.removeprefix("file://"))
    release = pq.read_table(release_parquet)
    assert ours.schema == release.schema == SCHEMA
    assert ours.equals(release)  # values and node order (level, start) included
    both = pa.concat_tables([release, ours])
    assert both.num_rows == 2
    files = [str(release_parquet), out.removeprefix("file://")]
    assert pads.dataset(files, format="parquet").to_table().num_rows == 2
    # the pipeline's own extras are beside it, not in `metadata`
    extras = read_records(out + ".pipeline.jsonl")
    assert extras[0]["video_uid"] == VIDEO and extras[0]["source"].endswith(VIDEO)


def test_datasets_loads_the_release_and_our_export_together(
    store, tiny_settings, tmp_path, release_parquet
) -> None:
    import datasets

    import_file(tiny_settings, store, str(JSON))
    out = export(tiny_settings, store, "action100m", str(tmp_path / "ours.parquet"))
    files = [str(release_parquet), out.removeprefix("file://")]
    loaded = datasets.load_dataset(
        "parquet", data_files=files, split="train", cache_dir=str(tmp_path / "hf")
    )
    assert loaded.num_rows == 2 and loaded[1]["video_uid"] == VIDEO
    assert len(loaded[1]["nodes"]) == 917


def test_json_export_is_the_release_json_and_imports_again(store, tiny_settings, tmp_path) -> None:
    import_file(tiny_settings, store, str(JSON))
    out = export(tiny_settings, store, "action100m", str(tmp_path / "ours.json"))
    written = json.loads(Path(out.removeprefix("file://")).read_text())
    assert written == json.loads(JSON.read_text())  # the release's columnar JSON, value for value
    for name in ("ours.json", "ours.jsonl"):
        again = type(store)(str(tmp_path / f"again-{name}"))
        path = export(tiny_settings, store, "action100m", str(tmp_path / name))
        assert import_file(tiny_settings, again, path) == [VIDEO]


def test_json_lines_under_a_json_name_import(store, tiny_settings, tmp_path) -> None:
    [record] = read_records(str(JSON))
    lines = tmp_path / "two.json"
    second = {**record, "video_uid": "second"}
    lines.write_text(json.dumps(record) + "\n" + json.dumps(second) + "\n")
    assert import_file(tiny_settings, store, str(lines)) == [VIDEO, "second"]


@pytest.mark.parametrize(
    ("name", "content", "problem"),
    [
        ("missing.json", None, "cannot read .*missing.json: FileNotFoundError"),
        ("broken.json", b'{"video_uid": "x", ', "not a readable JSON release file"),
        ("broken.parquet", b"PAR1 not really", "not a readable Parquet release file"),
        ("binary.jsonl", b"\xff\xfe\x00", "not a readable JSON release file"),
        ("numbers.json", b"[1, 2]", "expected one object per video"),
    ],
)
def test_a_bad_file_is_one_line(store, tiny_settings, tmp_path, name, content, problem) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(PermanentError, match=problem) as error:
        import_file(tiny_settings, store, str(path))
    assert "\n" not in str(error.value)


def test_import_keeps_a_partial_gpt_and_empty_captions(store, tiny_settings, tmp_path) -> None:
    [record] = read_records(str(JSON))
    root = record["nodes"][0]
    root["gpt"]["action"]["actor"] = None
    leaf = next(n for n in record["nodes"] if n["llama3_caption"])
    leaf["llama3_caption"], leaf["plm_action"] = "", ""
    inner = next(n for n in record["nodes"][1:] if n["gpt"])
    inner["plm_caption"] = ""
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(record))
    import_file(tiny_settings, store, str(path))
    out = export(tiny_settings, store, "action100m", str(tmp_path / "back.json"))
    [back] = read_records(out)
    nodes = {n["node_id"]: n for n in back["nodes"]}
    assert nodes[root["node_id"]]["gpt"] == root["gpt"]
    assert nodes[leaf["node_id"]]["llama3_caption"] == ""
    assert nodes[leaf["node_id"]]["plm_action"] == ""
    assert nodes[inner["node_id"]]["plm_caption"] == ""


def test_import_does_not_replace_a_video_silently(store, tiny_settings, tmp_path) -> None:
    import_file(tiny_settings, store, str(JSON))
    [record] = read_records(str(JSON))
    record["metadata"]["title"] = "Replaced"
    path = tmp_path / "new.json"
    path.write_text(json.dumps(record))
    with pytest.raises(PermanentError, match=f"video {VIDEO}: already in .*--force"):
        import_file(tiny_settings, store, str(path))
    assert store.read_json(store.document_uri(VIDEO))["metadata"]["title"] != "Replaced"
    import_file(tiny_settings, store, str(path), force=True)
    assert store.read_json(store.document_uri(VIDEO))["metadata"]["title"] == "Replaced"


def test_videos_with_different_metadata_share_one_schema(store, tiny_settings, tmp_path) -> None:
    [record] = read_records(str(JSON))
    bare = {**record, "video_uid": "bare", "metadata": {}}
    odd = {**record, "video_uid": "odd", "metadata": {"title": "T", "transcript": ["untimed line"]}}
    path = tmp_path / "three.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in (record, bare, odd)))
    import_file(tiny_settings, store, str(path))
    out = export(tiny_settings, store, "action100m", str(tmp_path / "three.parquet"))
    table = pq.read_table(out.removeprefix("file://"))
    assert table.schema == SCHEMA
    rows = {r["video_uid"]: r for r in table.to_pylist()}
    assert rows["bare"]["metadata"]["title"] is None
    assert rows["bare"]["metadata"]["duration"] == 690  # the tree's, whole seconds
    assert rows["odd"]["metadata"]["transcript"] == [{"time": None, "text": "untimed line"}]


def test_a_video_we_annotate_exports_every_release_field(
    store, scene_video, tmp_path, monkeypatch, release_parquet
) -> None:
    """Our own pipeline, end to end (tiny encoder; captions and Stage 3 through the real clients
    against scripted servers): every release field filled as the release fills it."""
    from llm_server import LLMServer
    from vlm_server import Reply, scripted_server

    from action100m.config import load_settings
    from action100m.pipeline import run_video

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")

    def answer(request, attempt):
        return Reply("Sand a board." if "verb phrase" in request.prompt else "A clip of a bench.")

    with scripted_server(answer) as vlm, LLMServer() as llm:
        overrides = {
            "caption": {"backend": "vllm-server", "model": "test/vlm", "base_url": vlm.url},
            "aggregate": {"base_url": llm.base_url, "model": "m", "rounds": 1},
        }
        settings = load_settings(profile="tiny", store=store.root, environ={}, overrides=overrides)
        run_video(settings, store, str(scene_video[0]), video_id="ours")
    out = export(settings, store, "action100m", str(tmp_path / "ours.parquet"))
    ours = pq.read_table(out.removeprefix("file://"))
    assert ours.schema == SCHEMA
    pa.concat_tables([pq.read_table(release_parquet), ours])  # the same schema: one table
    nodes = ours.to_pylist()[0]["nodes"]
    assert [(n["level"], n["start"]) for n in nodes] == sorted(
        (n["level"], n["start"]) for n in nodes
    )
    parents = {n["parent_id"] for n in nodes}
    for node in nodes:
        leaf = node["node_id"] not in parents
        assert node["plm_caption"] == "A clip of a bench." and node["plm_action"] == "Sand a board"
        assert (node["llama3_caption"] == "A clip of a bench.") == leaf
        long = node["end"] - node["start"] >= 4.0 - 1e-6
        assert (node["gpt"] is not None) == (long and not leaf), node
        assert round(node["start"], 2) == pytest.approx(node["start"], abs=1e-5)
    assert any(n["gpt"] for n in nodes)
    assert all(
        isinstance(v, str) for n in nodes if n["gpt"] for g in n["gpt"].values() for v in g.values()
    )
