"""``action100m eval REFERENCE CANDIDATE``: how far one set of trees is from another.

Either side is a store (its published documents) or a release-format file (``.parquet``,
``.json``, ``.jsonl``: the release itself, an export of another run or config). On the videos both
have:

- boundaries: a tree's boundaries are the times where one node ends and the next begins; those
  of the top levels (``top-1``: the root's split, ``top-2``, ``top-3``) and of the whole tree are
  matched one to one within a tolerance (0.5 s and 1 s) for precision, recall and F1;
- segments: each reference node's best temporal IoU with a candidate node (the mean), and the
  share with one of at least 0.5;
- shape: nodes per minute and depth, on each side;
- text: for each reference node and its best candidate at IoU >= 0.5, a token F1 (SQuAD-style
  bag-of-words overlap; no model download) of every release field both have, and with
  ``--embedding-model`` the cosine similarity of their mean-pooled embeddings.
Scores are means over nodes pooled across videos (boundary counts summed before the ratios).
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from action100m.errors import PermanentError
from action100m.release import read_records

TOLERANCES = (0.5, 1.0)
TOP_LEVELS = (1, 2, 3)
MATCH_IOU = 0.5
TEXT_FIELDS = {
    "plm_caption": ("plm_caption",),
    "plm_action": ("plm_action",),
    "llama3_caption": ("llama3_caption",),
    "summary.brief": ("gpt", "summary", "brief"),
    "summary.detailed": ("gpt", "summary", "detailed"),
    "action.brief": ("gpt", "action", "brief"),
    "action.detailed": ("gpt", "action", "detailed"),
    "action.actor": ("gpt", "action", "actor"),
}


def load_trees(location: str) -> dict[str, dict[str, Any]]:
    """``{video_uid: release record}`` from a store (a folder or bucket) or a release file."""
    if Path(location).suffix in (".parquet", ".json", ".jsonl"):
        return {str(r.get("video_uid")): r for r in read_records(location)}
    from action100m.interop import official_record, store_documents
    from action100m.store import ArtifactStore

    documents = store_documents(ArtifactStore(location), None)
    return {d["video_uid"]: official_record(d) for d in documents}


def boundaries(nodes: list[dict[str, Any]], max_level: int | None) -> np.ndarray:
    """Sorted split times of the nodes down to ``max_level`` (None: every level)."""
    root = min(nodes, key=lambda n: int(n["level"]))
    times = {
        round(float(n["start"]), 3)
        for n in nodes
        if int(n["level"]) >= 1 and (max_level is None or int(n["level"]) <= max_level)
    }
    times.discard(round(float(root["start"]), 3))
    return np.array(sorted(times))


def matched_boundaries(reference: np.ndarray, candidate: np.ndarray, tolerance: float) -> int:
    """The most one-to-one pairs within ``tolerance`` (sorted sweep: optimal on a line)."""
    i = j = matched = 0
    while i < len(reference) and j < len(candidate):
        gap = candidate[j] - reference[i]
        if abs(gap) <= tolerance + 1e-6:
            matched, i, j = matched + 1, i + 1, j + 1
        elif gap < 0:
            j += 1
        else:
            i += 1
    return matched


def best_matches(
    ref: list[dict[str, Any]], cand: list[dict[str, Any]]
) -> tuple[np.ndarray, np.ndarray]:
    """For each reference node: the index of its best candidate node and that temporal IoU."""
    rs, re_ = (np.array([float(n[k]) for n in ref]) for k in ("start", "end"))
    cs, ce = (np.array([float(n[k]) for n in cand]) for k in ("start", "end"))
    best = np.zeros(len(ref), dtype=int)
    scores = np.zeros(len(ref))
    for index in range(len(ref)):
        inter = np.clip(np.minimum(re_[index], ce) - np.maximum(rs[index], cs), 0, None)
        union = np.maximum(re_[index], ce) - np.minimum(rs[index], cs)
        iou = np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)
        best[index] = int(np.argmax(iou))
        scores[index] = float(iou[best[index]])
    return best, scores


_WORD = re.compile(r"\w+")


def token_f1(reference: str, candidate: str) -> float:
    ref, cand = (Counter(_WORD.findall(text.lower())) for text in (reference, candidate))
    common = sum((ref & cand).values())
    if not ref or not cand:
        return float(ref == cand)
    if common == 0:
        return 0.0
    precision, recall = common / sum(cand.values()), common / sum(ref.values())
    return 2 * precision * recall / (precision + recall)


def _field(node: dict[str, Any], path: tuple[str, ...]) -> str | None:
    value: Any = node
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return value if isinstance(value, str) else None


def shape(nodes: list[dict[str, Any]]) -> dict[str, float]:
    root = min(nodes, key=lambda n: int(n["level"]))
    minutes = max(float(root["end"]) - float(root["start"]), 1e-9) / 60
    parents = {n.get("parent_id") for n in nodes}
    leaves = [int(n["level"]) for n in nodes if n["node_id"] not in parents]
    return {
        "nodes_per_minute": len(nodes) / minutes,
        "max_depth": float(max(int(n["level"]) for n in nodes)),
        "mean_leaf_depth": float(np.mean(leaves)) if leaves else 0.0,
    }


def _ratios(matched: int, ref: int, cand: int) -> dict[str, float]:
    precision = matched / cand if cand else float(ref == 0)
    recall = matched / ref if ref else float(cand == 0)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def compare(
    reference: dict[str, dict[str, Any]],
    candidate: dict[str, dict[str, Any]],
    embedder: Any = None,
) -> dict[str, Any]:
    """Every metric of the module's docstring over the videos both sides have; with
    ``embedder`` (:class:`~action100m.models.text_embedding.TextEmbedder`), also the cosine
    similarity of each field's matched texts."""
    shared = sorted(reference.keys() & candidate.keys())
    if not shared:
        raise PermanentError(
            f"no video in common ({len(reference)} in the reference, {len(candidate)} in the "
            "candidate)"
        )
    levels: list[int | None] = [*TOP_LEVELS, None]
    counts = {(lv, t): [0, 0, 0] for lv in levels for t in TOLERANCES}  # matched, ref, cand
    ious: list[float] = []
    texts: dict[str, list[float]] = {name: [] for name in TEXT_FIELDS}
    pairs: dict[str, list[tuple[str, str]]] = {name: [] for name in TEXT_FIELDS}
    shapes: dict[str, list[dict[str, float]]] = {"reference": [], "candidate": []}
    for video in shared:
        ref, cand = reference[video]["nodes"], candidate[video]["nodes"]
        shapes["reference"].append(shape(ref))
        shapes["candidate"].append(shape(cand))
        for level in levels:
            a, b = boundaries(ref, level), boundaries(cand, level)
            for tolerance in TOLERANCES:
                tally = counts[(level, tolerance)]
                tally[0] += matched_boundaries(a, b, tolerance)
                tally[1] += len(a)
                tally[2] += len(b)
        best, scores = best_matches(ref, cand)
        ious.extend(scores.tolist())
        for node, index, score in zip(ref, best, scores, strict=True):
            if score < MATCH_IOU:
                continue
            for name, path in TEXT_FIELDS.items():
                mine, theirs = _field(node, path), _field(cand[int(index)], path)
                if mine is not None and theirs is not None:
                    texts[name].append(token_f1(mine, theirs))
                    if embedder is not None:
                        pairs[name].append((mine, theirs))
    cosine = (
        {n: (float(np.mean(embedder.cosine(p))) if p else None) for n, p in pairs.items()}
        if embedder is not None
        else None
    )
    return {
        "videos": len(shared),
        "boundaries": {
            f"{'all' if lv is None else f'top-{lv}'}@{t:g}s": _ratios(*counts[(lv, t)])
            for lv in levels
            for t in TOLERANCES
        },
        "segments": {
            "mean_best_iou": float(np.mean(ious)),
            f"matched_at_iou_{MATCH_IOU:g}": float(np.mean(np.array(ious) >= MATCH_IOU)),
        },
        "shape": {side: _mean_shape(rows) for side, rows in shapes.items()},
        "text_token_f1": {n: (float(np.mean(v)) if v else None) for n, v in texts.items()},
        "text_pairs": {n: len(v) for n, v in texts.items()},
        **({"text_cosine": cosine, "embedding_model": embedder.name} if cosine else {}),
    }


