"""The stage contract: one list of stages read by the command line, ``run_video`` and the status
record; one runner that owns completion; every model loaded once per process; no secret handed
around through ``os.environ``."""

from __future__ import annotations

import argparse
import json
import re
import sys
import types
from collections import Counter
from pathlib import Path

import pytest

import action100m.stages as stages_module
from action100m import models
from action100m.cli import main
from action100m.cli_args import build_parser
from action100m.config import Settings, load_settings
from action100m.errors import MissingArtifactError, PermanentError
from action100m.samples import make_video
from action100m.services import Services
from action100m.stages import PIPELINE, StageSpec
from action100m.stages.base import Runtime, Stage, StageContext, StageOutput, Video, run_stage
from action100m.stages.outputs import stage_key
from action100m.store import ArtifactStore

REPO = Path(__file__).resolve().parent.parent
LLM_VARIABLES = ("OPENAI_API_KEY", "OPENAI_BASE_URL", "ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL")


@pytest.fixture
def no_llm(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in LLM_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def _subcommands() -> list[str]:
    actions = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return list(actions[0].choices)


class FingerprintStage(Stage):
    """A stage added the way the next engineer adds one: a module and a line in PIPELINE."""

    name = "fingerprint"
    help = "count the tree's leaves"
    needs = ("segment",)

    def process(self, ctx: StageContext) -> StageOutput:
        tree = ctx.tree()
        return StageOutput(
            {"fingerprint.json": {"leaves": len(tree.leaves())}}, {"nodes": len(tree)}
        )


@pytest.fixture
def fingerprint_stage(monkeypatch: pytest.MonkeyPatch) -> None:
    module = types.ModuleType("action100m.stages.fingerprint")
    module.STAGE = FingerprintStage()  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, module.__name__, module)
    extended = (*PIPELINE[:3], StageSpec("fingerprint", "cpu", 5), *PIPELINE[3:])
    monkeypatch.setattr(stages_module, "PIPELINE", extended)


def test_the_command_line_has_one_subcommand_per_stage_in_order() -> None:
    names = [spec.name for spec in PIPELINE]
    assert names == ["fetch", "embed", "segment", "caption", "aggregate", "publish"]
    commands = _subcommands()
    assert [c for c in commands if c in names] == names


