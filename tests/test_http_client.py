"""The pooled client over real sockets, against hand-written upstreams: framing (strict: what cannot be framed
unambiguously is refused and its connection dropped), keep-alive, back-pressure and the request options."""

from __future__ import annotations

import asyncio
import re
import socket
import ssl
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
from tornado.httpclient import HTTPRequest, HTTPResponse
from tornado.simple_httpclient import HTTPTimeoutError

from bench.procs import SelfSigned
from server.http_client import PooledAsyncHTTPClient, ProtocolError, StreamingRequest

Answer = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
OK = b"HTTP/1.1 200 OK\r\n"


@dataclass
class Upstream:
    """A raw upstream on a free loopback port, the connections it accepted, and those the client closed."""

    url: str
    accepted: list[int] = field(default_factory=list)
    closed: asyncio.Queue[int] = field(default_factory=asyncio.Queue)

    async def wait_closed(self, count: int = 1) -> None:
        for _ in range(count):
            await asyncio.wait_for(self.closed.get(), 5.0)


@asynccontextmanager
async def serving(answer: Answer, tls: ssl.SSLContext | None = None) -> AsyncIterator[tuple[Upstream, PooledAsyncHTTPClient]]:
    """The upstream (answering each connection with `answer`, then waiting for the client to close) and a
    pooled client, closed afterwards."""
    upstream = Upstream("")

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream.accepted.append(1)
        try:
            await answer(reader, writer)
            await reader.read()  # until the client closes
            upstream.closed.put_nowait(1)
        except (ConnectionError, ssl.SSLError):
            upstream.closed.put_nowait(1)
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=tls)
    upstream.url = f"{'https' if tls else 'http'}://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    client = PooledAsyncHTTPClient(force_instance=True)
    try:
        yield upstream, client
    finally:
        client.close()
        server.close()


def reply(*wire: bytes) -> Answer:
    """An answer that reads each request head and writes the next of `wire`, as one write."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for data in wire:
            try:
                await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                return  # the client closed
            writer.write(data)
            await writer.drain()

    return answer


async def fetch(client: PooledAsyncHTTPClient, url: str, **options: Any) -> HTTPResponse:
    return await asyncio.wait_for(client.fetch(HTTPRequest(url + "/x", **options), raise_error=False), 10.0)


async def failure(client: PooledAsyncHTTPClient, url: str, **options: Any) -> Exception:
    """What the fetch raised (as Tornado's clients do for anything but an HTTP status, even with raise_error=False)."""
    try:
        await fetch(client, url, **options)
    except Exception as exc:
        return exc
    raise AssertionError("the fetch succeeded")


async def test_interim_response_then_content_length_body() -> None:
    heads: list[int] = []
    wire = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + OK + b"Content-Length: 5\r\n\r\nhello"
    async with serving(reply(wire)) as (upstream, client):
        request = StreamingRequest(upstream.url + "/x", method="POST", body=b"{}", on_headers=lambda code, _: heads.append(code))
        response = await client.fetch(request)
        assert (response.code, response.body, "Link" in response.headers) == (200, b"hello", False)
        assert heads == [200]  # interim heads are skipped, the final one reported once
        assert client.open_connections() == 1  # kept alive for the next request


async def test_a_pooled_connection_the_upstream_closed_is_replaced() -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(OK + b"Content-Length: 2\r\n\r\nok")
        await writer.drain()
        writer.close()  # a keep-alive connection the upstream dropped while idle

    async with serving(answer) as (upstream, client):
        for _ in range(3):
            assert (await client.fetch(upstream.url + "/x")).body == b"ok"
        assert len(upstream.accepted) == 3


async def test_a_chunked_body_with_extensions_and_trailer_fields_keeps_the_connection() -> None:
    wire = OK + b"Transfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nX-Trailer: 1\r\n\r\n"
    async with serving(reply(wire, wire)) as (upstream, client):
        for _ in range(2):
            response = await fetch(client, upstream.url)
            assert (response.body, "X-Trailer" in response.headers) == (b"abcde", False)
        assert (len(upstream.accepted), client.open_connections()) == (1, 1)


async def test_each_read_reaches_the_streaming_callback_once_whatever_the_chunking() -> None:
    """Several HTTP chunks in one read are one callback; one chunk cut across reads is one callback per read."""
    pieces = [b"one", b"two", b"three"]
    body = b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces) + b"0\r\n\r\n"
    split = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + body[:5]

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(OK + b"Transfer-Encoding: chunked\r\n\r\n" + body)  # one read
        await reader.readuntil(b"\r\n\r\n")
        for data in (split, body[5:]):  # the first chunk cut in two
            writer.write(data)
            await writer.drain()
            await got.get()

    got: asyncio.Queue[bytes] = asyncio.Queue()
    received: list[bytes] = []

    def on_chunk(chunk: bytes) -> None:
        received.append(chunk)
        got.put_nowait(chunk)

    async with serving(answer) as (upstream, client):
        await fetch(client, upstream.url, streaming_callback=received.append)
        assert received == [b"onetwothree"]
        received.clear()
        await fetch(client, upstream.url, streaming_callback=on_chunk)
        assert received == [b"on", b"etwothree"]


