"""The pooled client: its chunked-body decoder (any split of the wire bytes decodes to the same body), and its
framing, keep-alive and back-pressure over real sockets."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tornado.httpclient import HTTPRequest

from server.http_client import ChunkedDecoder, PooledAsyncHTTPClient, ProtocolError
from tests.fault_upstream import Answer, raw_upstream


def encode(pieces: list[bytes], trailer: bytes = b"") -> bytes:
    body = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(piece), piece) for piece in pieces if piece)
    return body + b"0\r\n" + trailer + b"\r\n"


def decode(wire: bytes, cuts: list[int]) -> tuple[bytes, ChunkedDecoder]:
    decoder = ChunkedDecoder()
    out, start = [], 0
    for cut in [*sorted(set(cuts)), len(wire)]:
        if not decoder.done:
            out.append(decoder.feed(wire[start:cut]))
        start = cut
    return b"".join(out), decoder


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=50), max_size=8), st.sampled_from([b"", b"X-Trailer: 1\r\n"]), st.data())
def test_any_split_decodes_the_same_body(pieces: list[bytes], trailer: bytes, data: st.DataObject) -> None:
    wire = encode(pieces, trailer)
    cuts = data.draw(st.lists(st.integers(0, len(wire)), max_size=len(wire)))
    body, decoder = decode(wire, cuts)
    assert body == b"".join(pieces)
    assert decoder.done and not decoder.trailing


def test_bytes_after_the_last_chunk_make_the_connection_unusable() -> None:
    body, decoder = decode(encode([b"abc"]) + b"HTTP/1.1 200 OK", [])
    assert body == b"abc" and decoder.done and decoder.trailing


@pytest.mark.parametrize("wire", [b"zz\r\n", b"-1\r\n", b"0x3\r\nabc\r\n", b"3\r\nabcXX", b"1" * 70000])
def test_malformed_framing_is_a_protocol_error(wire: bytes) -> None:
    with pytest.raises(ProtocolError):
        ChunkedDecoder().feed(wire)


# -- the client over real sockets, against hand-written upstreams ---------------------------------------


@asynccontextmanager
async def serving(answer: Answer) -> AsyncIterator[tuple[str, list[int], PooledAsyncHTTPClient]]:
    """A raw upstream and a pooled client; yields its base URL, the connections it accepted so far, and the
    client (closed afterwards)."""
    async with raw_upstream(answer) as (url, connections):
        client = PooledAsyncHTTPClient(force_instance=True)
        try:
            yield url, connections, client
        finally:
            client.close()


async def test_interim_response_then_content_length_body() -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
        await reader.read()  # keep the connection open until the client closes it

    async with serving(answer) as (url, _, client):
        response = await client.fetch(url + "/x", method="POST", body=b"{}")
        assert (response.code, response.body) == (200, b"hello")
        assert client.open_connections() == 1  # kept alive for the next request


async def test_a_pooled_connection_the_upstream_closed_is_replaced() -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()  # then close: a keep-alive connection the upstream dropped while idle

    async with serving(answer) as (url, connections, client):
        for _ in range(3):
            assert (await client.fetch(url + "/x")).body == b"ok"
        assert len(connections) == 3


async def test_bytes_after_a_content_length_body_make_the_connection_unusable() -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokJUNK")
        await reader.read()

    async with serving(answer) as (url, _, client):
        assert (await client.fetch(url + "/x")).body == b"ok"
        assert client.open_connections() == 0


async def test_reading_pauses_while_the_streaming_callback_is_pending() -> None:
    """Back-pressure: no further body bytes are handed over until the previous callback's awaitable is done."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\none\r\n")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"3\r\ntwo\r\n0\r\n\r\n")
        await reader.read()

    received: list[bytes] = []
    release = asyncio.get_running_loop().create_future()

    def on_chunk(chunk: bytes) -> Awaitable[None] | None:
        received.append(chunk)
        return release if len(received) == 1 else None

    async with serving(answer) as (url, _, client):
        fetch = asyncio.ensure_future(client.fetch(HTTPRequest(url + "/x", streaming_callback=on_chunk)))
        await asyncio.sleep(0.2)  # "two" is on the socket by now, but the first callback is still pending
        assert received == [b"one"] and not fetch.done()
        release.set_result(None)
        response = await fetch
        assert response.code == 200 and received == [b"one", b"two"]
