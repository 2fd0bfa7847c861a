"""A scripted server on loopback that speaks the providers' batch APIs, for tests and benchmarks:
OpenAI's files + batches (upload a JSONL file, create, retrieve, download the output and error
files) and Anthropic's Message Batches (create, retrieve, results). Real HTTP; the real
``openai``/``anthropic`` clients on the other side.

    from batch_server import BatchServer

    with BatchServer() as server:
        cfg.base_url = server.base_url             # OpenAI: http://127.0.0.1:PORT/v1
        # Anthropic: server.anthropic_base_url
        server.polls_before_done = 2               # retrieves answered "in progress" per job
        server.outcome = lambda req, job: "error"  # per item: None (answer), "error", "expire"
        server.llm.script(Reply.text("not json"))  # answers come from an LLMServer's script,
        server.jobs                                #   responder and usage (llm_server.py)
        server.fail_next(429)                      # the next batch API request gets this status

A job with an item that expires ends ``expired`` (OpenAI; the items it finished are in its output
file, the others ``batch_expired`` in its error file) or ``ended`` with ``expired`` results
(Anthropic).
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email import policy
from email.parser import BytesParser
from http.server import BaseHTTPRequestHandler
from typing import Any

from llm_server import LLMServer, Reply, Request, _body
from loopback import ApiServer, QuietHandler


@dataclass
class Job:
    api: str
    id: str
    number: int
    items: dict[str, dict[str, Any]]  # custom_id -> request body
    polls: int = 0
    results: dict[str, Any] | None = None  # custom_id -> ("ok", body) | ("error", msg) | expire
    status: str = "in_progress"
    created_at: float = field(default_factory=time.time)
    metadata: dict[str, str] = field(default_factory=dict)


class BatchServer(ApiServer):
    def __init__(self) -> None:
        self.llm = LLMServer()  # never started: its script, responder and usage make answers
        self.polls_before_done = 1
        self.outcome: Callable[[Request, Job], str | None] | None = None
        self.jobs: list[Job] = []
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request
        self.garbage_line = b""  # put before the output file's lines (b"{not json\n")
        self._fail: list[int] = []
        self._lock = threading.Lock()

    def handler_class(self) -> type[BaseHTTPRequestHandler]:
        return _handler(self)

    def fail_next(self, *codes: int) -> None:
        with self._lock:
            self._fail.extend(codes)

    def created(self) -> list[Job]:
        return list(self.jobs)

    # -- jobs ---------------------------------------------------------------------------------
    def create(self, api: str, items: dict[str, dict[str, Any]], metadata: Any = None) -> Job:
        with self._lock:
            number = len(self.jobs) + 1
            prefix = "batch_" if api == "openai" else "msgbatch_"
            job = Job(api, f"{prefix}{number:04d}", number, items, metadata=metadata or {})
            self.jobs.append(job)
        return job

    def find(self, job_id: str) -> Job | None:
        return next((j for j in self.jobs if j.id == job_id), None)

    def poll(self, job: Job) -> None:
        with self._lock:
            job.polls += 1
            if job.results is not None or job.polls <= self.polls_before_done:
                return
        results: dict[str, Any] = {}
        for custom_id, body in job.items.items():
            path = "/v1/chat/completions" if job.api == "openai" else "/v1/messages"
            request = Request(job.api, path, {}, body, received_at=time.monotonic())
            verdict = self.outcome(request, job) if self.outcome else None
            if verdict in ("error", "expire"):
                results[custom_id] = (verdict, "scripted item failure")
                continue
            status, payload = _body(job.api, request, self.llm._next(request), self.llm)
            results[custom_id] = ("ok", payload) if status == 200 else ("error", f"HTTP {status}")
        expired = any(kind == "expire" for kind, _ in results.values())
        with self._lock:
            job.results = results
            if job.api == "openai":
                job.status = "expired" if expired else "completed"
            else:
                job.status = "ended"


def _openai_batch(server: BatchServer, job: Job) -> dict[str, Any]:
    done = job.results is not None
    counts = {"total": len(job.items), "completed": 0, "failed": 0}
    output_id = error_id = None
    if done:
        assert job.results is not None
        ok = [(k, v) for k, (kind, v) in job.results.items() if kind == "ok"]
        bad = [(k, kind, v) for k, (kind, v) in job.results.items() if kind != "ok"]
        counts.update(completed=len(ok), failed=len(bad))
        if ok:
            output_id = f"file-out-{job.id}"
            server.files[output_id] = server.garbage_line + "".join(
                json.dumps({"id": f"req_{k[:8]}", "custom_id": k, "error": None,
                            "response": {"status_code": 200, "request_id": "r", "body": v}}) + "\n"
                for k, v in ok
            ).encode()  # fmt: skip
        if bad:
            error_id = f"file-err-{job.id}"
            server.files[error_id] = "".join(
                json.dumps({"id": f"req_{k[:8]}", "custom_id": k, "response": None,
                            "error": {"code": "batch_expired" if kind == "expire"
                                      else "server_error", "message": msg}}) + "\n"
                for k, kind, msg in bad
            ).encode()  # fmt: skip
    return {
        "id": job.id, "object": "batch", "endpoint": "/v1/chat/completions", "errors": None,
        "input_file_id": "file-in", "completion_window": "24h", "status": job.status,
        "output_file_id": output_id, "error_file_id": error_id,
        "created_at": int(job.created_at), "request_counts": counts, "metadata": job.metadata,
    }  # fmt: skip


def _rfc3339(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def _anthropic_batch(server: BatchServer, job: Job) -> dict[str, Any]:
    kinds = [kind for kind, _ in (job.results or {}).values()]
    counts = {
        "processing": 0 if job.results is not None else len(job.items),
        "succeeded": kinds.count("ok"), "errored": kinds.count("error"),
        "canceled": 0, "expired": kinds.count("expire"),
    }  # fmt: skip
    done = job.results is not None
    return {
        "id": job.id, "type": "message_batch", "processing_status": job.status,
        "request_counts": counts, "created_at": _rfc3339(job.created_at),
        "expires_at": _rfc3339(job.created_at + 86400), "archived_at": None,
        "cancel_initiated_at": None, "ended_at": _rfc3339(time.time()) if done else None,
        "results_url": f"{server.anthropic_base_url}/v1/messages/batches/{job.id}/results"
        if done else None,
    }  # fmt: skip


def _anthropic_results(job: Job) -> bytes:
    lines = []
    for custom_id, (kind, value) in (job.results or {}).items():
        if kind == "ok":
            result: dict[str, Any] = {"type": "succeeded", "message": value}
        elif kind == "error":
            result = {"type": "errored", "error": {"type": "error", "error": {
                "type": "api_error", "message": value}}}  # fmt: skip
        else:
            result = {"type": "expired"}
        lines.append(json.dumps({"custom_id": custom_id, "result": result}) + "\n")
    return "".join(lines).encode()


def _multipart(content_type: str, body: bytes) -> dict[str, bytes]:
    message = BytesParser(policy=policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body
    )
    parts: dict[str, bytes] = {}
    for part in message.iter_parts():  # type: ignore[attr-defined]
        name = part.get_param("name", header="content-disposition")
        parts[str(name)] = part.get_payload(decode=True)
    return parts


def _route(server: BatchServer, method: str, path: str, headers: Any, raw: bytes) -> Any:
    """``(status, body bytes or JSON value)`` for one request."""
    path = path.split("?")[0].rstrip("/")
    if method == "POST" and path == "/v1/files":
        data = _multipart(headers.get("content-type", ""), raw)["file"]
        file_id = f"file-in-{len(server.files) + 1}"
        server.files[file_id] = data
        return 200, {"id": file_id, "object": "file", "bytes": len(data), "purpose": "batch",
                     "created_at": int(time.time()), "filename": "batch.jsonl",
                     "status": "processed"}  # fmt: skip
    if method == "POST" and path == "/v1/batches":
        body = json.loads(raw)
        lines = server.files[body["input_file_id"]].decode().splitlines()
        items = {(it := json.loads(line))["custom_id"]: it["body"] for line in lines if line}
        return 200, _openai_batch(server, server.create("openai", items, body.get("metadata")))
    if method == "POST" and path == "/v1/messages/batches":
        items = {r["custom_id"]: r["params"] for r in json.loads(raw)["requests"]}
        return 200, _anthropic_batch(server, server.create("anthropic", items))
    if method == "GET" and (found := re.fullmatch(r"/v1/files/([^/]+)/content", path)):
        data = server.files.get(found.group(1))
        return (200, data) if data is not None else (404, {"error": {"message": "no file"}})
    if method == "GET" and path in ("/v1/batches", "/v1/messages/batches"):
        api = "openai" if path == "/v1/batches" else "anthropic"
        render = _openai_batch if api == "openai" else _anthropic_batch
        data = [render(server, j) for j in reversed(server.jobs) if j.api == api]  # newest first
        ids = [d["id"] for d in data]
        return 200, {"object": "list", "data": data, "has_more": False,
                     "first_id": ids[0] if ids else None, "last_id": ids[-1] if ids else None}  # fmt: skip
    found = re.fullmatch(r"/v1/(batches|messages/batches)/([^/]+)(/results)?", path)
    job = server.find(found.group(2)) if found and method == "GET" else None
    if found is None or job is None:
        return 404, {"error": {"message": f"not found: {method} {path}"}}
    if found.group(3):
        return 200, _anthropic_results(job)
    server.poll(job)
    return 200, _openai_batch(server, job) if job.api == "openai" else _anthropic_batch(server, job)


def _handler(server: BatchServer) -> type[BaseHTTPRequestHandler]:
    class Handler(QuietHandler):
        def _serve(self, method: str) -> None:
            raw = self.rfile.read(int(self.headers.get("content-length", 0)))
            with server._lock:
                server.requests.append((method, self.path))
                fail = server._fail.pop(0) if server._fail else None
            if fail is not None:
                status, payload = fail, {"error": {"message": "scripted failure", "type": "error"}}
            else:
                status, payload = _route(server, method, self.path, self.headers, raw)
            self.send_payload(status, payload, {"retry-after": "0"} if fail == 429 else {})

        def do_GET(self) -> None:  # noqa: N802
            self._serve("GET")

        def do_POST(self) -> None:  # noqa: N802
            self._serve("POST")

    return Handler


__all__ = ["BatchServer", "Job", "Reply"]
