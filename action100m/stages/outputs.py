"""Where a stage's finished output lies under given settings, and how it is read.

A stage's folder is keyed by :func:`stage_key` (its settings chained with its first need's key,
see :meth:`action100m.stages.base.Stage.key`); it counts as finished once its ``_SUCCESS`` is
there. A finished artifact that cannot be read is not an error forever: its stage's marker is
removed (:func:`corrupt_artifact`) so that the next run redoes that stage.
"""

from __future__ import annotations

import contextlib
from typing import Any

from action100m.config import Settings
from action100m.errors import CorruptArtifactError, MissingArtifactError
from action100m.stages import get_stage
from action100m.store import ArtifactStore
from action100m.tree import Tree


def forget_output(store: ArtifactStore, folder: str) -> None:
    """Remove a stage folder's ``_SUCCESS``: the stage counts as not done and runs again."""
    with contextlib.suppress(FileNotFoundError):
        store.fs.rm(store.fs._strip_protocol(store.success_uri(folder)))


def corrupt_artifact(
    store: ArtifactStore, video_id: str, stage: str, folder: str, uri: str, exc: BaseException
) -> CorruptArtifactError:
    """Forget ``stage``'s output (its ``_SUCCESS``) and say which artifact is unreadable and why:
    the next run redoes the stage instead of failing the same way forever."""
    forget_output(store, folder)
    return CorruptArtifactError(
        f"video {video_id}: {uri} is unreadable ({type(exc).__name__}: "
        f"{' '.join(str(exc).split())[:200]}); {stage} will be redone by the next run"
    )


def read_finished(
    settings: Settings, store: ArtifactStore, video_id: str, stage: str, name: str
) -> Any:
    """A finished stage's JSON artifact (None where the stage has not finished); unreadable:
    :func:`corrupt_artifact`."""
    folder = stage_folder(settings, store, video_id, stage)
    if not store.is_done(folder):
        return None
    try:
        return store.read_json(f"{folder}/{name}")
    except (ValueError, OSError) as exc:
        raise corrupt_artifact(store, video_id, stage, folder, f"{folder}/{name}", exc) from None


def stage_key(settings: Settings, name: str) -> str:
    """The key of the stage ``name`` under ``settings`` (see :meth:`Stage.key`)."""
    return get_stage(name).key(settings)


def stage_folder(settings: Settings, store: ArtifactStore, video_id: str, stage: str) -> str:
    """Where the keyed stage ``stage`` keeps the video's output under ``settings``."""
    return store.stage_dir(video_id, stage, stage_key(settings, stage))


def finished_artifact(
    settings: Settings, store: ArtifactStore, video_id: str, stage: str, name: str
) -> str | None:
    """URI of a finished stage's artifact, or None where that stage has not finished."""
    folder = stage_folder(settings, store, video_id, stage)
    return f"{folder}/{name}" if store.is_done(folder) else None


def load_tree(settings: Settings, store: ArtifactStore, video_id: str) -> Tree:
    value = read_finished(settings, store, video_id, "segment", "tree.json")
    if value is None:
        raise MissingArtifactError(
            f"video {video_id}: no finished segment tree in {store.root}; run `segment` first"
        )
    try:
        return Tree.from_json(value)
    except (KeyError, TypeError, ValueError) as exc:
        folder = stage_folder(settings, store, video_id, "segment")
        raise corrupt_artifact(
            store, video_id, "segment", folder, f"{folder}/tree.json", exc
        ) from None
