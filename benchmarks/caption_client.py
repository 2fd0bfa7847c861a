"""Requests per second the caption client sustains against a stand-in vLLM server (issue 14).

The server on loopback reads each request body whole and answers after ``--latency`` seconds,
flat, as vLLM's does while its batch has room: a segment caption of ~200 tokens takes a few
seconds whatever the batch size, so the requests in flight, not the server, set the rate. The
client is the pipeline's (``vllm-server`` backend): per request 32 frames of 320x320 as base64
JPEGs in one JSON body, ``caption.concurrency`` requests in flight. With no latency it shows the
client's own ceiling on this CPU; with latency, what a concurrency setting gets from a server
that could take more.

    python benchmarks/caption_client.py [--latency 0 3] [--concurrency 16 64] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from action100m.config import CaptionConfig
from action100m.models.caption_base import CaptionJob
from action100m.models.vlm_server import ServerCaptioner
from action100m.samples import scene_frame

MODEL = "stand-in/vlm"


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024  # listen()'s backlog: every request in flight connects at once


def serve(latency: float) -> tuple[ThreadingHTTPServer, list[int]]:
    """The stand-in server and the sizes of the bodies it received."""
    sizes: list[int] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def reply(self, payload: dict[str, Any]) -> None:
            body = json.dumps(payload).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            self.reply({"object": "list", "data": [{"id": MODEL, "object": "model"}]})

        def do_POST(self) -> None:  # noqa: N802
            sizes.append(len(self.rfile.read(int(self.headers["Content-Length"]))))
            time.sleep(latency)
            message = {"role": "assistant", "content": "a person does something"}
            self.reply(
                {
                    "id": "x",
                    "object": "chat.completion",
                    "created": 0,
                    "model": MODEL,
                    "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                }
            )

    server = Server(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, sizes


def jobs(count: int, frames: int, size: int) -> list[CaptionJob]:
    """Distinct requests of ``frames`` frames each (the scenes of the sample videos)."""
    pictures = [scene_frame(i % 6, i * 0.1, size, size) for i in range(frames)]
    return [CaptionJob(f"job{i}", f"Describe clip {i}.", pictures, 200) for i in range(count)]


def measure(latency: float, concurrency: int, rounds: int, frames: int, size: int) -> str:
    server, sizes = serve(latency)
    url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    config = CaptionConfig(model=MODEL, base_url=url, concurrency=concurrency, max_retries=0)
    batch = jobs(concurrency * rounds, frames, size)
    started = time.perf_counter()
    done = sum(1 for _, outcome in ServerCaptioner(config).run(batch) if outcome.caption)
    wall = time.perf_counter() - started
    server.shutdown()
    ceiling = concurrency / latency if latency else float("inf")
    return (
        f"latency {latency:4.1f} s  concurrency {concurrency:3d}: {done} requests in {wall:5.1f} s "
        f"= {done / wall:6.1f} req/s (in-flight ceiling {ceiling:6.1f}; "
        f"body {sum(sizes) / len(sizes) / 1e6:.2f} MB)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--latency", type=float, nargs="+", default=[0.0, 3.0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--rounds", type=int, default=3, help="requests = rounds x concurrency")
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--size", type=int, default=320)
    args = parser.parse_args()
    for latency in args.latency:
        for concurrency in args.concurrency:
            print(measure(latency, concurrency, args.rounds, args.frames, args.size), flush=True)


if __name__ == "__main__":
    main()
