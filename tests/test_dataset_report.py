"""`action100m report --dataset`: the whole store on one page, drawn, in headless Chromium."""

from __future__ import annotations

from pathlib import Path

from viewer_helpers import chromium_page

from action100m.cli import main
from action100m.interop import import_file
from action100m.viewer.dataset import dataset_stats, verb_object

REFERENCE = Path(__file__).resolve().parent / "data" / "hySSAAw4t24.json"


def test_the_dataset_report_of_the_reference_sample(store, tiny_settings, tmp_path, capsys) -> None:
    import_file(tiny_settings, store, str(REFERENCE))
    out = tmp_path / "dataset.html"
    assert main(["--store", store.root, "report", "--dataset", "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip().endswith("dataset.html")
    with chromium_page(1100, 1000) as page:
        page.goto(out.as_uri())
        cards = {
            el.get_attribute("data-name"): el.inner_text().split("\n")[0]
            for el in page.query_selector_all(".card")
        }
        assert cards["videos"] == "1" and cards["nodes"] == "917"
        assert cards["nodes annotated"] == "262 (29%)"  # the release's gpt nodes
        assert cards["depth (mean / max)"] == "16.0 / 16"
        verbs = [el.get_attribute("data-verb") for el in page.query_selector_all("path.verb")]
        assert len(verbs) == 12 and len(set(verbs)) == 12
        assert page.query_selector_all("path.object")
        assert len(page.query_selector_all("figure.hist")) == 8  # the first eight levels
        page.screenshot(path=str(tmp_path / "dataset.png"), full_page=True)
        assert not page.errors
    assert (tmp_path / "dataset.png").stat().st_size > 10_000


def test_the_counts_come_from_the_records() -> None:
    records = [
        {"nodes": [
            {"node_id": "r", "parent_id": None, "level": 0, "start": 0.0, "end": 60.0,
             "gpt": {"action": {"brief": "Slice the onion"}}},
            {"node_id": "a", "parent_id": "r", "level": 1, "start": 0.0, "end": 1.5, "gpt": None},
            {"node_id": "b", "parent_id": "r", "level": 1, "start": 1.5, "end": 60.0,
             "gpt": {"action": {"brief": "N/A"}}},
        ]}
    ]  # fmt: skip
    stats = dataset_stats(records, [{"input_tokens": 10, "output_tokens": 2, "cost_usd": 0.5}])
    assert (stats["videos"], stats["nodes"], stats["annotated"]) == (1, 3, 2)
    assert stats["nodes_per_minute"] == 3.0 and stats["hours"] == 60 / 3600
    assert stats["verbs"] == [("slice", 1)] and stats["objects"]["slice"] == [("onion", 1)]
    assert stats["levels"][1][1] == 1  # the 1.5 s node: the "1 s and more" bin
    assert stats["usage"]["cost_usd"] == 0.5
    assert verb_object("N/A") is None
