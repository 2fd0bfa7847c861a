"""Transcripts in the release's form, ``[{"time": "1.92", "text": "..."}]`` (seconds as a string,
two decimals at most), from the sources a fetched video has: a subtitle track (WebVTT), speech
recognition, or HowTo100M's own ASR file (``raw_caption.json``, read streaming).

:func:`pick_track` chooses the track: manual subtitles in the video's language, then manual ones
in ``fetch.subtitle_langs``, then automatic captions in those languages.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterable, Iterator
from typing import IO, Any

_TIMING = re.compile(
    r"^\s*((?:\d+:)?\d{1,2}:\d{2}[.,]\d{1,3})\s+-->\s+((?:\d+:)?\d{1,2}:\d{2}[.,]\d{1,3})"
)
_TAG = re.compile(r"<[^>]*>")


def seconds_text(seconds: float) -> str:
    """The release's time: ``1.92``, ``0.0``, ``39.2``."""
    return str(round(max(0.0, float(seconds)), 2))


def line(seconds: float, text: str) -> dict[str, str]:
    return {"time": seconds_text(seconds), "text": text}


def _seconds(stamp: str) -> float:
    parts = stamp.replace(",", ".").split(":")
    value = 0.0
    for part in parts:
        value = value * 60 + float(part)
    return value


def parse_webvtt(text: str) -> list[dict[str, str]]:
    """The cues of a WebVTT file as transcript lines, tags and entities removed. YouTube's
    automatic captions repeat the previous line in each cue (a rolling display): a line equal to
    one of the last two kept is dropped, so each spoken line appears once, at its first cue."""
    lines: list[dict[str, str]] = []
    recent: list[str] = []
    # Cues end at an empty line; YouTube's hold lines of one space, which are not empty.
    blocks = re.split(r"(?:\r?\n){2,}", text.replace("\ufeff", ""))
    for block in blocks:
        rows = block.splitlines()
        timing = next((i for i, row in enumerate(rows) if _TIMING.match(row)), None)
        if timing is None:
            continue  # the header, NOTE, STYLE and REGION blocks
        start = _seconds(_TIMING.match(rows[timing]).group(1))  # type: ignore[union-attr]
        for row in rows[timing + 1 :]:
            words = " ".join(html.unescape(_TAG.sub("", row)).split())
            if not words or words in recent:
                continue
            lines.append(line(start, words))
            recent = [*recent[-1:], words]
    return lines


def _match(tracks: dict[str, Any], lang: str) -> str | None:
    """The key of ``tracks`` for ``lang``: exact, else a regional variant (``en`` -> ``en-US``)."""
    lang = lang.lower()
    exact = next((key for key in tracks if key.lower() == lang), None)
    return exact or next((key for key in tracks if key.lower().startswith(lang + "-")), None)


def pick_track(info: dict[str, Any], langs: Iterable[str]) -> dict[str, str] | None:
    """``{kind, lang, url}`` of the WebVTT track to read (``kind``: ``subtitles`` or
    ``automatic_captions``), or None where the video has none in these languages."""
    wanted = [lang for lang in langs if lang]
    own = info.get("language")
    choices = [("subtitles", lang) for lang in ([own] if own else []) + wanted]
    choices += [("automatic_captions", lang) for lang in wanted]
    for kind, lang in choices:
        tracks = {k: v for k, v in (info.get(kind) or {}).items() if k != "live_chat"}
        key = _match(tracks, lang)
        formats = tracks.get(key) if key else None
        vtt = [f for f in formats or [] if f.get("ext") == "vtt" and f.get("url")]
        if vtt:
            return {"kind": kind, "lang": str(key), "url": str(vtt[-1]["url"])}
    return None


def from_segments(segments: Iterable[tuple[float, str]], offset: float = 0.0) -> list[dict]:
    """Transcript lines from ``(start seconds, text)`` pairs (speech recognition's segments)."""
    found = []
    for start, text in segments:
        words = " ".join(str(text).split())
        if words:
            found.append(line(offset + start, words))
    return found


def _objects(stream: IO[str], chunk: int) -> Iterator[tuple[str, Any]]:
    """``(key, value)`` of a top-level JSON object, one member at a time, holding only the
    member being read: a multi-gigabyte file never sits in memory."""
    decoder, buffer, position, eof, state = json.JSONDecoder(), "", 0, False, "start"
    while True:
        while position < len(buffer) and buffer[position].isspace():
            position += 1
        if position >= len(buffer) or state == "member":
            if position >= len(buffer) and eof:
                raise ValueError("raw_caption: the JSON ends early")
            if state == "member":
                try:
                    key, after = decoder.raw_decode(buffer, position)
                    after = _skip_space(buffer, after)
                    if buffer[after : after + 1] != ":":
                        raise ValueError("no colon yet")
                    value, end = decoder.raw_decode(buffer, _skip_space(buffer, after + 1))
                except (ValueError, IndexError):
                    if eof:
                        raise ValueError("raw_caption: the JSON ends inside a member") from None
                else:
                    yield str(key), value
                    position, state = end, "after"
                    continue
            data = stream.read(chunk)
            buffer, position, eof = buffer[position:] + data, 0, not data
            continue
        char = buffer[position]
        position += 1
        if state == "start" and char == "{":
            state = "first"
        elif state in ("first", "after") and char == "}":
            return
        elif state == "first":
            position, state = position - 1, "member"
        elif state == "after" and char == ",":
            state = "member"
        else:
            raise ValueError(f"raw_caption: unexpected {char!r} in the JSON")


def _skip_space(text: str, position: int) -> int:
    while position < len(text) and text[position].isspace():
        position += 1
    return position


def read_raw_captions(
    stream: IO[str], wanted: Iterable[str] | None = None, chunk: int = 1 << 20
) -> Iterator[tuple[str, list[dict[str, str]]]]:
    """``(video_id, transcript)`` from HowTo100M's ``raw_caption.json``
    (``{video_id: {start: [...], end: [...], text: [...]}}``), streaming; with ``wanted``, only
    those videos (and the reading stops once every one was found)."""
    remaining = set(wanted) if wanted is not None else None
    for video_id, value in _objects(stream, chunk):
        if remaining is not None and video_id not in remaining:
            continue
        if isinstance(value, dict):
            starts, texts = value.get("start") or [], value.get("text") or []
            yield video_id, from_segments(zip(map(float, starts), texts, strict=False))
        if remaining is not None:
            remaining.discard(video_id)
            if not remaining:
                return
