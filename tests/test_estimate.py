"""``action100m estimate``: calls, tokens and dollars from segmented trees or from durations alone,
with the assumptions shown."""

from __future__ import annotations

import json

import pytest
from test_aggregate import VIDEO, write_inputs

from action100m import estimate
from action100m.cli import main
from action100m.config import load_settings
from action100m.llm.messages import Usage
from action100m.store import ArtifactStore


def test_a_segmented_tree_counts_its_targets_and_prompts(store: ArtifactStore) -> None:
    settings = load_settings(profile="tiny", store=store.root, environ={})
    write_inputs(settings, store)
    video = estimate.forecast_video(settings, store, VIDEO, None, 6.7)
    assert video.source == "tree+captions" and video.targets == 4  # non-leaf nodes of >= 4 s
    assert 0 < video.draft_tokens < 4 * estimate.PROMPT_TOKENS  # a tiny tree's short prompts
    rows = {(r["provider"], r["mode"]): r for r in estimate.build_forecast(settings, [video]).rows}
    assert {r["requests"] for r in rows.values()} == {4 * 3}
    interactive, batch = rows[("openai", "interactive")], rows[("openai", "batch")]
    assert interactive["cached_input_tokens"] > 0 and batch["cached_input_tokens"] == 0
    uncached = Usage.from_json({**batch}).cost(settings.aggregate.prices)
    assert batch["usd"] == pytest.approx(uncached / 2, abs=1e-4)
    assert rows[("anthropic", "batch")]["model"] == "claude-sonnet"


def test_durations_alone_use_the_release_density(store: ArtifactStore) -> None:
    settings = load_settings(store=store.root, environ={})
    videos = estimate.forecast_inputs(settings, store, ["a=600", "b"], default_minutes=3.0)
    assert [v.source for v in videos] == ["duration", "assumed duration"]
    assert videos[0].nodes == pytest.approx(10 * 917 / 11.5)
    assert videos[0].targets == pytest.approx(10 * 262 / 11.5)
    assert videos[1].minutes == 3.0
    store.write_json(store.metadata_uri("c"), {"duration": 120})
    (found,) = estimate.forecast_inputs(settings, store, ["c"], 3.0)
    assert found.source == "duration" and found.minutes == 2.0


def test_cli_reads_manifests_and_shows_its_assumptions(store, tmp_path, capsys) -> None:
    manifest = tmp_path / "ids.txt"
    manifest.write_text("x1\nx2\nx1\n")
    code = main(["--store", store.root, "-q", "estimate", str(manifest), "x2", "--minutes", "60"])
    out = capsys.readouterr().out
    assert code == 0 and "videos: 2, 2.00 h" in out
    assert "assumptions:" in out and "unknown durations: 60 min each" in out
    assert "assumed duration 2" in out
    main(["--store", store.root, "-q", "estimate", "x1=3600", "--json"])
    data = json.loads(capsys.readouterr().out)
    per_hour = {(r["provider"], r["mode"]): r["usd_per_video_hour"] for r in data["rows"]}
    assert per_hour[("openai", "batch")] < per_hour[("openai", "interactive")]
    assert any("nodes/min" in line for line in data["assumptions"])


def test_a_backfill_plan_is_forecast_from_a_sample(store: ArtifactStore) -> None:
    settings = load_settings(store=store.root, environ={})
    for index in range(10):
        store.write_json(store.metadata_uri(f"v{index}"), {"duration": 600})
    text = estimate.forecast_plan(settings, store, [f"v{i}" for i in range(10)], sample=5)
    assert text.startswith("videos: 10, 1.67 h")  # 10 x 10 min, from 5 of them
    assert "a sample of 5 of the 10 planned videos, scaled" in text
    assert estimate.forecast_plan(settings, store, []).startswith("nothing planned")
