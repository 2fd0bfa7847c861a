"""A spending limit for Stage 3 across the videos of a run (or of a backfill: its runs share a
``aggregate.budget_scope``).

Each video's aggregation records what it has paid under ``{store}/budget/{scope}/{video}.json``
(one object per video: concurrent tasks never write the same one); the total of a scope is the
sum of those. Before each paid request (interactive) or job (batch) the total is compared with
``aggregate.budget_usd``; once reached, :class:`BudgetReached` stops the video's aggregation: its
answers so far are cached, the video stays pending and a later run with a larger (or a fresh)
budget goes on where this one stopped. Tasks running at once read each other's spend when they
start and then every ``REFRESH_S`` seconds, so a run may overshoot by what its concurrent tasks
spend in that time.
"""

from __future__ import annotations

import os
import threading
import time

from action100m.config import AggregateConfig
from action100m.errors import Action100MError
from action100m.store import ArtifactStore

REFRESH_S = 30.0
PROCESS_SCOPE = f"local-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"


class BudgetReached(Action100MError):
    """``aggregate.budget_usd`` is spent: aggregation stops, the video stays pending."""


class Budget:
    """The spend of one video against its scope's limit (thread-safe)."""

    def __init__(
        self, store: ArtifactStore, cfg: AggregateConfig, video_id: str, *, resume: bool = True
    ) -> None:
        """``resume``: the spend passed to :meth:`check` and :meth:`record` is this attempt's
        only (interactive: cached answers cost nothing again); else the video's whole spend."""
        self.store, self.video_id = store, video_id
        self.limit = cfg.budget_usd
        self.scope = cfg.budget_scope or PROCESS_SCOPE
        self.folder = f"{store.root.rstrip('/')}/budget/{self.scope}"
        self._own_uri = f"{self.folder}/{video_id}.json"
        self._lock = threading.Lock()
        self._others: float | None = None
        self._read_at = 0.0
        self.reached: BudgetReached | None = None  # sticky: once reached, every check raises
        # What this video paid in earlier attempts.
        self.recorded = self._read(self._own_uri) if resume else 0.0

    def _read(self, uri: str) -> float:
        try:
            return float(self.store.read_json(uri).get("spent_usd", 0.0))
        except (FileNotFoundError, ValueError, KeyError, TypeError, AttributeError):
            return 0.0

    def others(self) -> float:
        """What the scope's other videos have recorded (re-read every ``REFRESH_S``)."""
        with self._lock:
            if self._others is None or time.monotonic() - self._read_at > REFRESH_S:
                total = spent_in_scope(self.store, self.scope)
                self._others = total - self._read(self._own_uri)
                self._read_at = time.monotonic()
            return self._others

    def check(self, spent_now: float) -> None:
        """Raise :class:`BudgetReached` when the scope has spent the limit (``spent_now``: this
        video's spend in this attempt)."""
        if self.limit is None:
            return
        if self.reached is not None:
            raise self.reached
        total = self.others() + self.recorded + spent_now
        if total >= self.limit:
            self.reached = BudgetReached(
                f"video {self.video_id}: aggregate.budget_usd ${self.limit:.2f} reached: ${total:.4f} spent in "
                f"budget scope {self.scope!r}; answers so far are cached and the video stays "
                "pending: run again with a larger aggregate.budget_usd (or another "
                "aggregate.budget_scope) to go on"
            )
            raise self.reached

    def record(self, spent_now: float) -> None:
        """Store this video's spend (earlier attempts included)."""
        if self.limit is None and self.scope == PROCESS_SCOPE:
            return  # no budget: no ledger
        total = round(self.recorded + spent_now, 6)
        self.store.write_json(self._own_uri, {"video_id": self.video_id, "spent_usd": total})


def spent_in_scope(store: ArtifactStore, scope: str) -> float:
    """What every video of ``scope`` has recorded."""
    folder = f"{store.root.rstrip('/')}/budget/{scope}"
    total = 0.0
    for uri in store.list(folder):
        if uri.endswith(".json"):
            try:
                total += float(store.read_json(uri).get("spent_usd", 0.0))
            except (FileNotFoundError, ValueError, TypeError, AttributeError):
                continue
    return total


def exhausted(store: ArtifactStore, cfg: AggregateConfig) -> str | None:
    """Why more work in ``cfg.budget_scope`` would stop at once (its budget is spent), else None."""
    if cfg.budget_usd is None or not cfg.budget_scope:
        return None
    spent = spent_in_scope(store, cfg.budget_scope)
    if spent < cfg.budget_usd:
        return None
    return (
        f"aggregate.budget_usd ${cfg.budget_usd:.2f} of budget scope {cfg.budget_scope!r} is "
        f"spent (${spent:.4f}); to go on, trigger again with a larger aggregate.budget_usd (or "
        "another aggregate.budget_scope): finished videos are skipped, answers bought are cached"
    )
