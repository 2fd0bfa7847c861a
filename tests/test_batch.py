"""Batch helpers without Airflow: video lists, the per-run limit, manifests, shards, the report."""

from __future__ import annotations

from pathlib import Path

import pytest

from action100m.batch import (
    parse_manifest,
    pending_videos,
    plan_window,
    read_manifest,
    read_video_list,
    resolve_batch,
    shard,
    write_video_list,
)
from action100m.config import Settings
from action100m.errors import PermanentError
from action100m.pipeline import run_publish
from action100m.report import build_report, format_report
from action100m.stages.outputs import stage_key
from action100m.store import ArtifactStore


def test_resolve_batch_drops_duplicates_and_resolves_ids() -> None:
    videos = resolve_batch(
        ["abc", "/data/x.mp4", "abc", "s3://b/abc.mp4"],
        source_template="s3://b/{video_id}.mp4",
        metadata_template="s3://b/meta/{video_id}.json",
    )
    assert [v["video_id"] for v in videos] == ["abc", "x"]
    assert videos[0] == {
        "video_id": "abc",
        "uri": "s3://b/abc.mp4",
        "metadata": "s3://b/meta/abc.json",
    }
    assert resolve_batch("a, b\nc", "s3://b/{video_id}.mp4")[2]["uri"] == "s3://b/c.mp4"


def test_resolve_batch_limit_points_at_the_backfill_dag() -> None:
    with pytest.raises(PermanentError, match="action100m_backfill"):
        resolve_batch([f"v{i}" for i in range(5)], "s3://b/{video_id}.mp4", limit=4)
    with pytest.raises(PermanentError, match="no videos"):
        resolve_batch([])


def test_manifest_plain_list_and_howto100m_csv(tmp_path: Path) -> None:
    text = "# ids\nabc\n\nmy video 1\nabc\nghi\tfrom a TSV\n"
    assert parse_manifest(text) == ["abc", "my video 1", "ghi"]  # a space is no separator
    csv_text = "video_id,category_1,rank\nzpcK1IzH6b8,Food,1\nhySSAAw4t24,Food,2\n"
    assert parse_manifest(csv_text) == ["zpcK1IzH6b8", "hySSAAw4t24"]
    path = tmp_path / "HowTo100M_v1.csv"
    path.write_text(csv_text)
    assert read_manifest(str(path)) == ["zpcK1IzH6b8", "hySSAAw4t24"]
    with pytest.raises(PermanentError, match="does not exist"):
        read_manifest(str(tmp_path / "missing.txt"))


def _finished(store: ArtifactStore, video_id: str, complete: bool = True) -> None:
    store.write_json(store.document_uri(video_id), {"video_uid": video_id})
    store.write_json(store.status_uri(video_id), {"complete": complete})


def test_shards_and_pending(store: ArtifactStore) -> None:
    assert shard(["a", "b", "c", "d", "e"], 2) == [["a", "b"], ["c", "d"], ["e"]]
    _finished(store, "b")
    _finished(store, "d", complete=False)  # published, but aggregation was skipped
    # A document without status.json: its pipeline.stages decide (segment writes it early).
    stages = {"segment": True, "caption": True, "aggregate": False}
    store.write_json(store.document_uri("e"), {"pipeline": {"stages": stages}})
    store.write_json(
        store.document_uri("f"), {"pipeline": {"stages": {**stages, "aggregate": True}}}
    )
    assert pending_videos(store, ["a", "b", "c", "d", "e", "f"]) == ["a", "c", "d", "e"]
    # A status that a later `aggregate` (or import) outdated: the document has every stage now.
    store.write_json(
        store.document_uri("d"), {"pipeline": {"stages": {**stages, "aggregate": True}}}
    )
    assert pending_videos(store, ["d", "e"]) == ["e"]


def test_plan_window_scans_a_bounded_stretch_of_a_finished_manifest(store: ArtifactStore) -> None:
    """A nearly finished manifest is rescanned by a chain of short runs, each looking at no more
    than max_scan entries, rather than by one task reading every status."""
    ids = [f"v{i}" for i in range(10)]
    for video_id in ids[:-1]:
        _finished(store, video_id)
    offset: int | None = 0
    plans = []
    while offset is not None:
        shards, next_offset, scanned = plan_window(store, ids, offset, 2, 2, max_scan=4)
        assert scanned <= 4
        plans.append((offset, shards))
        offset = next_offset
    assert plans == [(0, []), (4, []), (8, [["v9"]])]


