"""Robustness pieces shared by the providers: retry policy with jittered backoff, a
TTL cache, a sliding-window rate limiter, and stale-data detection.

Clocks and sleeps are injected (``clock() -> seconds``, ``sleep(seconds)``) so tests
run without waiting; production uses ``time.monotonic`` and ``time.sleep``.
"""
from __future__ import annotations

import random
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Callable, Generic, Hashable, TypeVar

from greenml.signals.base import IntensitySeries, SignalError
from greenml.timeutil import ensure_utc

Clock = Callable[[], float]
Sleep = Callable[[float], None]
T = TypeVar("T")

# RateLimited is not retried inline: the provider records the block (RateLimiter.block_for)
# and the chain falls back at once; the provider is asked again after the Retry-After.
RETRYABLE = frozenset({"Timeout", "ServerError", "Unavailable"})
DEFAULT_RATE_LIMIT_BLOCK = 60.0  # seconds a 429 without Retry-After blocks the provider


@dataclass(frozen=True)
class RetryPolicy:
    """How a provider call is retried. Delay before attempt k (k>=1) is
    ``min(max_delay, base_delay * 2**(k-1))`` scaled by a random factor in [1-jitter, 1];
    a server's Retry-After wins when it is longer, up to ``max_retry_after``."""

    attempts: int = 3
    base_delay: float = 0.5
    max_delay: float = 10.0
    jitter: float = 0.5
    timeout: float = 10.0           # seconds per HTTP request (connect and read)
    max_retry_after: float = 10.0   # longer Retry-After (on a 5xx): give up now, let the chain fall back

    def delay(self, attempt: int, rng: random.Random, retry_after: float | None = None) -> float:
        d = min(self.max_delay, self.base_delay * 2 ** (attempt - 1)) * (1 - self.jitter * rng.random())
        return max(d, retry_after or 0.0)


def call_with_retry(fn: Callable[[], T], policy: RetryPolicy, *, sleep: Sleep = time.sleep,
                    rng: random.Random | None = None) -> T:
    """Call fn; on a retryable SignalError, back off and retry up to ``policy.attempts`` times."""
    rng = rng or random.Random()
    for attempt in range(1, policy.attempts + 1):
        try:
            return fn()
        except SignalError as exc:
            retry_after = getattr(exc, "retry_after", None)
            if exc.reason not in RETRYABLE or attempt == policy.attempts:
                raise
            if retry_after is not None and retry_after > policy.max_retry_after:
                raise
            sleep(policy.delay(attempt, rng, retry_after))
    raise AssertionError("unreachable")  # pragma: no cover


class TTLCache(Generic[T]):
    """A small thread-safe cache; entries expire ``ttl`` seconds after being put.
    ``get_stale`` returns an expired entry too (for serve-stale-on-error)."""

    def __init__(self, ttl: float, *, clock: Clock = time.monotonic, max_entries: int = 256) -> None:
        self.ttl = ttl
        self._clock = clock
        self._max = max_entries
        self._data: dict[Hashable, tuple[float, T]] = {}
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> T | None:
        with self._lock:
            hit = self._data.get(key)
        if hit is None or self._clock() - hit[0] > self.ttl:
            return None
        return hit[1]

    def get_stale(self, key: Hashable) -> T | None:
        with self._lock:
            hit = self._data.get(key)
        return None if hit is None else hit[1]

    def put(self, key: Hashable, value: T) -> None:
        with self._lock:
            if len(self._data) >= self._max and key not in self._data:
                oldest = min(self._data, key=lambda k: self._data[k][0])
                del self._data[oldest]
            self._data[key] = (self._clock(), value)


class RateLimiter:
    """At most ``limit`` calls per ``window`` seconds (sliding window; ``limit=None``: no
    client-side limit, only the server's blocks). ``acquire`` raises
    SignalError(reason="RateLimited") instead of blocking, so a busy provider makes the
    chain fall back rather than stall a reconcile. Also honours a server's Retry-After."""

    def __init__(self, limit: int | None, window: float, *, clock: Clock = time.monotonic) -> None:
        if (limit is not None and limit <= 0) or window <= 0:
            raise ValueError("rate limit and window must be positive")
        self.limit = limit
        self.window = window
        self._clock = clock
        self._calls: deque[float] = deque()
        self._blocked_until = 0.0
        self._lock = threading.Lock()

    def acquire(self, what: str) -> None:
        with self._lock:
            now = self._clock()
            if now < self._blocked_until:
                raise SignalError(f"{what}: rate limited for another {self._blocked_until - now:.0f} s",
                                  reason="RateLimited")
            if self.limit is None:
                return
            while self._calls and now - self._calls[0] >= self.window:
                self._calls.popleft()
            if len(self._calls) >= self.limit:
                raise SignalError(f"{what}: client-side rate limit of {self.limit} requests per "
                                  f"{self.window:g} s reached", reason="RateLimited")
            self._calls.append(now)

    def block_for(self, seconds: float) -> None:
        with self._lock:
            self._blocked_until = max(self._blocked_until, self._clock() + seconds)


def check_fresh(series: IntensitySeries, now: datetime, max_age: timedelta, what: str) -> IntensitySeries:
    """Raise SignalError(reason="Stale") when the newest slot ended more than max_age before now."""
    if len(series) == 0:
        raise SignalError(f"{what}: empty series", reason="Malformed")
    age = ensure_utc(now) - series.end
    if age > max_age:
        raise SignalError(f"{what}: newest data ends {series.end.isoformat()}, {age} before now", reason="Stale")
    return series