@pytest.mark.usefixtures("fingerprint_stage", "no_llm")
def test_a_new_stage_is_one_module_and_one_line(
    short_video: Path,
    store: ArtifactStore,
    tiny_settings: Settings,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert "fingerprint" in _subcommands()
    base = ["--store", store.root, "--profile", "tiny"]
    assert main([*base, "run", str(short_video)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert "fingerprint" in summary["seconds"]
    folder = store.stage_dir("short", "fingerprint", stage_key(tiny_settings, "fingerprint"))
    assert store.is_done(folder) and store.read_json(f"{folder}/fingerprint.json")["leaves"] >= 1
    status = store.read_json(store.status_uri("short"))
    assert status["stages"]["fingerprint"] is True and status["complete"] is False  # no LLM
    marker = store.read_bytes(f"{folder}/_SUCCESS")
    # Its own subcommand: everything before it is reused, the document follows.
    assert main([*base, "fingerprint", "short"]) == 0
    assert capsys.readouterr().out.strip() == folder
    assert store.read_bytes(f"{folder}/_SUCCESS") == marker


class Flaky(Stage):
    name = "flaky"
    help = "fails until told otherwise"
    calls = 0
    broken = True
    reason: str | None = None

    def unavailable(self, runtime: Runtime) -> str | None:
        return self.reason

    def process(self, ctx: StageContext) -> StageOutput:
        type(self).calls += 1
        if self.broken:
            raise RuntimeError("boom")
        return StageOutput({"out.json": {"ok": True}}, {"items": 1})


def test_the_runner_owns_completion(store: ArtifactStore, tiny_settings: Settings) -> None:
    runtime = Runtime(tiny_settings, store, Services())
    stage, video = Flaky(), Video("v1")
    folder = store.stage_dir("v1", "flaky", stage.key(tiny_settings))
    with pytest.raises(RuntimeError):
        run_stage(stage, runtime, video)
    assert not store.exists(folder)  # nothing half-written, no marker
    stage.broken = False
    record = run_stage(stage, runtime, video)
    assert record.uri == folder and not record.reused
    assert store.read_json(f"{folder}/out.json") == {"ok": True}
    info = store.done_info(folder)
    assert info["items"] == 1 and info["seconds"] >= 0
    again = run_stage(stage, runtime, video)
    assert again.reused and Flaky.calls == 2  # not computed a third time

    stage.reason = "no service configured"
    skipped = run_stage(stage, runtime, Video("v2"))
    assert skipped.skipped == "no service configured" and skipped.uri is None
    with pytest.raises(PermanentError, match="video v2: no service configured"):
        run_stage(stage, runtime, Video("v2"), required=True)


def test_a_stage_whose_input_is_missing_names_it(
    store: ArtifactStore, tiny_settings: Settings
) -> None:
    runtime = Runtime(tiny_settings, store, Services())
    with pytest.raises(MissingArtifactError, match="video v: caption needs a finished segment"):
        run_stage(stages_module.get_stage("caption"), runtime, Video("v"))


@pytest.mark.usefixtures("no_llm")
def test_run_of_three_videos_loads_each_model_once(
    tmp_path: Path,
    store: ArtifactStore,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(models, "_LOADED", {})
    monkeypatch.setattr(models, "LOADS", Counter())
    # A worker's warm-up loads the models ahead of work; the run then finds them loaded.
    runtime = Runtime(load_settings(profile="tiny", store=store.root, environ={}), store)
    for stage in stages_module.stages():
        stage.setup(runtime)
    assert Counter({"vjepa2": 1, "qwen3vl": 1}) == models.LOADS
    videos = []
    for seed in range(3):
        path = tmp_path / f"v{seed}.mp4"
        make_video(path, [1.0, 1.0], seed=seed)
        videos.append(str(path))
    assert main(["--store", store.root, "--profile", "tiny", "run", *videos]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 3
    assert Counter({"vjepa2": 1, "qwen3vl": 1}) == models.LOADS


# What may not appear in the library or the Airflow glue: writing the process environment (keys
# would leak to every library and subprocess) or reading Airflow's connection variables.
ENV_WRITE = re.compile(
    r"os\.environ\[[^\]]+\]\s*=|os\.environ\.(update|setdefault)\(|os\.putenv\(|AIRFLOW_CONN_"
)
# transformers reads these two when imported: how `-q` silences its progress bars. No secret.
ALLOWED = ('os.environ["HF_HUB_DISABLE_PROGRESS_BARS"]', 'os.environ["TRANSFORMERS_VERBOSITY"]')


def test_nothing_writes_secrets_into_the_environment() -> None:
    offenders = []
    for path in [*(REPO / "action100m").rglob("*.py"), *(REPO / "plugins").rglob("*.py")]:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if ENV_WRITE.search(line) and not line.strip().startswith(ALLOWED):
                offenders.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert offenders == []


def test_services_keep_keys_out_of_reprs_and_logs() -> None:
    services = Services.from_environment({"OPENAI_API_KEY": "sk-hidden", "OPENAI_BASE_URL": ""})
    endpoint = services.llm_endpoint("openai")
    assert endpoint.key() == "sk-hidden" and endpoint.base_url is None  # empty: unset
    assert "sk-hidden" not in repr(services) and "sk-hidden" not in str(services.model_dump())


REFERENCE = REPO / "tests" / "data" / "hySSAAw4t24.json"  # the official sample


@pytest.mark.usefixtures("no_llm")
def test_stage_commands_run_only_what_is_missing_on_an_imported_release(
    store: ArtifactStore, tiny_settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    """An imported release has trees and captions but no video and no embeddings: a stage
    command asks only for what is missing, never for the video."""
    base = ["--store", store.root, "--profile", "tiny"]
    assert main([*base, "import", str(REFERENCE), "--no-annotations"]) == 0
    assert main([*base, "caption", "hySSAAw4t24"]) == 0
    assert (
        capsys.readouterr()
        .out.splitlines()[-1]
        .startswith(f"{store.root}/videos/hySSAAw4t24/caption/")
    )
    assert main([*base, "publish", "hySSAAw4t24"]) == 0
    assert not store.exists(store.join("videos", "hySSAAw4t24", "embed"))
    status = store.read_json(store.status_uri("hySSAAw4t24"))
    assert status["stages"] == {"embed": True, "segment": True, "caption": True, "aggregate": False}
    assert "no LLM configured" in status["skipped"]["aggregate"]
    assert main([*base, "aggregate", "hySSAAw4t24"]) == 2  # asked for by name: no LLM, one line
    assert capsys.readouterr().err.count("\n") == 1


def test_publish_keeps_the_document_when_the_viewer_fails(
    store: ArtifactStore, tiny_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from caption_helpers import scene_tree, write_tree

    import action100m.viewer

    write_tree(tiny_settings, store, scene_tree("/missing/clip.mp4", "clip"))

    def broken(*_: object, **__: object) -> str:
        raise KeyError("a bug in the page")

    monkeypatch.setattr(action100m.viewer, "publish_viewer", broken)
    runtime = Runtime(tiny_settings, store, Services())
    record = run_stage(stages_module.get_stage("publish"), runtime, Video("clip"))
    assert record.uri == store.document_uri("clip")
    assert store.read_json(record.uri)["video_uid"] == "clip"
    assert store.read_json(store.status_uri("clip"))["complete"] is False
    assert not store.exists(store.viewer_uri("clip"))


def test_weights_that_cannot_be_had_are_one_permanent_line(
    short_video: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A model folder without weights (as offline, a hub name that cannot be downloaded) fails at
    once with what to do: never a traceback, never a retry loop."""
    from action100m.models.vjepa2 import build_tiny_vjepa2

    monkeypatch.setattr(models, "_LOADED", {})
    empty, no_weights = tmp_path / "empty", tmp_path / "config-only"
    empty.mkdir()
    build_tiny_vjepa2(no_weights)
    for weights in no_weights.glob("*.safetensors"):
        weights.unlink()
    capsys.readouterr()  # save_pretrained's progress bar is not the command's output
    base = ["-q", "--store", str(tmp_path / "store"), "--profile", "tiny"]
    for folder in (empty, no_weights):
        assert main([*base, "--set", f"embed.model={folder}", "segment", str(short_video)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"action100m: error: vjepa2 model {folder}: ")
        assert "--profile tiny" in err[0]
    with pytest.raises(PermanentError):
        models.load_once("x", "y", lambda: (_ for _ in ()).throw(OSError("no file")), "m")
