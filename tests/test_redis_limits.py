"""RATE_LIMIT_BACKEND=redis against a real redis-server: one budget across stores, workers and gateways;
keys that expire; fail-open and fail-closed outages that log once, count, and heal by themselves."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from redis.asyncio import Redis

from server.config import ConfigError, load_settings
from server.errors import LimiterUnavailableError
from server.redis_store import RedisStore
from tests.conftest import RunningGateway, chat, eventually
from tests.services import GatewayProcess, RedisServer, metric, wait_for

pytestmark = pytest.mark.redis

CLIENT = "ip:203.0.113.7"


@pytest.fixture
def stores(io_loop: Any, redis_server: RedisServer) -> Iterator[Callable[..., RedisStore]]:
    """`stores(**options)`: RedisStores on the test Redis (each its own connection pool, like two hosts)."""
    made: list[RedisStore] = []

    def make(**options: Any) -> RedisStore:
        store = RedisStore.from_url(redis_server.url, **options)
        made.append(store)
        return store

    yield make
    for store in made:
        io_loop.run_sync(store.close)


async def test_two_stores_share_one_bucket(stores: Callable[..., RedisStore]) -> None:
    first, second = stores(), stores()
    decisions = [await (first if i % 2 else second).take(CLIENT, 0.01, 3) for i in range(4)]
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert [d.remaining for d in decisions] == [2, 1, 0, 0]
    assert {d.limit for d in decisions} == {3}
    refused = decisions[-1]
    assert refused.headers()["Retry-After"] == str(int(refused.retry_after) + 1)
    assert 99 < refused.retry_after <= 100  # one token at 0.01/s, measured on Redis's clock
    assert (await first.take("ip:198.51.100.1", 0.01, 3)).allowed  # another client has its own bucket


async def test_bucket_refills_at_the_rate(stores: Callable[..., RedisStore]) -> None:
    store = stores()
    assert (await store.take(CLIENT, 20, 1)).allowed
    refused = await store.take(CLIENT, 20, 1)
    assert not refused.allowed and 0 < refused.retry_after <= 0.05
    started = time.monotonic()

    async def allowed() -> bool:
        return (await store.take(CLIENT, 20, 1)).allowed

    await eventually(allowed, "a token to refill")
    assert time.monotonic() - started < 1.0


async def test_keys_expire_once_they_equal_a_fresh_one(stores: Callable[..., RedisStore], redis_server: RedisServer) -> None:
    store = stores(stream_ttl=90)
    await store.take(CLIENT, 2, 10)  # 1 token short of full: refills in 0.5 s
    async with Redis.from_url(redis_server.url) as probe:
        assert 0 < await probe.pttl(f"tas:rate:{CLIENT}") <= 500 + 1000
        assert await store.acquire_stream(CLIENT, 2)
        assert 0 < await probe.ttl(f"tas:streams:{CLIENT}") <= 90
        await store.release_stream(CLIENT)
        assert await probe.exists(f"tas:streams:{CLIENT}") == 0  # an empty count leaves no key


async def test_stream_slots_are_shared_and_released(stores: Callable[..., RedisStore]) -> None:
    first, second = stores(), stores()
    assert [await first.acquire_stream(CLIENT, 2), await second.acquire_stream(CLIENT, 2), await first.acquire_stream(CLIENT, 2)] == [
        True,
        True,
        False,
    ]
    await second.release_stream(CLIENT)
    assert await first.acquire_stream(CLIENT, 2)


@contextlib.contextmanager
def hung(redis_server: RedisServer) -> Iterator[None]:
    """SIGSTOP: the port still accepts connections but nothing answers, as behind a network black hole."""
    os.kill(redis_server.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(redis_server.pid, signal.SIGCONT)


async def decide(store: RedisStore) -> None:
    """One request's two decisions (rate, then stream slot); a fail-closed 503 counts as decided."""
    with contextlib.suppress(LimiterUnavailableError):
        await store.take(CLIENT, 100, 100)
        if await store.acquire_stream(CLIENT, 100):
            await store.release_stream(CLIENT)


