"""Per-client token buckets and concurrent-stream counts, behind a small store interface.

`MemoryStore` keeps buckets in insertion/recency order, so evicting idle clients is a walk from the
front: a bucket idle long enough to be full again equals a fresh one and is dropped. A hard cap on
tracked clients bounds memory even under a flood of distinct addresses that all arrive within one
refill period (the oldest buckets go first; at worst such a client starts again with a full bucket).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

MAX_TRACKED_CLIENTS = 100_000


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    reset_after: float  # seconds until the bucket is full again
    retry_after: float  # seconds until one token is available (0 when allowed)

    def headers(self) -> dict[str, str]:
        """IETF draft RateLimit headers, plus Retry-After (whole seconds, at least 1) when refused."""
        values = {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(math.ceil(self.reset_after)),
        }
        if not self.allowed:
            values["Retry-After"] = str(max(1, math.ceil(self.retry_after)))
        return values


def bucket_decision(allowed: bool, tokens: float, rate: float, burst: float) -> Decision:
    """The answer for a bucket holding `tokens` after this request; shared by every store."""
    return Decision(
        allowed=allowed,
        limit=int(burst),
        remaining=int(tokens),
        reset_after=(burst - tokens) / rate,
        retry_after=0.0 if allowed else (1.0 - tokens) / rate,
    )


class LimiterStore(Protocol):
    async def take(self, client: str, rate: float, burst: float) -> Decision: ...

    async def acquire_stream(self, client: str, limit: int) -> bool: ...

    async def release_stream(self, client: str) -> None: ...

    async def close(self) -> None: ...


class MemoryStore:
    """One process's buckets; bounded by `max_clients`."""

    def __init__(self, max_clients: int = MAX_TRACKED_CLIENTS, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_clients = max_clients
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # client -> (tokens, updated)
        self._streams: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._buckets)

    async def take(self, client: str, rate: float, burst: float) -> Decision:
        return self.take_now(client, rate, burst)

    def take_now(self, client: str, rate: float, burst: float) -> Decision:
        now = self._clock()
        tokens, updated = self._buckets.pop(client, (burst, now))
        tokens = min(burst, tokens + (now - updated) * rate)
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        self._buckets[client] = (tokens, now)
        self._evict(now, rate, burst)
        return bucket_decision(allowed, tokens, rate, burst)

    def _evict(self, now: float, rate: float, burst: float) -> None:
        buckets = self._buckets
        while len(buckets) > self.max_clients:
            buckets.popitem(last=False)
        while buckets:  # least recently seen first: stop at the first bucket still refilling
            client, (tokens, updated) = next(iter(buckets.items()))
            if tokens + (now - updated) * rate < burst:
                break
            del buckets[client]

    async def acquire_stream(self, client: str, limit: int) -> bool:
        count = self._streams.get(client, 0)
        if count >= limit:
            return False
        self._streams[client] = count + 1
        return True

    async def release_stream(self, client: str) -> None:
        count = self._streams.get(client, 0) - 1
        if count > 0:
            self._streams[client] = count
        else:
            self._streams.pop(client, None)

    async def close(self) -> None:
        """Nothing to release: the buckets live in this process."""
