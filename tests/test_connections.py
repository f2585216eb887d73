"""Connections before any request: MAX_CONNECTIONS, HEADER_TIMEOUT_SECS, and accepting at the NOFILE limit.

The descriptor tests run `python run.py` under `prlimit --nofile`, so the gateway really runs out.
"""

from __future__ import annotations

import asyncio
import contextlib
import select
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.procs import cpu_seconds
from tests.conftest import RunningGateway, build_request, chat, connect, read_response, request
from tests.fault_upstream import FaultUpstream, Scenario
from tests.services import GatewayProcess, health, metric, wait_for
from tests.test_metrics import Scrape

PATIENT = {"HEADER_TIMEOUT_SECS": "120", "IDLE_TIMEOUT_SECS": "120"}  # idle clients stay until the test ends


async def closed_by_server(reader: asyncio.StreamReader, timeout: float) -> float:
    """Seconds until the server closes the connection (EOF); fails after `timeout`."""
    started = time.monotonic()
    assert await asyncio.wait_for(reader.read(), timeout) == b""
    return time.monotonic() - started


async def test_past_max_connections_new_connections_are_closed_at_once(start_gateway: Callable[..., RunningGateway]) -> None:
    gateway = start_gateway(MAX_CONNECTIONS="3")
    async with contextlib.AsyncExitStack() as held:
        for _ in range(3):
            await held.enter_async_context(connect(gateway.port))
        async with connect(gateway.port) as (reader, _):
            assert await closed_by_server(reader, 5) < 5
    # the held connections are gone: service resumes, and the refusal was counted
    scrape = Scrape((await retry_until_served(gateway.port, "/metrics")).body.decode())
    assert scrape["connections_rejected_total"] >= 1  # the retries may have been refused too, while the server caught up


async def retry_until_served(port: int, path: str, timeout: float = 10.0) -> Any:
    """The server notices closed clients on a later loop turn: retry a GET until it is answered."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await request(port, "GET", path)
        except (ConnectionError, asyncio.IncompleteReadError):
            assert time.monotonic() < deadline, f"GET {path} was never served again"
            await asyncio.sleep(0.02)


async def test_a_slow_request_head_is_cut_after_header_timeout(start_gateway: Callable[..., RunningGateway]) -> None:
    gateway = start_gateway(HEADER_TIMEOUT_SECS="0.5", IDLE_TIMEOUT_SECS="60")
    async with connect(gateway.port) as (reader, writer):
        writer.write(b"GET /health HTTP/1.1\r\n")

        async def dribble() -> None:
            with contextlib.suppress(ConnectionError):
                for _ in range(600):
                    writer.write(b"X")
                    await writer.drain()
                    await asyncio.sleep(0.1)

        dribbling = asyncio.ensure_future(dribble())
        try:
            assert 0.4 < await closed_by_server(reader, 10) < 5  # not the 60 s idle timeout
        finally:
            dribbling.cancel()
    async with connect(gateway.port) as (reader, _):  # silence counts as a slow head too
        assert await closed_by_server(reader, 10) < 5


async def test_header_timeout_spares_slow_bodies_long_answers_and_kept_alive_connections(
    start_gateway: Callable[..., RunningGateway], upstream: FaultUpstream
) -> None:
    gateway = start_gateway(HEADER_TIMEOUT_SECS="0.3", IDLE_TIMEOUT_SECS="60")
    upstream.scenarios = [Scenario(pieces=["a", "b", "c", "d"], delay=0.25)]
    assert (await chat(gateway.port, {"prompt": "hi"})).events[-1]["type"] == "done"  # a 1 s answer
    async with connect(gateway.port) as (reader, writer):
        head, body = build_request("POST", "/chat", b'{"prompt": "hi"}').split(b"\r\n\r\n")
        writer.write(head + b"\r\n\r\n" + body[:5])
        await asyncio.sleep(0.6)  # the body arrives slowly: READ_TIMEOUT_SECS governs it, not the head deadline
        writer.write(body[5:])
        assert (await asyncio.wait_for(read_response(reader), 10)).events[-1]["type"] == "done"
        await asyncio.sleep(0.6)  # kept alive past the head deadline: IDLE_TIMEOUT_SECS governs it
        writer.write(build_request("GET", "/health"))
        assert (await asyncio.wait_for(read_response(reader), 10)).status == 200


# -- at the NOFILE limit (a real process under prlimit) ------------------------------------------------


def limited_gateway(tmp_path: Path, nofile: int, **env: str) -> GatewayProcess:
    gateway = GatewayProcess(tmp_path, **PATIENT, **env)
    gateway.argv = ["prlimit", f"--nofile={nofile}", *gateway.argv]
    return gateway


@pytest.fixture
def clients() -> Iterator[list[socket.socket]]:
    opened: list[socket.socket] = []
    yield opened
    for sock in opened:
        sock.close()


def open_idle(port: int, count: int, into: list[socket.socket]) -> None:
    for _ in range(count):
        into.append(socket.create_connection(("127.0.0.1", port), timeout=5))


def closed_by_peer(sockets: list[socket.socket]) -> list[socket.socket]:
    readable, _, _ = select.select(sockets, [], [], 0)
    return [sock for sock in readable if sock.recv(1, socket.MSG_PEEK) == b""]


def test_out_of_descriptors_pauses_accepting_quietly_and_resumes(tmp_path: Path, clients: list[socket.socket]) -> None:
    gateway = limited_gateway(tmp_path, 64, MAX_CONNECTIONS="100000")
    gateway.start()
    try:
        open_idle(gateway.port, 100, clients)  # more than 64 descriptors: the rest wait in the backlog
        gateway.wait_for_log(lambda record: "accept() failed" in record["msg"])
        cpu_before, started = cpu_seconds(gateway.pid), time.monotonic()
        time.sleep(2.0)  # a quiet interval is the property under test
        used = (cpu_seconds(gateway.pid) - cpu_before) / (time.monotonic() - started)
        assert used < 0.25, f"{used:.0%} CPU while out of descriptors"
        warnings = gateway.logged("accept() failed", "WARNING")
        assert 1 <= len(warnings) <= 2 and "Too many open files" in warnings[0]["msg"]
        assert [record for record in gateway.records() if record["level"] in ("ERROR", "CRITICAL")] == []
        for sock in clients:
            sock.close()
        clients.clear()
        wait_for(lambda: (answer := health(gateway.port)) is not None and answer.status == 200, "service to resume")
        assert metric(gateway.port, "accept_errors_total") >= 1
    finally:
        gateway.kill()


def test_max_connections_defaults_to_half_the_descriptors_left(tmp_path: Path, clients: list[socket.socket]) -> None:
    gateway = limited_gateway(tmp_path, 128)  # (128 - 64) // 2 = 32 connections
    gateway.start()
    try:
        assert gateway.logged("at most 32 connections")
        open_idle(gateway.port, 40, clients)
        refused = wait_for(lambda: len(closed_by_peer(clients)) >= 8 and closed_by_peer(clients), "8 connections to be closed")
        assert len(refused) <= 9  # the /health probe's own connection may still have been counted
        for sock in refused:
            clients.remove(sock)
            sock.close()
        assert len(closed_by_peer(clients)) == 0  # the others are held, idle
        for sock in clients:
            sock.close()
        clients.clear()
        wait_for(lambda: (answer := health(gateway.port)) is not None and answer.status == 200, "service to resume")
        assert metric(gateway.port, "accept_errors_total") == 0  # the cap kept the process off the NOFILE limit
        assert metric(gateway.port, "connections_rejected_total") >= 8
    finally:
        gateway.kill()
