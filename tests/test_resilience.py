"""Timeouts, heartbeats, retries and fallback over real sockets against the fault upstream."""

from __future__ import annotations

import socket
import time

from tests.conftest import build_request, chat, connect, eventually, hang_up_after_upstream_called
from tests.fault_upstream import FaultUpstream, Scenario


def types(response) -> list[str]:
    return [event["type"] for event in response.events]


async def test_first_token_timeout_counts_comments_as_no_progress(start_gateway, upstream: FaultUpstream) -> None:
    gateway = start_gateway(FIRST_TOKEN_TIMEOUT_SECS="0.3", UPSTREAM_RETRIES="0")
    upstream.scenarios = [Scenario(comments_forever=0.05)]
    started = time.monotonic()
    response = await chat(gateway.port, {"prompt": "x"})
    assert time.monotonic() - started < 2
    assert types(response) == ["connected", "error"]
    assert response.events[-1]["error_type"] == "upstream_timeout"
    assert await upstream.wait_closed(timeout=1.0)


async def test_first_token_timeout_while_waiting_for_headers(start_gateway, upstream: FaultUpstream) -> None:
    gateway = start_gateway(FIRST_TOKEN_TIMEOUT_SECS="0.3", UPSTREAM_RETRIES="0")
    upstream.scenarios = [Scenario(hang_before_headers=True)]
    response = await chat(gateway.port, {"prompt": "x"})
    assert response.events[-1]["error_type"] == "upstream_timeout"
    assert await upstream.wait_closed(timeout=1.0)


async def test_idle_timeout_mid_stream(start_gateway, upstream: FaultUpstream) -> None:
    gateway = start_gateway(UPSTREAM_IDLE_TIMEOUT_SECS="0.3", UPSTREAM_RETRIES="0")
    upstream.scenarios = [Scenario(pieces=["a", "b", "c"], hang_after=2)]
    response = await chat(gateway.port, {"prompt": "x"})
    assert types(response) == ["connected", "content", "content", "error"]
    assert response.text == "ab"
    assert response.events[-1]["error_type"] == "upstream_timeout"
    assert await upstream.wait_closed(timeout=1.0)


async def test_slow_but_steady_stream_is_not_idle(start_gateway, upstream: FaultUpstream) -> None:
    gateway = start_gateway(UPSTREAM_IDLE_TIMEOUT_SECS="0.3")
    upstream.scenarios = [Scenario(pieces=["a"] * 8, delay=0.1)]
    response = await chat(gateway.port, {"prompt": "x"})
    assert response.text == "a" * 8
    assert types(response)[-1] == "done"


async def test_stream_max_caps_a_whole_stream(start_gateway, upstream: FaultUpstream) -> None:
    gateway = start_gateway(STREAM_MAX_SECS="0.4")
    upstream.scenarios = [Scenario(pieces=["tick "] * 100, delay=0.05)]
    response = await chat(gateway.port, {"prompt": "x"})
    assert types(response)[-1] == "error"
    assert response.events[-1]["error_type"] == "upstream_timeout"
    assert 0 < response.text.count("tick") < 100


async def test_connect_timeout(start_gateway, upstream: FaultUpstream) -> None:
    # A listener that never accepts, with its tiny backlog full: further SYNs go unanswered.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(4):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(("127.0.0.1", port))
        fillers.append(filler)
    try:
        gateway = start_gateway(
            OPENROUTER_BASE_URL=f"http://127.0.0.1:{port}/api/v1", UPSTREAM_CONNECT_TIMEOUT_SECS="0.3", UPSTREAM_RETRIES="0"
        )
        started = time.monotonic()
        response = await chat(gateway.port, {"prompt": "x"})
        assert time.monotonic() - started < 3
        assert response.events[-1]["error_type"] == "upstream_timeout"
    finally:
        for sock in [*fillers, listener]:
            sock.close()


async def test_heartbeats_while_waiting_for_the_first_token(start_gateway, upstream: FaultUpstream) -> None:
    gateway = start_gateway(HEARTBEAT_SECS="0.1")
    upstream.scenarios = [Scenario(pieces=["late"], headers_delay=0.45)]
    response = await chat(gateway.port, {"prompt": "x"})
    body = response.body.decode()
    assert body.count(": ping\n\n") >= 2
    assert response.text == "late"
    assert types(response) == ["connected", "content", "done"]


async def test_retries_5xx_before_first_token_then_streams_once(start_gateway, upstream: FaultUpstream) -> None:
    gateway = start_gateway(UPSTREAM_RETRIES="2", RETRY_MAX_WAIT_SECS="0.05")
    upstream.scenarios = [Scenario(status=503), Scenario(status=502), Scenario(pieces=["ok"])]
    response = await chat(gateway.port, {"prompt": "x"})
    assert types(response) == ["connected", "content", "done"]
    assert response.text == "ok"
    assert len(upstream.requests) == 3


async def test_retry_after_is_honoured_up_to_the_cap(start_gateway, upstream: FaultUpstream) -> None:
    gateway = start_gateway(UPSTREAM_RETRIES="1", RETRY_MAX_WAIT_SECS="0.3")
    upstream.scenarios = [Scenario(status=429, headers={"Retry-After": "30"}), Scenario(pieces=["ok"])]
    started = time.monotonic()
    response = await chat(gateway.port, {"prompt": "x"})
    elapsed = time.monotonic() - started
    assert response.text == "ok"
    assert 0.25 <= elapsed < 2


