"""A scripted LLM endpoint on loopback that speaks the OpenAI chat completions API and the Anthropic
messages API, for tests and benchmarks (no network, real HTTP, the real ``openai``/``anthropic``
clients on the other side).

    from llm_server import LLMServer, Reply     # tests/ is on sys.path under pytest

    with LLMServer() as server:                 # default mode: every request gets a valid answer
        settings.aggregate.base_url = server.base_url            # OpenAI: http://127.0.0.1:PORT/v1
        # Anthropic: provider="anthropic", base_url=server.anthropic_base_url (no /v1)
        server.script(Reply.status(429, retry_after=0.2), Reply.text("not json"))  # next replies
        server.responder = lambda req: Reply.text("no") if req.segment == "[0.0s-8.0s]" else None
        ...
        server.requests            # every request received: api, path, headers, body, prompt
        server.delay = 0.05        # every answer waits this long (requests overlap)
        server.max_in_flight       # the most requests the server held at once

Replies: ``Reply.valid()`` (the default; in the release's nested structure when the request binds
the answer to a schema, as a tool call for Anthropic), ``Reply.text(str)``, ``Reply.json(obj)``,
``Reply.status(code, retry_after=None)``, ``Reply.hang(seconds)``, ``Reply.garbage()`` (HTTP 200
whose body is not JSON), ``Reply.raw(payload)`` (HTTP 200 with that JSON body as is: no choices,
null usage, ...), ``Reply.refusal(text)``. Scripted replies are used first, in order; then
``responder`` (return None to fall through); then ``mode`` (``"valid"`` or ``"error"``: HTTP 500).
``api_key`` set: requests without that key get 401. Usage reports tokens as characters / 4, and
simulates prompt caching: OpenAI-style prefix caching (prompts from 1024 tokens, whole 128-token
steps) and Anthropic ``cache_control`` breakpoints (cache reads and writes).
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

from inflight import InFlight
from loopback import ApiServer, QuietHandler

FIELDS = ("brief_action", "detailed_action", "actor", "brief_caption", "detailed_caption")
BLOCK = 512  # characters per hashed block of the simulated OpenAI prefix cache
MIN_CACHE_TOKENS = 1024


@dataclass
class Reply:
    kind: str = "valid"
    answer: str = ""
    code: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    payload: Any = None

    @classmethod
    def valid(cls) -> Reply:
        return cls("valid")

    @classmethod
    def text(cls, text: str) -> Reply:
        return cls("text", answer=text)

    @classmethod
    def json(cls, value: Any) -> Reply:
        return cls("text", answer=json.dumps(value))

    @classmethod
    def status(cls, code: int, retry_after: float | None = None) -> Reply:
        headers = {} if retry_after is None else {"retry-after": f"{retry_after:g}"}
        return cls("status", code=code, headers=headers)

    @classmethod
    def hang(cls, seconds: float = 30.0) -> Reply:
        return cls("hang", seconds=seconds)

    @classmethod
    def garbage(cls) -> Reply:
        return cls("garbage")

    @classmethod
    def raw(cls, payload: Any) -> Reply:
        return cls("raw", payload=payload)

    @classmethod
    def refusal(cls, text: str = "I'm sorry, I can't help with that.") -> Reply:
        return cls("refusal", answer=text)


@dataclass
class Request:
    api: str  # "openai" | "anthropic"
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    received_at: float = 0.0  # time.monotonic() when the request arrived (the same clock as
    # the rate limiter's, in this process)

    @property
    def segments(self) -> list[tuple[str, bool]]:
        """Every text sent, in order, each with whether a cache breakpoint follows it."""
        out: list[tuple[str, bool]] = []
        system = self.body.get("system")
        for item in [{"role": "system", "content": system}] if system else []:
            out += _texts(item["content"])
        for message in self.body.get("messages", []):
            out += _texts(message.get("content"))
        return out

    @property
    def prompt(self) -> str:
        return "\n".join(text for text, _ in self.segments)

    @property
    def turns(self) -> list[dict[str, Any]]:
        return list(self.body.get("messages", []))

    @property
    def schema(self) -> dict[str, Any] | None:
        """The answer's JSON schema the request binds the model to (OpenAI ``response_format``
        json_schema, or Anthropic's forced tool), else None."""
        tools = self.body.get("tools")
        if tools:
            return tools[0].get("input_schema")
        response_format = self.body.get("response_format") or {}
        if response_format.get("type") == "json_schema":
            return response_format["json_schema"]["schema"]
        return None

    @property
    def segment(self) -> str | None:
        """The span the prompt asks about (``"[4.0s-12.0s]"``): the first heading after "Segment
        to annotate" (ours) or "segment to be processed" (the release's prompt module)."""
        found = re.search(
            r"(?i)segment to (?:annotate|be processed)[\s#:]*(\[[^\]]*\])", self.prompt
        )
        return found.group(1) if found else None

    @property
    def answers_so_far(self) -> list[str]:
        """The assistant turns sent back (a draft being refined, an answer being repaired)."""
        return [_texts(m.get("content"))[0][0] for m in self.turns if m.get("role") == "assistant"]

    @property
    def last_user(self) -> str:
        users = [m for m in self.turns if m.get("role") == "user"]
        return "\n".join(text for text, _ in _texts(users[-1].get("content"))) if users else ""


