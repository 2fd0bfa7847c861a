"""``action100m`` command line: the library without Airflow (docs/architecture.md).

One subcommand per stage, from :data:`action100m.stages.PIPELINE`: each runs the stages up to the
named one (finished ones are reused) and then publishes the document."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any

from action100m import stages as pipeline_stages
from action100m.config import load_settings
from action100m.errors import Action100MError, PermanentError, redact_logs
from action100m.llm.budget import BudgetReached
from action100m.pipeline import run_until, run_video
from action100m.sources import fill_template, looks_like_location, resolve_video
from action100m.stages.base import Runtime, Video
from action100m.store import ArtifactStore, normalise_uri

log = logging.getLogger("action100m")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="action100m", description=__doc__)
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


def render_tree(document: dict[str, Any], width: int = 100) -> str:
    """The document as an indented outline: times, caption, annotation."""
    lines = [
        f"{document['video_uid']}  ({document['metadata'].get('duration', 0):.1f} s, "
        f"{len(document['nodes'])} nodes)"
    ]
    for node in document["nodes"]:
        indent = "  " * node["level"]
        span = f"[{node['start']:7.2f} - {node['end']:7.2f}]"
        text = ""
        annotation = node.get("annotation")
        if annotation:
            text = (
                f"{annotation.get('brief_action') or ''} | {annotation.get('brief_caption') or ''}"
            )
        elif node.get("error"):
            text = f"error: {node['error']}"
        elif node.get("caption"):
            text = node["caption"]
        # Captions are model output: keep the outline one printable line per node (a tiny random
        # model emits broken UTF-8, shown as U+FFFD).
        text = " ".join(text.split())
        text = "".join(ch for ch in text if ch.isprintable() and ch != "\ufffd")
        line = f"{indent}{span} {text}".rstrip()
        lines.append(line if len(line) <= width else line[: width - 1] + "…")
    return "\n".join(lines)


def _quiet_model_loading() -> None:
    """transformers reads these variables when imported; where it already is, tell it directly."""
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    os.environ["TRANSFORMERS_VERBOSITY"] = "error"
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    redact_logs()
    if args.quiet:  # model loading progress bars too
        _quiet_model_loading()
    try:
        return _dispatch(args)
    except Action100MError as exc:
        print(f"action100m: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _video(args: argparse.Namespace) -> Video:
    """The video a stage subcommand names: a bare ID needs no source once embed has run."""
    if not looks_like_location(args.video) and not args.source and args.command != "fetch":
        video_id, uri = args.video_id or args.video, None
    else:
        resolved, uri = resolve_video(args.video, args.source)
        video_id = args.video_id or resolved
    metadata = fill_template(args.metadata, video_id, "metadata") if args.metadata else None
    return Video(video_id, uri, metadata)


def _dispatch(args: argparse.Namespace) -> int:
    settings = load_settings(
        profile=args.profile, config_file=args.config, overrides=args.overrides, store=args.store
    )
    store = ArtifactStore(settings.store)
    runtime = Runtime.from_environment(settings, store)
    command = args.command
    if command == "run":
        return _run(runtime, args)
    if command in [spec.name for spec in pipeline_stages.PIPELINE]:
        # Asked for by name, a stage that cannot run (aggregate without an LLM) is an error, not
        # a skip (`run` skips it with the reason).
        records = run_until(command, runtime, _video(args))
        if records[command].uri:  # fetch has nothing to do for a file
            print(records[command].uri)
    elif command == "show":
        return _show(settings, store, args)
    elif command == "serve-encoder":
        from action100m.stages.encoder_service import serve

        serve(settings, args.host, args.port, runtime.services.encoder.key(),
              args.workers_per_device)  # fmt: skip
    elif command == "import":
        from action100m.interop import import_file

        imported = import_file(
            settings, store, args.file, annotations=not args.no_annotations, force=args.force
        )
        for video_id in imported:
            print(video_id)
    elif command == "report":
        from action100m.shards import iter_records, store_usage
        from action100m.viewer.dataset import dataset_stats, render_dataset

        location = args.location or store.root
        stats = dataset_stats(iter_records(location), store_usage(location))
        page = render_dataset(stats, f"Dataset report: {location}")
        uri = normalise_uri(args.out)
        ArtifactStore(uri.rsplit("/", 1)[0]).write_bytes(uri, page.encode())
        print(uri)
    elif command == "eval":
        from action100m.evaluate import compare, format_scores, load_trees

        embedder = None
        if args.embedding_model:
            from action100m.models.text_embedding import TextEmbedder

            embedder = TextEmbedder(args.embedding_model)
        scores = compare(load_trees(args.reference), load_trees(args.candidate), embedder)
        print(json.dumps(scores, indent=2) if args.json else format_scores(scores))
    elif command == "export" and args.out.endswith("/"):
        from action100m.shards import export_shards

        if args.format != "action100m":
            raise PermanentError("a folder export (--out ending in /) writes --format action100m")
        summary = export_shards(store, args.out, args.videos or None, args.shard_mb * 2**20)
        print(json.dumps(summary))
    elif command == "estimate":
        from action100m.estimate import build_forecast, forecast_inputs, format_forecast

        videos = forecast_inputs(settings, store, args.inputs, args.minutes)
        forecast = build_forecast(settings, videos, args.minutes)
        as_json = {"rows": forecast.rows, "assumptions": forecast.assumptions}
        print(json.dumps(as_json, indent=2) if args.json else format_forecast(forecast))
    elif command == "export":
        from action100m.interop import export

        print(export(settings, store, args.format, args.out, args.videos or None))
    return 0


def _run(runtime: Runtime, args: argparse.Namespace) -> int:
    failed = 0
    if args.transcripts:
        from action100m.batch import file_transcripts

        ids = [resolve_video(video, args.source)[0] for video in args.videos]
        file_transcripts(runtime.store, args.transcripts, ids)
    for video in args.videos:
        try:
            summary = run_video(
                runtime.settings, runtime.store, video, metadata_uri=args.metadata,
                source_template=args.source, services=runtime.services,
            )  # fmt: skip
            print(json.dumps(summary))
        except BudgetReached as exc:  # the next videos would stop at once: the run stops here
            print(f"action100m: stopped: {exc}", file=sys.stderr)
            return 3
        except Action100MError as exc:  # one bad video never stops its siblings
            failed += 1
            print(f"action100m: error: {exc}", file=sys.stderr)
    return 2 if failed else 0


def _show(settings: Any, store: ArtifactStore, args: argparse.Namespace) -> int:
    from action100m.errors import MissingArtifactError

    uri = store.document_uri(args.video_id)
    if not store.exists(uri):
        raise MissingArtifactError(f"video {args.video_id}: no document at {uri}")
    document = store.read_json(uri)
    if args.html:
        from action100m.viewer import write_html

        print(write_html(document, args.html, store=store))
    elif args.json:
        print(json.dumps(document, indent=1, ensure_ascii=False))
    else:
        print(render_tree(document))
    return 0


if __name__ == "__main__":
    sys.exit(main())
