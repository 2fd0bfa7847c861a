"""The run report page (per video: status, nodes, tokens, cost, a link to its viewer) and the
store's index page (runs with a report, videos with a document). Plain HTML, no script."""

from __future__ import annotations

import html
from collections.abc import Callable, Iterable
from typing import Any

from action100m.store import ArtifactStore
from action100m.viewer.render import asset, fill

STATUS_ORDER = {"failed": 0, "running": 1, "done": 2, "skipped": 3}


def node_count(store: ArtifactStore, video_id: str) -> int | None:
    uri = store.document_uri(video_id)
    if not store.exists(uri):
        return None
    return len(store.read_json(uri).get("nodes") or [])


def _number(value: Any, digits: int = 0) -> str:
    if not isinstance(value, int | float):
        return ""
    return f"{value:,.{digits}f}"


def _or_dash(value: Any, digits: int = 0) -> str:
    """A number for a table cell; "—" where there is none (not counted, or not yet)."""
    return _number(value, digits) or "—"


def _cell(text: Any, cls: str = "") -> str:
    attr = f' class="{cls}"' if cls else ""
    return f"<td{attr}>{html.escape('' if text is None else str(text))}</td>"


def _page(title: str, body: str) -> str:
    return fill(asset("report.html"), TITLE=html.escape(title), BODY=body)


def render_report(
    report: dict[str, Any],
    video_href: Callable[[str], str],
    nodes: dict[str, int | None] | None = None,
    title: str | None = None,
) -> str:
    """One run's report: ``report`` as written by the DAG's ``report`` task (``videos``, ``counts``,
    ``usage``), or a provisional one of the same shape while the run is going."""
    nodes = nodes or {}
    rows = []
    videos = sorted(report.get("videos", []), key=lambda v: STATUS_ORDER.get(v.get("status"), 9))
    for video in videos:
        video_id = str(video["video_id"])
        usage = video.get("usage") or {}
        # Only a video with a document has a page: no dead links to failed or running videos.
        link = html.escape(video_id)
        if nodes.get(video_id) is not None:
            link = f'<a href="{html.escape(video_href(video_id))}">{link}</a>'
        detail = video.get("reason") and f"{video.get('stage')}: {video['reason']}"
        detail = detail or "; ".join(video.get("notes") or [])
        rows.append(
            f'<tr data-video-id="{html.escape(video_id)}"><td>{link}</td>'
            + _cell(video.get("status"), f"status {video.get('status', '')}")
            + _cell(_or_dash(nodes.get(video_id)), "num")
            + _cell(_or_dash(usage.get("input_tokens")), "num")
            + _cell(_or_dash(usage.get("output_tokens")), "num")
            + _cell(_or_dash(usage.get("cost_usd"), 4), "num")
            + _cell(detail, "detail")
            + "</tr>"
        )
    counts = " · ".join(f"{k}: {v}" for k, v in (report.get("counts") or {}).items())
    usage = report.get("usage") or {}
    total = (
        f"tokens in {_number(usage.get('input_tokens'))}, out {_number(usage.get('output_tokens'))}"
        f", cost ${_number(usage.get('cost_usd'), 4) or '0'}"
    )
    body = (
        f'<p class="summary">{html.escape(counts)} · {html.escape(total)}</p>'
        "<table><thead><tr><th>video</th><th>status</th><th>nodes</th><th>input tokens</th>"
        "<th>output tokens</th><th>cost (USD)</th><th>notes</th></tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table>"
    )
    run = report.get("run_id")
    return _page(title or f"run {run}" if run else "run report", body)


def render_notice(title: str, message: str, link: tuple[str, str] | None = None) -> str:
    """A short page saying why there is nothing to show here, with where to look instead."""
    where = f' <a href="{html.escape(link[1])}">{html.escape(link[0])}</a>' if link else ""
    return _page(title, f'<p class="summary">{html.escape(message)}{where}</p>')


def runs_table(runs: Iterable[dict[str, Any]]) -> str:
    """Runs as given: ``run_id``, ``dag_id``, ``state``, ``start`` (text), ``counts`` (a
    report's, or None), ``href`` (the run report) and ``airflow_href`` (the run in Airflow, or
    None)."""
    rows = []
    for run in runs:
        counts = run.get("counts")
        summary = ", ".join(f"{v} {k}" for k, v in counts.items()) if counts else "—"
        airflow = run.get("airflow_href")
        link = (
            f'<td><a href="{html.escape(airflow)}">in Airflow</a></td>' if airflow else "<td>—</td>"
        )
        rows.append(
            f'<tr data-run-id="{html.escape(str(run["run_id"]))}">'
            f'<td><a href="{html.escape(run["href"])}">{html.escape(str(run["run_id"]))}</a></td>'
            + _cell(run.get("dag_id") or "—")
            + _cell(run.get("state") or "—", f"status {run.get('state') or ''}")
            + _cell(run.get("start") or "—")
            + _cell(summary)
            + link
            + "</tr>"
        )
    if not rows:
        return '<p class="muted">none yet</p>'
    return (
        "<table><thead><tr><th>run</th><th>DAG</th><th>state</th><th>started</th><th>videos</th>"
        "<th></th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>"
    )


def render_runs(title: str, runs: Iterable[dict[str, Any]], summary: str) -> str:
    """A page of runs (a backfill's shards): :func:`runs_table` under a one-line summary."""
    return _page(title, f'<p class="summary">{html.escape(summary)}</p>{runs_table(runs)}')


def render_index(
    runs: Iterable[dict[str, Any]], videos: Iterable[tuple[str, str]], store_root: str
) -> str:
    """The runs, newest first, as given (see :func:`runs_table`); then a link to every video
    page: (label, href) pairs."""
    entries = [f'<li><a href="{html.escape(h)}">{html.escape(t)}</a></li>' for t, h in videos]
    listed = "<ul>" + ("".join(entries) or '<li class="muted">none yet</li>') + "</ul>"
    body = (
        f'<p class="muted">store: {html.escape(store_root)}</p>'
        f"<h2>Runs (newest first)</h2>{runs_table(runs)}<h2>Videos</h2>{listed}"
    )
    return _page("action100m", body)