async def test_retries_spent_gives_error_with_last_status(start_gateway, upstream: FaultUpstream) -> None:
    gateway = start_gateway(UPSTREAM_RETRIES="1", RETRY_MAX_WAIT_SECS="0.01")
    upstream.scenarios = [Scenario(status=500)]
    response = await chat(gateway.port, {"prompt": "x"})
    assert response.events[-1]["status"] == 500
    assert len(upstream.requests) == 2


async def test_client_errors_are_not_retried(start_gateway, upstream: FaultUpstream) -> None:
    gateway = start_gateway(UPSTREAM_RETRIES="3", RETRY_MAX_WAIT_SECS="0.01")
    for status in (400, 401, 402, 403):
        upstream.requests.clear()
        upstream.scenarios = [Scenario(status=status)]
        response = await chat(gateway.port, {"prompt": "x"})
        assert response.events[-1]["status"] == status
        assert len(upstream.requests) == 1


async def test_fallback_models_after_retries(start_gateway, upstream: FaultUpstream) -> None:
    gateway = start_gateway(UPSTREAM_RETRIES="1", RETRY_MAX_WAIT_SECS="0.01", FALLBACK_MODELS="backup/one,backup/two")
    upstream.scenarios = [Scenario(status=503), Scenario(status=503), Scenario(status=502), Scenario(pieces=["from two"])]
    response = await chat(gateway.port, {"prompt": "x"})
    assert response.text == "from two"
    models = [sent["body"]["model"] for sent in upstream.requests]
    assert models == ["anthropic/claude-3.5-sonnet", "anthropic/claude-3.5-sonnet", "backup/one", "backup/two"]


async def test_nothing_is_retried_after_the_first_content(start_gateway, upstream: FaultUpstream) -> None:
    gateway = start_gateway(UPSTREAM_RETRIES="3", RETRY_MAX_WAIT_SECS="0.01")
    upstream.scenarios = [Scenario(pieces=["one ", "two ", "three"], cut_after=1), Scenario(pieces=["again"])]
    response = await chat(gateway.port, {"prompt": "x"})
    assert response.text == "one "
    assert types(response)[-1] == "error"
    assert len(upstream.requests) == 1


async def test_cut_before_any_content_is_retried(start_gateway, upstream: FaultUpstream) -> None:
    gateway = start_gateway(UPSTREAM_RETRIES="1", RETRY_MAX_WAIT_SECS="0.01")
    upstream.scenarios = [Scenario(cut_after=0), Scenario(pieces=["whole"])]
    response = await chat(gateway.port, {"prompt": "x"})
    assert response.text == "whole"
    assert types(response) == ["connected", "content", "done"]


async def test_oversized_upstream_line_fails_cleanly(start_gateway, upstream: FaultUpstream) -> None:
    gateway = start_gateway(MAX_UPSTREAM_LINE_BYTES="100000", UPSTREAM_RETRIES="0")
    upstream.scenarios = [Scenario(endless_bytes=50 * 1024 * 1024)]
    response = await chat(gateway.port, {"prompt": "x"})
    assert types(response) == ["connected", "error"]
    assert "longer than 100000 bytes" in response.events[-1]["content"]
    assert await upstream.wait_closed(timeout=1.0)


async def test_done_is_sent_even_if_upstream_keeps_body_open_after_done(gateway, upstream: FaultUpstream) -> None:
    upstream.scenarios = [Scenario(pieces=["x"], raw_lines=None, hang_after=None, send_done=True)]
    response = await chat(gateway.port, {"prompt": "x"})
    assert types(response) == ["connected", "content", "done"]


async def test_client_that_stops_reading_is_dropped_after_write_timeout(start_gateway, upstream: FaultUpstream) -> None:
    gateway = start_gateway(WRITE_TIMEOUT_SECS="0.3")
    big = "y" * 60000
    upstream.scenarios = [Scenario(pieces=[big] * 400)]
    async with connect(gateway.port) as (reader, writer):
        writer.transport.set_write_buffer_limits(0)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        writer.write(build_request("POST", "/chat", b'{"prompt": "x"}'))
        await writer.drain()
        reader._limit = 2**30  # type: ignore[attr-defined]
        writer.transport.pause_reading()
        assert await upstream.wait_closed(timeout=5.0)
    await eventually(lambda: len(gateway.gateway.streams) == 0, "the stream to end")


async def test_disconnect_during_retry_backoff_stops_retrying(start_gateway, upstream: FaultUpstream) -> None:
    gateway = start_gateway(UPSTREAM_RETRIES="3", RETRY_MAX_WAIT_SECS="5")
    upstream.scenarios = [Scenario(status=503, headers={"Retry-After": "5"})]
    await hang_up_after_upstream_called(gateway.port, upstream)
    await eventually(lambda: len(gateway.gateway.streams) == 0, "the stream to end")  # ended: it can retry no more
    assert len(upstream.requests) == 1
