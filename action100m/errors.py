"""Errors the pipeline raises on purpose, each with a one-line message naming the video and cause.

``PermanentError`` marks what a retry cannot fix (a corrupt video, a bad key): Airflow tasks fail at
once instead of retrying. Anything else (a dead server, a 5xx storm) is worth a retry.

Every message goes through :func:`redact`: credentials inside a URL (``http://user:key@host``), key
parameters (``?api_key=...``), bearer tokens and ``sk-...`` keys never reach a log line, an XCom,
the run report or a terminal.
"""

from __future__ import annotations

import logging
import re

_REDACTIONS = (
    (re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)[^/\s@]+@"), r"\g<scheme>***@"),
    (
        re.compile(r"(?i)\b(api[_-]?key|access[_-]?token|token|secret|password|sig)=[^&\s]+"),
        r"\1=***",
    ),
    (re.compile(r"(?i)\bBearer\s+[A-Za-z0-9._~+/=-]+"), "Bearer ***"),
    (re.compile(r"\bsk-[A-Za-z0-9_-]{6,}"), "sk-***"),
)


def redact(text: str) -> str:
    """``text`` with credentials in URLs, key parameters, bearer tokens and keys masked."""
    for pattern, replacement in _REDACTIONS:
        text = pattern.sub(replacement, text)
    return text


class RedactingFilter(logging.Filter):
    """A logging filter that redacts every record's message (see :func:`redact`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


def redact_logs(logger: logging.Logger | None = None) -> None:
    """Redact every record the handlers of ``logger`` (default: the root logger) emit."""
    for handler in (logger or logging.getLogger()).handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())


class Action100MError(Exception):
    """Base of every error the pipeline raises deliberately; its message is redacted."""

    def __init__(self, *args: object) -> None:
        super().__init__(*(redact(a) if isinstance(a, str) else a for a in args))


class ConfigError(Action100MError):
    """Settings that do not validate."""


class PermanentError(Action100MError):
    """Retrying will not help."""


class VideoError(PermanentError):
    """A video that cannot be used: missing, empty, truncated, no video stream, too short."""

    def __init__(self, video_id: str, problem: str) -> None:
        self.video_id = video_id
        self.problem = problem
        super().__init__(f"video {video_id}: {problem}")


class MissingArtifactError(Action100MError):
    """A stage ran before the stage it reads from finished."""


class CorruptArtifactError(PermanentError):
    """A finished stage's artifact cannot be read; its marker is removed so a rerun redoes it.
    Permanent for this run: retrying the reading task would fail the same way."""


class StoreError(Action100MError):
    """The object store cannot be reached or refused an operation."""


class ServiceError(Action100MError):
    """A model server or LLM endpoint failed in a way a later retry may fix."""
