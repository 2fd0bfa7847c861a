"""The ``vllm-server`` backend against a scripted OpenAI-compatible server on loopback."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from caption_helpers import VIDEO_ID, prepared, read_captions, scene_tree, write_tree
from vlm_server import Recorded, Reply, free_port_url, scripted_server, thumbnail

from action100m.config import CaptionConfig, load_settings
from action100m.errors import ServiceError
from action100m.frames import read_frames_at
from action100m.models import vlm_server as backend
from action100m.pipeline import run_caption
from action100m.stages.caption_requests import segment_times
from action100m.stages.outputs import stage_key
from action100m.store import ArtifactStore

ROOT = "12.0-second"  # in the root node's prompt only


def server_settings(store: ArtifactStore, video: Path, url: str, **extra: Any) -> Any:
    options = {"backend": "vllm-server", "model": "test/vlm", "base_url": url, "max_retries": 1}
    return prepared(store, video, **{**options, **extra})


def always(reply: Reply) -> Any:
    return lambda request, attempt: reply


@pytest.mark.parametrize("frames_as", ["video", "images"])
def test_sends_one_image_per_leaf_and_evenly_spaced_frames_per_segment(
    store: ArtifactStore, scene_video: tuple[Path, list[float]], frames_as: str
) -> None:
    video = scene_video[0]
    with scripted_server(always(Reply("a red square"))) as server:
        settings, tree = server_settings(
            store, video, server.url, size=96, frames=6, frames_as=frames_as
        )
        run_caption(settings, store, VIDEO_ID)
    captions = read_captions(settings, store)["nodes"]
    assert len(server.requests) == len(tree)
    by_prompt: dict[str, list[Recorded]] = {}
    for request in server.requests:
        assert (request.model, request.max_tokens, request.temperature) == ("test/vlm", 16, 0.0)
        by_prompt.setdefault(request.prompt, []).append(request)
    for node in tree.nodes:
        entry = captions[node.node_id]
        assert entry["caption"] == "a red square" and entry["error"] is None
        if node.is_leaf:
            times = [node.middle]
            prompt = next(p for p in by_prompt if "image" in p)
        else:
            times = [node.start + (i + 0.5) * node.duration / 6 for i in range(6)]
            prompt = next(p for p in by_prompt if f"{node.duration:.1f}-second" in p)
        as_video = frames_as == "video" and not node.is_leaf
        (request,) = [r for r in by_prompt[prompt] if _same_frames(r, video, times, as_video)]
        if as_video:  # one video of the span's frames at the span's rate, none re-sampled
            assert request.image_sizes == [] and len(request.video_thumbnails) == 6
            assert request.video_fps == pytest.approx(6 / node.duration, rel=1e-3)
            assert request.processor_kwargs == {"do_sample_frames": False}
            assert entry["tokens_in"] == 10 + 50 * len(times)
        else:
            assert request.image_sizes == [(96, 96)] * len(times)
            assert request.video_thumbnails == [] and request.processor_kwargs == {}
            assert entry["tokens_in"] == 10 + 100 * len(times)


def _same_frames(request: Recorded, video: Path, times: list[float], as_video: bool) -> bool:
    """The request carried the frames shown at ``times``, in order (JPEG-tolerant)."""
    expected = [thumbnail(f) for f in read_frames_at(str(video), "v", times, (96, 96))]
    sent = request.video_thumbnails if as_video else request.thumbnails
    if len(expected) != len(sent):
        return False
    return bool(np.allclose(sent, expected, atol=12.0))


def test_5xx_is_retried_then_fails_the_task_and_the_retry_asks_only_for_it(
    store: ArtifactStore, scene_video: tuple[Path, list[float]]
) -> None:
    def script(request: Recorded, attempt: int) -> Reply:
        if ROOT in request.prompt:
            return Reply(status=503)
        if len(request.image_sizes) == 1 and attempt == 0:
            return Reply(status=500)  # leaves fail once, then succeed on the client's retry
        return Reply("fine")

    with scripted_server(script) as server:
        settings, tree = server_settings(store, scene_video[0], server.url)
        with pytest.raises(ServiceError, match=f"video {VIDEO_ID}: 1 of 5 nodes.*503"):
            run_caption(settings, store, VIDEO_ID)
        assert sum(ROOT in r.prompt for r in server.requests) == 2  # first try + max_retries
        assert len(server.requests) == 2 + 2 * len(tree.leaves()) + 1
        folder = store.stage_dir(VIDEO_ID, "caption", stage_key(settings, "caption"))
        assert not store.is_done(folder)  # the root is not left uncaptioned for good
        server.script = always(Reply("fine"))
        server.requests.clear()
        run_caption(settings, store, VIDEO_ID)
    assert [ROOT in r.prompt for r in server.requests] == [True]  # the rest came from the cache
    nodes = read_captions(settings, store)["nodes"]
    assert all(nodes[n.node_id]["caption"] == "fine" for n in tree.nodes)


def test_a_rejected_request_stays_that_nodes_error(
    store: ArtifactStore, scene_video: tuple[Path, list[float]]
) -> None:
    def script(request: Recorded, attempt: int) -> Reply:
        return Reply(status=400) if ROOT in request.prompt else Reply("fine")

    with scripted_server(script) as server:
        settings, tree = server_settings(store, scene_video[0], server.url)
        run_caption(settings, store, VIDEO_ID)  # a retry cannot help: the video goes on
    nodes = read_captions(settings, store)["nodes"]
    assert (
        "400" in nodes[tree.root.node_id]["error"] and nodes[tree.root.node_id]["caption"] is None
    )
    assert all(nodes[n.node_id]["caption"] == "fine" for n in tree.nodes[1:])


def test_a_hanging_request_times_out_and_the_rest_go_on(
    store: ArtifactStore, scene_video: tuple[Path, list[float]]
) -> None:
    def script(request: Recorded, attempt: int) -> Reply:
        return Reply(hang=3.0) if ROOT in request.prompt else Reply("quick")

    with scripted_server(script) as server:
        settings, tree = server_settings(
            store, scene_video[0], server.url, timeout=0.5, max_retries=0
        )
        with pytest.raises(ServiceError, match=f"video {VIDEO_ID}: 1 of 5 nodes.*timed out"):
            run_caption(settings, store, VIDEO_ID)
        server.script = always(Reply("quick"))
        run_caption(settings, store, VIDEO_ID)
    nodes = read_captions(settings, store)["nodes"]
    assert [nodes[n.node_id]["caption"] for n in tree.nodes] == ["quick"] * 5
    assert [nodes[n.node_id]["cached"] for n in tree.nodes] == [False] + [True] * 4


@pytest.mark.parametrize(
    ("body", "error", "transient"),
    [
        ("{this is not json", "malformed response", True),
        ('{"id": "x", "object": "chat.completion", "choices": []}', "empty caption", False),
        ('{"id": "x", "object": "chat.completion", "choices": null}', "empty caption", False),
        ('{"id": "x", "object": "chat.completion", "choices": [null]}', "empty caption", False),
    ],
)
def test_a_malformed_or_choiceless_answer_is_a_defined_outcome(
    store: ArtifactStore,
    scene_video: tuple[Path, list[float]],
    monkeypatch: pytest.MonkeyPatch,
    body: str,
    error: str,
    transient: bool,
) -> None:
    monkeypatch.setattr(backend.time, "sleep", lambda seconds: None)

    def script(request: Recorded, attempt: int) -> Reply:
        return Reply(body=body) if ROOT in request.prompt else Reply("fine")

    with scripted_server(script) as server:
        settings, tree = server_settings(store, scene_video[0], server.url, max_retries=0)
        if transient:
            with pytest.raises(ServiceError, match=f"1 of 5 nodes.*{error}"):
                run_caption(settings, store, VIDEO_ID)
            return
        run_caption(settings, store, VIDEO_ID)
    nodes = read_captions(settings, store)["nodes"]
    assert nodes[tree.root.node_id]["error"] == error
    assert all(nodes[n.node_id]["caption"] == "fine" for n in tree.nodes[1:])


def test_a_response_failing_validation_is_a_transient_node_failure(
    store: ArtifactStore, scene_video: tuple[Path, list[float]], monkeypatch: pytest.MonkeyPatch
) -> None:
    import httpx2
    import openai

    real = backend.ServerCaptioner.send

    def invalid_for_the_root(self: Any, body: bytes) -> Any:
        if ROOT.encode() in body:
            response = httpx2.Response(200, request=httpx2.Request("POST", "http://server/v1"))
            raise openai.APIResponseValidationError(response=response, body={})
        return real(self, body)

    monkeypatch.setattr(backend.ServerCaptioner, "send", invalid_for_the_root)
    with scripted_server(always(Reply("fine"))) as server:
        settings, _ = server_settings(store, scene_video[0], server.url)
        with pytest.raises(ServiceError, match="1 of 5 nodes.*malformed response"):
            run_caption(settings, store, VIDEO_ID)
    assert len(server.requests) == 4  # every other node was captioned


def test_an_empty_answer_is_asked_again(
    store: ArtifactStore, scene_video: tuple[Path, list[float]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(backend.time, "sleep", lambda seconds: None)

    def script(request: Recorded, attempt: int) -> Reply:
        if ROOT in request.prompt:
            return Reply("  ")  # never says anything
        return Reply("" if attempt == 0 else "second time")

    with scripted_server(script) as server:
        settings, tree = server_settings(store, scene_video[0], server.url)
        run_caption(settings, store, VIDEO_ID)
    nodes = read_captions(settings, store)["nodes"]
    assert nodes[tree.root.node_id]["error"] == "empty caption"
    assert all(nodes[n.node_id]["caption"] == "second time" for n in tree.nodes[1:])


def test_a_dead_server_fails_the_task_clearly(
    store: ArtifactStore, scene_video: tuple[Path, list[float]]
) -> None:
    settings, _ = server_settings(store, scene_video[0], free_port_url(), max_retries=0)
    with pytest.raises(ServiceError, match=f"video {VIDEO_ID}.*unreachable"):
        run_caption(settings, store, VIDEO_ID)
    folder = store.stage_dir(VIDEO_ID, "caption", stage_key(settings, "caption"))
    assert not store.is_done(folder)


def test_a_server_failing_everything_is_not_a_result(
    store: ArtifactStore, scene_video: tuple[Path, list[float]]
) -> None:
    with scripted_server(always(Reply(status=500))) as server:
        settings, _ = server_settings(store, scene_video[0], server.url, max_retries=0)
        with pytest.raises(ServiceError, match="every caption request failed"):
            run_caption(settings, store, VIDEO_ID)


def test_server_dying_midway_keeps_finished_captions_for_the_retry(
    store: ArtifactStore, scene_video: tuple[Path, list[float]], monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = {"n": 0}
    real = backend.ServerCaptioner.caption

    def caption_until_the_third(self: Any, job: Any) -> Any:
        calls["n"] += 1
        if calls["n"] >= 3:
            raise ServiceError("caption server is unreachable (connection refused)")
        return real(self, job)

    with scripted_server(always(Reply("kept"))) as server:
        settings, tree = server_settings(store, scene_video[0], server.url, concurrency=1)
        monkeypatch.setattr(backend.ServerCaptioner, "caption", caption_until_the_third)
        with pytest.raises(ServiceError, match=f"video {VIDEO_ID}"):
            run_caption(settings, store, VIDEO_ID)
        monkeypatch.setattr(backend.ServerCaptioner, "caption", real)
        run_caption(settings, store, VIDEO_ID)
    assert len(server.requests) == len(tree)  # the two finished before the failure were kept
    nodes = read_captions(settings, store)["nodes"]
    assert sum(entry["cached"] for entry in nodes.values()) == 2


def test_server_dying_keeps_the_requests_in_flight_for_the_retry(
    store: ArtifactStore, scene_video: tuple[Path, list[float]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With several requests in flight, one finding the server gone must not drop the others."""
    real = backend.ServerCaptioner.caption
    root_failed = threading.Event()

    def root_finds_the_server_gone(self: Any, job: Any) -> Any:
        if ROOT in job.prompt:
            root_failed.set()
            raise ServiceError("caption server is unreachable (connection refused)")
        root_failed.wait(timeout=5.0)  # still running when the root's failure comes back
        return real(self, job)

    with scripted_server(always(Reply("kept"))) as server:
        settings, tree = server_settings(store, scene_video[0], server.url, concurrency=8)
        monkeypatch.setattr(backend.ServerCaptioner, "caption", root_finds_the_server_gone)
        with pytest.raises(ServiceError, match=f"video {VIDEO_ID}.*unreachable"):
            run_caption(settings, store, VIDEO_ID)
        assert len(server.requests) == len(tree) - 1  # every other request was answered ...
        monkeypatch.setattr(backend.ServerCaptioner, "caption", real)
        run_caption(settings, store, VIDEO_ID)
    assert len(server.requests) == len(tree)  # ... and cached: the retry asked for the root only
    nodes = read_captions(settings, store)["nodes"]
    assert [nodes[n.node_id]["cached"] for n in tree.nodes] == [False] + [True] * 4


