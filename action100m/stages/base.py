"""The stage contract and the one runner that owns completion.

A stage is one module with one :class:`Stage` object: its name, the stages whose output it reads
(``needs``), the settings section that shapes its output, ``setup`` (models,
once per process) and ``process(ctx)``, which computes and returns its artifacts and stats. The
runner (:func:`run_stage`) does the rest the same way for every stage: the key and the folder,
skip-if-done, input checks, atomic writes of the artifacts, ``_SUCCESS`` last, timing and the log
lines. A stage's key hashes its settings with the key of its first need, so changing a caption
model re-runs caption and what follows, nothing before it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from action100m import lease
from action100m.config import Settings
from action100m.errors import CorruptArtifactError, MissingArtifactError, PermanentError
from action100m.services import Services
from action100m.stages import stages
from action100m.stages.leases import stage_lease
from action100m.stages.outputs import corrupt_artifact, load_tree, stage_folder, stage_key
from action100m.store import ArtifactStore
from action100m.tree import Tree

log = logging.getLogger("action100m.stages")


@dataclass(frozen=True)
class Video:
    """One video of a run: its ID, its source (what embed reads), its metadata's URI."""

    video_id: str
    uri: str | None = None
    metadata: str | None = None


@dataclass(frozen=True)
class Runtime:
    """What every stage of a process shares: settings, the store and the services' keys."""

    settings: Settings
    store: ArtifactStore
    services: Services = field(default_factory=Services)
    # Stage 3 in batch mode: raise BatchPending while a job is out (an orchestrator that can
    # defer, e.g. Airflow's triggerer) instead of waiting for it in the process.
    defer_batches: bool = False

    @classmethod
    def from_environment(
        cls, settings: Settings, store: ArtifactStore, environ: dict[str, str] | None = None
    ) -> Runtime:
        services = Services.from_environment(
            environ, settings.caption.api_key_env, settings.fetch.asr_api_key_env
        )
        return cls(settings, store, services)


@dataclass
class StageOutput:
    """What ``process`` hands the runner: files to write (a name -> a JSON value, an array
    (``.npy``), bytes, or a local file's ``Path``), and small stats for ``_SUCCESS`` and the log.
    ``scratch``: a local folder the runner removes once the output is written (or has failed)."""

    artifacts: dict[str, Any]
    stats: dict[str, Any] = field(default_factory=dict)
    uri: str | None = None  # what stands for the output where not the folder (publish: document)
    scratch: str | None = None


@dataclass(frozen=True)
class StageRecord:
    """What one stage did for one video: a small record, fit for XCom."""

    stage: str
    uri: str | None
    reused: bool
    seconds: float
    skipped: str | None = None  # why the stage did not run (no LLM configured)

    def to_json(self) -> dict[str, Any]:
        return {"uri": self.uri, "reused": self.reused, "seconds": self.seconds,
                "skipped": self.skipped}  # fmt: skip


@dataclass
class StageContext:
    """One stage on one video: where to read its inputs, where its output goes."""

    runtime: Runtime
    video: Video
    folder: str

    @property
    def settings(self) -> Settings:
        return self.runtime.settings

    @property
    def store(self) -> ArtifactStore:
        return self.runtime.store

    @property
    def video_id(self) -> str:
        return self.video.video_id

    def input_dir(self, stage: str) -> str:
        """The finished folder of ``stage`` for this video (its key under these settings)."""
        return stage_folder(self.settings, self.store, self.video_id, stage)

    def read_input(self, stage: str, name: str) -> Any:
        """A finished input's artifact. One that cannot be read (truncated, not JSON, missing
        under its ``_SUCCESS``) is a :class:`CorruptArtifactError`: that stage's marker is
        removed, so the next run redoes it instead of failing the same way forever."""
        uri = f"{self.input_dir(stage)}/{name}"
        try:
            if name.endswith(".npy"):
                return self.store.read_npy(uri)
            return self.store.read_json(uri)
        except (ValueError, EOFError, OSError, KeyError) as exc:
            raise self.corrupt(stage, uri, exc) from None

    def corrupt(self, stage: str, uri: str, exc: BaseException) -> CorruptArtifactError:
        return corrupt_artifact(self.store, self.video_id, stage, self.input_dir(stage), uri, exc)

    def tree(self) -> Tree:
        """The video's segment tree (every stage after segment reads it)."""
        return load_tree(self.settings, self.store, self.video_id)


