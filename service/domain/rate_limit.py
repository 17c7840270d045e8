"""Token buckets, one per caller: how many requests a caller may make, and when again.

Pure: the caller passes the clock (`now_s`, seconds of a monotonic clock). A
bucket holds at most `burst` tokens and refills at `rate_per_s`; a request takes
one token, and a request that finds less than one is refused with the seconds
until a token is there (HTTP answers 429 with that as `Retry-After`).

The buckets live in one process's memory: with N API processes a caller gets
up to N times the rate. At most `max_buckets` callers are tracked; beyond that
the least recently seen bucket is dropped (it was the idlest, so it was likely
full anyway), which bounds memory whatever the number of callers.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Limit:
    rate_per_s: float
    burst: int

    def __post_init__(self) -> None:
        if not (self.rate_per_s > 0 and self.burst >= 1):
            raise ValueError(f"a rate limit needs rate_per_s > 0 and burst >= 1, got {self}")


class RateLimiter:
    """Buckets keyed by caller (an API key id, or a client address)."""

    def __init__(self, limit: Limit, max_buckets: int = 10_000) -> None:
        self.limit = limit
        self._max_buckets = max_buckets
        # caller -> (tokens, instant of that count); most recently used last.
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, caller: str, now_s: float) -> int:
        """0 when the request may go ahead (a token is taken), else the whole seconds
        (at least 1) to wait before one token is there."""
        tokens = self._tokens(caller, now_s)
        if tokens >= 1.0:
            self._remember(caller, tokens - 1.0, now_s)
            return 0
        self._remember(caller, tokens, now_s)
        return self._wait_s(tokens)

    def peek(self, caller: str, now_s: float) -> int:
        """Like `take`, but takes nothing and remembers nothing."""
        tokens = self._tokens(caller, now_s)
        return 0 if tokens >= 1.0 else self._wait_s(tokens)

    def _tokens(self, caller: str, now_s: float) -> float:
        tokens, then = self._buckets.get(caller, (float(self.limit.burst), now_s))
        # A clock that stepped back refills nothing rather than draining the bucket.
        elapsed_s = max(0.0, now_s - then)
        return min(float(self.limit.burst), tokens + elapsed_s * self.limit.rate_per_s)

    def _wait_s(self, tokens: float) -> int:
        return max(1, math.ceil((1.0 - tokens) / self.limit.rate_per_s))

    def _remember(self, caller: str, tokens: float, now_s: float) -> None:
        self._buckets.pop(caller, None)  # re-inserted last: the most recently used
        self._buckets[caller] = (tokens, now_s)
        while len(self._buckets) > self._max_buckets:
            self._buckets.popitem(last=False)

    def __len__(self) -> int:
        return len(self._buckets)