@pytest.mark.parametrize("fail_open", [True, False])
async def test_a_hung_redis_costs_one_timeout_then_milliseconds(
    stores: Callable[..., RedisStore], redis_server: RedisServer, fail_open: bool
) -> None:
    store = stores(fail_open=fail_open)  # the default retry pause: 1 s
    await decide(store)  # connected
    with hung(redis_server):
        started = time.monotonic()
        await decide(store)  # the one request that waits for the socket timeout
        assert time.monotonic() - started < 3.0
        started = time.monotonic()
        for _ in range(20):
            await decide(store)
        assert time.monotonic() - started < 20 * 0.010  # the rest skip Redis until the pause ends


async def test_a_slot_whose_release_was_lost_expires_though_the_client_keeps_streaming(
    stores: Callable[..., RedisStore], redis_server: RedisServer
) -> None:
    # A TTL longer than the hang: Redis's clock runs on while it is stopped.
    holder, other = stores(stream_ttl=3, retry_interval=5), stores(stream_ttl=3)
    assert await holder.acquire_stream(CLIENT, 2)
    with hung(redis_server):
        await holder.take(CLIENT, 100, 100)  # times out: the holder pauses Redis calls
        await holder.release_stream(CLIENT)  # during the pause: never sent, Redis still counts the slot

    async def two_at_once() -> bool:
        """Short streams keep coming from the same client; once the lost slot is gone, two fit at once."""
        taken = [await other.acquire_stream(CLIENT, 2) for _ in range(2)]
        for _ in range(sum(taken)):
            await other.release_stream(CLIENT)
        return all(taken)

    await eventually(two_at_once, "the lost slot to expire", timeout=10.0)


async def test_a_live_stream_keeps_its_slot_past_the_ttl(stores: Callable[..., RedisStore], redis_server: RedisServer) -> None:
    holder, other = stores(stream_ttl=1), stores(stream_ttl=1)
    assert await holder.acquire_stream(CLIENT, 1)
    async with Redis.from_url(redis_server.url) as probe:
        key = f"tas:streams:{CLIENT}"
        [(slot, first_expiry)] = await probe.zrange(key, 0, -1, withscores=True)

        async def refreshed_past_first_expiry() -> bool:
            score = await probe.zscore(key, slot)
            return score is not None and score > first_expiry + 1000

        await eventually(refreshed_past_first_expiry, "the holder to refresh its slot")
        assert not await other.acquire_stream(CLIENT, 1)
    await holder.release_stream(CLIENT)
    assert await other.acquire_stream(CLIENT, 1)


