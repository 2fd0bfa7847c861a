"""Downloads through yt-dlp's Python API: one video at most ``fetch.max_height`` lines into a
local folder, its info dict, and the text of one subtitle track the caller picks.

Only hosts in ``fetch.allowed_hosts`` are fetched (:func:`check_url`). Every failure becomes one
line naming the video: a :class:`PermanentError` where trying again cannot help (unavailable,
private, removed, age- or region-restricted, a bot check, 404, 403) or a :class:`ServiceError`
where it may (HTTP 429 and 5xx, a dropped connection), after yt-dlp's own retries. Cookies and
a proxy come as secrets (:class:`~action100m.services.FetchAccess`) and never reach a log line.
"""

from __future__ import annotations

import logging
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from action100m.config import FetchConfig
from action100m.errors import PermanentError, ServiceError, redact
from action100m.services import FetchAccess

log = logging.getLogger(__name__)
RETRYABLE_STATUS = frozenset({408, 425, 429})
_HTTP_STATUS = re.compile(r"HTTP Error (\d{3})")
_NOISE = re.compile(
    r"^(ERROR:\s*)?(\[[\w:]+\]\s*)?|;? ?please report this issue on .*$", re.I | re.S
)


@dataclass
class Downloaded:
    path: Path
    info: dict[str, Any]


def check_url(video_id: str, url: str, allowed_hosts: list[str]) -> str:
    """``url`` if it is ``http(s)`` on an allowed host, else a one-line PermanentError: a run's
    parameters must not make a worker fetch internal addresses."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower().strip(".")
    if parts.scheme not in ("http", "https") or not host:
        raise PermanentError(f"video {video_id}: {redact(url)} is not an http(s) URL")
    if parts.username or parts.password:
        raise PermanentError(f"video {video_id}: {redact(url)}: credentials in a URL are refused")
    if host not in allowed_hosts:
        raise PermanentError(
            f"video {video_id}: host {host} is not in fetch.allowed_hosts "
            f"({', '.join(allowed_hosts) or 'none'}); add it with --set fetch.allowed_hosts=..."
        )
    return url


def video_format(max_height: int, can_merge: bool) -> str:
    """yt-dlp's format selector: the best file at most ``max_height`` lines (a height unknown
    counts as fitting); separate video and audio streams only where ffmpeg can merge them."""
    single = f"b[height<=?{max_height}][ext=mp4]/b[height<=?{max_height}]"
    merged = f"bv*[height<=?{max_height}][ext=mp4]+ba[ext=m4a]/bv*[height<=?{max_height}]+ba"
    return f"{merged}/{single}/w" if can_merge else f"{single}/w"


class _Logger:
    """yt-dlp's messages into ours, redacted; its errors become our exceptions instead."""

    def debug(self, message: str) -> None:
        log.debug("yt-dlp: %s", redact(message))

    def info(self, message: str) -> None:
        log.debug("yt-dlp: %s", redact(message))

    def warning(self, message: str) -> None:
        if "Falling back on generic information extractor" not in message:
            log.warning("yt-dlp: %s", redact(message))

    def error(self, message: str) -> None:
        log.debug("yt-dlp: %s", redact(message))


def options(cfg: FetchConfig, folder: Path, access: FetchAccess) -> dict[str, Any]:
    """The ``YoutubeDL`` parameters of one download into ``folder``."""
    wait = cfg.retry_wait

    def backoff(n: int) -> float:  # yt-dlp passes the try's number as ``n``
        return float(min(wait * 2**n, 120.0))

    params: dict[str, Any] = {
        "logger": _Logger(),
        "quiet": True,
        "noprogress": True,
        "noplaylist": True,
        "color": {"stdout": "no_color", "stderr": "no_color"},
        "paths": {"home": str(folder), "temp": str(folder)},
        "outtmpl": {"default": "video.%(ext)s"},
        "format": video_format(cfg.max_height, shutil.which("ffmpeg") is not None),
        "merge_output_format": "mp4",
        "retries": cfg.retries,
        "fragment_retries": cfg.retries,
        "extractor_retries": cfg.retries,
        "file_access_retries": 1,
        "retry_sleep_functions": {"http": backoff, "fragment": backoff, "extractor": backoff},
        "socket_timeout": cfg.socket_timeout,
        "sleep_interval_requests": cfg.sleep_requests or None,
        "ratelimit": cfg.rate_limit,
        "continuedl": True,
        "overwrites": False,
        "cachedir": False,
    }
    deno = _deno()
    if deno:  # YouTube's player needs JavaScript run (yt-dlp-ejs); found beside us, not on PATH
        params["js_runtimes"] = {"deno": {"path": deno}}
    if access.proxy is not None:
        params["proxy"] = access.proxy.get_secret_value()
    if access.cookies is not None:
        cookies = folder / "cookies.txt"  # removed with the folder; yt-dlp reads a file
        cookies.touch(mode=0o600)
        cookies.write_text(access.cookies.get_secret_value())
        params["cookiefile"] = str(cookies)
    return params


def _deno() -> str | None:
    """The Deno binary yt-dlp runs YouTube's scripts with: on PATH, else the ``deno`` package's."""
    found = shutil.which("deno")
    if found:
        return found
    try:
        import deno  # type: ignore[import-untyped]
    except ImportError:
        return None
    path = deno.find_deno_bin()
    return str(path) if path else None