def _mean_shape(rows: list[dict[str, float]]) -> dict[str, float]:
    return {key: float(np.mean([r[key] for r in rows])) for key in rows[0]}


def format_scores(scores: dict[str, Any]) -> str:
    """The scores as a terminal table."""
    lines = [
        f"videos compared: {scores['videos']}",
        "",
        "boundaries         precision  recall      f1",
    ]
    for name, row in scores["boundaries"].items():
        lines.append(f"  {name:<16} {row['precision']:9.3f} {row['recall']:7.3f} {row['f1']:7.3f}")
    segments = scores["segments"]
    lines += ["", "segments"]
    lines += [f"  {name:<24} {value:.3f}" for name, value in segments.items()]
    lines += ["", "shape                     reference  candidate"]
    ref, cand = scores["shape"]["reference"], scores["shape"]["candidate"]
    lines += [f"  {key:<24} {ref[key]:9.2f} {cand[key]:10.2f}" for key in ref]
    cosine = scores.get("text_cosine") or {}
    lines += ["", "text (matched nodes)           token F1  cosine   pairs"]
    for name, value in scores["text_token_f1"].items():
        f1 = "    -" if value is None else f"{value:.3f}"
        cos = "    -" if cosine.get(name) is None else f"{cosine[name]:.3f}"
        lines.append(f"  {name:<30} {f1:>6} {cos:>7} {scores['text_pairs'][name]:7d}")
    if cosine:
        lines.append(f"  (cosine: {scores['embedding_model']}, mean-pooled, on matched texts)")
    return "\n".join(lines)
