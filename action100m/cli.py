"""``action100m`` command line (the library without Airflow): carries out the subcommands that
:mod:`action100m.cli_args` defines, one per stage of :data:`action100m.stages.PIPELINE` among them."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any

from action100m import stages as pipeline_stages
from action100m.cli_args import build_parser
from action100m.config import load_settings
from action100m.errors import Action100MError, PermanentError, redact_logs
from action100m.llm.budget import BudgetReached
from action100m.pipeline import run_until, run_video
from action100m.sources import fill_template, looks_like_location, resolve_video
from action100m.stages.base import Runtime, Video
from action100m.store import ArtifactStore, normalise_uri

log = logging.getLogger("action100m")


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
    args = build_parser().parse_args(argv)
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
