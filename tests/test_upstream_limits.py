"""What a hostile or sluggish upstream can cost: every body read is capped, `done` never waits on a body kept
open after `[DONE]`, and a non-streaming answer is timed like a stream. Real sockets, the fault upstream."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import RawResponse, chat, request
from tests.fault_upstream import FaultUpstream, Scenario
from tests.services import GatewayProcess

MiB = 1024 * 1024
LINES = (b"data: " + b"x" * 1017 + b"\n") * 64  # 64 KiB of data lines and never the blank line that ends an event
ANSWER = {"id": "gen-1", "object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi " * 40}}]}
# a hostile upstream that is never cut would keep the old gateway waiting: fail fast instead of at the 30 s read timeout
FAST = {"UPSTREAM_RETRIES": "0", "FIRST_TOKEN_TIMEOUT_SECS": "5"}


async def v1(port: int, stream: bool) -> RawResponse:
    body = {"model": "test/model", "messages": [{"role": "user", "content": "x"}], "stream": stream}
    return await request(port, "POST", "/v1/chat/completions", body)


def openai_error(response: RawResponse, status: int, code: str) -> dict[str, Any]:
    assert response.status == status, response.body
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == code
    return error


def types(response: Any) -> list[str]:
    return [event["type"] for event in response.events]


async def test_an_event_without_its_blank_line_is_capped(start_gateway, upstream: FaultUpstream) -> None:
    """Lines each under MAX_UPSTREAM_LINE_BYTES, 32 MiB of them in one event: the stream ends at the event cap."""
    gateway = start_gateway(**FAST)
    upstream.scenarios = [Scenario(endless_bytes=32 * MiB, endless_head=b"", endless_block=LINES)]
    response = await chat(gateway.port, {"prompt": "x"})
    assert types(response) == ["connected", "error"]
    assert response.events[-1]["error_type"] == "upstream_error"
    assert "upstream event too large" in response.events[-1]["content"]
    assert await upstream.wait_closed(timeout=2.0)
    assert upstream.endless_sent < 16 * MiB  # read up to the cap and whatever the socket buffers held, no more


async def test_event_cap_is_configurable_and_ends_a_v1_stream_too(start_gateway, upstream: FaultUpstream) -> None:
    gateway = start_gateway(MAX_UPSTREAM_LINE_BYTES="4096", MAX_UPSTREAM_EVENT_BYTES="131072", **FAST)
    upstream.scenarios = [Scenario(endless_bytes=8 * MiB, endless_head=b"", endless_block=LINES)]
    body = openai_error(await v1(gateway.port, True), 502, "upstream_error")
    assert body["message"] == "upstream event too large (over 131072 bytes)"
    assert await upstream.wait_closed(timeout=2.0)


async def test_a_non_streaming_answer_is_capped(start_gateway, upstream: FaultUpstream) -> None:
    gateway = start_gateway(MAX_UPSTREAM_BODY_BYTES=str(MiB), **FAST)
    upstream.scenarios = [Scenario(endless_bytes=64 * MiB, endless_head=b'{"choices": "')]
    body = openai_error(await v1(gateway.port, False), 502, "upstream_error")
    assert body["message"] == f"upstream answer larger than MAX_UPSTREAM_BODY_BYTES ({MiB} bytes)"
    assert await upstream.wait_closed(timeout=2.0)
    assert upstream.endless_sent < 32 * MiB


async def test_a_non_streaming_answer_under_the_cap_is_relayed(start_gateway, upstream: FaultUpstream) -> None:
    gateway = start_gateway(MAX_UPSTREAM_BODY_BYTES="4096")
    upstream.scenarios = [Scenario(json_body=ANSWER, json_piece_bytes=16)]  # many reads, one answer
    response = await v1(gateway.port, False)
    assert response.status == 200 and response.json() == ANSWER


@pytest.mark.parametrize("stream", [True, False])
async def test_an_error_body_is_read_up_to_64_kib_only(start_gateway, upstream: FaultUpstream, stream: bool) -> None:
    """A 5xx whose body never ends: the client gets the upstream's status at once; the rest is never read."""
    gateway = start_gateway(**FAST)
    upstream.scenarios = [Scenario(status=503, endless_bytes=64 * MiB, endless_head=b"")]
    started = time.monotonic()
    body = openai_error(await v1(gateway.port, stream), 503, "upstream_error")
    assert time.monotonic() - started < 4
    assert body["message"].startswith("upstream returned HTTP 503: xxxx")
    assert await upstream.wait_closed(timeout=2.0)
    assert upstream.endless_sent < 32 * MiB


async def test_done_is_not_held_back_by_a_body_kept_open_after_done(start_gateway, upstream: FaultUpstream) -> None:
    """`done` goes out when `[DONE]` is read; the connection the provider keeps open is closed afterwards, not pooled."""
    gateway = start_gateway()
    upstream.scenarios = [Scenario(pieces=["x"], hang_after_done=True)]
    response = await chat(gateway.port, {"prompt": "x"})
    assert types(response) == ["connected", "content", "done"]
    assert upstream.closed == []  # `done` was read while the upstream connection was still open
    assert await upstream.wait_closed(timeout=5.0)
    assert gateway.gateway.http_client.open_connections() == 0


