"""The providers' batch APIs behind one small interface: submit many chat requests as one job,
poll it, read each item's answer or error. Half the price of interactive calls, results within
24 hours.

- OpenAI Batch: the items as a JSONL file (``files.create(purpose="batch")``), then
  ``batches.create`` on ``/v1/chat/completions``; ``batches.retrieve`` until ``completed``,
  ``failed``, ``expired`` or ``cancelled``; answers in the output file, per-item errors (and the
  items an expired job never reached) in the error file.
- Anthropic Message Batches: ``messages.batches.create(requests=[{custom_id, params}])``,
  ``retrieve`` until ``ended``, ``results`` per item: succeeded, errored, expired or canceled.

Item bodies and answers go through the interactive adapters' own ``params`` and ``completion``
(:mod:`action100m.llm.clients`), so a batch answer is parsed exactly as an interactive one. Item IDs
are the requests' cache keys. SDK errors become the pipeline's own (``_guard``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from action100m.config import AggregateConfig
from action100m.llm.clients import AnthropicChat, OpenAIChat, credentials
from action100m.llm.messages import ChatRequest, Completion
from action100m.services import Services

log = logging.getLogger(__name__)
OPENAI_ENDPOINT: Literal["/v1/chat/completions"] = "/v1/chat/completions"
OPENAI_FINAL = ("completed", "failed", "expired", "cancelled")
FIND_SLACK_S = 120.0  # clocks differ: a job may look created this much before its intent
FIND_WINDOW_S = 900.0


@dataclass
class JobState:
    """Where a job stands: ``finished`` once the provider will do nothing more with it."""

    finished: bool
    status: str
    counts: dict[str, int] = field(default_factory=dict)


@dataclass
class JobResults:
    """Each item's answer, or why it has none (an item absent from both has no result yet)."""

    answers: dict[str, Completion] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)


class BatchAPI(Protocol):
    provider: str
    model: str

    def complete(self, request: ChatRequest) -> Completion: ...

    def submit(self, items: dict[str, ChatRequest], label: str) -> str: ...

    def state(self, job_id: str) -> JobState: ...

    def results(self, job_id: str) -> JobResults: ...

    def find(self, label: str, since: float, items: int) -> str | None: ...


def _counts(value: Any) -> dict[str, int]:
    raw = value.model_dump() if hasattr(value, "model_dump") else {}
    return {k: v for k, v in raw.items() if isinstance(v, int)}