def test_plan_window_bounds_a_run_and_says_where_the_next_starts(store: ArtifactStore) -> None:
    ids = [f"v{i}" for i in range(7)]
    _finished(store, "v1")
    shards, next_offset, scanned = plan_window(store, ids, 0, shard_size=2, max_shards=2)
    assert shards == [["v0", "v2"], ["v3", "v4"]] and next_offset == 5 and scanned == 5
    shards, next_offset, scanned = plan_window(store, ids, 5, shard_size=2, max_shards=2)
    assert shards == [["v5", "v6"]] and next_offset is None and scanned == 2
    for video_id in ids:
        _finished(store, video_id)
    assert plan_window(store, ids, 0, 2, 2) == ([], None, 7)
    assert plan_window(store, ids, 0, 2, 1, skip_done=False) == ([["v0", "v1"]], 2, 2)
    # Exactly full at the manifest's end: nothing left for a continuation.
    assert plan_window(store, ids, 3, 2, 2, skip_done=False)[1] is None


def test_video_lists_round_trip(store: ArtifactStore) -> None:
    uri = store.shard_list_uri("manual__2026-01-01T00:00:00+00:00", 3)
    assert uri.endswith("/backfill/manual__2026-01-01T00_00_00_00_00/shard0003.txt")
    write_video_list(store, uri, ["a", "s3://b/c.mp4"])
    assert read_video_list(store, uri) == ["a", "s3://b/c.mp4"]


def test_publish_without_an_llm_leaves_the_video_pending(
    store: ArtifactStore, tiny_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from caption_helpers import scene_tree, write_tree

    for name in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "OPENAI_BASE_URL", "ANTHROPIC_BASE_URL",
                 "AIRFLOW_CONN_OPENAI_DEFAULT", "AIRFLOW_CONN_ANTHROPIC_DEFAULT"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    tree = scene_tree("/missing/clip.mp4", "clip")
    write_tree(tiny_settings, store, tree)
    for stage, name in (("caption", "captions.json"), ("aggregate", "annotations.json")):
        folder = store.stage_dir("clip", stage, stage_key(tiny_settings, stage))
        store.write_json(f"{folder}/{name}", {"model": "tiny", "nodes": {}})
        if stage == "caption":
            store.mark_done(folder)

    run_publish(tiny_settings, store, "clip")
    document = store.read_json(store.document_uri("clip"))
    assert "no LLM configured" in document["pipeline"]["skipped"]["aggregate"]
    assert document["pipeline"]["stages"]["aggregate"] is False
    assert pending_videos(store, ["clip"]) == ["clip"]  # a later backfill annotates it

    store.mark_done(store.stage_dir("clip", "aggregate", stage_key(tiny_settings, "aggregate")))
    run_publish(tiny_settings, store, "clip")
    assert "skipped" not in store.read_json(store.document_uri("clip"))["pipeline"]
    assert pending_videos(store, ["clip"]) == []


def test_report_statuses_reasons_and_usage() -> None:
    videos = [{"video_id": v, "uri": f"file:///{v}.mp4"} for v in ("new", "old", "bad", "lost")]
    results = {
        "new": {"video_id": "new", "document": "d1", "reused_all": False,
                "usage": {"input_tokens": 10, "cost_usd": 0.5}},
        "old": {"video_id": "old", "document": "d2", "reused_all": True,
                "usage": {"input_tokens": 5, "cost_usd": 0.25}},
    }  # fmt: skip
    failures = {"bad": {"video_id": "bad", "stage": "embed", "error": "video bad: corrupt"}}
    states: dict[str, dict[str, str | None]] = {
        "lost": {"embed": "success", "segment": "failed", "caption": "upstream_failed"}
    }
    report = build_report(videos, states, results, failures)
    assert report["counts"] == {"done": 1, "skipped": 1, "failed": 2}
    rows = {row["video_id"]: row for row in report["videos"]}
    assert rows["bad"]["stage"] == "embed" and "corrupt" in rows["bad"]["reason"]
    assert rows["lost"]["stage"] == "segment"
    assert report["usage"] == {"input_tokens": 15, "cost_usd": 0.75}
    text = format_report(report)
    assert "1 done, 1 skipped, 2 failed" in text and "embed: video bad: corrupt" in text


def test_report_shows_a_skipped_aggregation() -> None:
    videos = [{"video_id": "bare", "uri": "file:///bare.mp4"}]
    reason = "no LLM configured for aggregation: set OPENAI_API_KEY"
    results = {
        "bare": {
            "video_id": "bare",
            "document": "d",
            "reused_all": True,
            "status": {"complete": False, "skipped": {"aggregate": reason}},
            "notes": [f"aggregate skipped: {reason}"],
        }
    }
    report = build_report(videos, {}, results, {})
    assert report["counts"] == {"done": 1, "skipped": 0, "failed": 0}  # not "finished before"
    assert report["videos"][0]["aggregate_skipped"] == reason
    text = format_report(report)
    assert "1 done WITHOUT annotations (aggregate skipped)" in text
    row = text.splitlines()[2]
    assert "done (aggregate skipped)" in row and row.count(reason) == 1
