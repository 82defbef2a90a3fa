"""Abuse limits: failed ceremonies counted per API key and per identity over a sliding window."""

from __future__ import annotations

import time
from collections import deque
from typing import Callable


class FailureLimiter:
    """At most ``max_failures`` failed ceremonies per key in any ``window_s`` seconds (monotonic clock)."""

    def __init__(self, max_failures: int = 5, window_s: float = 180.0, clock: Callable[[], float] = time.monotonic):
        self.max_failures = max_failures
        self.window_s = window_s
        self.clock = clock
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, key: str) -> deque[float]:
        now = self.clock()
        q = self._failures.get(key)
        if q is None:
            return deque()
        while q and q[0] <= now - self.window_s:
            q.popleft()
        if not q:
            del self._failures[key]
        return q

    def blocked(self, key: str) -> float:
        """0 when ``key`` may start a ceremony, else the seconds until it may."""
        if self.max_failures <= 0:
            return 0.0
        q = self._recent(key)
        if len(q) < self.max_failures:
            return 0.0
        return max(0.0, q[0] + self.window_s - self.clock())

    def failed(self, key: str) -> None:
        self._recent(key)
        self._failures.setdefault(key, deque()).append(self.clock())
