"""Token and cost budgets per client over fixed windows aligned to the epoch, in memory or in Redis.

A client's spend in the current window is a pair (tokens, cost in USD) charged once at the end of each call.
`Budgets` knows each client's limits (TOKEN_BUDGET / COST_BUDGET_USD, or its key's override) and reads
and charges the ledger: `MemoryLedger` for one process, `RedisLedger` for every worker and host, where one
Lua script increments (HINCRBY / HINCRBYFLOAT), sets EXPIREAT at the window's end and reads Redis's clock,
so all hosts agree on the window. Redis trouble follows RATE_LIMIT_FAIL_MODE through the limiter's store.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from server.client_keys import key_id
from server.config import Settings
from server.rate_limit import MAX_TRACKED_CLIENTS, LimiterStore
from server.redis_store import RedisStore, StoreUnavailableError


@dataclass(frozen=True, slots=True)
class Limits:
    tokens: int = 0  # 0 = no token budget
    cost_usd: float = 0.0  # 0 = no cost budget

    @property
    def metered(self) -> bool:
        return self.tokens > 0 or self.cost_usd > 0


@dataclass(frozen=True, slots=True)
class Spend:
    """What a client spent in the current window, and how long that window has left."""

    tokens: int
    cost_usd: float
    reset_after: float  # seconds


def _usd(value: float) -> str:
    return f"{value:.6f}".rstrip("0").rstrip(".")


@dataclass(frozen=True, slots=True)
class Standing:
    """A client's limits beside its spend: what the headers, the 429 and /v1/usage report."""

    limits: Limits
    spend: Spend

    @property
    def tokens_left(self) -> int | None:
        return max(0, self.limits.tokens - self.spend.tokens) if self.limits.tokens else None

    @property
    def cost_left(self) -> float | None:
        return max(0.0, self.limits.cost_usd - self.spend.cost_usd) if self.limits.cost_usd else None

    @property
    def exhausted(self) -> bool:
        return self.tokens_left == 0 or self.cost_left == 0

    @property
    def retry_after(self) -> str:
        return str(max(1, math.ceil(self.spend.reset_after)))

    def headers(self) -> dict[str, str]:
        """X-Budget-* for a metered client; X-Budget-Remaining is before this call's charge."""
        values = {"X-Budget-Reset": str(math.ceil(self.spend.reset_after))}
        if self.tokens_left is not None:
            values["X-Budget-Limit"] = str(self.limits.tokens)
            values["X-Budget-Remaining"] = str(self.tokens_left)
        if self.cost_left is not None:
            values["X-Budget-Limit-USD"] = _usd(self.limits.cost_usd)
            values["X-Budget-Remaining-USD"] = _usd(self.cost_left)
        return values

    def as_json(self, now: float | None = None) -> dict[str, Any]:
        """The body of GET /v1/usage."""
        resets_at = datetime.fromtimestamp(now if now is not None else time.time(), UTC) + timedelta(seconds=self.spend.reset_after)
        return {
            "window": {
                "resets_at": resets_at.replace(microsecond=0).isoformat().replace("+00:00", "Z"),
                "reset_secs": math.ceil(self.spend.reset_after),
            },
            "tokens": {"limit": self.limits.tokens or None, "used": self.spend.tokens, "remaining": self.tokens_left},
            "cost_usd": {"limit": self.limits.cost_usd or None, "used": round(self.spend.cost_usd, 6), "remaining": self.cost_left},
        }


def _count(value: Any) -> float:
    """A usage number the provider sent, or 0 for anything that is not a non-negative number."""
    return value if isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value < math.inf else 0


@dataclass(frozen=True, slots=True)
class Charge:
    """What one call costs its client: the provider's usage, else an estimate of 4 characters a token."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cost_usd: float
    estimated: bool

    @classmethod
    def of(cls, usage: dict[str, Any] | None, prompt_chars: int, relayed_chars: int) -> Charge | None:
        """None when there is nothing to charge: no usage and nothing relayed (the provider refused)."""
        if usage:
            prompt, completion = int(_count(usage.get("prompt_tokens"))), int(_count(usage.get("completion_tokens")))
            total = int(_count(usage.get("total_tokens"))) or prompt + completion
            return cls(prompt, completion, total, float(_count(usage.get("cost"))), estimated=False)
        if not relayed_chars:
            return None
        total = math.ceil((prompt_chars + relayed_chars) / 4)
        prompt = math.ceil(prompt_chars / 4)
        return cls(prompt, total - prompt, total, 0.0, estimated=True)

    @staticmethod
    def log_fields(charge: Charge | None) -> dict[str, Any]:
        """The stream outcome line's spend fields (null when nothing was charged)."""
        if charge is None:
            return {"prompt_tokens": None, "completion_tokens": None, "cost_usd": None, "usage_estimated": False}
        return {
            "prompt_tokens": charge.prompt_tokens,
            "completion_tokens": charge.completion_tokens,
            "cost_usd": charge.cost_usd,
            "usage_estimated": charge.estimated,
        }


