"""Batch helpers without Airflow: video lists, the per-run limit, manifests, shards, the report."""

from __future__ import annotations

from pathlib import Path

import pytest

from action100m.batch import (
    build_report,
    format_report,
    parse_manifest,
    pending_videos,
    read_manifest,
    resolve_batch,
    shard,
)
from action100m.errors import PermanentError
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
    assert parse_manifest("# ids\nabc\n\ndef  extra\nabc\n") == ["abc", "def"]
    csv_text = "video_id,category_1,rank\nzpcK1IzH6b8,Food,1\nhySSAAw4t24,Food,2\n"
    assert parse_manifest(csv_text) == ["zpcK1IzH6b8", "hySSAAw4t24"]
    path = tmp_path / "HowTo100M_v1.csv"
    path.write_text(csv_text)
    assert read_manifest(str(path)) == ["zpcK1IzH6b8", "hySSAAw4t24"]
    with pytest.raises(PermanentError, match="does not exist"):
        read_manifest(str(tmp_path / "missing.txt"))


def test_shards_and_pending(store: ArtifactStore) -> None:
    assert shard(["a", "b", "c", "d", "e"], 2) == [["a", "b"], ["c", "d"], ["e"]]
    store.write_json(store.document_uri("b"), {"video_uid": "b"})
    assert pending_videos(store, ["a", "b", "c"]) == ["a", "c"]


def test_report_statuses_reasons_and_usage() -> None:
    videos = [{"video_id": v, "uri": f"file:///{v}.mp4"} for v in ("new", "old", "bad", "lost")]
    results = {
        "new": {"video_id": "new", "document": "d1", "reused_all": False,
                "usage": {"input_tokens": 10, "cost_usd": 0.5}},
        "old": {"video_id": "old", "document": "d2", "reused_all": True,
                "usage": {"input_tokens": 5, "cost_usd": 0.25}},
    }  # fmt: skip
    failures = {"bad": {"video_id": "bad", "stage": "embed", "error": "video bad: corrupt"}}
    states = {"lost": {"embed": "success", "segment": "failed", "caption": "upstream_failed"}}
    report = build_report(videos, states, results, failures)
    assert report["counts"] == {"done": 1, "skipped": 1, "failed": 2}
    rows = {row["video_id"]: row for row in report["videos"]}
    assert rows["bad"]["stage"] == "embed" and "corrupt" in rows["bad"]["reason"]
    assert rows["lost"]["stage"] == "segment"
    assert report["usage"] == {"input_tokens": 15, "cost_usd": 0.75}
    text = format_report(report)
    assert "1 done, 1 skipped, 2 failed" in text and "embed: video bad: corrupt" in text
