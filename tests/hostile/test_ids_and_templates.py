"""Hostile video IDs and templates at every entry point: the command line, a run's parameters,
manifests and imports. Each is refused with one line naming it, and nothing is written outside
the video's own folder. Extend the lists below with what you find."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from action100m.batch import read_manifest, resolve_batch
from action100m.cli import main
from action100m.errors import PermanentError, VideoError
from action100m.interop import import_file
from action100m.layout import check_video_id
from action100m.sources import fill_template, resolve_video
from action100m.store import ArtifactStore

UNSAFE_IDS = [
    "..",
    ".",
    "../../x",
    "a/b",
    "/abs",
    "a\\b",
    "x" * 201,
    "a\x00b",
    "tab\there",
    " lead",
]
SAFE_IDS = ["hySSAAw4t24", "-dash_start", "my video", "видео_1", "x" * 200, "a.b.c_d"]
BAD_TEMPLATES = ["s3://b/{}.mp4", "s3://b/{name}.mp4", "s3://b/{video_id.__class__}",
                 "s3://b/{video_id!r}", "s3://b/{video_id:>10}", "s3://b/{", "s3://b/fixed.mp4",
                 "s3://b/{video_id[0]}"]  # fmt: skip


def files_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("video_id", UNSAFE_IDS)
def test_an_unsafe_id_is_one_line_naming_it(video_id: str) -> None:
    with pytest.raises(VideoError) as caught:
        check_video_id(video_id)
    message = str(caught.value)
    assert "\n" not in message and message.startswith("video '")


@pytest.mark.parametrize("video_id", SAFE_IDS)
def test_real_ids_stay_valid(video_id: str) -> None:
    assert check_video_id(video_id) == video_id


@pytest.mark.parametrize("template", BAD_TEMPLATES)
def test_a_bad_template_is_one_line(template: str) -> None:
    with pytest.raises(PermanentError) as caught:
        fill_template(template, "abc", "source")
    assert "\n" not in str(caught.value) and "source template" in str(caught.value)
    with pytest.raises(PermanentError):
        resolve_batch(["abc"], template)
    with pytest.raises(PermanentError):
        resolve_batch(["abc"], "s3://b/{video_id}.mp4", metadata_template=template)


def test_the_one_rule_holds_at_every_entry_point(tmp_path: Path) -> None:
    store = ArtifactStore(str(tmp_path / "store"))
    with pytest.raises(VideoError):  # a run's parameter (with a slash it is a path: its stem)
        resolve_batch(["..", "ok"], "s3://b/{video_id}.mp4")
    with pytest.raises(VideoError):  # a file named "...mp4": its stem is ".."
        resolve_video(str(tmp_path / "...mp4"))
    manifest = tmp_path / "manifest.txt"
    manifest.write_text("good_one\n..\n")
    with pytest.raises(PermanentError, match=r"1 unusable entry.*'\.\.'"):
        read_manifest(str(manifest))
    with pytest.raises(VideoError):  # every path the store builds for a video checks it too
        store.document_uri("../../x")
    # Two files with one stem would share a folder: refused, naming both.
    with pytest.raises(PermanentError, match="two videos have this ID"):
        resolve_batch([str(tmp_path / "a" / "clip.mp4"), str(tmp_path / "b" / "clip.mp4")])


def test_an_imported_video_uid_cannot_leave_the_store(tmp_path: Path) -> None:
    reference = Path(__file__).resolve().parent.parent / "data" / "hySSAAw4t24.json"
    record = json.loads(reference.read_text())
    record["video_uid"] = ["../../../escaped"]
    hostile = tmp_path / "hostile.json"
    hostile.write_text(json.dumps(record))
    store = ArtifactStore(str(tmp_path / "store"))
    from action100m.config import load_settings

    settings = load_settings(profile="tiny", store=store.root, environ={})
    with pytest.raises(VideoError, match="escaped"):
        import_file(settings, store, str(hostile))
    assert files_under(tmp_path) == {"hostile.json"}


@pytest.mark.parametrize("video_id", ["..", "x" * 201, "tab\there"])
def test_the_command_line_refuses_before_any_work(
    video_id: str,
    short_video: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    store = tmp_path / "store"
    base = ["-q", "--store", str(store), "--profile", "tiny"]
    assert main([*base, "segment", str(short_video), "--video-id", video_id]) == 2
    assert main([*base, "segment", str(short_video), "--video-id", f"../../{video_id}"]) == 2
    assert main([*base, "run", video_id, "--source", str(tmp_path / "{video_id}.mp4")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("action100m: error: video '") for line in err)
    assert files_under(tmp_path) == set()


def test_a_listed_id_with_a_space_stays_one_video() -> None:
    from action100m.batch import parse_video_list

    assert parse_video_list(["my video", "a\nb", " c "]) == ["my video", "a", "b", "c"]
    assert parse_video_list("a b,c\nd") == ["a", "b", "c", "d"]  # a typed string: any separator
    videos = resolve_batch(["my video"], "s3://b/{video_id}.mp4")
    assert videos[0]["video_id"] == "my video" and videos[0]["uri"] == "s3://b/my video.mp4"


def test_a_runaway_llm_field_is_refused_and_asked_again() -> None:
    from action100m.llm.schema import MAX_FIELD_CHARS, AnswerError, parse_answer

    fields = ("brief_action", "detailed_action", "actor", "brief_caption", "detailed_caption")
    answer = {name: "ok" for name in fields}
    assert parse_answer(json.dumps(answer)).actor == "ok"
    answer["detailed_caption"] = "x" * (MAX_FIELD_CHARS + 1)
    with pytest.raises(AnswerError, match="characters long"):
        parse_answer(json.dumps(answer))