class Ledger(Protocol):
    async def charge(self, client: str, tokens: int, cost_usd: float) -> Spend:
        """Add to the client's current window (0, 0 reads it) and return the window's spend."""
        ...


class MemoryLedger:
    """One process's windows. Every client shares the same window, so a new window simply forgets the old
    one; at most `max_clients` are held (past that the least recently charged is forgotten)."""

    def __init__(self, window: int, clock: Callable[[], float] = time.time, max_clients: int = MAX_TRACKED_CLIENTS) -> None:
        self.window = window
        self.max_clients = max_clients
        self._clock = clock
        self._index = -1
        self._spend: OrderedDict[str, tuple[int, float]] = OrderedDict()

    async def charge(self, client: str, tokens: int, cost_usd: float) -> Spend:
        now = self._clock()
        index = int(now // self.window)
        if index != self._index:
            self._index, self._spend = index, OrderedDict()
        used, cost = self._spend.pop(client, (0, 0.0))
        used, cost = used + tokens, cost + cost_usd
        if used or cost:
            self._spend[client] = (used, cost)
            while len(self._spend) > self.max_clients:
                self._spend.popitem(last=False)
        return Spend(used, cost, (index + 1) * self.window - now)


# KEYS[1] the client's key prefix; ARGV window seconds, tokens, cost. Returns {tokens, cost, seconds left} as strings.
_CHARGE = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local window = tonumber(ARGV[1])
local index = math.floor(now / window)
local key = KEYS[1] .. ':' .. string.format('%d', index)
if tonumber(ARGV[2]) > 0 or tonumber(ARGV[3]) > 0 then
  redis.call('HINCRBY', key, 'tokens', ARGV[2])
  redis.call('HINCRBYFLOAT', key, 'cost', ARGV[3])
  redis.call('EXPIREAT', key, string.format('%d', (index + 1) * window + 1))
end
local spent = redis.call('HMGET', key, 'tokens', 'cost')
return {spent[1] or '0', spent[2] or '0', string.format('%.6f', (index + 1) * window - now)}
"""


class RedisLedger:
    """Windows in the rate limiter's Redis, keyed `<prefix>budget:<client>:<window index>`."""

    def __init__(self, store: RedisStore, window: int) -> None:
        self.store = store
        self.window = window
        self._charge = store.register(_CHARGE)

    async def charge(self, client: str, tokens: int, cost_usd: float) -> Spend:
        """StoreUnavailableError (fail open) or a 503 ApiError (fail closed) when Redis does not answer; a
        charge never gets the 503: the answer has been given already."""
        quiet = bool(tokens or cost_usd)
        key = self.store.key(f"budget:{client}")
        used, cost, left = await self.store.run(self._charge, key, self.window, tokens, f"{cost_usd:.10f}", quiet=quiet)
        return Spend(int(used), float(cost), float(left))


def make_ledger(settings: Settings, limiter: LimiterStore) -> Ledger:
    """The budgets live where the rate limits live."""
    if isinstance(limiter, RedisStore):
        return RedisLedger(limiter, settings.budget_window)
    return MemoryLedger(settings.budget_window)


class Budgets:
    """Each client's limits, and its standing in the ledger."""

    def __init__(self, settings: Settings, ledger: Ledger) -> None:
        self.ledger = ledger
        self.default = Limits(settings.token_budget, settings.cost_budget_usd)
        self._overrides = {
            key_id(key): Limits(self.default.tokens if tokens is None else tokens, self.default.cost_usd if cost is None else cost)
            for key, tokens, cost in settings.budget_overrides
        }

    def limits_for(self, key: str | None) -> Limits:
        """`key` is the client's key id (None without client keys)."""
        return self._overrides.get(key, self.default) if key else self.default

    async def standing(self, client: str, limits: Limits) -> Standing | None:
        """None when the shared ledger is unreachable and RATE_LIMIT_FAIL_MODE=open."""
        try:
            return Standing(limits, await self.ledger.charge(client, 0, 0.0))
        except StoreUnavailableError:
            return None

    async def charge(self, client: str, tokens: int, cost_usd: float) -> None:
        if tokens or cost_usd:
            with contextlib.suppress(StoreUnavailableError):  # the store logged the outage; this spend is lost with it
                await self.ledger.charge(client, tokens, cost_usd)
