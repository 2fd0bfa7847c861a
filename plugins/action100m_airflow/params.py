"""The trigger forms of both DAGs: what to process and with which settings."""

from __future__ import annotations

import os

from airflow.sdk import Param


def videos_param() -> Param:
    return Param(
        [],
        type="array",
        items={"type": "string"},
        title="Videos",
        description="One per line: a video ID (resolved with the source template), a path, "
        "or a URI (s3://…, file://…). Duplicates are dropped.",
    )


def run_params() -> dict[str, Param]:
    """How each video is found and processed (the backfill passes these on to each run)."""
    return {
        "source": Param(
            None,
            type=["null", "string"],
            title="Source template",
            description="URI template resolving a bare video ID, with {video_id}, e.g. "
            "s3://action100m/howto100m/{video_id}.mp4. Not needed for paths and URIs.",
        ),
        "metadata": Param(
            None,
            type=["null", "string"],
            title="Metadata template",
            description="Optional URI template of a per-video JSON (title, description, "
            "transcript), with {video_id}. A missing file is not an error.",
        ),
        "profile": Param(
            os.environ.get("ACTION100M_PROFILE", "paper"),
            type="string",
            enum=["paper", "tiny"],
            title="Model profile",
            description="paper: the real models; tiny: tiny random models, offline (smoke runs).",
        ),
        "overrides": Param(
            [],
            type="array",
            items={"type": "string"},
            title="Setting overrides",
            description="One section.key=value per line, e.g. caption.backend=transformers or "
            "aggregate.model=gpt-4o-mini.",
        ),
    }