class Stage:
    """Base of every stage; subclasses set the class attributes and implement :meth:`process`."""

    name: ClassVar[str]
    help: ClassVar[str]
    needs: ClassVar[tuple[str, ...]] = ()
    # The settings section that shapes the output (its identity goes into the key); None: none.
    settings_section: ClassVar[str | None] = None
    # False: the stage never counts as done before and writes where it wants (publish).
    keyed: ClassVar[bool] = True
    # True: only some videos need the stage (fetch: IDs and URLs, not files): its missing output
    # never leaves a video unfinished; the stage reading it says so where it is missing.
    optional: ClassVar[bool] = False

    def applies(self, video: Video) -> bool:
        """Whether the stage has work for this video at all (the runner passes over it
        otherwise, as reused with no output). Only an ``optional`` stage may say no."""
        return True

    def unavailable(self, runtime: Runtime) -> str | None:
        """Why the stage cannot run in this deployment (None: it can); the runner skips it."""
        return None

    def setup(self, runtime: Runtime) -> None:
        """Load the stage's models ahead of work (a long-lived worker's warm-up). Optional:
        ``process`` gets them through the same :func:`action100m.models.load_once`, lazily, so a
        bad video or a fully cached one never pays for a model load."""

    def before(self, ctx: StageContext) -> None:
        """Work done even when the output is reused (embed copies the video's metadata)."""

    def reusable(self, done_info: dict[str, Any]) -> bool:
        """Whether a finished output may stand (an imported one may not, for aggregate)."""
        return self.pending(done_info) is None

    def pending(self, done_info: dict[str, Any]) -> str | None:
        """Why a finished output still leaves the video unfinished (aggregate: nodes without a
        valid annotation, asked again by the next run); None: it is whole."""
        return None

    def process(self, ctx: StageContext) -> StageOutput:
        raise NotImplementedError

    def after(self, ctx: StageContext, output: StageOutput) -> None:
        """Work once the output is written whose failure must not undo it (publish: the viewer)."""

    def key(self, settings: Settings) -> str:
        """Short hash of this stage's settings chained with the key of the stage it reads
        first: a changed caption model changes caption's key and aggregate's, not segment's."""
        if not self.keyed:
            raise ValueError(f"stage {self.name!r} has no key: it never counts as done before")
        section = self.settings_section
        payload = {
            "stage": self.name,
            "settings": settings.section(section).identity() if section else {},
            "input": stage_key(settings, self.needs[0]) if self.needs else None,
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]

    def __repr__(self) -> str:
        return f"<stage {self.name}>"


def _write(store: ArtifactStore, uri: str, value: Any) -> None:
    if isinstance(value, Path):
        store.put_file(value, uri)
    elif isinstance(value, np.ndarray):
        store.write_npy(uri, value)
    elif isinstance(value, bytes):
        store.write_bytes(uri, value)
    else:
        store.write_json(uri, value)


