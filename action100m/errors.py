"""Errors the pipeline raises on purpose, each with a one-line message naming the video and cause.

``PermanentError`` marks what a retry cannot fix (a corrupt video, a bad key): Airflow tasks fail at
once instead of retrying. Anything else (a dead server, a 5xx storm) is worth a retry.
"""

from __future__ import annotations


class Action100MError(Exception):
    """Base of every error the pipeline raises deliberately."""


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


class StoreError(Action100MError):
    """The object store cannot be reached or refused an operation."""


class ServiceError(Action100MError):
    """A model server or LLM endpoint failed in a way a later retry may fix."""