@pytest.mark.parametrize(
    ("method", "head"),
    [
        ("GET", OK + b"Content-Length: 0\r\n\r\n"),
        ("GET", b"HTTP/1.1 204 No Content\r\n\r\n"),
        ("GET", b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n"),
        ("HEAD", OK + b"Content-Length: 5\r\n\r\n"),
        ("GET", OK + b"Content-Length: 2\r\n\r\nok"),
        ("GET", OK + b"Transfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"),
    ],
)
@pytest.mark.parametrize("surplus", [OK + b"Content-Length: 4\r\n\r\nevil", b"JUNK"])
async def test_bytes_after_a_complete_response_in_the_same_read_drop_the_connection(method: str, head: bytes, surplus: bytes) -> None:
    """A stray response behind ours must not reach the next request from the pool."""
    async with serving(reply(head + surplus)) as (upstream, client):
        response = await fetch(client, upstream.url, method=method)
        assert response.code in (200, 204, 304) and response.body in (b"", b"ok")
        assert client.open_connections() == 0
        await upstream.wait_closed()
        await fetch(client, upstream.url, method=method)
        assert len(upstream.accepted) == 2


@pytest.mark.parametrize(
    "head",
    [
        b"Content-Length: -5\r\n",
        b"Content-Length: +5\r\n",
        b"Content-Length: 1_0\r\n",
        b"Content-Length: 5, 5\r\n",
        b"Content-Length: 5\r\nContent-Length: 6\r\n",
        b"Transfer-Encoding: gzip, chunked\r\n",
        b"Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n",
        b"Transfer-Encoding: chunked, gzip\r\n",
        b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
        b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
        b"Bad Header: x\r\n",
    ],
)
async def test_ambiguous_framing_is_refused_and_the_connection_closed(head: bytes) -> None:
    async with serving(reply(OK + head + b"\r\n5\r\nhello\r\n0\r\n\r\n")) as (upstream, client):
        assert isinstance(await failure(client, upstream.url), ProtocolError)
        await upstream.wait_closed()
        assert client.open_connections() == 0


@pytest.mark.parametrize(
    "wire",
    [
        OK + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n",
        OK + b"Transfer-Encoding: chunked\r\n\r\n-1\r\n",
        OK + b"Transfer-Encoding: chunked\r\n\r\n0x3\r\nabc\r\n",
        OK + b"Transfer-Encoding: chunked\r\n\r\n3\r\nabcXX",
        OK + b"Transfer-Encoding: chunked\r\n\r\n" + b"1" * 70000,
        OK + b"X-Big: " + b"a" * 70000,  # a head that never ends
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
        b"SMTP ready\r\n\r\n",
    ],
)
async def test_malformed_answers_are_protocol_errors(wire: bytes) -> None:
    async with serving(reply(wire)) as (upstream, client):
        error = await failure(client, upstream.url)
        assert isinstance(error, ProtocolError), error
        await upstream.wait_closed()


async def test_a_body_without_length_is_read_until_close() -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.0 200 OK\r\n\r\nold ")
        await writer.drain()
        writer.write(b"school")
        writer.close()

    async with serving(answer) as (upstream, client):
        assert (await fetch(client, upstream.url)).body == b"old school"
        assert client.open_connections() == 0


async def test_a_reset_mid_body_fails_the_fetch_with_the_reset() -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(OK + b"Content-Length: 100\r\n\r\npartial")
        await writer.drain()
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close sends RST
        writer.transport.abort()

    async with serving(answer) as (upstream, client):
        error = await failure(client, upstream.url)
        assert isinstance(error, ConnectionResetError), error


async def test_reading_pauses_while_the_streaming_callback_is_pending() -> None:
    """Back-pressure: no further body bytes are handed over until the previous callback's awaitable is done."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(OK + b"Transfer-Encoding: chunked\r\n\r\n3\r\none\r\n")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"3\r\ntwo\r\n0\r\n\r\n")

    received: list[bytes] = []
    release = asyncio.get_running_loop().create_future()

    def on_chunk(chunk: bytes) -> Awaitable[None] | None:
        received.append(chunk)
        return release if len(received) == 1 else None

    async with serving(answer) as (upstream, client):
        fetching = asyncio.ensure_future(client.fetch(HTTPRequest(upstream.url + "/x", streaming_callback=on_chunk)))
        await asyncio.sleep(0.2)  # "two" is on the socket by now, but the first callback is still pending
        assert received == [b"one"] and not fetching.done()
        release.set_result(None)
        response = await fetching
        assert response.code == 200 and received == [b"one", b"two"]


# -- request options: honoured, or refused by name ------------------------------------------------------


async def test_request_timeout_ends_a_request_that_runs_too_long() -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(OK + b"Transfer-Encoding: chunked\r\n\r\n3\r\none\r\n")  # and then nothing

    async with serving(answer) as (upstream, client):
        started = time.monotonic()
        error = await failure(client, upstream.url, request_timeout=0.3)
        assert isinstance(error, HTTPTimeoutError) and error.code == 599
        assert 0.25 < time.monotonic() - started < 3.0
        await upstream.wait_closed()


def test_no_request_timeout_by_default() -> None:
    """Tornado's default of 20 s would cut every long stream: this client has none unless asked."""
    client = PooledAsyncHTTPClient(force_instance=True)
    assert client.defaults["request_timeout"] is None
    client.close()


async def test_certificates_are_verified_unless_told_otherwise(tmp_path: Any) -> None:
    certificate = SelfSigned.make(str(tmp_path))
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(certificate.cert, certificate.key)
    async with serving(reply(*[OK + b"Content-Length: 2\r\n\r\nok"] * 3), tls=tls) as (upstream, client):
        assert isinstance(await failure(client, upstream.url), ssl.SSLCertVerificationError)
        assert (await fetch(client, upstream.url, ca_certs=certificate.cert)).body == b"ok"
        assert (await fetch(client, upstream.url, validate_cert=False)).body == b"ok"
        # each setting pools apart: an unverified connection never serves a verified request
        assert client.open_connections() == 2


@pytest.mark.parametrize(
    ("option", "named"),
    [
        ({"follow_redirects": True}, "follow_redirects=True"),
        ({"decompress_response": True}, "decompress_response=True"),
        ({"use_gzip": True}, "decompress_response=True"),
        ({"proxy_host": "127.0.0.1", "proxy_port": 3128}, "proxy_host='127.0.0.1', proxy_port=3128"),
        ({"auth_username": "user"}, "auth_username='user'"),
        ({"client_cert": "cert.pem"}, "client_cert='cert.pem'"),
        ({"user_agent": "bot/1"}, "user_agent='bot/1'"),
        ({"allow_ipv6": False}, "allow_ipv6=False"),
    ],
)
async def test_options_the_client_does_not_implement_are_refused_by_name(option: dict[str, Any], named: str) -> None:
    client = PooledAsyncHTTPClient(force_instance=True)
    try:
        with pytest.raises(NotImplementedError, match=re.escape(named)):
            client.fetch(HTTPRequest("http://127.0.0.1:9/x", **option))
        assert client.open_connections() == 0
    finally:
        client.close()


async def test_client_defaults_that_ask_for_redirects_are_refused() -> None:
    client = PooledAsyncHTTPClient(force_instance=True, defaults={"follow_redirects": True})
    try:
        with pytest.raises(NotImplementedError, match="follow_redirects=True"):
            client.fetch("http://127.0.0.1:9/x")
    finally:
        client.close()
