"""The run report: per video done / failed (with the reason) / skipped, tokens and cost.

Built from what each video's tasks left (their stage records and, once published, the video's
status record, :mod:`action100m.status`); written by the DAG's ``report`` task to
``store.report_uri(run_id)`` and printed as a table in its log.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from action100m.stages import get_stage
from action100m.store import ArtifactStore

STATUSES = ("done", "skipped", "failed")
# What the run report adds up from each aggregate stage's usage.json.
USAGE_FIELDS = ("requests", "input_tokens", "cached_input_tokens", "output_tokens", "cost_usd")


def build_report(
    videos: Sequence[dict[str, Any]],
    states: dict[str, dict[str, str | None]],
    results: dict[str, dict[str, Any]],
    failures: dict[str, dict[str, str]],
) -> dict[str, Any]:
    """Per video: ``done`` (work ran), ``skipped`` (everything was already finished) or ``failed``
    (the stage and reason). ``states`` maps video_id -> {stage: task state}; ``results`` the
    outcome of published videos (:func:`published_result`); ``failures`` video_id ->
    {"stage", "error"}."""
    rows: list[dict[str, Any]] = []
    for video in videos:
        video_id = video["video_id"]
        result = results.get(video_id)
        row: dict[str, Any] = {"video_id": video_id, "source": video["uri"]}
        if result is not None:
            # Why the video has no annotations: as its status record says (no LLM configured),
            # or as this run's aggregate task said (imported annotations kept, no LLM to redo).
            skipped = {**((result.get("status") or {}).get("skipped") or {}),
                       **(result.get("skipped") or {})}  # fmt: skip
            incomplete = skipped.get("aggregate")
            # "skipped" means everything was finished before; a video whose aggregation was
            # skipped is not finished, so it is "done" with the reason, never "skipped".
            row["status"] = "skipped" if result.get("reused_all") and not incomplete else "done"
            row["document"] = result.get("document")
            row["notes"] = result.get("notes", [])
            row["usage"] = result.get("usage") or {}
            if incomplete:
                row["aggregate_skipped"] = incomplete
        else:
            failure = failures.get(video_id) or _failure_from_states(states.get(video_id, {}))
            row.update(status="failed", stage=failure["stage"], reason=failure["error"])
        rows.append(row)
    counts = {status: sum(r["status"] == status for r in rows) for status in STATUSES}
    usage = _sum_usage(r.get("usage", {}) for r in rows)
    without = sum(bool(r.get("aggregate_skipped")) for r in rows)
    return {"videos": rows, "counts": counts, "usage": usage, "aggregate_skipped": without}


def published_result(
    store: ArtifactStore, records: dict[str, dict[str, Any]], status: dict[str, Any] | None
) -> dict[str, Any]:
    """What the report needs of a published video, from its stage records of this run (``uri``,
    ``reused``, ``skipped``, as XCom carries them) and its status record: the document, whether
    everything was reused, and the LLM usage of this run (from the aggregate's ``usage.json``
    where it ran now)."""
    status = status or {}
    # The stages that make output (publish only writes what they made).
    worked = {name: r for name, r in records.items() if get_stage(name).keyed}
    usage: dict[str, float] = {}
    for record in worked.values():
        if record.get("uri") and not record.get("reused"):
            usage = _sum_usage([usage, usage_totals(store, record["uri"])])
    skipped = {
        **(status.get("skipped") or {}),
        **{name: r["skipped"] for name, r in worked.items() if r.get("skipped")},
    }
    return {
        "document": status.get("document")
        or next((r.get("uri") for name, r in records.items() if name not in worked), None),
        "reused_all": all(bool(r.get("reused") or r.get("skipped")) for r in worked.values()),
        "status": status,
        "skipped": skipped,
        "usage": usage,
        "notes": [f"{stage} skipped: {why}" for stage, why in skipped.items()],
    }


def _failure_from_states(states: dict[str, str | None]) -> dict[str, str]:
    for stage, state in states.items():
        if state in ("failed", "upstream_failed", "removed"):
            return {"stage": stage, "error": f"task {state} (see its log)"}
    unfinished = [stage for stage, state in states.items() if state != "success"]
    stage = unfinished[0] if unfinished else "publish"
    return {"stage": stage, "error": f"task {states.get(stage) or 'did not run'}"}


def usage_totals(store: ArtifactStore, aggregate_uri: str) -> dict[str, float]:
    """Numeric totals (tokens, cost) from an aggregate stage's ``usage.json``; {} if absent."""
    uri = f"{aggregate_uri}/usage.json"
    if not store.exists(uri):
        return {}
    usage = store.read_json(uri)
    if not isinstance(usage, dict):
        return {}
    return _sum_usage([{k: v for k, v in usage.items() if k in USAGE_FIELDS}])


def _sum_usage(usages: Iterable[dict[str, Any]]) -> dict[str, float]:
    total: dict[str, float] = {}
    for usage in usages:
        for key, value in usage.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                total[key] = total.get(key, 0) + value
    return total


def format_report(report: dict[str, Any]) -> str:
    """A table a person reads in the task log."""
    counts = report["counts"]
    header = "run report: " + ", ".join(f"{counts[s]} {s}" for s in STATUSES)
    if report.get("aggregate_skipped"):
        header += (
            f"; {report['aggregate_skipped']} done WITHOUT annotations (aggregate skipped): "
            "configure an LLM and run them again"
        )
    table: list[tuple[str, str, str]] = []
    for row in report["videos"]:
        status = row["status"]
        if status == "failed":
            detail = f"{row['stage']}: {row['reason']}"
        else:
            detail = row.get("document") or ""
            notes = list(row.get("notes") or [])
            if skipped := row.get("aggregate_skipped"):
                status = "done (aggregate skipped)"
                notes = [skipped, *(n for n in notes if n != f"aggregate skipped: {skipped}")]
            if notes:
                detail += "  (" + "; ".join(notes) + ")"
        table.append((row["video_id"], status, detail))
    video_width = max([24, *(len(video) for video, _, _ in table)])
    status_width = max([8, *(len(status) for _, status, _ in table)])
    lines = [header, f"{'video':<{video_width}} {'status':<{status_width}} detail"]
    lines += [f"{v:<{video_width}} {s:<{status_width}} {d}" for v, s, d in table]
    usage = report.get("usage") or {}
    if usage:
        lines.append("usage: " + ", ".join(f"{k}={_number(v)}" for k, v in sorted(usage.items())))
    return "\n".join(lines)


def _number(value: float) -> str:
    return f"{value:.4f}" if isinstance(value, float) and not value.is_integer() else f"{value:g}"
