"""Shared fixtures: synthetic videos, a local store, a real S3-compatible server on loopback."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from airflow_stack import shared_stack, stop_shared_stack

from action100m.config import Settings, load_settings
from action100m.samples import make_video
from action100m.store import ArtifactStore

# Tiny models are built once per test session into this cache instead of the user's home.
os.environ.setdefault(
    "ACTION100M_CACHE", str(Path(__file__).parent.parent / ".pytest_cache" / "models")
)


def _on_shared_stack(item: pytest.Item) -> bool:
    """Whether ``item``'s module runs on the session's shared Airflow stack (it imports it)."""
    return getattr(getattr(item, "module", None), "shared_stack", None) is shared_stack


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The modules on the shared Airflow stack run first and one after another, so the stack stops
    after the last of them instead of idling through the rest of the session."""
    items.sort(key=lambda item: not _on_shared_stack(item))  # stable: their order is kept


def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    if _on_shared_stack(item) and (nextitem is None or not _on_shared_stack(nextitem)):
        stop_shared_stack()


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="session")
def scene_video(media_dir: Path) -> tuple[Path, list[float]]:
    """A 12 s video with scene cuts at 4 s and 8 s."""
    path = media_dir / "scenes.mp4"
    cuts = make_video(path, [4.0, 4.0, 4.0])
    return path, cuts


@pytest.fixture(scope="session")
def short_video(media_dir: Path) -> Path:
    path = media_dir / "short.mp4"
    make_video(path, [2.5])
    return path


@pytest.fixture
def store(tmp_path: Path) -> ArtifactStore:
    return ArtifactStore(str(tmp_path / "store"))


@pytest.fixture
def tiny_settings(store: ArtifactStore) -> Settings:
    return load_settings(profile="tiny", store=store.root, environ={})


@pytest.fixture
def s3_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """moto's S3 server on loopback with a bucket ``action100m``; AWS variables point at it."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint,
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="action100m")
    try:
        yield {**env, "endpoint": endpoint, "bucket": "action100m"}
    finally:
        server.stop()
