"""The ``action100m`` DAG over bare IDs that the fetch stage downloads (``dag.test()``, a media site
on loopback standing in for YouTube): one fetched and annotated, one gone (a 404: failed at once,
in the report, its sibling unharmed), then a rerun that fetches nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
from airflow_testenv import migrated_airflow_home, run_dag_test
from media_server import MediaServer
from test_fetch import clip, site  # noqa: F401 (fixtures)

from action100m.store import ArtifactStore

migrated_airflow_home()


def test_bare_ids_are_fetched_annotated_and_reported(
    site: MediaServer,  # noqa: F811 (the fixture)
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = ArtifactStore(str(tmp_path / "store"))
    monkeypatch.setenv("ACTION100M_STORE", store.root)
    monkeypatch.delenv("AIRFLOW_CONN_ACTION100M_STORE", raising=False)
    # The deployment allows the site; a run's parameters could not.
    monkeypatch.setenv("ACTION100M_FETCH__ALLOWED_HOSTS", "127.0.0.1")
    for name in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    conf = {"videos": ["howto", "gone"], "source": site.url("{video_id}"), "profile": "tiny",
            "overrides": ["fetch.retry_wait=0.01"]}  # fmt: skip

    run_id, tis = run_dag_test(conf)

    assert tis[("video.publish", "howto")].state == "success"
    gone = tis[("video.fetch", "gone")]
    assert gone.state == "failed" and gone.try_number == 1  # permanent: not retried
    report = store.read_json(store.report_uri(run_id))
    rows = {row["video_id"]: row for row in report["videos"]}
    assert rows["howto"]["status"] == "done" and rows["howto"]["source"] == site.url("howto")
    assert rows["gone"]["status"] == "failed" and rows["gone"]["stage"] == "fetch"
    assert "HTTP Error 404" in rows["gone"]["reason"] and "\n" not in rows["gone"]["reason"]
    document = store.read_json(store.document_uri("howto"))
    assert document["metadata"]["title"].startswith("Folding paper")
    assert document["metadata"]["transcript"][0] == {
        "time": "0.5",
        "text": "Fold the paper in half",
    }
    fetched_once = site.count("clip.mp4")

    rerun_id, tis = run_dag_test(conf)

    statuses = {row["video_id"]: row["status"] for row in store.read_json(
        store.report_uri(rerun_id))["videos"]}  # fmt: skip
    assert statuses == {"howto": "done", "gone": "failed"}  # done: aggregate has no LLM
    assert site.count("clip.mp4") == fetched_once  # nothing downloaded again
