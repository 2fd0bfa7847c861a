"""The stages of the pipeline, in order: the one place that lists them.

Each entry names a module ``action100m.stages.{name}`` holding one
:class:`~action100m.stages.base.Stage` as ``STAGE``, what it runs on and how long one try may
take on the paper's models (the DAG maps these to pools, queues and timeouts). The DAG's task group, the command line's stage
subcommands, :func:`action100m.pipeline.run_video`, the run report, the status record and
``import`` all read :data:`PIPELINE`. Adding a stage is one new module plus one line here.

Light on purpose: the DAG files import this at parse time; stage modules load on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Literal, NamedTuple

if TYPE_CHECKING:
    from action100m.stages.base import Stage

# gpu: a model on this host's GPU; gpu_service: requests to a GPU server (counts against the GPU
# budget, runs on any host); llm: requests to the LLM API (its rate limits); download: requests
# to the video sites (their rate limits and bot checks); cpu: this host only.
Resource = Literal["cpu", "download", "gpu", "gpu_service", "llm"]


class StageSpec(NamedTuple):
    name: str
    resource: Resource
    timeout_minutes: int


PIPELINE: tuple[StageSpec, ...] = (
    StageSpec("fetch", "download", 60),
    StageSpec("embed", "gpu", 120),
    StageSpec("segment", "cpu", 30),
    StageSpec("caption", "gpu_service", 240),
    StageSpec("aggregate", "llm", 240),
    StageSpec("publish", "cpu", 15),
)
STAGE_NAMES: tuple[str, ...] = tuple(spec.name for spec in PIPELINE)


def get_stage(name: str) -> Stage:
    """The stage object of ``name`` (its module imported on first use)."""
    names = [spec.name for spec in PIPELINE]
    if name not in names:
        raise ValueError(f"unknown stage {name!r}; the stages are {', '.join(names)}")
    stage: Stage = importlib.import_module(f"action100m.stages.{name}").STAGE
    return stage


def stages() -> list[Stage]:
    """Every stage, in order."""
    return [get_stage(spec.name) for spec in PIPELINE]


__all__ = ["PIPELINE", "STAGE_NAMES", "StageSpec", "get_stage", "stages"]
