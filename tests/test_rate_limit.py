"""Token buckets and stream slots over real sockets; bucket eviction with an injected clock."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from server.rate_limit import MemoryStore
from tests.conftest import RawResponse, RunningGateway, api_error, build_request, chat, connect, eventually, read_response, request
from tests.fault_upstream import FaultUpstream, Scenario


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def with_clock(gateway: RunningGateway) -> FakeClock:
    """Give the running gateway a MemoryStore on a clock the test moves: refills without sleeping."""
    clock = FakeClock()
    gateway.gateway.limiter = MemoryStore(clock=clock)
    return clock


async def test_two_per_second_then_429_then_refill(start_gateway, upstream: FaultUpstream) -> None:
    gateway = start_gateway(RATE_LIMIT="2")
    clock = with_clock(gateway)
    first, second, third = [await chat(gateway.port, {"prompt": "hi"}) for _ in range(3)]
    assert (first.status, second.status, third.status) == (200, 200, 429)
    assert (first.header("RateLimit-Limit"), first.header("RateLimit-Remaining"), first.header("RateLimit-Reset")) == ("2", "1", "1")
    assert (second.header("RateLimit-Remaining"), second.header("RateLimit-Reset")) == ("0", "1")
    body = api_error(third, 429, "rate_limited")
    assert body["message"] == "rate limit of 2 requests/second exceeded; retry later"
    assert third.header("Retry-After") == "1"
    assert (third.header("RateLimit-Limit"), third.header("RateLimit-Remaining"), third.header("RateLimit-Reset")) == ("2", "0", "1")
    assert len(upstream.requests) == 2  # the refused request never reached the upstream
    clock.now += 1.0
    again = await chat(gateway.port, {"prompt": "hi"})
    assert again.status == 200
    assert again.header("Retry-After") is None


async def test_fractional_rate_and_retry_after_rounds_up(start_gateway, upstream: FaultUpstream) -> None:
    gateway = start_gateway(RATE_LIMIT="0.5")  # one request every 2 s, burst 1
    clock = with_clock(gateway)
    assert (await chat(gateway.port, {"prompt": "hi"})).status == 200
    refused = await chat(gateway.port, {"prompt": "hi"})
    api_error(refused, 429, "rate_limited")
    assert (refused.header("Retry-After"), refused.header("RateLimit-Limit"), refused.header("RateLimit-Reset")) == ("2", "1", "2")
    clock.now += 1.5
    assert (await chat(gateway.port, {"prompt": "hi"})).header("Retry-After") == "1"  # 0.5 s left: rounded up, at least 1
    clock.now += 0.5
    assert (await chat(gateway.port, {"prompt": "hi"})).status == 200


async def test_burst_sets_capacity(start_gateway, upstream: FaultUpstream) -> None:
    gateway = start_gateway(RATE_LIMIT="1", RATE_LIMIT_BURST="3")
    with_clock(gateway)
    statuses = [(await chat(gateway.port, {"prompt": "hi"})).status for _ in range(4)]
    assert statuses == [200, 200, 200, 429]


async def test_health_metrics_and_preflight_are_exempt(start_gateway, upstream: FaultUpstream) -> None:
    gateway = start_gateway(RATE_LIMIT="1")
    with_clock(gateway)
    for _ in range(3):
        for method, path in (("GET", "/health"), ("GET", "/metrics"), ("OPTIONS", "/chat")):
            response = await request(gateway.port, method, path)
            assert response.status in (200, 204), (method, path)
            assert response.header("RateLimit-Limit") is None
    assert (await chat(gateway.port, {"prompt": "hi"})).status == 200
    assert (await chat(gateway.port, {"prompt": "hi"})).status == 429


async def test_every_limited_route_carries_ratelimit_headers(start_gateway) -> None:
    gateway = start_gateway(RATE_LIMIT="5")
    with_clock(gateway)
    for method, path in (("GET", "/chat"), ("GET", "/no/such/path")):
        response = await request(gateway.port, method, path)
        assert response.status in (404, 405)
        assert response.header("RateLimit-Limit") == "5"
        assert response.header("RateLimit-Remaining") is not None and response.header("RateLimit-Reset") is not None


async def test_client_keys_get_their_own_buckets(start_gateway, upstream: FaultUpstream) -> None:
    gateway = start_gateway(RATE_LIMIT="1", CLIENT_API_KEYS="key-one,key-two")
    with_clock(gateway)
    one, two = {"Authorization": "Bearer key-one"}, {"Authorization": "Bearer key-two"}
    assert (await chat(gateway.port, {"prompt": "hi"}, one)).status == 200
    assert (await chat(gateway.port, {"prompt": "hi"}, one)).status == 429
    assert (await chat(gateway.port, {"prompt": "hi"}, two)).status == 200  # same IP, different key


# -- bounded memory -----------------------------------------------------------------------------------


async def test_idle_buckets_are_evicted() -> None:
    clock = FakeClock()
    store = MemoryStore(clock=clock)
    for index in range(1000):  # rate 1/s, burst 2: each left with 1 token, full again 1 s later
        await store.take(f"ip:10.0.{index // 256}.{index % 256}", 1.0, 2.0)
    assert len(store) == 1000
    clock.now += 0.4  # still refilling: nobody is evicted yet
    await store.take("ip:192.0.2.1", 1.0, 2.0)
    assert len(store) == 1001
    clock.now += 0.6  # every old bucket is full again, the same as a fresh one
    await store.take("ip:192.0.2.2", 1.0, 2.0)
    assert len(store) == 2  # 192.0.2.1 (0.6 s ago, still refilling) and the newcomer


async def test_eviction_never_forgets_a_client_still_refilling() -> None:
    clock = FakeClock()
    store = MemoryStore(clock=clock)
    for index in range(100):
        await store.take(f"ip:idle-{index}", 1.0, 1.0)
    clock.now += 0.9
    assert (await store.take("ip:busy", 1.0, 1.0)).allowed
    clock.now += 0.1  # the idle buckets are full now; busy holds 0.1 token
    assert not (await store.take("ip:busy", 1.0, 1.0)).allowed
    await store.take("ip:newcomer", 1.0, 1.0)
    assert len(store) == 2
    decision = await store.take("ip:busy", 1.0, 1.0)
    assert not decision.allowed and decision.retry_after > 0.8


async def test_a_flood_of_distinct_clients_is_capped() -> None:
    clock = FakeClock()  # frozen: every bucket is "recent", so only the cap can bound memory
    store = MemoryStore(max_clients=1000, clock=clock)
    for index in range(20_000):
        assert (await store.take(f"ip:{index}", 1.0, 1.0)).allowed
    assert len(store) == 1000


# -- concurrent streams -------------------------------------------------------------------------------


@asynccontextmanager
async def open_streams(port: int, count: int) -> AsyncIterator[None]:
    """`count` /chat streams held open (each has received its first content event) until the block ends."""
    async with AsyncExitStack() as stack:
        for _ in range(count):
            reader, writer = await stack.enter_async_context(connect(port))
            writer.write(build_request("POST", "/chat", b'{"prompt": "hold"}'))
            response = await asyncio.wait_for(read_response(reader, until=lambda body: b'"type": "content"' in body), 5)
            assert response.status == 200
        yield


def refused(response: RawResponse, status: int, error_type: str) -> None:
    api_error(response, status, error_type)
    assert response.header("Retry-After") == "1"


async def test_per_client_stream_cap_is_429_before_any_upstream_call(start_gateway, upstream: FaultUpstream) -> None:
    upstream.scenarios = [Scenario(pieces=["a", "b"], hang_after=1)]
    gateway = start_gateway(MAX_STREAMS_PER_CLIENT="2")
    async with open_streams(gateway.port, 2):
        response = await chat(gateway.port, {"prompt": "one too many"})
        refused(response, 429, "too_many_streams")
        assert response.json()["message"] == "at most 2 concurrent streams per client"
        assert len(upstream.requests) == 2
    await eventually(lambda: len(gateway.gateway.streams) == 0, "the streams to end")
    upstream.scenarios = [Scenario()]
    assert (await chat(gateway.port, {"prompt": "slot freed"})).status == 200


async def test_global_stream_cap_is_503_and_per_client_cap_is_checked_first(start_gateway, upstream: FaultUpstream) -> None:
    upstream.scenarios = [Scenario(pieces=["a", "b"], hang_after=1)]
    gateway = start_gateway(MAX_STREAMS_PER_CLIENT="3", MAX_CONCURRENT_STREAMS="2")
    for _ in range(2):  # twice: a 503 must hand back the per-client slot it took
        async with open_streams(gateway.port, 2):
            busy = await chat(gateway.port, {"prompt": "no room"})
            refused(busy, 503, "server_busy")
            assert busy.json()["message"] == "the gateway is at its limit of 2 streams"
        await eventually(lambda: len(gateway.gateway.streams) == 0, "the streams to end")
    assert len(upstream.requests) == 4

    both = start_gateway(MAX_STREAMS_PER_CLIENT="1", MAX_CONCURRENT_STREAMS="1")
    async with open_streams(both.port, 1):
        refused(await chat(both.port, {"prompt": "both caps reached"}), 429, "too_many_streams")
