"""A text-embedding model for ``action100m eval --embedding-model``: any transformers encoder
(a hub repo id or a local folder, e.g. a sentence-transformers checkpoint), mean-pooled over its
tokens and L2-normalised, on the CPU unless a GPU is there."""

from __future__ import annotations

from typing import Any

import numpy as np

from action100m.models import load_once, quiet_transformers

BATCH = 32
MAX_TOKENS = 512


class TextEmbedder:
    def __init__(self, name: str) -> None:
        self.name = name
        self.tokenizer, self.model, self.device = load_once(
            "text-embedding", name, lambda: _load(name), name
        )

    def embed(self, texts: list[str]) -> np.ndarray:
        """One unit vector per text (rows)."""
        import torch

        vectors = []
        for start in range(0, len(texts), BATCH):
            batch = self.tokenizer(
                texts[start : start + BATCH], padding=True, truncation=True,
                max_length=MAX_TOKENS, return_tensors="pt",
            ).to(self.device)  # fmt: skip
            with torch.inference_mode():
                hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
            vectors.append(torch.nn.functional.normalize(pooled, dim=-1).float().cpu().numpy())
        return np.concatenate(vectors) if vectors else np.zeros((0, 0), np.float32)

    def cosine(self, pairs: list[tuple[str, str]]) -> list[float]:
        """The cosine similarity of each (reference, candidate) pair."""
        if not pairs:
            return []
        unique = list(dict.fromkeys(text for pair in pairs for text in pair))  # each text once
        vectors = dict(zip(unique, self.embed(unique), strict=True))
        return [float(np.clip(vectors[a] @ vectors[b], -1.0, 1.0)) for a, b in pairs]


def _load(name: str) -> tuple[Any, Any, str]:
    import torch
    from transformers import AutoModel, AutoTokenizer

    quiet_transformers()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer = AutoTokenizer.from_pretrained(name)
    model = AutoModel.from_pretrained(name).to(device).eval()
    return tokenizer, model, device