async def test_a_normal_stream_still_returns_its_connection_to_the_pool(start_gateway, upstream: FaultUpstream) -> None:
    gateway = start_gateway()
    for _ in range(3):
        assert types(await chat(gateway.port, {"prompt": "x"}))[-1] == "done"
    assert gateway.gateway.http_client.open_connections() == 1
    assert upstream.closed == []


async def test_a_slow_but_steady_non_streaming_answer_outlives_the_first_token_timeout(start_gateway, upstream: FaultUpstream) -> None:
    gateway = start_gateway(FIRST_TOKEN_TIMEOUT_SECS="0.3", UPSTREAM_IDLE_TIMEOUT_SECS="2")
    upstream.scenarios = [Scenario(json_body=ANSWER, json_piece_bytes=20, delay=0.1)]  # ~1.2 s in all, a piece every 0.1 s
    response = await v1(gateway.port, False)
    assert response.status == 200 and response.json() == ANSWER


async def test_a_non_streaming_answer_that_stalls_is_cut_by_the_idle_timeout(start_gateway, upstream: FaultUpstream) -> None:
    gateway = start_gateway(UPSTREAM_IDLE_TIMEOUT_SECS="0.3", **FAST)
    upstream.scenarios = [Scenario(json_body=ANSWER, json_piece_bytes=20, hang_after=2)]
    started = time.monotonic()
    body = openai_error(await v1(gateway.port, False), 504, "upstream_timeout")
    assert body["message"] == "no data within UPSTREAM_IDLE_TIMEOUT_SECS"
    assert time.monotonic() - started < 3
    assert await upstream.wait_closed(timeout=2.0)


async def test_a_non_streaming_answer_is_cut_at_stream_max(start_gateway, upstream: FaultUpstream) -> None:
    gateway = start_gateway(FIRST_TOKEN_TIMEOUT_SECS="0.5", UPSTREAM_IDLE_TIMEOUT_SECS="0.5", STREAM_MAX_SECS="1", UPSTREAM_RETRIES="0")
    upstream.scenarios = [Scenario(json_body=ANSWER, json_piece_bytes=2, delay=0.05)]  # ~3 s in all
    body = openai_error(await v1(gateway.port, False), 504, "upstream_timeout")
    assert body["message"] == "stream exceeded STREAM_MAX_SECS"


async def test_keep_alive_whitespace_is_not_a_first_byte(start_gateway, upstream: FaultUpstream) -> None:
    """Providers send blank space while a model thinks; only the answer itself counts against FIRST_TOKEN_TIMEOUT_SECS."""
    gateway = start_gateway(FIRST_TOKEN_TIMEOUT_SECS="0.3", UPSTREAM_RETRIES="0")
    upstream.scenarios = [Scenario(endless_bytes=MiB, endless_head=b"\n", endless_block=b"\n", delay=0.05)]
    body = openai_error(await v1(gateway.port, False), 504, "upstream_timeout")
    assert body["message"] == "no answer within FIRST_TOKEN_TIMEOUT_SECS"


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS (resident now) and VmHWM (the most it was ever resident), in KiB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return {name: int(fields[name].split()[0]) for name in ("VmRSS", "VmHWM")}


async def test_a_hostile_upstream_costs_the_process_little_memory(upstream: FaultUpstream, spawn) -> None:
    """`python run.py` against 128 MiB of data lines in one event, a 400 MiB answer and a 100 MiB error body:
    its peak resident memory stays under the baseline + 64 MiB, during and after."""
    env = {"OPENROUTER_API_KEY": "sk-test", "OPENROUTER_BASE_URL": upstream.base_url, **FAST}
    gateway = spawn(GatewayProcess, demo=False, **env)
    upstream.scenarios = [Scenario(), Scenario(json_body=ANSWER)]
    assert types(await chat(gateway.port, {"prompt": "x"}))[-1] == "done"  # warm: every code path imported
    assert (await v1(gateway.port, False)).status == 200
    baseline = memory_kib(gateway.pid)["VmRSS"]
    upstream.scenarios = [
        Scenario(endless_bytes=128 * MiB, endless_head=b"", endless_block=LINES),
        Scenario(endless_bytes=400 * MiB, endless_head=b'{"choices": "'),
        Scenario(status=500, endless_bytes=100 * MiB, endless_head=b""),
        Scenario(),
    ]
    assert "upstream event too large" in (await chat(gateway.port, {"prompt": "x"})).events[-1]["content"]
    openai_error(await v1(gateway.port, False), 502, "upstream_error")
    openai_error(await v1(gateway.port, True), 500, "upstream_error")
    assert types(await chat(gateway.port, {"prompt": "x"}))[-1] == "done"
    memory = memory_kib(gateway.pid)
    assert memory["VmHWM"] < baseline + 64 * 1024, (baseline, memory)
    assert memory["VmRSS"] < baseline + 64 * 1024, (baseline, memory)
