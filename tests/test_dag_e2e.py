"""The ``action100m`` DAG end to end in-process (``dag.test()``), against a real S3-compatible
server on loopback (moto) and the scripted LLM server: two good videos and one corrupt one."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from airflow_testenv import migrated_airflow_home, run_dag_test
from llm_server import LLMServer

migrated_airflow_home()

BUCKET = "action100m"
SOURCE = f"s3://{BUCKET}/sources/{{video_id}}.mp4"
# Variables the Airflow glue sets in the task process (in-process here): restored after the test.
EXPORTED = ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "VLLM_API_KEY", "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL")  # fmt: skip


@pytest.fixture
def llm() -> Iterator[LLMServer]:
    with LLMServer(api_key="sk-test-secret") as server:
        yield server


@pytest.fixture
def airflow_connections(
    s3_server: dict[str, str], llm: LLMServer, monkeypatch: pytest.MonkeyPatch
) -> dict[str, str]:
    for name in EXPORTED:
        monkeypatch.setenv(name, s3_server.get(name, "placeholder"))
    monkeypatch.delenv("OPENAI_API_KEY")
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    store = {
        "conn_type": "aws",
        "login": s3_server["AWS_ACCESS_KEY_ID"],
        "password": s3_server["AWS_SECRET_ACCESS_KEY"],
        "extra": {"endpoint_url": s3_server["endpoint"], "root": f"s3://{BUCKET}/store"},
    }
    openai = {"conn_type": "generic", "password": "sk-test-secret",
              "extra": {"base_url": llm.base_url, "model": "gpt-4o"}}  # fmt: skip
    monkeypatch.setenv("AIRFLOW_CONN_ACTION100M_STORE", json.dumps(store))
    # Sources and metadata lie beside the store's root, so runs are allowed to read them.
    allowed = f"s3://{BUCKET}/sources, s3://{BUCKET}/metadata"
    monkeypatch.setenv("ACTION100M_ALLOWED_SOURCES", allowed)
    monkeypatch.setenv("AIRFLOW_CONN_OPENAI_DEFAULT", json.dumps(openai))
    return {"root": f"s3://{BUCKET}/store", "endpoint": s3_server["endpoint"]}


def _upload_videos(s3: Any, scene_video: tuple[Path, list[float]], tmp_path: Path) -> None:
    from action100m.samples import make_video

    other = tmp_path / "other.mp4"
    make_video(other, [5.0, 4.0], seed=3)
    good = scene_video[0].read_bytes()
    s3.put_object(Bucket=BUCKET, Key="sources/alpha.mp4", Body=good)
    s3.put_object(Bucket=BUCKET, Key="sources/beta.mp4", Body=other.read_bytes())
    s3.put_object(Bucket=BUCKET, Key="sources/broken.mp4", Body=good[: len(good) // 8])
    s3.put_object(
        Bucket=BUCKET,
        Key="metadata/alpha.json",
        Body=json.dumps({"title": "Three colourful scenes", "transcript": []}).encode(),
    )


def _report(s3: Any, run_id: str) -> dict[str, Any]:
    from action100m.store import ArtifactStore

    key = ArtifactStore("file:///store").report_uri(run_id).removeprefix("file:///")
    return dict(json.loads(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()))


def test_two_good_videos_and_a_corrupt_one_then_a_rerun_that_skips_finished_work(
    airflow_connections: dict[str, str],
    llm: LLMServer,
    scene_video: tuple[Path, list[float]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import boto3

    s3 = boto3.client("s3", endpoint_url=airflow_connections["endpoint"])
    _upload_videos(s3, scene_video, tmp_path)
    conf = {
        "videos": ["alpha", "beta", "broken", "alpha"],
        "source": SOURCE,
        "metadata": f"s3://{BUCKET}/metadata/{{video_id}}.json",
        "profile": "tiny",
    }

    alerts = tmp_path / "alerts.jsonl"  # the deployment's notifier: a video and the run failed
    notifier = {"class": "alert_sink.FileNotifier", "kwargs": {"path": str(alerts)}}
    monkeypatch.setenv("ACTION100M_NOTIFIERS", json.dumps([notifier]))
    export = tmp_path / "export"  # the deployment's dataset export: the run adds what it published
    monkeypatch.setenv("ACTION100M_EXPORT_URI", str(export) + "/")
    run_id, tis = run_dag_test(conf)
    index = json.loads((export / "index.json").read_text())
    assert sorted(index["videos"]) == ["alpha", "beta"]  # not the broken one
    assert tis[("report", "-1")].xcom_pull(task_ids="report") is None  # the run failed: no XCom
    told = [json.loads(line) for line in alerts.read_text().splitlines()]
    videos = [a for a in told if not a["reason"]]
    assert [(a["task_id"], a["video"]) for a in videos] == [("video.embed", "broken")]
    assert "broken" in videos[0]["exception"]
    assert [a["run_id"] for a in told if a["reason"]] == [run_id]  # the run's failure callback

    for video_id in ("alpha", "beta"):
        assert tis[("video.publish", video_id)].state == "success"
        body = s3.get_object(Bucket=BUCKET, Key=f"store/videos/{video_id}/annotations.json")
        document = json.loads(body["Body"].read())
        assert document["video_uid"] == video_id
        parents = {n["parent_id"] for n in document["nodes"]}
        long_nodes = [  # the release's choice: 4 s or more, with parts
            n for n in document["nodes"] if n["end"] - n["start"] >= 4.0 and n["node_id"] in parents
        ]
        assert long_nodes and all(n["annotation"] for n in long_nodes)
        # publish also wrote the viewer page: self-contained, with this tree in it.
        page = s3.get_object(Bucket=BUCKET, Key=f"store/videos/{video_id}/viewer.html")
        html = page["Body"].read().decode()
        assert all(node["node_id"] in html for node in document["nodes"])
        assert 'src="http' not in html and 'href="http' not in html
    assert document["nodes"][0]["caption"]
    broken = tis[("video.embed", "broken")]
    assert broken.state == "failed" and broken.try_number == 1  # failed at once, no retry
    assert tis[("video.publish", "2")].state == "upstream_failed"  # never ran: no label
    # ... but the viewer's Captions tab of that task knows its video (the run's list, by index).
    from action100m_airflow.run_state import task_video

    assert task_video("action100m", run_id, "video.publish", 2).video_id == "broken"
    assert task_video("action100m", run_id, "video.embed", 2).state == "failed"
    assert tis[("report", "-1")].state == "failed"  # the run says some video failed
    report = _report(s3, run_id)
    rows = {row["video_id"]: row for row in report["videos"]}
    assert [row["video_id"] for row in report["videos"]] == ["alpha", "beta", "broken"]
    assert rows["alpha"]["status"] == rows["beta"]["status"] == "done"
    assert rows["broken"]["status"] == "failed" and rows["broken"]["stage"] == "embed"
    assert "broken" in rows["broken"]["reason"]
    assert report["usage"]["input_tokens"] > 0 and report["usage"]["requests"] > 0
    requests_first_run = len(llm.requests)
    assert requests_first_run > 0
    assert all(r.headers.get("authorization") == "Bearer sk-test-secret" for r in llm.requests)

    rerun_id, tis = run_dag_test(conf)

    report = _report(s3, rerun_id)
    statuses = {row["video_id"]: row["status"] for row in report["videos"]}
    assert statuses == {"alpha": "skipped", "beta": "skipped", "broken": "failed"}
    assert len(llm.requests) == requests_first_run  # nothing asked twice
    for video_id in ("alpha", "beta"):
        assert tis[("video.publish", video_id)].state == "success"


def test_a_run_cannot_read_outside_the_allowed_locations(
    airflow_connections: dict[str, str], tmp_path: Path
) -> None:
    """A user who may trigger runs names a JSON file on the worker as metadata, or a video
    elsewhere: the run is refused at resolve_videos, naming the location, and nothing is read."""
    (tmp_path / "passwords.json").write_text(json.dumps({"title": "admin: hunter2"}))
    for conf in (
        {"videos": ["passwords"], "source": SOURCE, "metadata": str(tmp_path / "{video_id}.json")},
        {"videos": [str(tmp_path / "alpha.mp4")]},
        {"videos": ["alpha"], "source": f"s3://{BUCKET}/sources/../store/{{video_id}}.mp4"},
    ):
        run_id, tis = run_dag_test(conf)
        assert tis[("resolve_videos", "-1")].state == "failed", conf
        assert not any(task_id.startswith("video.") and ti.state == "success"
                       for (task_id, _), ti in tis.items())  # fmt: skip