def test_the_default_settings_send_32_frames_of_320_per_segment_and_one_per_leaf(
    store: ArtifactStore, scene_video: tuple[Path, list[float]]
) -> None:
    """The paper's shapes, not the small ones the other tests use to stay quick."""
    defaults = CaptionConfig()
    assert (defaults.frames, defaults.size) == (32, 320)
    with scripted_server(always(Reply("a caption"))) as server:
        settings = load_settings(
            store=store.root,
            environ={},
            overrides={"caption": {"model": "test/vlm", "base_url": server.url}},
        )
        assert (settings.caption.frames, settings.caption.size) == (32, 320)
        tree = scene_tree(str(scene_video[0]))
        write_tree(settings, store, tree)
        run_caption(settings, store, VIDEO_ID)
    # The release's fields: a leaf's middle frame, every node's clip and its action label, the
    # clips as one video each.
    sizes = sorted((len(r.image_sizes), len(r.video_thumbnails)) for r in server.requests)
    leaves = len(tree.leaves())
    assert sizes == [(0, 32)] * (2 * len(tree)) + [(1, 0)] * leaves
    assert {size for r in server.requests for size in r.image_sizes} == {(320, 320)}
    actions = [r for r in server.requests if "short verb phrase" in r.prompt]
    assert len(actions) == len(tree)
    root = [r for r in server.requests if ROOT in r.prompt]
    times = segment_times(tree.root, 32)
    assert root and all(_same_frames(r, scene_video[0], times, as_video=True) for r in root)
    for request in server.requests:
        assert ("32 frames" in request.prompt) == (len(request.video_thumbnails) == 32)
        wanted = defaults.action_max_new_tokens if request in actions else defaults.max_new_tokens
        assert request.max_tokens == wanted
    nodes = read_captions(settings, store)["nodes"]
    for node in tree.nodes:
        entry = nodes[node.node_id]
        assert entry["action"] == "a caption" and entry["caption"] == "a caption"
        assert (entry.get("segment_caption") == "a caption") == node.is_leaf


def test_caption_concurrency_is_reached_and_never_exceeded(
    store: ArtifactStore, scene_video: tuple[Path, list[float]]
) -> None:
    with scripted_server(always(Reply("slow", hang=0.1))) as server:  # so that requests overlap
        settings, tree = server_settings(store, scene_video[0], server.url, concurrency=2)
        run_caption(settings, store, VIDEO_ID)
    assert len(server.requests) == len(tree)
    assert server.max_in_flight == 2


def test_a_body_with_spliced_frames_is_the_json_of_the_whole_body() -> None:
    body = {"parts": [{"url": f"data:a;base64,{backend.SLOT}"}, f"b,{backend.SLOT}"], "t": 'é "q"'}
    whole = {"parts": [{"url": "data:a;base64,QUJD"}, "b,REVG"], "t": 'é "q"'}
    assert json.loads(backend.spliced(body, [b"QUJD", b"REVG"])) == whole
    with pytest.raises(ValueError):  # a payload short: never a body with a slot left in it
        backend.spliced(body, [b"QUJD"])
