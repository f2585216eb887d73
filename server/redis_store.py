"""`RedisStore`: the rate limiter's buckets and stream slots in Redis, shared by every worker and host.

Each decision is one Lua script run atomically inside Redis (loaded once, then called by SHA; loaded
again by itself after a Redis restart), timed by Redis's own clock so the hosts' clocks never matter.
Keys expire once they would equal a fresh bucket or an empty count, so idle clients cost nothing.
Redis is asked once per request, never per token. A stream slot is an id with an expiry that its holder
pushes back while the stream lives (`STREAM_SLOT_TTL_SECS`), so a release lost in an outage or a crashed
worker's slots free themselves instead of refusing the client forever.

When Redis cannot be reached, `fail_open` decides: True lets requests through unlimited, False answers
503 with Retry-After. The outage is logged once at ERROR and every decision made without Redis is
counted (`on_error`); Redis is tried again at most once per `retry_interval` until it answers, and
the requests in between skip it, so a hung Redis costs one request its socket timeout and the rest nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any, NoReturn

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from server.errors import LimiterUnavailableError
from server.rate_limit import Decision, bucket_decision

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

# A client's stream slots are one sorted set: slot id -> expiry (ms on Redis's clock). Each holder refreshes
# its live slots; a slot whose release was lost, or whose worker died, expires by itself.
_NOW_MS = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
"""
_EXPIRE_WITH_LAST_SLOT = """
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')[2]
if last then redis.call('PEXPIREAT', KEYS[1], last) end
"""