def download(
    video_id: str,
    url: str,
    folder: Path,
    cfg: FetchConfig,
    access: FetchAccess,
    pick: Callable[[dict[str, Any]], str | None] | None = None,
) -> tuple[Downloaded, bytes | None]:
    """Download ``url`` into ``folder``; ``pick`` chooses a subtitle URL from the info dict,
    whose bytes come back too (through the same proxy and cookies)."""
    import yt_dlp
    from yt_dlp.utils import YoutubeDLError

    check_url(video_id, url, cfg.allowed_hosts)
    with yt_dlp.YoutubeDL(options(cfg, folder, access)) as ydl:
        try:
            info = _single(video_id, ydl.extract_info(url, download=False))
            if info.get("is_live") or info.get("live_status") in ("is_live", "is_upcoming"):
                raise PermanentError(f"video {video_id}: {url} is a live stream, not a video")
            track = pick(info) if pick else None
            subtitles = _subtitles(ydl, video_id, track) if track else None
            info = ydl.process_ie_result(info, download=True)
        except (YoutubeDLError, OSError) as exc:
            raise failure(video_id, url, exc) from None
    files = [
        Path(d["filepath"]) for d in info.get("requested_downloads") or [] if d.get("filepath")
    ]
    if not files or not files[0].is_file() or files[0].stat().st_size == 0:
        raise ServiceError(f"video {video_id}: yt-dlp finished {url} without a file")
    return Downloaded(files[0], info), subtitles


def _subtitles(ydl: Any, video_id: str, url: str) -> bytes | None:
    """A subtitle track's bytes; one the site refuses (404, 403) is done without, one it
    throttles (429, 5xx) fails the try like the video would."""
    from yt_dlp.networking.exceptions import HTTPError

    try:
        data: bytes = ydl.urlopen(url).read()
    except HTTPError as exc:
        if exc.status in RETRYABLE_STATUS or exc.status >= 500:
            raise
        log.warning("video %s: subtitles refused (HTTP %s); going on without", video_id,
                    exc.status)  # fmt: skip
        return None
    return data


def _single(video_id: str, info: dict[str, Any] | None) -> dict[str, Any]:
    """The one video of an info dict (a page holding exactly one video counts)."""
    if info is None:
        raise PermanentError(f"video {video_id}: yt-dlp found no video")
    if info.get("_type") in ("playlist", "multi_video"):
        entries = [e for e in info.get("entries") or [] if e]
        if len(entries) != 1:
            raise PermanentError(
                f"video {video_id}: the page holds {len(entries)} videos; give one video's URL"
            )
        return dict(entries[0])
    return info


def _chain(exc: BaseException) -> list[BaseException]:
    """The exception and what caused it, through yt-dlp's ``exc_info`` and ``cause``."""
    found: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not seen for seen in found):
        found.append(current)
        exc_info = getattr(current, "exc_info", None)
        nxt = getattr(current, "cause", None) or (exc_info[1] if exc_info else None)
        nxt = nxt or current.__cause__ or current.__context__
        current = nxt if isinstance(nxt, BaseException) else None
    return found


def retryable(exc: BaseException) -> bool:
    """Whether trying again later may succeed: HTTP 408/425/429/5xx or a network failure."""
    from yt_dlp.networking.exceptions import HTTPError, TransportError
    from yt_dlp.utils import ContentTooShortError

    for error in _chain(exc):
        if isinstance(error, HTTPError):
            return error.status in RETRYABLE_STATUS or error.status >= 500
        if isinstance(
            error, TransportError | ContentTooShortError | ConnectionError | TimeoutError
        ):
            return True
    statuses = [int(code) for code in _HTTP_STATUS.findall(str(exc))]
    return any(code in RETRYABLE_STATUS or code >= 500 for code in statuses)


def failure(video_id: str, url: str, exc: BaseException) -> PermanentError | ServiceError:
    """One line for a failed download: permanent, or worth another try."""
    text = " ".join(str(exc).replace("\r", " ").split())
    text = _NOISE.sub("", text).strip() or type(exc).__name__
    if re.search(r"not a bot|sign in to confirm", text, re.I):
        text += " (give the fetch cookies of a signed-in account: see the README)"
    message = f"video {video_id}: cannot fetch {redact(url)}: {redact(text)[:300]}"
    return ServiceError(message) if retryable(exc) else PermanentError(message)


def stored_info(info: dict[str, Any]) -> dict[str, Any]:
    """What the store keeps of an info dict: where the video came from and which file this is
    (no format URLs, headers or cookies)."""
    keep = ("id", "webpage_url", "extractor", "title", "uploader", "channel_id", "language",
            "format_id", "ext", "width", "height", "fps", "duration", "upload_date")  # fmt: skip
    return {key: info[key] for key in keep if info.get(key) is not None}


def metadata_from_info(info: dict[str, Any]) -> dict[str, Any]:
    """The release's metadata fields from yt-dlp's info dict (the transcript is added apart)."""
    fields = ("title", "description", "view_count", "like_count", "duration", "upload_date")
    found = {name: info.get(name) for name in fields if info.get(name) is not None}
    duration = found.get("duration")
    if isinstance(duration, float) and duration.is_integer():
        found["duration"] = int(duration)
    return found