def unfinished_stages(runtime: Runtime, video_id: str) -> dict[str, str]:
    """Each stage that leaves output and has not finished for the video under these settings,
    with why (its ``pending`` or ``unavailable`` reason, else "has not finished"). A stage whose
    output a finished later stage consumed counts as finished (an imported release has trees
    and captions but no embeddings)."""
    store, keyed = runtime.store, [stage for stage in stages() if stage.keyed]
    why: dict[str, str | None] = {}
    for stage in keyed:
        folder = output_dir(runtime, stage, video_id)
        if store.is_done(folder):
            why[stage.name] = stage.pending(store.done_info(folder))
        elif stage.optional:
            why[stage.name] = None
        else:
            why[stage.name] = stage.unavailable(runtime) or f"{stage.name} has not finished"
    for stage in reversed(keyed):
        if why[stage.name] is None:
            why.update(dict.fromkeys(stage.needs))
    return {name: reason for name, reason in why.items() if reason is not None}


def output_dir(runtime: Runtime, stage: Stage, video_id: str) -> str:
    """Where the stage's output goes: its keyed folder, or the video's own (publish)."""
    if stage.keyed:  # the object's own key: a stage need not be listed to run (tests, tools)
        return runtime.store.stage_dir(video_id, stage.name, stage.key(runtime.settings))
    return runtime.store.video_dir(video_id)


def run_stage(
    stage: Stage, runtime: Runtime, video: Video, *, required: bool = False
) -> StageRecord:
    """Run ``stage`` for ``video`` unless its output is there; return what happened.

    A stage this deployment cannot run (``unavailable``) is skipped with the reason, or, when
    ``required`` (asked for by name), fails with it as a :class:`PermanentError`."""
    store, video_id, started = runtime.store, video.video_id, time.monotonic()
    if stage.optional and not stage.applies(video):
        return StageRecord(stage.name, None, True, 0.0)
    folder = output_dir(runtime, stage, video_id)
    ctx = StageContext(runtime, video, folder)
    stage.before(ctx)
    if stage.keyed and store.is_done(folder) and stage.reusable(store.done_info(folder)):
        log.info("video %s: %s already done in %s, reusing", video_id, stage.name, folder)
        return StageRecord(stage.name, folder, True, 0.0)
    if reason := stage.unavailable(runtime):
        if required:
            raise PermanentError(f"video {video_id}: {reason}")
        logging.getLogger("action100m").warning(
            "video %s: %s skipped: %s", video_id, stage.name, reason
        )
        return StageRecord(stage.name, None, False, 0.0, skipped=reason)
    for need in stage.needs:
        if not store.is_done(ctx.input_dir(need)):
            raise MissingArtifactError(
                f"video {video_id}: {stage.name} needs a finished {need} in {store.root}; "
                f"run `{need}` first"
            )
    held, finished_elsewhere = stage_lease(runtime, stage, video_id, folder)
    if finished_elsewhere:  # by the run that held the lease: reused, never paid twice
        return StageRecord(stage.name, folder, True, 0.0)
    try:
        output = stage.process(ctx)
        seconds = round(time.monotonic() - started, 3)
        try:
            store_output(runtime, stage, video_id, output, seconds=seconds)
        finally:
            if output.scratch:
                shutil.rmtree(output.scratch, ignore_errors=True)
        stage.after(ctx, output)
    finally:
        lease.give_back(store, held)
    facts = ", ".join(f"{k} {v}" for k, v in output.stats.items() if not isinstance(v, dict))
    log.info("video %s: %s done in %.1f s (%s) -> %s", video_id, stage.name, seconds, facts, folder)
    return StageRecord(stage.name, output.uri or folder, False, seconds)


def store_output(
    runtime: Runtime, stage: Stage, video_id: str, output: StageOutput, **info: Any
) -> str:
    """Write ``output`` into the stage's folder (names with a scheme where they say), then, for a
    keyed stage, ``_SUCCESS`` with the stats: the folder counts as finished only now. Also how
    ``import`` files a release's trees and captions as finished stages."""
    store, folder = runtime.store, output_dir(runtime, stage, video_id)
    for name, value in output.artifacts.items():
        _write(store, name if "://" in name else f"{folder}/{name}", value)
    if stage.keyed:
        store.mark_done(folder, {**output.stats, **info})
    return folder
