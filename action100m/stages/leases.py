"""Which stages hold a per-video lease while they run (:mod:`action100m.lease`), and how the
runner takes it: the stages that call a paid or shared service (``llm``: aggregate;
``gpu_service``: caption against a server), one run per video, stage and settings at a time."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from action100m import lease
from action100m.stages import PIPELINE

if TYPE_CHECKING:
    from action100m.stages.base import Runtime, Stage

log = logging.getLogger("action100m.stages")

LEASED = {spec.name: spec for spec in PIPELINE if spec.resource in ("llm", "gpu_service")}
# A second run waits this long for the lease, then fails with one line and is retried later.
LEASE_WAIT_SECONDS = 60.0


def stage_lease(
    runtime: Runtime, stage: Stage, video_id: str, folder: str
) -> tuple[lease.Lease | None, bool]:
    """``(lease, finished_elsewhere)``: the stage's lease (None for a stage without one), and
    whether another run finished the stage while this one waited (then there is nothing to do).
    The lease expires after the stage's timeout, so a holder that died frees it."""
    spec = LEASED.get(stage.name)
    if spec is None or not stage.keyed:
        return None, False
    store, what = runtime.store, f"video {video_id}: {stage.name}"

    def finished() -> bool:  # as the runner's own skip: done, and reusable (not an import)
        return store.is_done(folder) and stage.reusable(store.done_info(folder))

    held = lease.take(store, folder, what, ttl_seconds=spec.timeout_minutes * 60,
                      wait_seconds=LEASE_WAIT_SECONDS, finished=finished)  # fmt: skip
    if held is None or finished():
        lease.give_back(store, held)
        log.info("%s finished by another run meanwhile, reusing %s", what, folder)
        return None, True
    return held, False
