"""`action100m eval`: what each metric must do on trees whose distance is known."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

from action100m.cli import main
from action100m.errors import PermanentError
from action100m.evaluate import compare, load_trees, matched_boundaries, token_f1
from action100m.interop import import_file

REFERENCE = Path(__file__).resolve().parent / "data" / "hySSAAw4t24.json"
VIDEO = "hySSAAw4t24"


@pytest.fixture(scope="module")
def release() -> dict:
    return load_trees(str(REFERENCE))


def _moved(trees: dict, seconds: float) -> dict:
    """Every boundary inside the video moved by ``seconds`` (the video's ends stay)."""
    moved = copy.deepcopy(trees)
    nodes = moved[VIDEO]["nodes"]
    root = next(n for n in nodes if n["parent_id"] is None)
    for node in nodes:
        if node["start"] != root["start"]:
            node["start"] += seconds
        if node["end"] != root["end"]:
            node["end"] += seconds
    return moved


def test_the_release_against_itself_scores_one(release) -> None:
    scores = compare(release, release)
    assert scores["videos"] == 1
    assert all(row == {"precision": 1.0, "recall": 1.0, "f1": 1.0}
               for row in scores["boundaries"].values())  # fmt: skip
    assert scores["segments"] == {"mean_best_iou": 1.0, "matched_at_iou_0.5": 1.0}
    assert all(value == 1.0 for value in scores["text_token_f1"].values())
    assert scores["text_pairs"]["summary.brief"] == 262  # the nodes with a gpt
    assert scores["shape"]["reference"] == scores["shape"]["candidate"]
    assert 70 < scores["shape"]["reference"]["nodes_per_minute"] < 90


def test_boundaries_moved_by_0_7_s_match_at_1_s_not_at_0_5_s(release) -> None:
    scores = compare(release, _moved(release, 0.7))
    for name, row in scores["boundaries"].items():
        if name.endswith("@1s"):
            assert row["f1"] == 1.0, name
        elif name.startswith("top-"):  # boundaries seconds apart: none within 0.5 s
            assert row["f1"] == 0.0, name
    # leaves' boundaries lie closer than 1.2 s, so some moved ones fall near a neighbour's
    assert 0.0 < scores["boundaries"]["all@0.5s"]["f1"] < 1.0
    assert 0.5 < scores["segments"]["mean_best_iou"] < 1.0


def test_a_coarser_tree_keeps_precision_and_loses_recall(release) -> None:
    coarse = copy.deepcopy(release)
    coarse[VIDEO]["nodes"] = [n for n in coarse[VIDEO]["nodes"] if n["level"] <= 3]
    scores = compare(release, coarse)
    assert scores["boundaries"]["top-3@0.5s"]["f1"] == 1.0
    everything = scores["boundaries"]["all@0.5s"]
    assert everything["precision"] == 1.0 and everything["recall"] < 0.1
    assert scores["shape"]["candidate"]["max_depth"] == 3.0
    assert scores["segments"]["matched_at_iou_0.5"] < 1.0


def test_changed_text_lowers_only_its_field(release) -> None:
    changed = copy.deepcopy(release)
    for node in changed[VIDEO]["nodes"]:
        node["plm_action"] = "juggle three oranges"
    scores = compare(release, changed)["text_token_f1"]
    assert scores["plm_action"] < 0.1 and scores["plm_caption"] == 1.0


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("Cut the onion.", "cut the onion", 1.0),
        ("cut onion", "cut the onion", 0.8),
        ("a", "b", 0.0),
    ],
)
def test_token_f1(a: str, b: str, expected: float) -> None:
    assert token_f1(a, b) == pytest.approx(expected)


def test_boundary_matching_is_one_to_one() -> None:
    assert matched_boundaries(np.array([1.0, 1.2]), np.array([1.1]), 0.5) == 1
    assert matched_boundaries(np.array([1.0, 3.0]), np.array([0.6, 2.6]), 0.5) == 2


def test_a_store_against_the_release_file_and_the_cli(
    store, tiny_settings, tmp_path, capsys
) -> None:
    import_file(tiny_settings, store, str(REFERENCE))
    root = store.root.removeprefix("file://")
    assert main(["eval", str(REFERENCE), root, "--json"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert scores["boundaries"]["all@0.5s"]["f1"] == 1.0
    assert scores["text_token_f1"]["action.actor"] == 1.0
    assert main(["eval", str(REFERENCE), root]) == 0
    assert "all@0.5s" in capsys.readouterr().out
    with pytest.raises(PermanentError, match="no video in common"):
        compare(load_trees(str(REFERENCE)), {"other": {"nodes": []}})


@pytest.fixture(scope="module")
def tiny_text_model(tmp_path_factory, release) -> str:
    """A tiny random BERT and a word-level vocabulary of the sample, saved as a model folder."""
    import re

    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder = tmp_path_factory.mktemp("tiny-bert")
    words = sorted(
        {w for n in release[VIDEO]["nodes"] for w in re.findall(r"[a-z]+", str(n).lower())}
    )
    (folder / "vocab.txt").write_text(
        "\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words])
    )
    BertTokenizerFast(vocab_file=str(folder / "vocab.txt")).save_pretrained(folder)
    config = BertConfig(vocab_size=len(words) + 5, hidden_size=32, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=37)  # fmt: skip
    BertModel(config).save_pretrained(folder)
    return str(folder)


def test_cosine_of_a_configured_embedding_model(release, tiny_text_model, capsys, tmp_path) -> None:
    from action100m.models.text_embedding import TextEmbedder

    embedder = TextEmbedder(tiny_text_model)
    release = copy.deepcopy(release)  # the top of the tree: quick on two shared cores
    release[VIDEO]["nodes"] = [n for n in release[VIDEO]["nodes"] if n["level"] <= 4]
    same = compare(release, release, embedder)["text_cosine"]
    assert all(value == pytest.approx(1.0, abs=1e-5) for value in same.values())
    changed = copy.deepcopy(release)
    for node in changed[VIDEO]["nodes"]:
        node["plm_action"] = "zzz unknown words"
    cosine = compare(release, changed, embedder)["text_cosine"]
    assert cosine["plm_action"] < 0.99 and cosine["plm_caption"] == pytest.approx(1.0, abs=1e-5)
    top = tmp_path / "top.jsonl"
    top.write_text(json.dumps(release[VIDEO]) + "\n")
    assert main(["eval", str(top), str(top), "--embedding-model", tiny_text_model]) == 0
    assert "(cosine: " in capsys.readouterr().out


def test_an_embedding_model_that_cannot_be_had_is_one_line(tmp_path) -> None:
    from action100m.models.text_embedding import TextEmbedder

    with pytest.raises(PermanentError, match="text-embedding model .* neither cached"):
        TextEmbedder(str(tmp_path / "nowhere"))
