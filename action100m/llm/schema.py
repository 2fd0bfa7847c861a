"""The five-field answer, and a tolerant parser for what real models send back.

The answer asked for is the release's nested object (``{"summary": {"brief", "detailed"},
"action": {"brief", "detailed", "actor"}}``); the flat five-field form is accepted too. Models
wrap the JSON object in a Markdown fence, reason before it (the last object wins), nest it under a
key such as ``"annotation"``, or spell a key ``"Brief Action"``. The parser copes with all of these;
what it cannot turn into the five non-empty strings raises :class:`AnswerError` with a reason short
enough to send back to the model in a repair request.
"""

from __future__ import annotations

import json
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

FIELDS = ("brief_action", "detailed_action", "actor", "brief_caption", "detailed_caption")
# our field -> (group, key) of the release's nested ``gpt`` object
NESTED = {
    "brief_action": ("action", "brief"),
    "detailed_action": ("action", "detailed"),
    "actor": ("action", "actor"),
    "brief_caption": ("summary", "brief"),
    "detailed_caption": ("summary", "detailed"),
}
_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.DOTALL)
_REFUSAL = re.compile(r"\b(I'm sorry|I am sorry|I can(?:'|no)t (?:help|assist|comply))", re.I)


# No field of the release is near this long; a longer one is a runaway answer, asked again.
MAX_FIELD_CHARS = 4000


class AnswerError(ValueError):
    """An answer that does not hold a valid annotation; the message says why."""


class Annotation(BaseModel):
    """What the LLM must produce for one node. ``"N/A"`` is a valid value."""

    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)

    brief_action: str
    detailed_action: str
    actor: str
    brief_caption: str
    detailed_caption: str

    @field_validator(*FIELDS, mode="before")
    @classmethod
    def _text_only(cls, value: Any) -> Any:
        if not isinstance(value, str):
            raise ValueError("must be a string")
        if not value.strip():
            raise ValueError("must not be empty (write N/A where nothing applies)")
        if len(value) > MAX_FIELD_CHARS:
            raise ValueError(f"is {len(value)} characters long; keep it under {MAX_FIELD_CHARS}")
        return value

    def nested(self) -> dict[str, dict[str, str]]:
        """The release's ``gpt`` object: ``{"summary": {...}, "action": {...}}``."""
        return nest(self.model_dump())


def nest(fields: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Five flat fields as the release's nested object (a missing field is null)."""
    out: dict[str, dict[str, Any]] = {"summary": {}, "action": {}}
    for name, (group, key) in NESTED.items():
        out[group][key] = fields.get(name)
    return out


def _normalise_key(key: str) -> str:
    return re.sub(r"[\s\-]+", "_", key.strip()).lower()


def _json_objects(text: str) -> list[Any]:
    """Every JSON object that can be decoded from ``text``, fenced candidates first."""
    candidates = [m.group(1) for m in _FENCE.finditer(text)] + [text]
    decoder = json.JSONDecoder()
    found: list[Any] = []
    for candidate in candidates:
        start = candidate.find("{")
        while start != -1:
            try:
                value, end = decoder.raw_decode(candidate, start)
            except json.JSONDecodeError:
                start = candidate.find("{", start + 1)
                continue
            found.append(value)
            start = candidate.find("{", end)
    return found


def _flatten(normalised: dict[str, Any]) -> dict[str, Any]:
    """The release's nested form as the five flat fields; anything else as it is."""
    groups = {g: normalised.get(g) for g in ("summary", "action")}
    if not any(isinstance(group, dict) for group in groups.values()):
        return normalised
    flat = dict(normalised)
    for field, (group, key) in NESTED.items():
        inner = groups[group]
        if isinstance(inner, dict):
            found = {_normalise_key(str(k)): v for k, v in inner.items()}
            if key in found:
                flat[field] = found[key]
    return flat


def _pick(value: Any) -> dict[str, Any] | None:
    """The dict that looks most like an annotation: the object itself or one nested in it."""
    if not isinstance(value, dict):
        return None
    normalised = _flatten({_normalise_key(str(k)): v for k, v in value.items()})
    if any(field in normalised for field in FIELDS):
        return normalised
    for nested in value.values():
        picked = _pick(nested)
        if picked is not None:
            return picked
    return None


def parse_answer(text: str | None) -> Annotation:
    """The annotation in a model's answer, or :class:`AnswerError` saying what is wrong."""
    if text is None or not text.strip():
        raise AnswerError("the answer is empty")
    objects = _json_objects(text)
    if not objects:
        if _REFUSAL.search(text):
            raise AnswerError("the answer is a refusal, not a JSON object")
        raise AnswerError("the answer holds no JSON object")
    best: dict[str, Any] | None = None
    for value in objects:  # the most complete, and of those the last (reasoning comes first)
        picked = _pick(value)
        if picked is not None and (
            best is None or len(picked.keys() & set(FIELDS)) >= len(best.keys() & set(FIELDS))
        ):
            best = picked
    if best is None:
        raise AnswerError(f"the JSON object has none of the fields {', '.join(FIELDS)}")
    try:
        return Annotation.model_validate(best)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise AnswerError(f"invalid annotation: {problems}") from None
