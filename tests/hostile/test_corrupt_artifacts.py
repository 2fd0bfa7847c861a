"""Corrupt artifacts under a ``_SUCCESS``: one line naming the video and the artifact, the broken
stage forgotten so the next run redoes it, and caches that are only lost work, never a blocker."""

from __future__ import annotations

from pathlib import Path

import pytest

from action100m.cli import main
from action100m.config import Settings
from action100m.stages.outputs import stage_key
from action100m.store import ArtifactStore

LLM_VARIABLES = ("OPENAI_API_KEY", "OPENAI_BASE_URL", "ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL")


@pytest.fixture
def finished(
    short_video: Path,
    store: ArtifactStore,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> list[str]:
    """``short`` run through every stage but aggregate (no LLM); the command line's base."""
    for name in LLM_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    base = ["-q", "--store", store.root, "--profile", "tiny"]
    assert main([*base, "run", str(short_video)]) == 0
    capsys.readouterr()
    return base


def _path(store: ArtifactStore, settings: Settings, stage: str, name: str) -> Path:
    folder = store.stage_dir("short", stage, stage_key(settings, stage))
    return Path(f"{folder}/{name}".removeprefix("file://"))


def _forget(store: ArtifactStore, settings: Settings, stage: str) -> None:
    _path(store, settings, stage, "_SUCCESS").unlink()


@pytest.mark.parametrize(
    ("stage", "name", "content", "reader"),
    [
        ("embed", "embeddings.npy", b"\x93NUMPY truncated", "segment"),
        ("embed", "frames.json", b"{}", "segment"),
        ("segment", "tree.json", b'{"video_id": "short", "nodes": [', "caption"),
        ("segment", "tree.json", b'{"nodes": 7}', "caption"),
        ("caption", "captions.json", b"not json", "publish"),
    ],
)
def test_a_corrupt_artifact_is_one_line_and_redone_by_the_next_run(
    finished: list[str],
    store: ArtifactStore,
    tiny_settings: Settings,
    short_video: Path,
    capsys: pytest.CaptureFixture[str],
    stage: str,
    name: str,
    content: bytes,
    reader: str,
) -> None:
    _path(store, tiny_settings, stage, name).write_bytes(content)
    if reader != "publish":
        _forget(store, tiny_settings, reader)  # so that the reader runs again and reads it
    assert main([*finished, reader, "short"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("action100m: error: video short: "), err
    assert name in err[0] and f"{stage} will be redone" in err[0]
    assert not _path(store, tiny_settings, stage, "_SUCCESS").exists()  # forgotten
    assert main([*finished, "run", str(short_video)]) == 0  # the next run redoes it
    assert _path(store, tiny_settings, stage, "_SUCCESS").exists()


def test_an_unreadable_caption_cache_is_only_lost_work(
    finished: list[str], store: ArtifactStore, tiny_settings: Settings
) -> None:
    cache = Path(
        store.caption_cache_uri("short", tiny_settings.caption.model).removeprefix("file://")
    )
    assert cache.exists()
    cache.write_bytes(b"\x00garbage")
    _forget(store, tiny_settings, "caption")
    assert main([*finished, "caption", "short"]) == 0
    assert _path(store, tiny_settings, "caption", "_SUCCESS").exists()


def test_a_source_replaced_after_embedding_is_refused(
    tmp_path: Path,
    store: ArtifactStore,
    tiny_settings: Settings,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from action100m.samples import make_video

    video = tmp_path / "short.mp4"
    make_video(video, [2.0, 2.0])
    base = ["-q", "--store", store.root, "--profile", "tiny"]
    assert main([*base, "segment", str(video)]) == 0
    make_video(video, [1.0], seed=9)  # replaced by a shorter file before captioning
    capsys.readouterr()
    assert main([*base, "caption", "short"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "changed since it was embedded" in err[0], err
    for stage in ("embed", "segment"):
        assert not _path(store, tiny_settings, stage, "_SUCCESS").exists()
    assert main([*base, "caption", str(video)]) == 0  # embedded, cut and captioned afresh


def test_a_store_that_cannot_be_written_is_one_line(
    short_video: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A full disk, a read-only mount or a store root that is not a folder: one line naming the
    store and the cause, not a traceback (root ignores permissions, so a file stands in)."""
    blocked = tmp_path / "store"
    blocked.write_text("a file where the store's folder should be")
    assert main(["-q", "--store", str(blocked), "--profile", "tiny", "run", str(short_video)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"store {blocked.as_uri()}: cannot write" in err[0], err
