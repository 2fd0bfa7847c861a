"""Rate limits and retries for LLM calls: token buckets for requests and tokens per minute, a bound
on requests in flight, ``Retry-After`` on 429 (which pauses every caller, not just the one that was
refused), exponential backoff with jitter on 5xx and timeouts, and no retry on what cannot succeed.

An endpoint that refuses connections is not retried per request for minutes: after
``RetryPolicy.max_connection_failures`` connection failures in a row across every caller (no
success in between), every call, running or to come, raises ``EndpointDown`` at once. Requests
that were already in flight when a failure was counted do not count again: one blip (a proxy
reset, a server restart) that fails every concurrent request at once is one failure, not a
verdict.
"""

from __future__ import annotations

import contextlib
import email.utils
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TypeVar

from action100m.errors import Action100MError, ServiceError

log = logging.getLogger(__name__)
T = TypeVar("T")
MAX_RETRY_AFTER = 300.0


class RateLimited(ServiceError):
    """HTTP 429; ``retry_after`` seconds when the server said."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class TransientError(ServiceError):
    """5xx, a timeout or a refused connection: worth another try after a pause."""


class ConnectionFailed(TransientError):
    """The endpoint could not be reached at all (refused, reset, DNS): counted towards
    :class:`EndpointDown`."""


class EndpointDown(ServiceError):
    """Too many connection failures in a row: the endpoint is down, stop asking it."""


class RequestRejected(Action100MError):
    """The endpoint refused this request (400, 413, 422): retrying the same request cannot help,
    but other requests may succeed."""


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``retry-after`` (seconds or an HTTP date)."""
    value = headers.get("retry-after-ms")
    if value:
        with contextlib.suppress(ValueError):
            return min(max(float(value) / 1000, 0.0), MAX_RETRY_AFTER)
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value) if value else None
        if parsed is None:
            return None
        seconds = parsed.timestamp() - time.time()
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


class TokenBucket:
    """``per_minute`` units, refilled continuously; starts full."""

    def __init__(self, per_minute: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self.tokens = self.capacity
        self.clock = clock
        self.updated = clock()
        self.lock = threading.Lock()

    def reserve(self, amount: float) -> float:
        """Take ``amount`` now, going into debt if need be; returns seconds to wait before use."""
        amount = min(amount, self.capacity)
        with self.lock:
            now = self.clock()
            self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
            self.updated = now
            self.tokens -= amount
            return 0.0 if self.tokens >= 0 else -self.tokens / self.rate


@dataclass
class RetryPolicy:
    max_retries: int = 6
    base_delay: float = 1.0
    max_delay: float = 60.0
    max_connection_failures: int = 3  # in a row, across every caller: the endpoint is down

    def backoff(self, attempt: int) -> float:
        """Exponential with jitter: half to all of ``base * 2**attempt``, capped."""
        return min(self.max_delay, self.base_delay * 2**attempt) * random.uniform(0.5, 1.0)


class RateLimiter:
    """Shared by every thread annotating one video (or one process)."""

    def __init__(
        self,
        requests_per_minute: float,
        tokens_per_minute: float,
        concurrency: int,
        policy: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.requests = TokenBucket(requests_per_minute)
        self.tokens = TokenBucket(tokens_per_minute)
        self.slots = threading.BoundedSemaphore(concurrency)
        self.policy = policy or RetryPolicy()
        self.sleep = sleep
        self.paused_until = 0.0
        self.waited = 0.0  # seconds spent waiting on limits, for the logs and benchmarks
        self.lock = threading.Lock()
        self.connection_failures = 0  # in a row, reset by any success
        self.failure_epoch = 0  # bumped by every counted failure: which attempts are news
        self.down: str | None = None  # why the endpoint counts as down, once it does

    def pause(self, seconds: float) -> None:
        """Hold every caller back for ``seconds`` (a 429's Retry-After)."""
        self.paused_until = max(self.paused_until, time.monotonic() + seconds)

    @contextlib.contextmanager
    def slot(self, tokens: int) -> Iterator[None]:
        wait = max(self.requests.reserve(1), self.tokens.reserve(tokens))
        wait = max(wait, self.paused_until - time.monotonic())
        if wait > 0:
            self.waited += wait
            self.sleep(wait)
        with self.slots:
            yield

    def call(self, fn: Callable[[], T], tokens: int, what: str) -> T:
        """``fn()`` within the limits, retried on 429 and transient faults; other errors pass."""
        attempts = self.policy.max_retries + 1
        for attempt in range(attempts):
            if self.down is not None:
                raise EndpointDown(f"{what}: not sent: {self.down}")
            try:
                with self.slot(tokens):
                    # A failure of this request is news only if none is counted from now on.
                    epoch = self.failure_epoch
                    result = fn()
                with self.lock:
                    self.connection_failures = 0
                return result
            except RateLimited as exc:
                delay = exc.retry_after
                if delay is None:
                    delay = self.policy.backoff(attempt)
                self.pause(delay)
                problem: ServiceError = exc
            except ConnectionFailed as exc:
                self._connection_failed(exc, epoch)
                delay = self.policy.backoff(attempt)
                problem = exc
            except TransientError as exc:
                delay = self.policy.backoff(attempt)
                problem = exc
            if attempt + 1 == attempts:
                raise ServiceError(f"{what}: gave up after {attempts} attempts: {problem}")
            log.warning(
                "%s: %s; retry %d/%d in %.1f s", what, problem, attempt + 1, attempts - 1, delay
            )
            if isinstance(problem, TransientError):
                self.sleep(delay)
        raise AssertionError("unreachable")

    def _connection_failed(self, exc: ConnectionFailed, sent_at_epoch: int) -> None:
        """Count one more connection failure in a row, unless another was counted while this
        request was in flight (the same blip); past the limit, the endpoint is down."""
        with self.lock:
            if sent_at_epoch == self.failure_epoch:
                self.failure_epoch += 1
                self.connection_failures += 1
            if self.down is None and self.connection_failures >= (
                self.policy.max_connection_failures
            ):
                self.down = f"{self.connection_failures} connection failures in a row ({exc})"
                log.error("LLM endpoint down, stopping every request: %s", self.down)
            down = self.down
        if down is not None:
            raise EndpointDown(down) from None
