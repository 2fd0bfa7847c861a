"""The trigger forms of both DAGs: what to process and with which settings."""

from __future__ import annotations

import os

from airflow.sdk import Param

# Airflow's [core] max_map_length: a run maps its video group over at most this many videos.
MAX_VIDEOS_PER_RUN = 1024
# One entry: anything but blank (IDs with spaces or unicode are valid video IDs).
NOT_BLANK = r"\S"
# One override: section.key=value (keys may nest: section.sub.key=value).
ASSIGNMENT = r"^\s*[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+\s*=.*$"


def videos_param() -> Param:
    # Not required on its own (a run may take its videos from the list URI instead); when neither
    # is given, resolve_videos fails with one line saying so. Type "null" keeps the form from
    # marking it required.
    return Param(
        [],
        type=["null", "array"],
        items={"type": "string", "pattern": NOT_BLANK, "maxLength": 2048},
        maxItems=MAX_VIDEOS_PER_RUN,
        title="Videos",
        description="One per line: a video ID (resolved with the source template), a path, "
        f"or a URI (s3://…, file://…). Duplicates are dropped. At most {MAX_VIDEOS_PER_RUN} "
        "(Airflow's max_map_length): more go through the action100m_backfill DAG. Leave empty "
        "when a Video list URI is given.",
    )


def videos_uri_param() -> Param:
    return Param(
        None,
        type=["null", "string"],
        title="Video list URI",
        description="Optional URI of a list of videos, one a line (IDs, paths or URIs), added to "
        "Videos; action100m_backfill passes each shard this way.",
    )


def backfill_params(environ: dict[str, str] | None = None) -> dict[str, Param]:
    """What a backfill run covers: the manifest, shard size, the bound on shards per run and
    where in the manifest it starts (set by the continuation run a full run triggers)."""
    env = os.environ if environ is None else environ
    return {
        "manifest": Param(
            "",
            type="string",
            pattern=NOT_BLANK,
            title="Manifest",
            description="URI or path of a video-ID list (one a line) or the HowTo100M CSV "
            "with a video_id column.",
        ),
        "shard_size": Param(
            64,
            type="integer",
            minimum=1,
            maximum=1024,
            title="Videos per run",
            description="Videos in each triggered action100m run (at most the per-run limit).",
        ),
        "skip_done": Param(
            True,
            type="boolean",
            title="Skip finished videos",
            description="Leave out finished videos (published with annotations; a video whose "
            "aggregation was skipped for want of an LLM is not finished).",
        ),
        "max_shards": Param(
            int(env.get("ACTION100M_BACKFILL_MAX_SHARDS_PER_RUN", "256")),
            type="integer",
            minimum=1,
            maximum=1024,
            title="Shards per backfill run",
            description="At most this many shards (action100m runs) per backfill run, below "
            "Airflow's [core] max_map_length; the rest of the manifest goes to a continuation "
            "backfill run this run triggers.",
        ),
        "transcripts": Param(
            None,
            type=["null", "string"],
            title="Transcripts (HowTo100M raw_caption.json)",
            description="Optional URI of HowTo100M's raw_caption.json: each planned video's "
            "transcript is taken from it (read once, streaming) instead of the site's subtitles.",
        ),
        "offset": Param(
            0,
            type="integer",
            minimum=0,
            title="Start at manifest entry",
            description="Where in the manifest this run starts (0: the beginning). Continuation "
            "runs set it; leave it at 0.",
        ),
    }


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
            type=["null", "array"],
            items={"type": "string", "pattern": ASSIGNMENT},
            title="Setting overrides",
            description="Optional. One section.key=value per line, e.g. "
            "caption.backend=transformers or aggregate.model=gpt-4o-mini; a line that is not of "
            "that form is refused when the run is triggered.",
        ),
    }