def _texts(content: Any) -> list[tuple[str, bool]]:
    if isinstance(content, str):
        return [(content, False)]
    return [(b.get("text", ""), "cache_control" in b) for b in content or [] if isinstance(b, dict)]


def valid_answer(request: Request) -> dict[str, str]:
    """Five fields naming the segment the prompt asks about and a version: one more than the
    answer being refined (``v1`` for a draft)."""
    previous = request.answers_so_far[-1] if request.answers_so_far else ""
    found = re.search(r" v(\d+)\"", previous)
    version = int(found.group(1)) + 1 if found else len(request.answers_so_far) + 1
    return {name: f"{name} of {request.segment or '[?]'} v{version}" for name in FIELDS}


class LLMServer(ApiServer):
    def __init__(self, mode: str = "valid", api_key: str | None = None) -> None:
        self.mode = mode
        self.api_key = api_key
        self.responder: Callable[[Request], Reply | None] | None = None
        self.requests: list[Request] = []
        self.delay = 0.0  # seconds every answer waits before it is sent
        self.in_flight = InFlight()
        self._script: list[Reply] = []
        self._seen: set[str] = set()
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    # -- lifecycle ------------------------------------------------------------------------------
    def handler_class(self) -> type[BaseHTTPRequestHandler]:
        return _handler(self)

    def stop(self) -> None:
        self._stopping.set()  # ends the waits of hanging answers first
        super().stop()

    @property
    def max_in_flight(self) -> int:
        return self.in_flight.most

    # -- scripting ------------------------------------------------------------------------------
    def script(self, *replies: Reply) -> None:
        with self._lock:
            self._script.extend(replies)

    def reset(self) -> None:
        with self._lock:
            self._script.clear()
            self.requests.clear()
            self._seen.clear()
        self.in_flight.reset()

    def _next(self, request: Request) -> Reply:
        with self._lock:
            self.requests.append(request)
            if self._script:
                return self._script.pop(0)
        if self.responder is not None:
            reply = self.responder(request)
            if reply is not None:
                return reply
        return Reply.valid() if self.mode == "valid" else Reply.status(500)

    # -- simulated prompt caching -----------------------------------------------------------
    def _cached_openai(self, text: str) -> int:
        digest, hits, counting = hashlib.sha256(), 0, True
        with self._lock:
            for i in range(0, len(text) - len(text) % BLOCK, BLOCK):
                digest.update(text[i : i + BLOCK].encode())
                key = "o" + digest.hexdigest()
                counting = counting and key in self._seen
                hits += counting
                self._seen.add(key)
        tokens = hits * BLOCK // 4
        return 0 if len(text) // 4 < MIN_CACHE_TOKENS else tokens - tokens % 128

    def _cached_anthropic(self, segments: list[tuple[str, bool]]) -> tuple[int, int]:
        read = written = 0
        prefix = ""
        digest = hashlib.sha256()
        with self._lock:
            for text, breakpoint in segments:
                prefix += text
                digest.update(text.encode())
                if not breakpoint or len(prefix) // 4 < MIN_CACHE_TOKENS:
                    continue
                key = "a" + digest.hexdigest()
                if key in self._seen:
                    read, written = len(prefix) // 4, 0
                else:
                    written = len(prefix) // 4 - read
                    self._seen.add(key)
        return read, written

    def usage(self, request: Request, answer: str) -> dict[str, Any]:
        prompt = request.prompt
        total, out = len(prompt) // 4 + 1, len(answer) // 4 + 1
        if request.api == "openai":
            cached = self._cached_openai(prompt)
            return {
                "prompt_tokens": total,
                "completion_tokens": out,
                "total_tokens": total + out,
                "prompt_tokens_details": {"cached_tokens": cached},
            }
        read, written = self._cached_anthropic(request.segments)
        return {
            "input_tokens": max(total - read - written, 0),
            "output_tokens": out,
            "cache_read_input_tokens": read,
            "cache_creation_input_tokens": written,
        }

    def wait(self, seconds: float) -> None:
        self._stopping.wait(seconds)