# KEYS[1] slots; ARGV limit, ttl ms, slot id. Returns 1 when the slot was taken.
_ACQUIRE = (
    _NOW_MS
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
  return 0
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
"""
    + _EXPIRE_WITH_LAST_SLOT
    + "return 1"
)

# KEYS[1] slots; ARGV ttl ms, then the holder's live slot ids (re-added if an outage let them expire).
_REFRESH = (
    _NOW_MS
    + """
for i = 2, #ARGV do
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), ARGV[i])
end
"""
    + _EXPIRE_WITH_LAST_SLOT
    + "return 0"
)

# KEYS[1] slots; ARGV slot id. Redis deletes a sorted set once it is empty.
_RELEASE = "redis.call('ZREM', KEYS[1], ARGV[1])\nreturn 0"


class StoreUnavailableError(Exception):
    """Redis did not answer (or is in its retry pause); the fail mode decides what the request gets."""


class RedisStore:
    """The `LimiterStore` for many processes: one Redis, one budget per client."""

    def __init__(
        self,
        client: Redis,
        *,
        fail_open: bool = True,
        stream_ttl: float = 60.0,
        retry_interval: float = 1.0,
        on_error: Callable[[], None] = lambda: None,
        prefix: str = "tas:",
    ) -> None:
        self._client = client
        self.fail_open = fail_open
        self.stream_ttl = stream_ttl  # a slot nobody refreshes (lost release, dead worker) is gone after this
        self.retry_interval = retry_interval
        self._on_error = on_error
        self._prefix = prefix
        self._take = client.register_script(_TAKE)
        self._acquire = client.register_script(_ACQUIRE)
        self._refresh = client.register_script(_REFRESH)
        self._release = client.register_script(_RELEASE)
        self._down_since: float | None = None
        self._retry_at = 0.0
        self._slots: dict[str, list[str]] = {}  # client -> ids of the slots this process's live streams hold
        self._uncounted: Counter[str] = Counter()  # streams admitted during an outage, never counted in Redis
        self._refresher: asyncio.Task[None] | None = None

    @classmethod
    def from_url(cls, url: str, **options: Any) -> RedisStore:
        """Short timeouts; one immediate retry after a broken connection (a pooled socket may predate a Redis
        restart) but none after a timeout: an unreachable Redis costs one request 0.5 s, the next ones nothing."""
        retry = Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,))
        client = Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5, retry=retry)
        return cls(client, **options)

    # -- LimiterStore ------------------------------------------------------------------------------
    async def take(self, client: str, rate: float, burst: float) -> Decision:
        try:
            allowed, tokens = await self.run(self._take, f"{self._prefix}rate:{client}", rate, burst)
        except StoreUnavailableError:
            return Decision(allowed=True, limit=int(burst), remaining=int(burst), reset_after=0.0, retry_after=0.0)
        return bucket_decision(bool(allowed), float(tokens), rate, burst)

    async def acquire_stream(self, client: str, limit: int) -> bool:
        slot = uuid.uuid4().hex
        try:
            taken = await self.run(self._acquire, self._slots_key(client), limit, self._ttl_ms, slot)
        except StoreUnavailableError:
            self._uncounted[client] += 1
            return True
        if taken:
            self._slots.setdefault(client, []).append(slot)
            if self._refresher is None:
                self._refresher = asyncio.get_running_loop().create_task(self._refresh_forever())
        return bool(taken)

    async def release_stream(self, client: str) -> None:
        if self._uncounted[client] > 0:
            self._uncounted[client] -= 1
            if not self._uncounted[client]:
                del self._uncounted[client]
            return
        slots = self._slots.get(client)
        if not slots:
            return
        slot = slots.pop()  # no longer refreshed: if the ZREM below is lost, the slot expires by itself
        if not slots:
            del self._slots[client]
        with contextlib.suppress(StoreUnavailableError):
            await self.run(self._release, self._slots_key(client), slot, quiet=True)

    async def close(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
        await self._client.aclose()

    # -- stream slots --------------------------------------------------------------------------------
    @property
    def _ttl_ms(self) -> int:
        return math.ceil(self.stream_ttl * 1000)

    def _slots_key(self, client: str) -> str:
        return f"{self._prefix}streams:{client}"

    async def _refresh_forever(self) -> None:
        """Three times per TTL, push back the expiry of every slot a live stream here holds: one call per client."""
        while True:
            await asyncio.sleep(self.stream_ttl / 3)
            for client, slots in list(self._slots.items()):
                with contextlib.suppress(StoreUnavailableError):
                    await self.run(self._refresh, self._slots_key(client), self._ttl_ms, *slots, quiet=True)

    def register(self, source: str) -> AsyncScript:
        """A Lua script on this store's client, for other ledgers that share its Redis and its outage handling."""
        return self._client.register_script(source)

    def key(self, name: str) -> str:
        return self._prefix + name

    # -- outage handling ----------------------------------------------------------------------------
    async def run(self, script: AsyncScript, key: str, *args: float | int | str, quiet: bool = False) -> Any:
        """Run one script; on failure count it, apply the fail mode (closed raises a 503) and raise
        StoreUnavailableError. `quiet` (releases) skips the fail mode: nothing is being decided."""
        if self._down_since is not None and time.monotonic() < self._retry_at:
            self._unavailable(quiet)
        try:
            result = await script(keys=[key], args=args)
        except (RedisError, OSError) as error:
            failed_at = time.monotonic()  # after the timeout: the pause starts when the failure is known
            if self._down_since is None:
                self._down_since = failed_at
                log.error("rate limit store unreachable (%s): failing %s until Redis answers", error, self._mode)
            self._retry_at = failed_at + self.retry_interval
            self._unavailable(quiet)
        if self._down_since is not None:
            log.warning("rate limit store reachable again after %.1fs: limits hold again", time.monotonic() - self._down_since)
            self._down_since = None
        return result

    @property
    def _mode(self) -> str:
        return "open (requests are not limited)" if self.fail_open else "closed (requests get 503)"

    def _unavailable(self, quiet: bool) -> NoReturn:
        if not quiet:
            self._on_error()
            if not self.fail_open:
                raise LimiterUnavailableError(max(1, math.ceil(self.retry_interval)))
        raise StoreUnavailableError
