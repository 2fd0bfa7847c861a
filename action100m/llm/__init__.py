"""LLM access for Stage 3: prompts, clients, rate limits, Self-Refine, the answer schema.

- :mod:`.schema`: the five-field :class:`~.schema.Annotation` and a tolerant answer parser
- :mod:`.prompts`: prompt text and Markdown rendering of the tree, within a token budget
- :mod:`.messages`: provider-neutral requests, completions, usage and cost
- :mod:`.clients`: OpenAI / Anthropic / OpenAI-compatible adapters and credentials
- :mod:`.ratelimit`: token buckets, bounded concurrency, Retry-After and backoff
- :mod:`.refine`: Self-Refine rounds for one node, with the per-request cache
"""