def nested(fields: dict[str, str]) -> dict[str, dict[str, str]]:
    """Five flat fields in the release's nested structure, as a schema-bound decoder answers."""
    return {
        "summary": {"brief": fields["brief_caption"], "detailed": fields["detailed_caption"]},
        "action": {
            "brief": fields["brief_action"],
            "detailed": fields["detailed_action"],
            "actor": fields["actor"],
        },
    }


def _anthropic_block(request: Request, reply: Reply, answer: str) -> dict[str, Any]:
    if request.schema is None or reply.kind != "valid":
        return {"type": "text", "text": answer}
    name = request.body["tools"][0]["name"]
    return {"type": "tool_use", "id": "toolu_1", "name": name, "input": json.loads(answer)}


def _body(api: str, request: Request, reply: Reply, server: LLMServer) -> tuple[int, Any]:
    if reply.kind == "status":
        message = {401: "invalid api key", 429: "rate limited"}.get(reply.code, "server error")
        if api == "openai":
            return reply.code, {"error": {"message": message, "type": "error", "code": None}}
        return reply.code, {"type": "error", "error": {"type": "api_error", "message": message}}
    structured = request.schema is not None
    answer = (
        reply.answer
        if reply.kind in ("text", "refusal")
        else json.dumps(nested(valid_answer(request)) if structured else valid_answer(request))
    )
    model = request.body.get("model", "scripted")
    usage = server.usage(request, answer)
    if api == "openai":
        refused = reply.kind == "refusal"
        message = {
            "role": "assistant",
            "content": None if refused else answer,
            "refusal": answer if refused else None,
        }
        choice = {"index": 0, "message": message, "finish_reason": "stop"}
        return 200, {
            "id": f"chatcmpl-{len(server.requests)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [choice],
            "usage": usage,
        }
    return 200, {
        "id": f"msg_{len(server.requests)}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [_anthropic_block(request, reply, answer)],
        "stop_reason": "refusal"
        if reply.kind == "refusal"
        else ("tool_use" if structured and reply.kind == "valid" else "end_turn"),
        "stop_sequence": None,
        "usage": usage,
    }


def _handler(server: LLMServer) -> type[BaseHTTPRequestHandler]:
    class Handler(QuietHandler):
        def _send(self, status: int, payload: bytes, headers: dict[str, str]) -> None:
            self._leave()  # before the answer goes out: the client may send its next one at once
            self.send_payload(status, payload, headers)

        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            length = int(self.headers.get("content-length", 0))
            body = json.loads(self.rfile.read(length) or b"{}")
            self._leave = server.in_flight.enter()
            try:
                self._answer(body)
            finally:
                self._leave()

        def _leave(self) -> None:  # replaced per request by the in-flight count's own
            pass

        def _answer(self, body: dict[str, Any]) -> None:
            api = "anthropic" if self.path.rstrip("/").endswith("/messages") else "openai"
            headers = {k.lower(): v for k, v in self.headers.items()}
            request = Request(api, self.path, headers, body, received_at=time.monotonic())
            key = headers.get("x-api-key") or headers.get("authorization", "").removeprefix(
                "Bearer "
            )
            reply = self._choose(request, key)
            if server.delay:
                server.wait(server.delay)
            if reply.kind == "hang":
                server.wait(reply.seconds)
                reply = Reply.valid()
            if reply.kind == "garbage":
                self._send(200, b"{this is not json", {})
                return
            if reply.kind == "raw":
                self._send(200, json.dumps(reply.payload).encode(), {})
                return
            status, payload = _body(api, request, reply, server)
            self._send(status, json.dumps(payload).encode(), reply.headers)

        def _choose(self, request: Request, key: str) -> Reply:
            if server.api_key is not None and key != server.api_key:
                with server._lock:
                    server.requests.append(request)
                return Reply.status(401)
            return server._next(request)

    return Handler
