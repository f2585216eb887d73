"""`RedisStore`: the rate limiter's buckets and stream counts in Redis, shared by every worker and host.

Each decision is one Lua script run atomically inside Redis (loaded once, then called by SHA; loaded
again by itself after a Redis restart), timed by Redis's own clock so the hosts' clocks never matter.
Keys expire once they would equal a fresh bucket or an empty count, so idle clients cost nothing.
Redis is asked once per request, never per token.

When Redis cannot be reached, `fail_open` decides: True lets requests through unlimited, False answers
503 with Retry-After. The outage is logged once at ERROR and every decision made without Redis is
counted (`on_error`); Redis is tried again at most once per `retry_interval` until it answers.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, NoReturn

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from middleware.errors import ApiError
from middleware.rate_limit import Decision, bucket_decision

log = logging.getLogger("gateway.ratelimit")

# KEYS[1] bucket; ARGV rate, burst. Returns {allowed 0|1, tokens left as a string (Lua numbers reply as integers)}.
_TAKE = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = burst
if state[1] then
  tokens = math.min(burst, tonumber(state[1]) + math.max(0, now - tonumber(state[2])) * rate)
end
local allowed = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.6f', tokens), 'at', string.format('%.6f', now))
redis.call('PEXPIRE', KEYS[1], math.min(math.ceil((burst - tokens) / rate * 1000) + 1000, 2592000000))
return {allowed, string.format('%.6f', tokens)}
"""

# KEYS[1] stream count; ARGV limit, ttl seconds. Returns 1 when a slot was taken.
_ACQUIRE = """
local count = redis.call('INCR', KEYS[1])
if count > tonumber(ARGV[1]) then
  redis.call('DECR', KEYS[1])
  return 0
end
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
"""

_RELEASE = """
if redis.call('DECR', KEYS[1]) <= 0 then
  redis.call('DEL', KEYS[1])
end
return 0
"""


class StoreUnavailableError(Exception):
    """Redis did not answer (or is in its retry pause); the fail mode decides what the request gets."""


class RedisStore:
    """The `LimiterStore` for many processes: one Redis, one budget per client."""

    def __init__(
        self,
        client: Redis,
        *,
        fail_open: bool = True,
        stream_ttl: float = 3600.0,
        retry_interval: float = 1.0,
        on_error: Callable[[], None] = lambda: None,
        prefix: str = "tas:",
    ) -> None:
        self._client = client
        self.fail_open = fail_open
        self.stream_ttl = max(1, math.ceil(stream_ttl))  # a crashed worker's slots are forgotten after this
        self.retry_interval = retry_interval
        self._on_error = on_error
        self._prefix = prefix
        self._take = client.register_script(_TAKE)
        self._acquire = client.register_script(_ACQUIRE)
        self._release = client.register_script(_RELEASE)
        self._down_since: float | None = None
        self._retry_at = 0.0
        self._uncounted: Counter[str] = Counter()  # streams admitted during an outage, never counted in Redis

    @classmethod
    def from_url(cls, url: str, **options: Any) -> RedisStore:
        """Short timeouts and one immediate retry (a pooled socket may predate a Redis restart): an
        unreachable Redis costs a request milliseconds, not seconds."""
        client = Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5, retry=Retry(NoBackoff(), 1))
        return cls(client, **options)

    # -- LimiterStore ------------------------------------------------------------------------------
    async def take(self, client: str, rate: float, burst: float) -> Decision:
        try:
            allowed, tokens = await self.run(self._take, f"{self._prefix}rate:{client}", rate, burst)
        except StoreUnavailableError:
            return Decision(allowed=True, limit=int(burst), remaining=int(burst), reset_after=0.0, retry_after=0.0)
        return bucket_decision(bool(allowed), float(tokens), rate, burst)

    async def acquire_stream(self, client: str, limit: int) -> bool:
        try:
            return bool(await self.run(self._acquire, f"{self._prefix}streams:{client}", limit, self.stream_ttl))
        except StoreUnavailableError:
            self._uncounted[client] += 1
            return True

    async def release_stream(self, client: str) -> None:
        if self._uncounted[client] > 0:
            self._uncounted[client] -= 1
            if not self._uncounted[client]:
                del self._uncounted[client]
            return
        with contextlib.suppress(StoreUnavailableError):  # unreachable: the count's TTL forgets this slot
            await self.run(self._release, f"{self._prefix}streams:{client}", quiet=True)

    async def close(self) -> None:
        await self._client.aclose()

    def register(self, source: str) -> AsyncScript:
        """A Lua script on this store's client, for other ledgers that share its Redis and its outage handling."""
        return self._client.register_script(source)

    def key(self, name: str) -> str:
        return self._prefix + name

    # -- outage handling ----------------------------------------------------------------------------
    async def run(self, script: AsyncScript, key: str, *args: float | int | str, quiet: bool = False) -> Any:
        """Run one script; on failure count it, apply the fail mode (closed raises a 503) and raise
        StoreUnavailableError. `quiet` (releases) skips the fail mode: nothing is being decided."""
        now = time.monotonic()
        if self._down_since is not None and now < self._retry_at:
            self._unavailable(quiet)
        try:
            result = await script(keys=[key], args=args)
        except (RedisError, OSError) as error:
            if self._down_since is None:
                self._down_since = now
                log.error("rate limit store unreachable (%s): failing %s until Redis answers", error, self._mode)
            self._retry_at = now + self.retry_interval
            self._unavailable(quiet)
        if self._down_since is not None:
            log.warning("rate limit store reachable again after %.1fs: limits hold again", now - self._down_since)
            self._down_since = None
        return result

    @property
    def _mode(self) -> str:
        return "open (requests are not limited)" if self.fail_open else "closed (requests get 503)"

    def _unavailable(self, quiet: bool) -> NoReturn:
        if not quiet:
            self._on_error()
            if not self.fail_open:
                raise ApiError(
                    503,
                    "rate_limiter_unavailable",
                    "the rate limiter is unreachable; retry shortly",
                    headers={"Retry-After": str(max(1, math.ceil(self.retry_interval)))},
                )
        raise StoreUnavailableError
