"""A provider-neutral chat request, what comes back, and the request hash the cache is keyed on.

A request is the system text, the first user message as text blocks (the video's shared context,
the node's part), then alternating assistant/user turns (a previous answer and a refine or repair
instruction), and optionally the answer's JSON schema. Adapters turn it into OpenAI messages (the
schema as a strict ``response_format``) or Anthropic messages with ``cache_control`` after every
block of the first message (the schema as a forced tool's input schema).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

Role = Literal["user", "assistant"]


@dataclass(frozen=True)
class ChatRequest:
    system: str
    blocks: tuple[str, ...]
    turns: tuple[tuple[Role, str], ...] = ()
    max_tokens: int = 2048
    # The answer's JSON schema, for the provider's structured output (None: free text).
    schema: dict[str, Any] | None = None

    def then(self, answer: str, instruction: str) -> ChatRequest:
        """This request followed by the model's ``answer`` and a new user ``instruction``."""
        turns = (*self.turns, ("assistant", answer), ("user", instruction))
        return replace(self, turns=turns)

    def text(self) -> str:
        """Everything sent, in order (for token estimates)."""
        return "\n".join([self.system, *self.blocks, *(text for _, text in self.turns)])

    def cache_key(self, provider: str, model: str) -> str:
        payload = {"provider": provider, "model": model, **asdict(self)}
        encoded = json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()
        return hashlib.sha256(encoded).hexdigest()


@dataclass
class Usage:
    """Tokens and requests; ``input_tokens`` counts every prompt token, cached ones included."""

    requests: int = 0
    input_tokens: int = 0
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    output_tokens: int = 0

    def add(self, other: Usage) -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def cost(self, prices: dict[str, float]) -> float:
        """Estimated USD; ``prices`` per million tokens (``input``, ``cached_input``, ``output``,
        optionally ``cache_write``, else 1.25 x input as Anthropic charges)."""
        inp = prices.get("input", 0.0)
        fresh = self.input_tokens - self.cached_input_tokens - self.cache_write_tokens
        total = (
            max(fresh, 0) * inp
            + self.cached_input_tokens * prices.get("cached_input", inp)
            + self.cache_write_tokens * prices.get("cache_write", inp * 1.25)
            + self.output_tokens * prices.get("output", 0.0)
        )
        return total / 1_000_000

    def to_json(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Usage:
        return cls(**{k: int(data.get(k, 0)) for k in cls.__dataclass_fields__})


@dataclass
class Completion:
    text: str
    usage: Usage = field(default_factory=Usage)
    finish_reason: str | None = None
    refusal: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "usage": self.usage.to_json(),
            "finish_reason": self.finish_reason,
            "refusal": self.refusal,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Completion:
        return cls(
            text=data.get("text") or "",
            usage=Usage.from_json(data.get("usage", {})),
            finish_reason=data.get("finish_reason"),
            refusal=data.get("refusal"),
        )
