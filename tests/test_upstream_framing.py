"""An upstream whose answer cannot be framed unambiguously: the gateway's client reports a typed error and keeps
no connection to it, on both APIs."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest

from tests.conftest import RunningGateway, chat, request
from tests.fault_upstream import chunk_json

EVENTS = f"data: {chunk_json('hi')}\n\ndata: [DONE]\n\n".encode()


@asynccontextmanager
async def raw_upstream(head: bytes) -> AsyncIterator[str]:
    """An upstream answering every request with `head` and a chunked SSE body; yields its base URL."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(head + b"\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(EVENTS), EVENTS))
        await writer.drain()
        await reader.read()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1"
    finally:
        server.close()


@pytest.mark.parametrize(
    "framing",
    [b"Transfer-Encoding: gzip, chunked\r\n", b"Transfer-Encoding: chunked\r\nContent-Length: 70\r\n", b"Content-Length: +70\r\n"],
)
async def test_ambiguous_framing_is_a_typed_upstream_error(start_gateway: Callable[..., RunningGateway], framing: bytes) -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n" + framing
    async with raw_upstream(head) as url:
        gateway = start_gateway(OPENROUTER_BASE_URL=url, UPSTREAM_RETRIES="0")
        response = await chat(gateway.port, {"prompt": "x"})
        assert response.events[-1]["type"] == "error" and response.events[-1]["error_type"] == "upstream_error"
        assert response.text == ""  # nothing from the refused body reached the client
        answer = await request(gateway.port, "POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}]})
        assert answer.status == 502 and answer.json()["error"]["code"] == "upstream_error", answer.body
        assert gateway.gateway.http_client.open_connections() == 0
