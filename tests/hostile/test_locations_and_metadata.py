"""What a run's parameters may read (the store and ACTION100M_ALLOWED_SOURCES only) and what of a
metadata file reaches the document (the known fields, typed and bounded)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from action100m.batch import read_manifest, resolve_batch
from action100m.errors import PermanentError
from action100m.sources import (
    MAX_TEXT,
    allowed_locations,
    check_allowed,
    clean_metadata,
    save_metadata,
)
from action100m.store import ArtifactStore


@pytest.fixture
def places(tmp_path: Path) -> tuple[list[str], Path, Path]:
    allowed_dir, outside = tmp_path / "videos", tmp_path / "worker"
    allowed_dir.mkdir()
    outside.mkdir()
    allowed = allowed_locations(
        "s3://bucket/store", {"ACTION100M_ALLOWED_SOURCES": f"{allowed_dir}, s3://media/clips/"}
    )
    return allowed, allowed_dir, outside


def test_only_the_store_and_the_listed_prefixes(places: tuple[list[str], Path, Path]) -> None:
    allowed, allowed_dir, outside = places
    for ok in (
        "s3://bucket/store/videos/a.mp4",
        "s3://media/clips/a.mp4",
        str(allowed_dir / "a.mp4"),
    ):
        check_allowed(ok, allowed, "source")
    for bad in (
        str(outside / "secret.json"),
        "s3://bucket/storefront/a.mp4",  # a prefix is a folder, not the start of a name
        "s3://media/clips/../private/a.mp4",
        f"file://{allowed_dir}/../worker/secret.json",
        "/etc/passwd",
        "https://example.com/a.mp4",
    ):
        with pytest.raises(PermanentError, match="outside the locations runs may read"):
            check_allowed(bad, allowed, "source")


def test_a_symbolic_link_out_of_an_allowed_folder_is_refused(
    places: tuple[list[str], Path, Path],
) -> None:
    allowed, allowed_dir, outside = places
    (outside / "secret.json").write_text("{}")
    (allowed_dir / "link.json").symlink_to(outside / "secret.json")
    with pytest.raises(PermanentError):
        check_allowed(str(allowed_dir / "link.json"), allowed, "metadata")


def test_parameters_manifests_and_lists_follow_the_rule(
    places: tuple[list[str], Path, Path],
) -> None:
    allowed, allowed_dir, outside = places
    with pytest.raises(PermanentError, match="video a: metadata"):
        resolve_batch(["a"], "s3://media/clips/{video_id}.mp4", str(outside / "{video_id}.json"),
                      allowed=allowed)  # fmt: skip
    with pytest.raises(PermanentError, match="video a: source"):
        resolve_batch(["a"], str(outside / "{video_id}.mp4"), allowed=allowed)
    manifest = outside / "ids.txt"
    manifest.write_text("a\nb\n")
    with pytest.raises(PermanentError, match="manifest"):
        read_manifest(str(manifest), allowed=allowed)
    (allowed_dir / "ids.txt").write_text("a\nb\n")
    assert read_manifest(str(allowed_dir / "ids.txt"), allowed=allowed) == ["a", "b"]
    videos = resolve_batch(["a"], "s3://media/clips/{video_id}.mp4", allowed=allowed)
    assert videos[0]["uri"] == "s3://media/clips/a.mp4"


def test_only_known_metadata_fields_reach_the_store(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    hostile = {
        "title": "A title " * (MAX_TEXT // 4),
        "description": ["not", "a", "string"],
        "view_count": True,
        "like_count": 12,
        "source": "file:///etc/passwd",
        "fps": "fast",
        "admin": "hunter2",
        "transcript": ["a line", {"time": "1.5", "text": "timed"}, {"time": [], "text": "x"}, 7],
    }
    with caplog.at_level(logging.WARNING):
        cleaned = clean_metadata("v", hostile)
    assert set(cleaned) == {"title", "like_count", "transcript"}
    assert len(cleaned["title"]) == MAX_TEXT
    assert cleaned["transcript"] == ["a line", {"time": "1.5", "text": "timed"}]
    assert "admin" in caplog.text and "hunter2" not in caplog.text
    source = tmp_path / "meta.json"
    source.write_text(json.dumps(hostile))
    store = ArtifactStore(str(tmp_path / "store"))
    uri = save_metadata(store, "v", str(source))
    assert uri is not None and set(store.read_json(uri)) == set(cleaned)
