"""Adapters over the official ``openai`` and ``anthropic`` clients, and where keys come from.

Keys and endpoints come from a :class:`~action100m.services.Services` (by default the providers'
usual variables, ``OPENAI_API_KEY``, ``OPENAI_BASE_URL``, ...; under Airflow the plugin builds it
from the connections), the endpoint also from ``aggregate.base_url``, which wins; never from code,
and never written to a log. The SDKs' own retries are off: :mod:`ratelimit`
retries, so 429s pause every thread and retries count against the budgets. The SDKs do not validate
bodies, so a 200 may lack any field: no choice or no text is an empty answer, missing usage is 0.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from action100m.config import AggregateConfig
from action100m.errors import PermanentError
from action100m.llm.messages import ChatRequest, Completion, Usage
from action100m.llm.ratelimit import (
    ConnectionFailed,
    RateLimited,
    RequestRejected,
    TransientError,
    parse_retry_after,
)
from action100m.services import BASE_URL_ENV, KEY_ENV, Services

T = TypeVar("T")

__all__ = ["BASE_URL_ENV", "KEY_ENV", "ChatClient", "credentials", "make_client"]

# Passed explicitly when nothing names an endpoint: the SDKs would otherwise read their
# *_BASE_URL variable themselves and take an empty one (as compose passes it) for an address.
DEFAULT_BASE_URL = {"openai": "https://api.openai.com/v1", "anthropic": "https://api.anthropic.com"}
CONNECTION = {"openai": "openai_default", "anthropic": "anthropic_default"}
EPHEMERAL = {"type": "ephemeral"}
ANSWER_TOOL = "annotation"
TOOL_TEXT = "Record the annotation of the segment."
# One "HTTP Request: POST ..." line per request buries the task log: the pipeline logs progress
# itself; the HTTP clients' own lines only from warnings up.
for _name in ("httpx", "httpx2"):
    logging.getLogger(_name).setLevel(logging.WARNING)


class ChatClient(Protocol):
    provider: str
    model: str

    def complete(self, request: ChatRequest) -> Completion: ...


def credentials(
    cfg: AggregateConfig, services: Services | None = None
) -> tuple[str | None, str | None]:
    """``(api_key, base_url)`` for the configured provider; either may be None."""
    services = Services.from_environment() if services is None else services
    endpoint = services.llm_endpoint(cfg.provider)
    return endpoint.key(), cfg.base_url or endpoint.base_url


def _status_error(provider: str, model: str, status: int, exc: Exception) -> Exception:
    headers = getattr(getattr(exc, "response", None), "headers", {}) or {}
    body = str(getattr(exc, "body", "") or "")
    where = f"{provider} ({model}): HTTP {status}"
    if status in (401, 403):
        return PermanentError(f"{where}: the API key is missing, invalid or not allowed")
    if status in (402, 404) or (status == 429 and "insufficient_quota" in body):
        return PermanentError(f"{where}: {getattr(exc, 'message', exc)}")
    if status == 429:
        return RateLimited(f"{where}: rate limited", parse_retry_after(headers))
    if status in (408, 409) or status >= 500:
        return TransientError(f"{where}: server error")
    return RequestRejected(f"{where}: request rejected: {getattr(exc, 'message', exc)}")


class _Adapter:
    provider = ""

    def __init__(self, cfg: AggregateConfig, api_key: str | None, base_url: str | None) -> None:
        self.model = cfg.model
        self.base_url = base_url

    def _guard(self, call: Callable[[], T]) -> T:
        """SDK exceptions of either client as the pipeline's own (see ratelimit)."""
        import anthropic
        import openai

        try:
            return call()
        except (openai.APIStatusError, anthropic.APIStatusError) as exc:
            raise _status_error(self.provider, self.model, exc.status_code, exc) from None
        except (openai.APITimeoutError, anthropic.APITimeoutError):
            raise TransientError(f"{self.provider} ({self.model}): request timed out") from None
        except (openai.APIConnectionError, anthropic.APIConnectionError) as exc:
            raise ConnectionFailed(f"{self.provider}: cannot connect: {exc}") from None
        except (
            openai.APIResponseValidationError,
            anthropic.APIResponseValidationError,
            json.JSONDecodeError,
        ) as exc:
            raise TransientError(f"{self.provider}: malformed response body: {exc}") from None


def _count(usage: Any, name: str) -> int:
    """A token count from a usage object that may lack it (or be None)."""
    value = getattr(usage, name, None)
    return value if isinstance(value, int) else 0


def _malformed(provider: str, response: Any) -> TransientError:
    """A body that is not the API's object at all (the SDK hands back text it could not parse)."""
    return TransientError(f"{provider}: malformed response body: {str(response)[:200]!r}")


