"""The one base of the tests' scripted HTTP servers (LLM, batch API, VLM, media): a threaded
server on a free loopback port, started and stopped the same way, and a quiet handler base."""

from __future__ import annotations

import contextlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self


class QuietHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that gave up (timeout, cut reply) closed its socket: what the test wanted


class QuietHandler(BaseHTTPRequestHandler):
    """Keep-alive, no access log, and one way to answer."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:
        pass

    def send_payload(
        self, status: int, payload: Any, headers: dict[str, str] | None = None
    ) -> None:
        """Answer ``payload`` (bytes as they are, anything else as JSON); a client that hung up
        meanwhile is not an error."""
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.send_response(status)
            for name, value in {"content-type": "application/json", **(headers or {})}.items():
                self.send_header(name, value)
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)


class LoopbackServer:
    """Serve ``handler_class()`` on 127.0.0.1 at a free port; ``with`` or ``start``/``stop``."""

    _httpd: QuietHTTPServer | None = None

    def handler_class(self) -> type[BaseHTTPRequestHandler]:
        raise NotImplementedError

    def start(self) -> Self:
        self._httpd = QuietHTTPServer(("127.0.0.1", 0), self.handler_class())
        thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._httpd is not None, "start() the server first"
        return int(self._httpd.server_address[1])

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class ApiServer(LoopbackServer):
    """A loopback server speaking OpenAI's API under ``/v1`` (and Anthropic's at the root)."""

    @property
    def base_url(self) -> str:
        return f"{self.origin}/v1"

    @property
    def anthropic_base_url(self) -> str:
        return self.origin