async def test_outage_fails_open_logs_once_counts_and_recovers(
    stores: Callable[..., RedisStore], redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    errors: list[int] = []
    store = stores(retry_interval=0.05, on_error=lambda: errors.append(1))
    assert (await store.take(CLIENT, 0.01, 1)).allowed
    assert not (await store.take(CLIENT, 0.01, 1)).allowed
    redis_server.stop()
    with caplog.at_level(logging.WARNING, logger="gateway.ratelimit"):
        outage = [await store.take(CLIENT, 0.01, 1) for _ in range(5)]
        assert all(d.allowed for d in outage)
        assert await store.acquire_stream(CLIENT, 1) and await store.acquire_stream(CLIENT, 1)  # not counted: not limited
        assert len(errors) == 7
        failures = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert len(failures) == 1 and "failing open" in failures[0].getMessage()
        redis_server.start()  # empty: the restart lost the buckets and the loaded scripts

        async def limited_again() -> bool:
            return not (await store.take(CLIENT, 0.01, 1)).allowed

        await eventually(limited_again, "the store to use Redis again")
    assert any("reachable again" in r.getMessage() for r in caplog.records)
    await store.release_stream(CLIENT)  # the slots admitted during the outage never reached Redis
    await store.release_stream(CLIENT)
    assert await store.acquire_stream(CLIENT, 1)
    assert not await store.acquire_stream(CLIENT, 1)


async def test_fail_closed_answers_503_with_retry_after(stores: Callable[..., RedisStore], redis_server: RedisServer) -> None:
    store = stores(fail_open=False, retry_interval=2)
    redis_server.stop()
    for attempt in (store.take(CLIENT, 1, 1), store.acquire_stream(CLIENT, 1)):
        with pytest.raises(LimiterUnavailableError) as raised:
            await attempt
        assert raised.value.retry_after == 2
    await store.release_stream(CLIENT)  # never raises: nothing is being decided


async def test_gateway_with_redis_backend_limits_and_fails_closed(
    start_gateway: Callable[..., RunningGateway], redis_server: RedisServer
) -> None:
    running = start_gateway(
        RATE_LIMIT_BACKEND="redis",
        REDIS_URL=redis_server.url,
        RATE_LIMIT="0.01",
        RATE_LIMIT_BURST="2",
        RATE_LIMIT_FAIL_MODE="closed",
        STREAM_SLOT_TTL_SECS="5",
    )
    assert running.gateway.limiter.stream_ttl == 5  # type: ignore[attr-defined]
    try:
        answers = [await chat(running.port, {"prompt": "hi"}) for _ in range(3)]
        assert [a.status for a in answers] == [200, 200, 429], [a.body for a in answers]
        assert answers[2].header("RateLimit-Limit") == "2" and answers[2].header("Retry-After") == "100"
        redis_server.stop()
        refused = await chat(running.port, {"prompt": "hi"})
        assert refused.status == 503
        assert refused.header("Retry-After") == "1"
        assert refused.json()["error_type"] == "rate_limiter_unavailable"
        assert running.gateway.metrics.rate_limit_store_errors._value.get() == 1
    finally:
        await running.gateway.limiter.close()


# -- two gateway processes, one Redis ----------------------------------------------------------------------


def test_two_gateways_share_one_budget_and_ride_out_a_redis_outage(redis_server: RedisServer, spawn: Callable[..., Any]) -> None:
    env = {
        "RATE_LIMIT_BACKEND": "redis",
        "REDIS_URL": redis_server.url,
        "RATE_LIMIT": "0.01",
        "RATE_LIMIT_BURST": "5",
        "TRUSTED_PROXIES": "127.0.0.1",
    }
    gateways: list[GatewayProcess] = [spawn(GatewayProcess, name=name, **env) for name in ("a", "b")]

    def alternate(client: str, count: int) -> list[int]:
        return [gateways[i % 2].chat({"X-Forwarded-For": client}).status for i in range(count)]

    assert alternate("198.51.100.1", 8) == [200] * 5 + [429] * 3  # 5 in all, not 5 per gateway

    redis_server.stop()
    assert alternate("198.51.100.1", 6) == [200] * 6  # fail open: still serving
    for gateway in gateways:
        assert len(gateway.logged("rate limit store unreachable", "ERROR")) == 1
        assert metric(gateway.port, "rate_limit_store_errors_total") == 6  # 3 requests: a rate and a stream-slot decision each

    redis_server.start()
    for gateway in gateways:
        wait_for(lambda g=gateway: g.chat({"X-Forwarded-For": "192.0.2.99"}) and g.logged("reachable again"), f"{gateway.name} to recover")
    assert alternate("198.51.100.2", 7) == [200] * 5 + [429] * 2  # limits hold again


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("RATE_LIMIT_BACKEND", "memcached", "RATE_LIMIT_BACKEND must be one of memory|redis (got 'memcached')"),
        ("RATE_LIMIT_FAIL_MODE", "maybe", "RATE_LIMIT_FAIL_MODE must be one of open|closed (got 'maybe')"),
        ("STREAM_SLOT_TTL_SECS", "0.5", "STREAM_SLOT_TTL_SECS must be a number of seconds >= 1 (got '0.5')"),
        (
            "REDIS_URL",
            "http://:secret@cache:6379",
            "REDIS_URL must be a redis://, rediss:// or unix:// URL such as redis://127.0.0.1:6379/0",
        ),
    ],
)
def test_bad_redis_settings_are_refused_without_echoing_a_password(variable: str, value: str, expected: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings({"OPENROUTER_API_KEY": "k", variable: value})
    assert str(raised.value) == expected
