"""``action100m`` command line: the library without Airflow (DESIGN.md, "Command line")."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any

from action100m.config import load_settings
from action100m.errors import Action100MError
from action100m.store import ArtifactStore

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
    run.add_argument("videos", nargs="+", help="paths, URIs or IDs (IDs need --source)")
    run.add_argument("--source", help="URI template for IDs, e.g. s3://bucket/{video_id}.mp4")
    run.add_argument("--metadata", help="URI template of per-video metadata JSON")

    segment = commands.add_parser("segment", help="stage 1: embed and segment one video")
    segment.add_argument("video")
    segment.add_argument("--video-id")
    for name, text in (
        ("caption", "stage 2: caption every node"),
        ("aggregate", "stage 3: structured annotations with the LLM"),
        ("publish", "write the per-video document"),
    ):
        commands.add_parser(name, help=text).add_argument("video_id")

    show = commands.add_parser("show", help="print the tree with captions and annotations")
    show.add_argument("video_id")
    show.add_argument("--json", action="store_true", help="the per-video document as JSON")
    show.add_argument("--html", metavar="OUT", help="write a self-contained HTML viewer")

    importer = commands.add_parser("import", help="an official Action100M JSON/Parquet file")
    importer.add_argument("file")
    importer.add_argument(
        "--no-annotations", action="store_true", help="import trees and captions only"
    )
    export = commands.add_parser("export", help="dataset export (JSONL or Parquet by extension)")
    export.add_argument("--format", choices=["action100m", "flat"], default="action100m")
    export.add_argument("--out", required=True)
    export.add_argument("videos", nargs="*", help="video IDs (default: every document)")
    return parser


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
            text = f"{annotation['brief_action']} | {annotation['brief_caption']}"
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
    if args.quiet:  # model loading progress bars too
        _quiet_model_loading()
    try:
        return _dispatch(args)
    except Action100MError as exc:
        print(f"action100m: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    from action100m import pipeline

    settings = load_settings(
        profile=args.profile, config_file=args.config, overrides=args.overrides, store=args.store
    )
    store = ArtifactStore(settings.store)
    command = args.command
    if command == "run":
        failed = 0
        for video in args.videos:
            try:
                summary = pipeline.run_video(
                    settings, store, video, metadata_uri=args.metadata, source_template=args.source
                )
                print(json.dumps(summary))
            except Action100MError as exc:  # one bad video never stops its siblings
                failed += 1
                print(f"action100m: error: {exc}", file=sys.stderr)
        return 2 if failed else 0
    if command == "segment":
        video_id, uri = pipeline.resolve_video(args.video)
        video_id = args.video_id or video_id
        pipeline.run_embed(settings, store, video_id, uri)
        print(pipeline.run_segment(settings, store, video_id))
    elif command in ("caption", "aggregate", "publish"):
        if command == "aggregate":
            # Asked for by name, aggregation without an LLM is an error, not a skip (`run` skips
            # it with the reason): the stage itself raises PermanentError naming the video.
            from action100m.stages.aggregate import run_aggregate

            result = run_aggregate(settings, store, args.video_id)
        else:
            result = getattr(pipeline, f"run_{command}")(settings, store, args.video_id)
        if command != "publish":
            pipeline.run_publish(settings, store, args.video_id)
        print(result)
    elif command == "show":
        return _show(settings, store, args)
    elif command == "import":
        from action100m.interop import import_file

        imported = import_file(settings, store, args.file, annotations=not args.no_annotations)
        for video_id in imported:
            print(video_id)
    elif command == "export":
        from action100m.interop import export

        print(export(settings, store, args.format, args.out, args.videos or None))
    return 0


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
