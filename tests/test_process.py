"""`python run.py` as a real process: start-up checks, demo mode, signals and the graceful drain."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time

from tests.conftest import build_request, chat, connect, eventually, read_response, request
from tests.fault_upstream import FaultUpstream, Scenario
from tests.services import ROOT, GatewayProcess


async def wait_exit(gateway: GatewayProcess, timeout: float) -> int:
    """Wait for the exit without blocking the loop (the fault upstream lives on it)."""
    deadline = time.monotonic() + timeout
    while gateway.alive() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return gateway.wait(1)


def run_and_fail(**env: str) -> subprocess.CompletedProcess[str]:
    clean = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", **env}
    return subprocess.run([sys.executable, "run.py"], cwd=ROOT, env=clean, capture_output=True, text=True, timeout=20)


def test_refuses_to_start_without_key_or_demo() -> None:
    result = run_and_fail()
    assert result.returncode == 2
    assert "OPENROUTER_API_KEY" in result.stderr and "--demo" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_bad_value_exits_2_naming_the_variable() -> None:
    result = run_and_fail(OPENROUTER_API_KEY="sk-never-shown", PORT="eighty")
    assert result.returncode == 2
    assert result.stderr.strip() == "config error: PORT must be a port 1-65535 such as 8080 or :8080 (got 'eighty')"


async def test_demo_mode_streams_and_stops_on_sigterm(io_loop, spawn) -> None:
    gateway = spawn(GatewayProcess, DEMO_DELAY_MS="1")
    response = await chat(gateway.port, {"prompt": "Hello demo"})
    assert response.status == 200
    assert response.text.startswith('You said: "Hello demo".')
    assert [e["type"] for e in response.events][-1] == "done"
    gateway.signal(signal.SIGTERM)
    assert await wait_exit(gateway, 10) == 0
    assert any("demo mode" in record["msg"] and record["level"] == "WARNING" for record in gateway.records())


async def test_drain_finishes_fast_streams_and_ends_slow_ones(io_loop, upstream: FaultUpstream, spawn) -> None:
    fast = [Scenario(pieces=["f"] * 5, delay=0.15) for _ in range(25)]
    slow = [Scenario(pieces=["s"] * 200, delay=0.1) for _ in range(25)]
    upstream.scenarios = fast + slow + [Scenario()]
    env = {
        "OPENROUTER_API_KEY": "sk-test",
        "OPENROUTER_BASE_URL": upstream.base_url,
        "SHUTDOWN_TIMEOUT_SECS": "1.5",
        "MAX_STREAMS_PER_CLIENT": "100",
        "RATE_LIMIT": "1000",
    }
    gateway = spawn(GatewayProcess, demo=False, **env)
    streams = []
    for _ in range(50):
        streams.append(asyncio.ensure_future(chat(gateway.port, {"prompt": "x"})))
        await asyncio.sleep(0.005)
    await eventually(lambda: len(upstream.requests) == 50, "50 upstream calls")
    async with connect(gateway.port) as (reader, writer):  # a keep-alive connection opened before the signal
        writer.write(build_request("GET", "/health"))
        assert (await read_response(reader)).status == 200
        gateway.signal(signal.SIGTERM)
        await eventually(lambda: gateway.logged("shutting down"), "the drain to begin")
        writer.write(build_request("GET", "/health"))
        health = await read_response(reader)
        assert health.status == 503
        assert health.json()["status"] == "draining"
    responses = await asyncio.gather(*streams)
    assert await wait_exit(gateway, 10) == 0
    finals = [response.events[-1] for response in responses]
    done = [event for event in finals if event["type"] == "done"]
    ended = [event for event in finals if event["type"] == "error"]
    assert len(done) == 25 and len(ended) == 25
    assert {event["error_type"] for event in ended} == {"server_shutdown"}
    assert await upstream.wait_closed(count=25, timeout=2)
    outcomes = [record.get("outcome") for record in gateway.records() if record.get("outcome")]
    assert outcomes.count("finished") == 25 and outcomes.count("server_shutdown") == 25


async def test_second_signal_exits_at_once(io_loop, upstream: FaultUpstream, spawn) -> None:
    upstream.scenarios = [Scenario(hang_before_headers=True)]
    env = {"OPENROUTER_API_KEY": "sk-test", "OPENROUTER_BASE_URL": upstream.base_url, "SHUTDOWN_TIMEOUT_SECS": "60"}
    gateway = spawn(GatewayProcess, demo=False, **env)
    stream = asyncio.ensure_future(chat(gateway.port, {"prompt": "x"}))
    await eventually(lambda: upstream.requests, "the upstream call")
    gateway.signal(signal.SIGTERM)
    await eventually(lambda: gateway.logged("shutting down"), "the drain to begin")
    assert gateway.alive()  # still draining
    gateway.signal(signal.SIGINT)
    assert await wait_exit(gateway, 3) != 0
    stream.cancel()


async def test_health_is_not_rate_limited(io_loop, spawn) -> None:
    gateway = spawn(GatewayProcess, RATE_LIMIT="1")
    statuses = [(await request(gateway.port, "GET", "/health")).status for _ in range(5)]
    assert statuses == [200] * 5