class OpenAIChat(_Adapter):
    """OpenAI, or any OpenAI-compatible server (vLLM, …) when ``base_url`` is set."""

    provider = "openai"

    def __init__(self, cfg: AggregateConfig, api_key: str | None, base_url: str | None) -> None:
        super().__init__(cfg, api_key, base_url)
        import openai  # the SDKs load only where an LLM is used (2 s of imports)

        self.client = openai.OpenAI(
            api_key=api_key or "EMPTY",
            base_url=base_url or DEFAULT_BASE_URL[self.provider],
            timeout=cfg.timeout,
            max_retries=0,
        )

    def params(self, request: ChatRequest) -> dict[str, Any]:
        """The body of a chat completions request (also a batch item's body)."""
        messages: list[Any] = [
            {"role": "system", "content": request.system},
            {"role": "user", "content": "\n\n".join(request.blocks)},
            *({"role": role, "content": text} for role, text in request.turns),
        ]
        options: dict[str, Any] = {"max_tokens": request.max_tokens}
        if self.base_url is None:  # the OpenAI API itself
            options = {
                "max_completion_tokens": request.max_tokens,
                "response_format": {"type": "json_object"},
            }
        if request.schema is not None:  # OpenAI's structured outputs; vLLM's guided decoding
            options["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": ANSWER_TOOL, "strict": True, "schema": request.schema},
            }
        return {"model": self.model, "messages": messages, **options}

    def completion(self, response: Any) -> Completion:
        """A chat completion (the SDK's object) as the pipeline's :class:`Completion`."""
        if isinstance(response, str):
            raise _malformed(self.provider, response)
        choices = getattr(response, "choices", None)
        choice = choices[0] if isinstance(choices, list) and choices else None
        message = getattr(choice, "message", None)
        u = getattr(response, "usage", None)
        details = getattr(u, "prompt_tokens_details", None)
        usage = Usage(
            requests=1,
            input_tokens=_count(u, "prompt_tokens"),
            cached_input_tokens=_count(details, "cached_tokens"),
            output_tokens=_count(u, "completion_tokens"),
        )
        text = getattr(message, "content", None)
        refusal = getattr(message, "refusal", None)
        return Completion(
            text=text if isinstance(text, str) else "",
            usage=usage,
            finish_reason=getattr(choice, "finish_reason", None),
            refusal=refusal if isinstance(refusal, str) else None,
        )

    def complete(self, request: ChatRequest) -> Completion:
        body = self.params(request)
        return self._guard(lambda: self.completion(self.client.chat.completions.create(**body)))


class AnthropicChat(_Adapter):
    """Anthropic messages, with ``cache_control`` after the shared prefix and after the node's
    part (refine rounds re-send both whole, then the previous answer and the instruction)."""

    provider = "anthropic"

    def __init__(self, cfg: AggregateConfig, api_key: str | None, base_url: str | None) -> None:
        super().__init__(cfg, api_key, base_url)
        import anthropic

        self.client = anthropic.Anthropic(
            api_key=api_key or "EMPTY",
            base_url=base_url or DEFAULT_BASE_URL[self.provider],
            timeout=cfg.timeout,
            max_retries=0,
        )

    def params(self, request: ChatRequest) -> dict[str, Any]:
        """The body of a messages request (also a batch item's ``params``)."""
        first: list[dict[str, Any]] = [
            {"type": "text", "text": text, "cache_control": EPHEMERAL} for text in request.blocks
        ]
        messages: list[Any] = [
            {"role": "user", "content": first},
            *({"role": role, "content": text} for role, text in request.turns),
        ]
        tools: dict[str, Any] = {}
        if request.schema is not None:  # the answer as the input of one forced tool
            tool = {"name": ANSWER_TOOL, "description": TOOL_TEXT, "input_schema": request.schema}
            tools = {"tools": [tool], "tool_choice": {"type": "tool", "name": ANSWER_TOOL}}
        return {
            "model": self.model,
            "max_tokens": request.max_tokens,
            "system": [{"type": "text", "text": request.system}],
            "messages": messages,
            **tools,
        }

    def completion(self, response: Any) -> Completion:
        """A message (the SDK's object) as the pipeline's :class:`Completion`."""
        if isinstance(response, str):
            raise _malformed(self.provider, response)
        text = _anthropic_text(getattr(response, "content", None))
        u = getattr(response, "usage", None)
        read = _count(u, "cache_read_input_tokens")
        written = _count(u, "cache_creation_input_tokens")
        fresh, out = _count(u, "input_tokens"), _count(u, "output_tokens")
        usage = Usage(1, fresh + read + written, read, written, out)
        stop = getattr(response, "stop_reason", None)
        refusal = text if stop == "refusal" else None
        return Completion(text, usage, stop if isinstance(stop, str) else None, refusal)

    def complete(self, request: ChatRequest) -> Completion:
        body = self.params(request)
        return self._guard(lambda: self.completion(self.client.messages.create(**body)))


def _anthropic_text(blocks: Any) -> str:
    """The answer's text: its text blocks, or the input of the answer tool as JSON."""
    parts = []
    for block in blocks if isinstance(blocks, list) else []:
        kind = getattr(block, "type", None)
        if kind == "text" and isinstance(getattr(block, "text", None), str):
            parts.append(block.text)
        elif kind == "tool_use" and getattr(block, "name", None) == ANSWER_TOOL:
            parts.append(json.dumps(getattr(block, "input", None), ensure_ascii=False))
    return "".join(parts)


def make_client(cfg: AggregateConfig, services: Services | None = None) -> ChatClient:
    api_key, base_url = credentials(cfg, services)
    if api_key is None and base_url is None:
        raise PermanentError(
            f"no {cfg.provider} API key: set {KEY_ENV[cfg.provider]} (or the "
            f"{CONNECTION[cfg.provider]} connection) or aggregate.base_url"
        )
    adapter = OpenAIChat if cfg.provider == "openai" else AnthropicChat
    return adapter(cfg, api_key, base_url)
