"""Self-Refine for one node: a draft, then rounds that show the last valid answer and ask the model
to verify and revise it against the same inputs. Every answer is parsed and validated; an invalid
one gets at most ``max_repairs`` repair turns. The last valid answer wins; every round is kept.

Each answer that validates is cached in the store under the hash of its request (``cache/llm/..``):
a rerun or a retried task reads answers it already paid for instead of asking again. An empty,
refused or unparseable answer is not cached, so the next identical request (a later round whose
previous answer did not change, a rerun) asks again instead of getting the same failure back.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from typing import Any

from action100m.config import AggregateConfig
from action100m.errors import PermanentError
from action100m.llm.budget import Budget
from action100m.llm.clients import ChatClient
from action100m.llm.messages import ChatRequest, Completion, Usage
from action100m.llm.prompts import REPAIR, PromptBuilder, estimate_tokens
from action100m.llm.ratelimit import RateLimiter, RequestRejected
from action100m.llm.schema import Annotation, AnswerError, parse_answer
from action100m.store import ArtifactStore
from action100m.tree import Node


@dataclass
class Session:
    """What the nodes of one video share: client, limits, cache and the usage tally."""

    client: ChatClient
    limiter: RateLimiter
    store: ArtifactStore
    cfg: AggregateConfig
    usage: Usage = field(default_factory=Usage)  # every answer used, cached ones included
    paid: Usage = field(default_factory=Usage)  # requests sent in this run
    cache_hits: int = 0
    budget: Budget | None = None
    abort: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def cache_uri(self, request: ChatRequest) -> str:
        return self.store.llm_cache_uri(request.cache_key(self.client.provider, self.client.model))

    def ask(self, request: ChatRequest, what: str) -> tuple[Completion, bool]:
        """The answer to ``request`` from the cache, or from the endpoint (see :meth:`remember`)."""
        uri = self.cache_uri(request)
        try:
            completion, cached = Completion.from_json(self.store.read_json(uri)["completion"]), True
        except (FileNotFoundError, ValueError, KeyError, TypeError):  # none, or unreadable: ask
            if self.abort.is_set():
                raise PermanentError(f"{what}: stopped, another request failed for good") from None
            if self.budget is not None:
                with self.lock:
                    spent = self.paid.cost(self.cfg.effective_prices())
                self.budget.check(spent)
            tokens = estimate_tokens(request.text()) + request.max_tokens
            completion = self.limiter.call(lambda: self.client.complete(request), tokens, what)
            cached = False
        with self.lock:
            self.usage.add(completion.usage)
            if cached:
                self.cache_hits += 1
            else:
                self.paid.add(completion.usage)
        return completion, cached

    def remember(self, request: ChatRequest, completion: Completion) -> None:
        """Cache an answer that validated (only those: see the module's docstring)."""
        self.store.write_json(
            self.cache_uri(request),
            {
                "provider": self.client.provider,
                "model": self.client.model,
                "completion": completion.to_json(),
            },
        )


def _answer(
    session: Session, request: ChatRequest, what: str
) -> tuple[Annotation | None, list[dict[str, Any]]]:
    """One round: the request, then repair turns while the answer is invalid."""
    attempts: list[dict[str, Any]] = []
    for repair in range(session.cfg.max_repairs + 1):
        label = what if repair == 0 else f"{what} repair {repair}"
        completion, cached = session.ask(request, label)
        annotation: Annotation | None = None
        error: str | None = None
        try:
            annotation = parse_answer(completion.text)
        except AnswerError as exc:
            error = f"refused: {completion.refusal}" if completion.refusal else str(exc)
            if completion.finish_reason == "length":
                error += " (the answer was cut at max_output_tokens)"
        attempts.append(
            {
                "text": completion.text,
                "error": error,
                "cached": cached,
                "finish_reason": completion.finish_reason,
                "usage": completion.usage.to_json(),
            }
        )
        if annotation is not None:
            if not cached:
                session.remember(request, completion)
            return annotation, attempts
        request = request.then(completion.text or "(empty answer)", REPAIR.format(reason=error))
    return None, attempts


def annotate_node(
    session: Session, builder: PromptBuilder, node: Node, what: str
) -> dict[str, Any]:
    """``{"annotation": five fields | None, "error": str | None, "rounds": [...]}`` for ``node``."""
    base = ChatRequest(
        builder.system(node),
        (builder.context, builder.node_block(node)),
        max_tokens=session.cfg.max_output_tokens,
        schema=builder.templates.schema() if session.cfg.structured_output else None,
    )
    best: Annotation | None = None
    rounds: list[dict[str, Any]] = []
    error: str | None = None
    for number in range(1, session.cfg.rounds + 1):
        if number == 1:
            request = base
        else:
            previous = json.dumps(best.nested() if best else {}, ensure_ascii=False)
            request = base.then(previous, builder.templates.refine)
        kind = "draft" if number == 1 else "refine"
        try:
            annotation, attempts = _answer(session, request, f"{what} round {number}")
        except RequestRejected as exc:
            rounds.append({"round": number, "kind": kind, "annotation": None, "error": str(exc)})
            error = str(exc)
            break
        last_error = attempts[-1]["error"]
        rounds.append(
            {
                "round": number,
                "kind": kind,
                "annotation": annotation.model_dump() if annotation else None,
                "error": last_error,
                "attempts": attempts,
            }
        )
        if annotation is not None:
            best = annotation
        elif best is None:  # nothing to refine: the draft failed even after repairs
            error = f"no valid answer in the draft round: {last_error}"
            break
    if best is not None:
        error = None
    elif error is None:
        error = "no valid answer"
    return {"annotation": best.model_dump() if best else None, "error": error, "rounds": rounds}
