"""The encoder service for real: `action100m serve-encoder` on loopback with the tiny random
V-JEPA 2, started once for the module, and the embed stage's thin client against it."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from pydantic import SecretStr

from action100m.config import Settings, load_settings
from action100m.errors import PermanentError, ServiceError, VideoError
from action100m.services import Endpoint, Services
from action100m.stages import get_stage
from action100m.stages.base import Runtime, Video, run_stage
from action100m.store import ArtifactStore

KEY = "encoder-test-key"
REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_healthy(url: str, server: subprocess.Popen[bytes], log: Path) -> None:
    request = urllib.request.Request(f"{url}/health", headers={"Authorization": f"Bearer {KEY}"})
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"the encoder service exited: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(request, timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"the encoder service did not start: {log.read_text()[-2000:]}")


@pytest.fixture(scope="module")
def allowed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The one folder (besides its store) the service may read."""
    return tmp_path_factory.mktemp("allowed")


@pytest.fixture(scope="module")
def service(allowed: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The service's URL: one process group, stopped (Ctrl-C, then killed) after the module."""
    port, root = _free_port(), tmp_path_factory.mktemp("service")
    env = {**os.environ, "ACTION100M_ALLOWED_SOURCES": str(allowed),
           "ACTION100M_ENCODER_API_KEY": KEY}  # fmt: skip
    command = [sys.executable, "-m", "action100m.cli", "--profile", "tiny", "--store",
               str(root / "store"), "serve-encoder", "--port", str(port)]  # fmt: skip
    log = root / "service.log"
    with log.open("wb") as out:
        server = subprocess.Popen(command, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT,
                                  start_new_session=True)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, server, log)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGINT)  # LitServe stops its workers
        try:
            server.wait(timeout=30)
        finally:  # and whatever of the group is left
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.pid, signal.SIGKILL)


def _settings(store: ArtifactStore, backend: str) -> Settings:
    return load_settings(profile="tiny", store=store.root, environ={},
                         overrides=[f"embed.backend={backend}"])  # fmt: skip


def _runtime(store: ArtifactStore, url: str, key: str | None = KEY) -> Runtime:
    endpoint = Endpoint(base_url=url, api_key=SecretStr(key) if key else None)
    return Runtime(_settings(store, "service"), store, Services(encoder=endpoint))


def _embed(runtime: Runtime, video_id: str, uri: str) -> str:
    return str(run_stage(get_stage("embed"), runtime, Video(video_id, uri)).uri)


def test_the_service_gives_the_local_vectors_and_a_rerun_asks_it_nothing(
    service: str, allowed: Path, scene_video: tuple[Path, list[float]], tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    video = allowed / "scenes.mp4"
    shutil.copy(scene_video[0], video)
    local_store = ArtifactStore(str(tmp_path / "local"))
    local = run_stage(get_stage("embed"), Runtime(_settings(local_store, "local"), local_store),
                      Video("scenes", str(video)))  # fmt: skip
    store = ArtifactStore(str(tmp_path / "remote"))
    with caplog.at_level(logging.INFO, logger="action100m"):
        folder = _embed(_runtime(store, service), "scenes", str(video))
    assert folder.endswith(str(local.uri).rsplit("/", 1)[-1])  # the same key: same settings
    assert any("(encoder service)" in r.getMessage() for r in caplog.records)
    remote_vectors = store.read_npy(f"{folder}/embeddings.npy")
    local_vectors = local_store.read_npy(f"{local.uri}/embeddings.npy")
    assert remote_vectors.shape == local_vectors.shape and remote_vectors.dtype == np.float16
    np.testing.assert_array_equal(remote_vectors, local_vectors)  # the same code and weights
    remote_frames = store.read_json(f"{folder}/frames.json")
    local_frames = local_store.read_json(f"{local.uri}/frames.json")
    for name in ("times", "fps", "duration", "frame_step", "source"):
        assert remote_frames[name] == local_frames[name], name
    dead = _runtime(store, f"http://127.0.0.1:{_free_port()}")  # nobody listens: not asked
    assert run_stage(get_stage("embed"), dead, Video("scenes", str(video))).reused


def test_a_corrupt_video_is_the_local_paths_one_line_permanent_error(
    service: str, allowed: Path, tmp_path: Path
) -> None:
    garbage = allowed / "garbage.mp4"
    garbage.write_bytes(np.random.default_rng(0).bytes(50_000))
    local_store = ArtifactStore(str(tmp_path / "local"))
    with pytest.raises(VideoError) as local:
        run_stage(get_stage("embed"), Runtime(_settings(local_store, "local"), local_store),
                  Video("garbage", str(garbage)))  # fmt: skip
    store = ArtifactStore(str(tmp_path / "remote"))
    with pytest.raises(VideoError) as remote:
        _embed(_runtime(store, service), "garbage", str(garbage))
    assert str(remote.value) == str(local.value)
    assert str(remote.value).startswith("video garbage: ") and "\n" not in str(remote.value)


def test_a_service_that_is_down_is_retried_not_failed_for_good(tmp_path: Path) -> None:
    store = ArtifactStore(str(tmp_path / "store"))
    url = f"http://127.0.0.1:{_free_port()}"
    with pytest.raises(ServiceError, match=r"video v: encoder service .* unreachable") as caught:
        _embed(_runtime(store, url), "v", str(tmp_path / "v.mp4"))
    assert not isinstance(caught.value, PermanentError)


def test_the_service_reads_only_what_a_run_may_and_wants_its_key(
    service: str, tmp_path: Path, short_video: Path
) -> None:
    outside = tmp_path / "outside.mp4"  # a real video, but not in an allowed folder
    shutil.copy(short_video, outside)
    store = ArtifactStore(str(tmp_path / "store"))
    with pytest.raises(PermanentError, match="outside the locations runs may read"):
        _embed(_runtime(store, service), "outside", str(outside))
    with pytest.raises(PermanentError, match=r"refused the key \(HTTP 401\)"):
        _embed(_runtime(store, service, key=None), "outside", str(outside))
    assert not store.exists(store.video_dir("outside") + "/embed")


def test_the_encoder_connection_is_an_endpoint_of_the_services(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.syspath_prepend(str(REPO / "plugins"))
    conn = {"conn_type": "generic", "host": "http://encoder", "port": 8100, "password": KEY}
    monkeypatch.setenv("AIRFLOW_CONN_ENCODER_DEFAULT", json.dumps(conn))
    before = dict(os.environ)
    from action100m_airflow.tasks import build_runtime

    runtime = build_runtime({"profile": "tiny", "overrides": ["embed.backend=service"]})
    assert dict(os.environ) == before
    assert runtime.services.encoder.base_url == "http://encoder:8100"
    assert runtime.services.encoder.key() == KEY
    assert KEY not in repr(runtime.services)
    assert runtime.settings.embed.backend == "service"
