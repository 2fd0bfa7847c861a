"""The per-video stage lease: two runs of one video at once pay a paid stage once; the second
waits and reuses the first's output, or gives up with one line naming the holder; an expired
lease (a holder that died) is broken. On a local store and on S3 (moto on loopback)."""

from __future__ import annotations

import threading
import time
from typing import Any, ClassVar

import pytest

from action100m import lease
from action100m.config import Settings
from action100m.services import Services
from action100m.stages.base import Runtime, Stage, StageContext, StageOutput, Video, run_stage
from action100m.store import ArtifactStore


class PaidStage(Stage):
    """Stands where ``aggregate`` stands (its name makes it a leased stage): slow, and counting
    each call, as each would be a bill."""

    name = "aggregate"
    help = "a paid stage"
    needs = ()
    calls: ClassVar[list[float]] = []

    def process(self, ctx: StageContext) -> StageOutput:
        type(self).calls.append(time.monotonic())
        time.sleep(1.0)
        return StageOutput({"answers.json": {"paid": True}}, {"requests": 3})


def _both(fn: Any) -> list[Any]:
    """``fn()`` in two threads started together: their results (or exceptions)."""
    results: list[Any] = [None, None]
    start = threading.Barrier(2)

    def run(k: int) -> None:
        start.wait()
        try:
            results[k] = fn()
        except Exception as exc:  # noqa: BLE001 (returned to the test)
            results[k] = exc

    threads = [threading.Thread(target=run, args=(k,)) for k in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return results


def test_two_runs_of_one_video_pay_the_stage_once(
    store: ArtifactStore, tiny_settings: Settings
) -> None:
    PaidStage.calls.clear()
    runtime = Runtime(tiny_settings, store, Services())
    records = _both(lambda: run_stage(PaidStage(), runtime, Video("v1")))
    assert len(PaidStage.calls) == 1, "the second run paid again"
    assert sorted(r.reused for r in records) == [False, True]
    folder = records[0].uri
    assert store.read_json(f"{folder}/answers.json") == {"paid": True}
    assert not store.exists(f"{folder}/{lease.LEASE_NAME}")  # given back


def _take(store: ArtifactStore, folder: str, holder: str, wait: float) -> lease.Lease | None:
    return lease.take(store, folder, "video v1: aggregate", ttl_seconds=60, wait_seconds=wait,
                      finished=lambda: False, poll_seconds=0.2, settle_seconds=0.3,
                      holder=holder)  # fmt: skip


@pytest.fixture(params=["local", "s3"])
def any_store(request: pytest.FixtureRequest, tmp_path: Any) -> ArtifactStore:
    if request.param == "local":
        return ArtifactStore(str(tmp_path / "store"))
    request.getfixturevalue("s3_server")
    return ArtifactStore("s3://action100m/store")


def test_a_held_lease_is_one_line_naming_its_holder(any_store: ArtifactStore) -> None:
    folder = any_store.stage_dir("v1", "aggregate", "k")
    results = _both(lambda: _take(any_store, folder, threading.current_thread().name, 1.0))
    taken = [r for r in results if isinstance(r, lease.Lease)]
    refused = [r for r in results if isinstance(r, lease.LeaseHeld)]
    assert len(taken) == 1 and len(refused) == 1, results
    message = str(refused[0])
    assert "\n" not in message and message.startswith("video v1: aggregate is being run by ")
    assert "lease until" in message and "retry later" in message
    lease.give_back(any_store, taken[0])
    assert isinstance(_take(any_store, folder, "next", 0.0), lease.Lease)  # free again


def test_an_expired_lease_is_broken(store: ArtifactStore) -> None:
    folder = store.stage_dir("v1", "aggregate", "k")
    stale = {"token": "dead", "holder": "a worker that died", "taken": 0, "expires": 1}
    store.write_json(f"{folder}/{lease.LEASE_NAME}", stale)
    held = _take(store, folder, "me", 0.0)
    assert isinstance(held, lease.Lease)
    assert store.read_json(f"{folder}/{lease.LEASE_NAME}")["holder"] == "me"