class OpenAIBatch(OpenAIChat):
    def submit(self, items: dict[str, ChatRequest], label: str) -> str:
        lines = [
            json.dumps(
                {"custom_id": key, "method": "POST", "url": OPENAI_ENDPOINT,
                 "body": self.params(request)},
                ensure_ascii=False,
            )
            for key, request in items.items()
        ]  # fmt: skip
        data = ("\n".join(lines) + "\n").encode()

        def create() -> str:
            upload = self.client.files.create(file=(f"{label}.jsonl", data), purpose="batch")
            batch = self.client.batches.create(
                input_file_id=upload.id,
                endpoint=OPENAI_ENDPOINT,
                completion_window="24h",
                metadata={"action100m": label},
            )
            return str(batch.id)

        return self._guard(create)

    def state(self, job_id: str) -> JobState:
        batch = self._guard(lambda: self.client.batches.retrieve(job_id))
        status = str(batch.status)
        if status == "failed" and batch.errors and batch.errors.data:
            status += ": " + "; ".join(str(e.message) for e in batch.errors.data)[:300]
        return JobState(batch.status in OPENAI_FINAL, status, _counts(batch.request_counts))

    def results(self, job_id: str) -> JobResults:
        batch = self._guard(lambda: self.client.batches.retrieve(job_id))
        out = JobResults()
        for file_id in (batch.output_file_id, batch.error_file_id):
            if not file_id:
                continue
            text = self._download(file_id)
            for line in filter(None, (raw.strip() for raw in text.splitlines())):
                try:
                    item = json.loads(line)
                except ValueError:
                    item = None
                if not isinstance(item, dict):  # its item has no result: asked again next job
                    log.warning("batch %s: unreadable line in file %s: %r", job_id, file_id,
                                line[:120])  # fmt: skip
                    continue
                self._item(item, out)
        return out

    def find(self, label: str, since: float, items: int) -> str | None:
        """The job submitted with ``label`` (its metadata) at ``since`` or later, if any."""

        def search() -> str | None:
            for batch in self.client.batches.list(limit=100):
                if batch.created_at < since - FIND_SLACK_S:
                    return None  # newest first: older ones cannot be it
                if (batch.metadata or {}).get("action100m") == label:
                    return str(batch.id)
            return None

        return self._guard(search)

    def _download(self, file_id: str) -> str:
        return self._guard(lambda: self.client.files.content(file_id).text)

    def _item(self, item: dict[str, Any], out: JobResults) -> None:
        key = str(item.get("custom_id"))
        response = item.get("response") or {}
        error = item.get("error")
        if response.get("status_code") == 200 and not error:
            try:
                from openai.types.chat import ChatCompletion

                body = ChatCompletion.model_validate(response.get("body"))
            except ValueError as exc:
                out.errors[key] = f"malformed answer body: {str(exc).splitlines()[0]}"
                return
            out.answers[key] = self.completion(body)
            return
        if isinstance(error, dict):
            out.errors[key] = f"{error.get('code')}: {error.get('message')}"
        else:
            message = ((response.get("body") or {}).get("error") or {}).get("message")
            out.errors[key] = f"HTTP {response.get('status_code')}: {message}"


class AnthropicBatch(AnthropicChat):
    def find(self, label: str, since: float, items: int) -> str | None:
        return self._guard(lambda: _anthropic_find(self.client, since, items))

    def submit(self, items: dict[str, ChatRequest], label: str) -> str:
        requests: Any = [
            {"custom_id": key, "params": self.params(request)} for key, request in items.items()
        ]
        return self._guard(lambda: str(self.client.messages.batches.create(requests=requests).id))

    def state(self, job_id: str) -> JobState:
        batch = self._guard(lambda: self.client.messages.batches.retrieve(job_id))
        status = str(batch.processing_status)
        return JobState(status == "ended", status, _counts(batch.request_counts))

    def results(self, job_id: str) -> JobResults:
        out = JobResults()
        for item in self._guard(lambda: list(self.client.messages.batches.results(job_id))):
            result = item.result
            if result.type == "succeeded":
                out.answers[item.custom_id] = self.completion(result.message)
            elif result.type == "errored":
                inner = getattr(result.error, "error", None)
                out.errors[item.custom_id] = (
                    f"errored: {getattr(inner, 'type', '?')}: {getattr(inner, 'message', '')}"
                )
            else:
                out.errors[item.custom_id] = str(result.type)
        return out


def _anthropic_find(client: Any, since: float, items: int) -> str | None:
    """Message Batches carry no label: the newest batch created at ``since`` or later with as
    many requests (a wrong match costs one more job, never a wrong answer: items are keyed by
    their request's hash)."""
    for batch in client.messages.batches.list(limit=100):
        created = batch.created_at.timestamp()
        if created < since - FIND_SLACK_S:
            return None
        if (
            created <= since + FIND_WINDOW_S
            and sum(_counts(batch.request_counts).values()) == items
        ):
            return str(batch.id)
    return None


def make_batch_api(cfg: AggregateConfig, services: Services | None = None) -> BatchAPI:
    """The configured provider's batch API (keys as for interactive calls)."""
    api_key, base_url = credentials(cfg, services)
    adapter = OpenAIBatch if cfg.provider == "openai" else AnthropicBatch
    return adapter(cfg, api_key, base_url)
