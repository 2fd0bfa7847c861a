"""The settings sections' base and Stage 3's section (:mod:`action100m.config` re-exports it)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # Settings that change how work runs, not what it produces: left out of the stage key.
    runtime_fields: ClassVar[frozenset[str]] = frozenset()

    def identity(self) -> dict[str, Any]:
        return {k: v for k, v in self.model_dump().items() if k not in self.runtime_fields}


class AggregateConfig(_Section):
    runtime_fields: ClassVar[frozenset[str]] = frozenset(
        {
            "base_url",
            "requests_per_minute",
            "tokens_per_minute",
            "concurrency",
            "timeout",
            "max_retries",
            "prices",
            "rate_share",
            "mode",
            "batch_discount",
            "batch_poll_interval",
            "batch_max_attempts",
            "budget_usd",
            "budget_scope",
        }
    )
    provider: Literal["openai", "anthropic"] = "openai"
    model: str = "gpt-4o"
    base_url: str | None = None
    rounds: int = Field(3, ge=1, description="Self-Refine rounds including the draft")
    min_duration: float = Field(4.0, ge=0, description="annotate nodes at least this long")
    # "release": the nodes the release annotates (not leaves); "all": leaves of that length too.
    targets: Literal["release", "all"] = "release"
    # A prompt module in the release's layout (action100m/llm/templates.py); None: ours. It must
    # lie under the store or ACTION100M_ALLOWED_SOURCES, as every file a run reads.
    prompt_file: str | None = None
    # "whole": the transcript in the shared metadata where it fits (the paper's prompt);
    # "piecewise": each node with the lines spoken during it (a shorter prefix, ~35% cheaper).
    transcript: Literal["whole", "piecewise"] = "whole"
    # The provider's structured output (OpenAI/vLLM json_schema, Anthropic forced tool use) from
    # the prompt's RESPONSE_STRUCTURE; off for endpoints that support neither.
    structured_output: bool = True
    max_prompt_tokens: int = Field(24000, ge=1000)
    max_output_tokens: int = Field(2048, ge=64)
    max_repairs: int = Field(1, ge=0)
    requests_per_minute: int = Field(500, ge=1)
    tokens_per_minute: int = Field(2_000_000, ge=1)
    # The limits above are the account's; every aggregate task keeps its own buckets, so with N
    # tasks at once (the Airflow pool `llm`) each must keep 1/N of them.
    rate_share: int = Field(1, ge=1, description="aggregate tasks sharing the account's limits")
    concurrency: int = Field(8, ge=1)
    timeout: float = Field(120.0, gt=0)
    max_retries: int = Field(6, ge=0)
    # USD per million tokens: input, cached input, output.
    prices: dict[str, float] = Field(
        default_factory=lambda: {"input": 2.5, "cached_input": 1.25, "output": 10.0}
    )
    # "batch": the providers' batch APIs (half price, results within 24 h), one job per round.
    mode: Literal["interactive", "batch"] = "interactive"
    batch_discount: float = Field(0.5, gt=0, le=1, description="batch price / interactive price")
    batch_poll_interval: float = Field(60.0, gt=0, description="seconds between job polls")
    batch_max_attempts: int = Field(3, ge=1, description="jobs an item may fail in")
    # Dollars a run may spend on Stage 3 (None: no limit); runs with the same budget_scope (a
    # backfill) share one budget. Reached: aggregation stops, the videos stay pending.
    budget_usd: float | None = Field(None, ge=0)
    budget_scope: str | None = None

    def effective_prices(self) -> dict[str, float]:
        """USD per million tokens as charged in this mode (batch: the discount applied)."""
        if self.mode == "interactive":
            return dict(self.prices)
        return {k: round(v * self.batch_discount, 6) for k, v in self.prices.items()}
