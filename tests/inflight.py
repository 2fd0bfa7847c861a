"""How many requests a scripted test server is answering at once, and the most there ever were
(tests assert a client's concurrency bound with it)."""

from __future__ import annotations

import threading
from collections.abc import Callable


class InFlight:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.now = 0
        self.most = 0

    def enter(self) -> Callable[[], None]:
        """Count one more request; the function returned uncounts it, once however often it is
        called (a handler calls it before its answer goes out and again when it is done)."""
        with self._lock:
            self.now += 1
            self.most = max(self.most, self.now)
        left = threading.Event()

        def leave() -> None:
            with self._lock:
                if not left.is_set():
                    left.set()
                    self.now -= 1

        return leave

    def reset(self) -> None:
        """Forget the peak: from now on, the most is what is in flight now."""
        with self._lock:
            self.most = self.now
