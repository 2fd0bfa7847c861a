"""Priorities under the real scheduler: the GPU's feed leads, then begun videos finish first.

With one executor slot (``parallelism`` 1) every task of the run competes for the same slot, so
the order tasks start in is the order the scheduler picked them by ``priority_weight``. Fetch and
embed (the stages up to the GPU) outrank the rest, so every video is fetched and embedded first,
each embed right after its fetch; after them a stage weighs more the later it comes (``absolute``
rule), so each freed slot goes to the next stage of the video in progress: the rest of each video
runs whole, one video after another. Airflow's default rule (``downstream``) would weigh the
first stages most and start every video's next stage before any video's later one, which is what
this test would then see. So would Airflow 3.3.2's own LocalExecutor, which queues every ready
task at once: the stack runs ours (``action100m_airflow.local_executor``), which queues only what
a free worker starts."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from airflow_stack import AirflowStack

from action100m.samples import make_video
from action100m.stages import PIPELINE

VIDEOS = ("prio_a", "prio_b")


@pytest.fixture(scope="module")
def one_slot_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AirflowStack]:
    workdir = tmp_path_factory.mktemp("priority-stack")
    env = {
        "AIRFLOW__CORE__PARALLELISM": "1",  # one task at a time, whatever its pool
        "ACTION100M_STORE": (workdir / "store").as_uri(),
        "ACTION100M_ALLOWED_SOURCES": workdir.parent.as_uri(),
    }
    with AirflowStack(workdir, env=env, pools={"gpu": 4, "llm": 2}) as stack:
        yield stack


def test_started_videos_finish_before_new_ones_start(
    one_slot_stack: AirflowStack, tmp_path_factory: pytest.TempPathFactory
) -> None:
    folder = tmp_path_factory.mktemp("priority-videos")
    videos = []
    for name in VIDEOS:
        make_video(folder / f"{name}.mp4", [1.5, 1.5])
        videos.append(str(folder / f"{name}.mp4"))
    run_id = one_slot_stack.trigger("action100m", {"videos": videos, "profile": "tiny"})
    assert one_slot_stack.wait(run_id, "action100m", timeout=400) == "success"

    tis = one_slot_stack.task_instances("action100m", run_id)
    per_video = [ti for ti in tis if ti["task_id"].startswith("video.")]
    assert len(per_video) == len(VIDEOS) * len(PIPELINE)
    started = sorted(per_video, key=lambda ti: ti["start_date"])
    order = [(ti["rendered_map_index"], ti["task_id"].removeprefix("video.")) for ti in started]
    first = [video for video, stage in order if stage == "fetch"]  # the scheduler's video order
    assert sorted(first) == sorted(VIDEOS), order
    names = [spec.name for spec in PIPELINE]
    leading = 1 + [spec.resource for spec in PIPELINE].index("gpu")  # up to the GPU stage
    lead, tail = names[:leading], names[leading:]
    expected = [(v, s) for v in first for s in lead] + [(v, s) for v in first for s in tail]
    assert order == expected, order
