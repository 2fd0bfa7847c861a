"""A scripted OpenAI-compatible chat completions server on loopback, for the vllm-server backend.

It records every request (prompt text, max_tokens, each image decoded to its size and mean colour,
a video part decoded to its frames and frame rate, the ``mm_processor_kwargs``) and answers according to a script: a function of the recorded request and how many times that
same request has been seen, returning a ``Reply``: a caption, an HTTP status, a hang, or a raw
body sent as is with HTTP 200 (a malformed or choice-less answer). ``max_in_flight`` is the most
completion requests it was answering at once (a ``Reply(hang=...)`` makes them overlap).
"""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

import numpy as np
from inflight import InFlight
from loopback import ApiServer, QuietHandler
from PIL import Image


@dataclass
class Reply:
    text: str = "a caption"
    status: int = 200
    hang: float = 0.0  # seconds to wait before answering (longer than the client's timeout)
    body: str | None = None  # sent verbatim as a JSON 200 instead of a completion


@dataclass
class Recorded:
    model: str
    prompt: str
    max_tokens: int
    temperature: float | None
    image_sizes: list[tuple[int, int]]
    thumbnails: list[list[float]]  # each image shrunk to 4x4 RGB: which frame it was
    video_thumbnails: list[list[float]] = field(default_factory=list)  # the video's frames, so
    video_fps: float | None = None  # the frame rate its container declares
    processor_kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def signature(self) -> str:
        return json.dumps([self.prompt, self.thumbnails, self.video_thumbnails])


def decode_video(url: str) -> tuple[list[np.ndarray], float]:
    """A ``data:video/...;base64`` URL's frames, in order, and the stream's frame rate."""
    import av

    with av.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))) as container:
        stream = container.streams.video[0]
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
        return frames, float(stream.average_rate or 0)


def thumbnail(frame: np.ndarray) -> list[float]:
    """The frame averaged down to 4x4 RGB: enough to tell frames of the test videos apart."""
    small = Image.fromarray(frame).resize((4, 4), Image.Resampling.BOX)
    return [round(float(v), 1) for v in np.asarray(small, np.float32).ravel()]


Script = Callable[[Recorded, int], Reply]


@dataclass
class ScriptedServer:
    script: Script
    model: str = "test/vlm"
    requests: list[Recorded] = field(default_factory=list)
    seen: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""
    in_flight: InFlight = field(default_factory=InFlight)  # completion requests being answered

    @property
    def max_in_flight(self) -> int:
        return self.in_flight.most

    def record(self, body: dict[str, Any]) -> Recorded:
        sizes, thumbnails, prompt = [], [], ""
        video: list[np.ndarray] = []
        fps = None
        for part in body["messages"][-1]["content"]:
            if part["type"] == "image_url":
                data = part["image_url"]["url"].split(",", 1)[1]
                image = Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB")
                sizes.append(image.size)
                thumbnails.append(thumbnail(np.asarray(image)))
            elif part["type"] == "video_url":
                video, fps = decode_video(part["video_url"]["url"])
            elif part["type"] == "text":
                prompt = part["text"]
        return Recorded(
            body["model"],
            prompt,
            body.get("max_tokens", 0),
            body.get("temperature"),
            sizes,
            thumbnails,
            [thumbnail(frame) for frame in video],
            fps,
            body.get("mm_processor_kwargs", {}),
        )


def _handler(server: ScriptedServer) -> type[BaseHTTPRequestHandler]:
    class Handler(QuietHandler):
        def send(self, status: int, payload: dict[str, Any] | str) -> None:
            self.leave()  # before the answer goes out: the client may send its next one at once
            self.send_payload(status, payload.encode() if isinstance(payload, str) else payload)

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            if self.path.endswith("/models"):
                self.send(
                    200, {"object": "list", "data": [{"id": server.model, "object": "model"}]}
                )
            else:
                self.send(404, {"error": {"message": "not found"}})

        def do_POST(self) -> None:  # noqa: N802
            self.leave = server.in_flight.enter()
            try:
                self.answer()
            finally:
                self.leave()

        def leave(self) -> None:  # replaced per request by the in-flight count's own
            pass

        def answer(self) -> None:
            length = int(self.headers.get("Content-Length", 0))
            request = server.record(json.loads(self.rfile.read(length)))
            with server.lock:
                server.requests.append(request)
                attempt = server.seen[request.signature]
                server.seen[request.signature] += 1
            reply = server.script(request, attempt)
            if reply.hang:
                time.sleep(reply.hang)
            if reply.status != 200:
                self.send(reply.status, {"error": {"message": f"scripted {reply.status}"}})
                return
            if reply.body is not None:
                self.send(200, reply.body)
                return
            self.send(
                200,
                {
                    "id": "cmpl-test",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": request.model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": reply.text},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {
                        "prompt_tokens": 10
                        + 100 * len(request.image_sizes)
                        + 50 * len(request.video_thumbnails),
                        "completion_tokens": len(reply.text.split()),
                        "total_tokens": 0,
                    },
                },
            )

    return Handler


class _Loopback(ApiServer):
    def __init__(self, state: ScriptedServer) -> None:
        self.state = state

    def handler_class(self) -> type[BaseHTTPRequestHandler]:
        return _handler(self.state)


@contextmanager
def scripted_server(script: Script, model: str = "test/vlm") -> Iterator[ScriptedServer]:
    """Serve on a free loopback port; ``server.url`` is the base URL (``.../v1``)."""
    state = ScriptedServer(script=script, model=model)
    with _Loopback(state) as httpd:
        state.url = httpd.base_url
        yield state


def free_port_url() -> str:
    """A base URL where nothing listens (a dead server)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"
