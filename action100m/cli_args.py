"""The ``action100m`` command line's arguments: one subcommand per stage of
:data:`action100m.stages.PIPELINE`, plus run, show, import, export, report, estimate,
serve-encoder and eval (:mod:`action100m.cli` carries them out)."""

from __future__ import annotations

import argparse
from typing import Any

from action100m import stages as pipeline_stages

DESCRIPTION = """``action100m`` command line: the library without Airflow (docs/architecture.md).

One subcommand per stage, from :data:`action100m.stages.PIPELINE`: each runs the stages up to the
named one (finished ones are reused) and then publishes the document."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="action100m", description=DESCRIPTION)
    parser.add_argument("--store", help="artifact root URI (file://, s3://); env ACTION100M_STORE")
    parser.add_argument("--profile", choices=["paper", "tiny"], help="model set (default paper)")
    parser.add_argument("--config", help="YAML settings file")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE"
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="every stage, for each video")
    run.add_argument(
        "videos", nargs="+", help="paths, URIs, YouTube IDs or URLs (fetched), or IDs with --source"
    )
    run.add_argument("--source", help="URI template for IDs, e.g. s3://bucket/{video_id}.mp4")
    run.add_argument("--metadata", help="URI template of per-video metadata JSON")
    run.add_argument(
        "--transcripts", help="HowTo100M's raw_caption.json: the fetched videos' transcripts"
    )

    for stage in pipeline_stages.stages():
        command = commands.add_parser(stage.name, help=f"{stage.help} (after what it needs)")
        command.add_argument(
            "video", help="a video ID (finished earlier, or with --source), a path or a URI"
        )
        command.add_argument("--video-id", help="the ID to file it under (default: the file stem)")
        command.add_argument(
            "--source", help="URI template for IDs, e.g. s3://bucket/{video_id}.mp4"
        )
        command.add_argument("--metadata", help="URI template of per-video metadata JSON")

    show = commands.add_parser("show", help="print the tree with captions and annotations")
    show.add_argument("video_id")
    show.add_argument("--json", action="store_true", help="the per-video document as JSON")
    show.add_argument("--html", metavar="OUT", help="write a self-contained HTML viewer")

    importer = commands.add_parser("import", help="an official Action100M JSON/Parquet file")
    importer.add_argument("file")
    importer.add_argument(
        "--no-annotations", action="store_true", help="import trees and captions only"
    )
    importer.add_argument(
        "--force", action="store_true", help="replace videos the store already has"
    )
    export = commands.add_parser(
        "export", help="dataset export (.parquet, .json or .jsonl by the extension of --out)"
    )
    export.add_argument("--format", choices=["action100m", "flat"], default="action100m")
    export.add_argument(
        "--out",
        required=True,
        help="a file, or a folder ending in / for shards with an index (incremental)",
    )
    export.add_argument(
        "--shard-mb", type=int, default=256, help="shards roll over past this size (folder --out)"
    )
    export.add_argument("videos", nargs="*", help="video IDs (default: every document)")
    report = commands.add_parser(
        "report", help="--dataset: an HTML page about a whole store, export file or shards folder"
    )
    report.add_argument("--dataset", action="store_true", required=True)
    report.add_argument("--from", dest="location", help="default: the store (--store)")
    report.add_argument("--out", required=True, help="the HTML file to write")
    _add_estimate(commands)
    _add_serve_encoder(commands)
    evaluate = commands.add_parser(
        "eval",
        help="compare two sets of trees (a store, or a release-format file) on shared videos",
    )
    evaluate.add_argument("reference", help="a store, or a .parquet/.json/.jsonl release file")
    evaluate.add_argument("candidate", help="the same, to score against the reference")
    evaluate.add_argument("--json", action="store_true", help="the scores as JSON")
    evaluate.add_argument(
        "--embedding-model", help="a text-embedding model (repo id or folder): cosine similarity"
    )
    return parser


def _add_estimate(commands: Any) -> None:
    estimate = commands.add_parser(
        "estimate", help="forecast Stage 3's calls, tokens and dollars per provider and mode"
    )
    estimate.add_argument("inputs", nargs="+", metavar="MANIFEST|VIDEO",
                          help="video IDs (ID=SECONDS for a duration), or manifests of IDs")  # fmt: skip
    estimate.add_argument("--minutes", type=float, default=6.7,
                          help="duration of videos without a tree or a known duration")  # fmt: skip
    estimate.add_argument("--json", action="store_true")


def _add_serve_encoder(commands: Any) -> None:
    serve = commands.add_parser(
        "serve-encoder",
        help="the encoder service: V-JEPA 2 kept loaded for embed tasks (embed.backend=service); "
        "key: env ACTION100M_ENCODER_API_KEY",
    )
    serve.add_argument("--host", default="127.0.0.1", choices=["127.0.0.1", "0.0.0.0", "::"],
                       help="0.0.0.0 or :: serve other hosts (default: this one only)")  # fmt: skip
    serve.add_argument("--port", type=int, default=8100)
    serve.add_argument("--workers-per-device", type=int, default=1,
                       help="encoders per GPU (each holds its own copy of the model)")  # fmt: skip
