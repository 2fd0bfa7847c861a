"""Requests per second the caption client sustains against a stand-in vLLM server (issue 14).

The server on loopback reads each request body whole and answers after ``--latency`` seconds,
flat, as vLLM's does while its batch has room: a segment caption of ~200 tokens takes a few
seconds whatever the batch size, so the requests in flight, not the server, set the rate. The
client is the pipeline's (``vllm-server`` backend): per request 32 frames of 320x320 in one JSON
body, ``caption.concurrency`` requests in flight. With no latency it shows the client's own
ceiling on this CPU; with latency, what a concurrency setting gets from a server that could take
more.

Three clients in the same run, the first the baseline: ``before`` (the client before issue 14:
32 JPEG image parts encoded one after another in the request's thread, the body serialised by
the OpenAI client's JSON encoder), ``images`` (the same parts, JPEGs from the pool of encoding
threads, the base64 spliced into the JSON) and ``video`` (the same, one MJPEG MP4 ``video_url``
part: the default ``caption.frames_as``). ``stall`` is the longest a thread sleeping 1 ms at a
time waited to run again: the longest GIL hold by the client's threads, plus any wait for a CPU.

    python benchmarks/caption_client.py [--latency 0 3] [--concurrency 16 64] [--rounds 3]
"""

from __future__ import annotations

import argparse
import base64
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from action100m.config import CaptionConfig
from action100m.models.caption_base import CaptionJob
from action100m.models.vlm_server import ServerCaptioner, jpeg
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


class Before(ServerCaptioner):
    """The client before issue 14, for the baseline."""

    def request_body(self, job: CaptionJob) -> Any:
        parts = [
            {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64," + b64(frame)}}
            for frame in job.frames
        ]
        content = [*parts, {"type": "text", "text": job.prompt}]
        return {
            "messages": [{"role": "user", "content": content}],
            "max_tokens": job.max_new_tokens,
        }

    def send(self, body: Any) -> Any:
        return self.client.chat.completions.create(model=self.model, temperature=0.0, **body)


def b64(frame: Any) -> str:
    return base64.b64encode(jpeg(frame)).decode("ascii")


SHAPES = {
    "before": (Before, False),
    "images": (ServerCaptioner, False),
    "video": (ServerCaptioner, True),
}


class Stall:
    """A thread that sleeps 1 ms at a time and keeps the longest it took to get the GIL back."""

    def __init__(self) -> None:
        self.longest, self.running = 0.0, True
        self.thread = threading.Thread(target=self.tick, daemon=True)
        self.thread.start()

    def tick(self) -> None:
        while self.running:
            before = time.perf_counter()
            time.sleep(0.001)
            self.longest = max(self.longest, time.perf_counter() - before - 0.001)

    def stop(self) -> float:
        self.running = False
        self.thread.join()
        return self.longest


def jobs(count: int, frames: int, size: int, video: bool) -> list[CaptionJob]:
    """Distinct requests of ``frames`` frames each (the scenes of the sample videos), as a clip
    of 10 seconds when ``video``."""
    pictures = [scene_frame(i % 6, i * 0.1, size, size) for i in range(frames)]
    fps = frames / 10.0 if video else None
    return [CaptionJob(f"job{i}", f"Describe clip {i}.", pictures, 200, fps) for i in range(count)]


def measure(
    shape: str, latency: float, concurrency: int, rounds: int, frames: int, size: int
) -> float:
    """Requests per second; prints the line of figures."""
    client, video = SHAPES[shape]
    server, sizes = serve(latency)
    url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    config = CaptionConfig(model=MODEL, base_url=url, concurrency=concurrency, max_retries=0)
    batch = jobs(concurrency * rounds, frames, size, video)
    captioner = client(config)
    stall = Stall()
    started = time.perf_counter()
    done = sum(1 for _, outcome in captioner.run(batch) if outcome.caption)
    wall = time.perf_counter() - started
    longest = stall.stop()
    server.shutdown()
    ceiling = concurrency / latency if latency else float("inf")
    print(
        f"{shape:13s} latency {latency:4.1f} s  concurrency {concurrency:3d}: {done} requests in "
        f"{wall:5.1f} s = {done / wall:6.1f} req/s (in-flight ceiling {ceiling:6.1f}; "
        f"body {sum(sizes) / len(sizes) / 1e6:.2f} MB; stall {longest * 1e3:5.1f} ms)",
        flush=True,
    )
    return done / wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--latency", type=float, nargs="+", default=[0.0, 3.0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--rounds", type=int, default=3, help="requests = rounds x concurrency")
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=list(SHAPES))
    args = parser.parse_args()
    for latency in args.latency:
        for concurrency in args.concurrency:
            rates = {
                shape: measure(shape, latency, concurrency, args.rounds, args.frames, args.size)
                for shape in args.shapes
            }
            baseline = rates[args.shapes[0]]
            ratios = ", ".join(f"{s} {rate / baseline:.2f}x" for s, rate in rates.items())
            print(f"  vs {args.shapes[0]}: {ratios}", flush=True)


if __name__ == "__main__":
    main()
