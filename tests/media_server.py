"""A scripted media site on loopback for the fetch stage's tests: real HTTP, yt-dlp's own
extractors on the other side (its generic ``html5`` extractor reads a page's ``<video>`` and
``<track>``), no network.

    from media_server import MediaServer, Reply

    with MediaServer() as site:
        site.add("clip.mp4", data, "video/mp4")              # any file, served with Range support
        site.page("watch", "clip.mp4", title="A title", tracks={"en": "clip.en.vtt"})
        site.script("clip.mp4", Reply.status(429), Reply.cut())   # the next answers, in order
        site.url("watch")                                    # http://127.0.0.1:PORT/watch
        site.requests                                        # (method, path, range) received
        site.cookies                                         # Cookie headers received

Replies: ``Reply.status(code)`` (an error page), ``Reply.cut()`` (a full ``Content-Length``, then
half the bytes and a closed connection). Scripted replies go first; then the file itself.
"""

from __future__ import annotations

import contextlib
import html
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler

from loopback import LoopbackServer, QuietHandler


@dataclass(frozen=True)
class Reply:
    kind: str
    code: int = 200

    @classmethod
    def status(cls, code: int) -> Reply:
        return cls("status", code)

    @classmethod
    def cut(cls) -> Reply:
        return cls("cut")


class MediaServer(LoopbackServer):
    def __init__(self) -> None:
        self.files: dict[str, tuple[bytes, str]] = {}
        self.scripts: dict[str, list[Reply]] = {}
        self.requests: list[tuple[str, str, str | None]] = []
        self.cookies: list[str] = []  # every Cookie header received
        self._lock = threading.Lock()

    def handler_class(self) -> type[BaseHTTPRequestHandler]:
        return _handler(self)

    def url(self, name: str) -> str:
        return f"{self.origin}/{name}"

    def add(self, name: str, data: bytes | str, content_type: str) -> None:
        self.files[name] = (data.encode() if isinstance(data, str) else data, content_type)

    def page(
        self, name: str, video: str, *, title: str, tracks: dict[str, str] | None = None
    ) -> None:
        """An HTML page with one ``<video>`` of ``video`` and a subtitle ``<track>`` per
        language."""
        lines = [f'<track kind="subtitles" srclang="{lang}" src="{src}">'
                 for lang, src in (tracks or {}).items()]  # fmt: skip
        body = (
            f"<!DOCTYPE html><html><head><title>{html.escape(title)}</title></head><body>"
            f'<video controls><source src="{video}" type="video/mp4">{"".join(lines)}</video>'
            "</body></html>"
        )
        self.add(name, body, "text/html; charset=utf-8")

    def script(self, name: str, *replies: Reply) -> None:
        with self._lock:
            self.scripts.setdefault(name, []).extend(replies)

    def next_reply(self, name: str) -> Reply | None:
        with self._lock:
            queue = self.scripts.get(name) or []
            return queue.pop(0) if queue else None

    def count(self, name: str) -> int:
        return sum(1 for _, path, _ in self.requests if path == name)


def _handler(site: MediaServer) -> type[BaseHTTPRequestHandler]:
    class Handler(QuietHandler):
        def do_HEAD(self) -> None:  # noqa: N802 (http.server's naming)
            self.answer(body=False)

        def do_GET(self) -> None:  # noqa: N802
            self.answer(body=True)

        def answer(self, body: bool) -> None:
            name = self.path.lstrip("/").split("?", 1)[0]
            site.requests.append((self.command, name, self.headers.get("Range")))
            if self.headers.get("Cookie"):
                site.cookies.append(self.headers["Cookie"])
            reply = site.next_reply(name)
            if name not in site.files or (reply and reply.kind == "status"):
                code = reply.code if reply else 404
                self.plain(code, f"error {code}", body)
                return
            data, content_type = site.files[name]
            start, code = _range_start(self.headers.get("Range"), len(data))
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Length", str(len(data) - start))
            if code == 206:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.end_headers()
            if not body:
                return
            if reply and reply.kind == "cut":  # half the promised bytes, then hang up
                with contextlib.suppress(OSError):
                    self.wfile.write(data[start : start + (len(data) - start) // 2])
                    self.wfile.flush()
                self.close_connection = True
                return
            with contextlib.suppress(OSError):
                self.wfile.write(data[start:])

        def plain(self, code: int, text: str, body: bool) -> None:
            payload = text.encode()
            self.send_response(code)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(payload)))
            if code == 429:
                self.send_header("Retry-After", "0")
            self.end_headers()
            if body:
                self.wfile.write(payload)

    return Handler


def _range_start(header: str | None, size: int) -> tuple[int, int]:
    """Where a ``bytes=N-`` request starts, and the status (206 for a range, else 200)."""
    if header and header.startswith("bytes="):
        first = header[len("bytes=") :].split("-", 1)[0]
        if first.isdigit() and int(first) < size:
            return int(first), 206
    return 0, 200


@contextlib.contextmanager
def media_server() -> Iterator[MediaServer]:
    with MediaServer() as site:
        yield site
