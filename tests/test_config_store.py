"""Settings precedence and stage keys; the artifact store on a folder and on a real S3 server."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from action100m.config import load_settings
from action100m.errors import ConfigError, StoreError, VideoError
from action100m.stages.outputs import stage_key
from action100m.store import ArtifactStore


def test_defaults_follow_the_paper() -> None:
    settings = load_settings(environ={})
    assert settings.embed.model == "facebook/vjepa2-vitg-fpc64-384"
    assert (settings.embed.frame_step, settings.embed.window, settings.embed.stride) == (4, 64, 8)
    assert settings.segment.min_duration == 0.5
    assert (settings.caption.frames, settings.caption.size) == (32, 320)
    assert (settings.aggregate.rounds, settings.aggregate.min_duration) == (3, 4.0)


def test_precedence_yaml_env_set(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("segment:\n  min_duration: 1.0\ncaption:\n  concurrency: 2\n")
    env = {"ACTION100M_SEGMENT__MIN_DURATION": "2.0", "ACTION100M_CAPTION__FRAMES": "16"}
    settings = load_settings(config_file=config, environ=env, overrides=["segment.min_duration=3"])
    assert settings.segment.min_duration == 3.0  # --set beats env beats YAML
    assert settings.caption.frames == 16
    assert settings.caption.concurrency == 2


@pytest.mark.parametrize(
    "overrides",
    [
        ["segment.min_duration=-1"],
        ["embed.nope=1"],
        ["caption.backend=magic"],
        ["novalue"],
        ["embed.decoder=ffmpeg"],
        ["embed.stride=65"],  # frames between windows would get no vector
    ],
)
def test_bad_settings_are_one_clear_error(overrides: list[str]) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(overrides=overrides, environ={})
    assert "\n" not in str(caught.value)


def test_stage_keys_chain_and_ignore_runtime_settings() -> None:
    base = load_settings(environ={})
    faster = load_settings(overrides=["embed.batch_size=32", "caption.concurrency=128"], environ={})
    assert all(stage_key(base, s) == stage_key(faster, s) for s in ("embed", "caption"))
    other_captioner = load_settings(overrides=["caption.model=x/y"], environ={})
    assert stage_key(other_captioner, "segment") == stage_key(base, "segment")
    assert stage_key(other_captioner, "caption") != stage_key(base, "caption")
    assert stage_key(other_captioner, "aggregate") != stage_key(base, "aggregate")
    other_encoder = load_settings(overrides=["embed.stride=4"], environ={})
    assert stage_key(other_encoder, "segment") != stage_key(base, "segment")


def _roundtrip(store: ArtifactStore) -> None:
    folder = store.stage_dir("vid", "embed", "k1")
    assert not store.is_done(folder)
    store.write_json(f"{folder}/a.json", {"x": [1, 2]})
    array = np.arange(6, dtype=np.float16).reshape(2, 3)
    store.write_npy(f"{folder}/e.npy", array)
    store.mark_done(folder, {"frames": 2})
    assert store.is_done(folder) and store.done_info(folder)["frames"] == 2
    assert store.read_json(f"{folder}/a.json") == {"x": [1, 2]}
    assert np.array_equal(store.read_npy(f"{folder}/e.npy"), array)
    names = sorted(uri.rsplit("/", 1)[1] for uri in store.list(folder))
    assert names == ["_SUCCESS", "a.json", "e.npy"]


def test_local_store_is_atomic(tmp_path: Path) -> None:
    store = ArtifactStore(str(tmp_path))
    _roundtrip(store)
    leftovers = [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []


def test_s3_store(s3_server: dict[str, str]) -> None:
    _roundtrip(ArtifactStore("s3://action100m/run1"))


def test_dead_s3_server_is_a_clear_store_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    store = ArtifactStore("s3://action100m/run1")
    with pytest.raises(StoreError, match="object store: cannot write s3://action100m/run1/x"):
        store.write_json(store.join("x"), {})


def test_a_missing_remote_video_is_that_videos_error(s3_server: dict[str, str]) -> None:
    """No retry brings a missing object back: a VideoError naming the video and the URI."""
    store = ArtifactStore("s3://action100m/run1")
    store.write_bytes("s3://action100m/videos/here.mp4", b"data")
    with store.local_copy("s3://action100m/videos/here.mp4", "here") as path:
        assert Path(path).read_bytes() == b"data"
    with (
        pytest.raises(
            VideoError, match=r"^video gone: file not found: s3://action100m/videos/gone"
        ),
        store.local_copy("s3://action100m/videos/gone.mp4", "gone"),
    ):
        pass


def test_an_unreachable_remote_video_is_a_store_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    store = ArtifactStore("s3://action100m/run1")
    unreachable = pytest.raises(StoreError, match="cannot download s3://action100m/videos/v.mp4")
    with unreachable, store.local_copy("s3://action100m/videos/v.mp4", "v"):
        pass
