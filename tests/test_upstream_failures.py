"""Failures below HTTP reach the client named by their class, and the WARN log carries the exception.

Hand-written upstreams over real sockets: broken status lines and framing, resets, an untrusted certificate."""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import struct
from collections.abc import Callable
from pathlib import Path

import pytest

from bench.procs import SelfSigned
from tests.conftest import RunningGateway, chat, free_port
from tests.fault_upstream import Answer, raw_upstream

KEY = "sk-test-secret-key"  # what start_gateway gives the gateway as OPENROUTER_API_KEY
STREAM_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"


def answering(wire: bytes) -> Answer:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(wire)
        await reader.read()  # open until the gateway hangs up

    return answer


async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()  # linger 0: the close is a RST


async def close_at_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")


CASES: dict[str, tuple[Answer, str, str]] = {
    # name: (the upstream, the client's message, the exception the log line names)
    "status line": (answering(b"HELLO WORLD\r\n\r\n"), "invalid HTTP from upstream", "ProtocolError"),
    "head too long": (answering(b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 70000), "invalid HTTP from upstream", "ProtocolError"),
    "bad chunk": (answering(STREAM_HEAD + b"zz\r\n"), "invalid HTTP from upstream", "ProtocolError"),
    "reset": (reset, "upstream connection reset", "ConnectionResetError: [Errno 104] Connection reset by peer"),
    "closed": (close_at_once, "upstream closed the connection before answering", "ConnectionClosedError"),
}


async def failure(start_gateway: Callable[..., RunningGateway], base_url: str, caplog: pytest.LogCaptureFixture) -> tuple[dict, list[str]]:
    """The /chat stream's last event and the gateway's WARN lines about the upstream."""
    gateway = start_gateway(OPENROUTER_BASE_URL=base_url + "/api/v1", UPSTREAM_RETRIES="0")
    with caplog.at_level(logging.INFO):
        response = await chat(gateway.port, {"prompt": "x"})
    assert all(KEY not in record.getMessage() for record in caplog.records)
    warnings = [r.getMessage() for r in caplog.records if r.name == "gateway.upstream" and r.levelno == logging.WARNING]
    return response.events[-1], warnings


@pytest.mark.parametrize("case", CASES)
async def test_protocol_failures_are_named_and_logged(start_gateway, upstream, caplog: pytest.LogCaptureFixture, case: str) -> None:
    answer, message, logged = CASES[case]
    async with raw_upstream(answer) as (url, _):
        event, warnings = await failure(start_gateway, url, caplog)
    assert (event["type"], event["error_type"], event["content"]) == ("error", "upstream_error", message)
    assert any(message in line and logged in line for line in warnings), warnings


async def test_an_untrusted_certificate_is_named(start_gateway, upstream, caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    certificate = SelfSigned.make(str(tmp_path))
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(certificate.cert, certificate.key)
    async with raw_upstream(answering(b""), tls) as (url, _):
        event, warnings = await failure(start_gateway, url, caplog)
    assert event["content"] == "upstream TLS certificate verification failed"
    assert any("SSLCertVerificationError" in line and "certificate verify failed" in line for line in warnings), warnings


async def test_a_refused_connection_is_still_could_not_connect(start_gateway, upstream, caplog: pytest.LogCaptureFixture) -> None:
    event, warnings = await failure(start_gateway, f"http://127.0.0.1:{free_port()}", caplog)
    assert event["content"] == "could not connect to the upstream"
    assert any("ConnectionRefusedError" in line for line in warnings), warnings
