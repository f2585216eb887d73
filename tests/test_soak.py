"""Bounded soak: many abrupt disconnects and every upstream fault in a loop leave nothing behind."""

from __future__ import annotations

import asyncio
import os
import random

from tests.conftest import build_request, chat, connect, eventually, free_port
from tests.fault_upstream import FaultUpstream, Scenario, chunk_json

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * PAGE


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def hang_up_after(port: int, delay: float) -> None:
    async with connect(port) as (reader, writer):
        writer.write(build_request("POST", "/chat", b'{"prompt": "soak"}'))
        await writer.drain()
        try:
            await asyncio.wait_for(reader.read(1 << 20), delay)
            await asyncio.sleep(delay)
        except TimeoutError:
            pass
        writer.transport.abort()  # RST, not a polite FIN


async def wave(port: int, rng: random.Random, count: int) -> None:
    await asyncio.gather(*(hang_up_after(port, rng.uniform(0.0, 0.25)) for _ in range(count)))


async def settle(gateway) -> None:
    await eventually(
        lambda: not gateway.gateway.streams and gateway.gateway.http_client.open_connections() == 0, "no streams and no upstream sockets"
    )


async def test_thousand_abrupt_disconnects_leak_nothing(start_gateway, upstream: FaultUpstream) -> None:
    gateway = start_gateway(HEARTBEAT_SECS="0.05", MAX_STREAMS_PER_CLIENT="200", MAX_CONCURRENT_STREAMS="500")
    upstream.scenarios = [Scenario(pieces=["word "] * 40, delay=0.01, headers_delay=0.03)]
    rng = random.Random(1234)
    for _ in range(3):  # warm up: allocator arenas, caches, pooled upstream sockets
        await wave(gateway.port, rng, 100)
    await settle(gateway)
    baseline_rss, baseline_fds = rss_bytes(), open_fds()
    for _ in range(10):
        await wave(gateway.port, rng, 100)
    await settle(gateway)
    assert len(gateway.gateway.streams) == 0
    assert gateway.gateway.http_client.open_connections() == 0
    # a leak of even 1% of the 1,000 streams would show; other tests' subprocess pipes may still be closing
    assert open_fds() <= baseline_fds + 4
    assert rss_bytes() <= baseline_rss * 1.10
    response = await chat(gateway.port, {"prompt": "still alive"})
    assert response.events[-1]["type"] == "done"


async def test_every_upstream_fault_in_a_loop(start_gateway, upstream: FaultUpstream) -> None:
    gateway = start_gateway(
        UPSTREAM_RETRIES="0",
        FIRST_TOKEN_TIMEOUT_SECS="0.2",
        UPSTREAM_IDLE_TIMEOUT_SECS="0.2",
        MAX_UPSTREAM_LINE_BYTES="65536",
    )
    faults = [
        Scenario(status=500),
        Scenario(status=429, headers={"Retry-After": "1"}),
        Scenario(hang_before_headers=True),
        Scenario(hang_after=1),
        Scenario(cut_after=1),
        Scenario(raw_lines=["{broken", chunk_json("ok")], send_done=False),
        Scenario(endless_bytes=2 * 1024 * 1024),
        Scenario(comments_forever=0.05),
    ]
    for _ in range(3):
        for fault in faults:
            upstream.scenarios = [fault]
            response = await chat(gateway.port, {"prompt": "x"})
            assert response.status == 200
            assert response.events[-1]["type"] == "error", fault
    refused = start_gateway(OPENROUTER_BASE_URL=f"http://127.0.0.1:{free_port()}/api/v1", UPSTREAM_RETRIES="0")
    for _ in range(5):
        assert (await chat(refused.port, {"prompt": "x"})).events[-1]["type"] == "error"
    await settle(gateway)
    assert gateway.gateway.http_client.open_connections() == 0
    assert len(gateway.gateway.streams) == 0
    upstream.scenarios = [Scenario()]
    assert (await chat(gateway.port, {"prompt": "x"})).events[-1]["type"] == "done"
