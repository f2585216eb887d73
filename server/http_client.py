"""`PooledAsyncHTTPClient`: Tornado's `AsyncHTTPClient` interface with keep-alive and a hard abort.

Why not the stock clients: `SimpleAsyncHTTPClient` opens a new TCP (and TLS) connection per request,
which adds a handshake to every first token, and it has no way to cut a request short: raising from
`streaming_callback` only acts when the next chunk arrives, and `future.cancel()` / `client.close()`
leave the upstream socket open. A gateway must close the upstream the moment its client leaves.

So this client speaks HTTP/1.1 over Tornado's public `TCPClient`/`IOStream`, keeps idle connections per
origin for reuse, and `abort(request)` closes that request's socket at once — the upstream sees the
close whether we are connecting, waiting for headers or mid-body. It reads the body itself rather than
through `HTTP1Connection`, whose chunked reader (Tornado 6.6) coalesces small chunks and drops what it
holds when the peer closes: a provider that sends text and then dies must not lose that text.

Body bytes already buffered are handed over together (one `streaming_callback` per network read, not
per HTTP chunk), and `streaming_callback` may return an awaitable: the next read waits for it, which
gives back-pressure from a slow client.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import select
import ssl
import time
from collections import defaultdict, deque
from collections.abc import Callable
from io import BytesIO
from typing import Any
from urllib.parse import urlsplit

from tornado import httputil
from tornado.httpclient import AsyncHTTPClient, HTTPRequest, HTTPResponse
from tornado.iostream import IOStream, StreamClosedError
from tornado.tcpclient import TCPClient

Origin = tuple[str, str, int]  # scheme, host, port

_IDLE_SECONDS = 30.0  # drop pooled connections idle longer than this; providers close theirs after ~60 s
_MAX_IDLE_PER_ORIGIN = 256
_MAX_HEADER_BYTES = 64 * 1024
_READ_SIZE = 64 * 1024


class RequestAbortedError(Exception):
    """The request was aborted by `abort()` (client gone, timeout, shutdown)."""


class ProtocolError(Exception):
    """The upstream's answer is not valid HTTP/1.1."""


class StreamingRequest(HTTPRequest):
    """An `HTTPRequest` that may also take `on_headers(status, headers)`: the parsed head, once, instead of
    `header_callback`'s line-by-line replay (which the caller would only parse again)."""

    def __init__(self, url: str, on_headers: Callable[[int, httputil.HTTPHeaders], None] | None = None, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self.on_headers = on_headers


class _Exchange:
    """One response being received: status, headers, and a body sink (callback or buffer)."""

    def __init__(self, request: HTTPRequest) -> None:
        self.request = request
        self.code = 0
        self.reason = ""
        self.version = "HTTP/1.1"
        self.headers = httputil.HTTPHeaders()
        self.started = False
        self.body = BytesIO()

    def headers_received(self, head: bytes) -> None:
        text = head.decode("latin-1")
        start, _, rest = text.partition("\n")
        line = httputil.parse_response_start_line(start.strip())
        self.code, self.reason, self.version = line.code, line.reason, line.version
        self.headers = httputil.HTTPHeaders.parse(rest)
        on_headers = getattr(self.request, "on_headers", None)
        if on_headers is not None:
            on_headers(self.code, self.headers)
        elif self.request.header_callback is not None:
            self.request.header_callback(f"{line.version} {line.code} {line.reason}\r\n")
            for name, value in self.headers.get_all():
                self.request.header_callback(f"{name}: {value}\r\n")
            self.request.header_callback("\r\n")

    async def deliver(self, data: bytes) -> None:
        """Hand one network read's body bytes over; awaits the consumer (back-pressure)."""
        if not data:
            return
        if self.request.streaming_callback is None:
            self.body.write(data)
            return
        result = self.request.streaming_callback(data)
        if result is not None:
            await result  # type: ignore[misc]


class ChunkedDecoder:
    """Decodes a `Transfer-Encoding: chunked` body fed in pieces of any size, one network read at a time."""

    _SIZE = re.compile(rb"[0-9a-fA-F]{1,16}")

    def __init__(self) -> None:
        self._buffer = b""
        self._remaining = 0  # data bytes left in the current chunk
        self._state = "size"  # size | data | crlf | trailer
        self.done = False
        self.trailing = False  # bytes after the last chunk: the connection cannot be reused

    def feed(self, data: bytes) -> bytes:
        buffer = self._buffer + data if self._buffer else data
        out: list[bytes] = []
        position, size = 0, len(buffer)
        while position < size and not self.done:
            if self._state == "data":
                take = min(self._remaining, size - position)
                out.append(buffer[position : position + take])
                position += take
                self._remaining -= take
                if not self._remaining:
                    self._state = "crlf"
                continue
            if self._state == "crlf":
                if size - position < 2:
                    break
                if buffer[position : position + 2] != b"\r\n":
                    raise ProtocolError("chunk not terminated by CRLF")
                position += 2
                self._state = "size"
                continue
            end = buffer.find(b"\r\n", position)
            if end < 0:
                if size - position > _MAX_HEADER_BYTES:
                    raise ProtocolError("chunk size line or trailer too long")
                break
            line = buffer[position:end]
            position = end + 2
            if self._state == "trailer":
                self.done = not line  # trailer fields end with an empty line
                continue
            digits = line.split(b";", 1)[0].strip()
            if not self._SIZE.fullmatch(digits):
                raise ProtocolError("invalid chunk size")
            self._remaining = int(digits, 16)
            self._state = "data" if self._remaining else "trailer"
        self._buffer = buffer[position:]
        self.trailing = self.done and bool(self._buffer)
        return out[0] if len(out) == 1 else b"".join(out)


class PooledAsyncHTTPClient(AsyncHTTPClient):
    """An `AsyncHTTPClient` with per-origin keep-alive pooling and `abort(request)`."""

    def initialize(self, defaults: dict[str, Any] | None = None) -> None:  # type: ignore[override]
        super().initialize(defaults)
        self._tcp = TCPClient()
        self._idle: dict[Origin, deque[tuple[IOStream, float]]] = defaultdict(deque)
        self._active: dict[int, IOStream | None] = {}
        self._aborted: set[int] = set()
        self._tasks: set[asyncio.Future[None]] = set()
        self._tls = ssl.create_default_context()

    # -- public ---------------------------------------------------------------------------------
    def abort(self, request: HTTPRequest) -> None:
        """Close `request`'s upstream connection now; its fetch fails with `RequestAbortedError`."""
        key = id(request)
        if key in self._active:
            self._aborted.add(key)
            stream = self._active[key]
            if stream is not None:
                stream.close()

    def open_connections(self) -> int:
        """Upstream sockets currently held (in use plus idle in the pool)."""
        busy = sum(1 for stream in self._active.values() if stream is not None)
        return busy + sum(len(pool) for pool in self._idle.values())

    def close(self) -> None:
        for pool in self._idle.values():
            for stream, _ in pool:
                stream.close()
        self._idle.clear()
        for stream in self._active.values():
            if stream is not None:
                stream.close()
        super().close()

    # -- AsyncHTTPClient -------------------------------------------------------------------------
    def fetch_impl(self, request: HTTPRequest, callback: Callable[[HTTPResponse], None]) -> None:
        original = getattr(request, "request", request)  # fetch() hands us a _RequestProxy
        self._active[id(original)] = None
        task = asyncio.ensure_future(self._fetch(request, id(original), callback))
        self._tasks.add(task)  # the loop keeps only weak references to tasks
        task.add_done_callback(self._tasks.discard)

    async def _fetch(self, request: HTTPRequest, key: int, callback: Callable[[HTTPResponse], None]) -> None:
        start = time.monotonic()
        try:
            exchange = await self._exchange(request, key)
        except Exception as exc:  # every failure becomes an HTTPResponse with code 599, as in Tornado
            error = RequestAbortedError("request aborted") if key in self._aborted else exc
            response = HTTPResponse(request, 599, error=error, request_time=time.monotonic() - start)
        else:
            exchange.body.seek(0)
            response = HTTPResponse(
                request,
                exchange.code,
                reason=exchange.reason,
                headers=exchange.headers,
                buffer=exchange.body,
                effective_url=request.url,
                request_time=time.monotonic() - start,
            )
        finally:
            self._active.pop(key, None)
            self._aborted.discard(key)
        callback(response)

    async def _exchange(self, request: HTTPRequest, key: int) -> _Exchange:
        parts = urlsplit(request.url)
        tls = parts.scheme == "https"
        origin: Origin = (parts.scheme, parts.hostname or "", parts.port or (443 if tls else 80))
        message = _request_bytes(request, parts.netloc, (parts.path or "/") + (f"?{parts.query}" if parts.query else ""))
        while True:
            stream, reused = await self._checkout(origin, request.connect_timeout)
            if key in self._aborted:
                stream.close()
                raise RequestAbortedError("request aborted")
            self._active[key] = stream
            exchange = _Exchange(request)
            try:
                stream.write(message)
                keep_alive = await self._read_response(stream, exchange, request.method)
            except StreamClosedError:
                if reused and not exchange.started and key not in self._aborted:
                    continue  # the pooled connection had gone stale; try a fresh one
                raise
            if key in self._aborted:
                raise RequestAbortedError("request aborted")
            self._checkin(origin, stream, keep_alive)
            return exchange

    async def _read_response(self, stream: IOStream, exchange: _Exchange, method: str) -> bool:
        """Read one response into `exchange`; True when the connection may be reused."""
        while True:
            head = await stream.read_until_regex(b"\r?\n\r?\n", max_bytes=_MAX_HEADER_BYTES)
            exchange.started = True
            exchange.headers_received(head)
            if not 100 <= exchange.code < 200:
                break
        headers = exchange.headers
        connection = headers.get("Connection", "").lower()
        keep_alive = connection == "keep-alive" or (exchange.version == "HTTP/1.1" and connection != "close")
        if method == "HEAD" or exchange.code in (204, 304):
            return keep_alive
        if "chunked" in headers.get("Transfer-Encoding", "").lower():
            decoder = ChunkedDecoder()
            while not decoder.done:
                await exchange.deliver(decoder.feed(await stream.read_bytes(_READ_SIZE, partial=True)))
            keep_alive = keep_alive and not decoder.trailing
        elif "Content-Length" in headers:
            try:
                remaining = int(headers["Content-Length"])
            except ValueError:
                raise ProtocolError("invalid Content-Length") from None
            while remaining > 0:
                data = await stream.read_bytes(min(remaining, _READ_SIZE), partial=True)
                remaining -= len(data)
                await exchange.deliver(data)
        else:  # the body ends when the connection does
            keep_alive = False
            with contextlib.suppress(StreamClosedError):
                while True:
                    await exchange.deliver(await stream.read_bytes(_READ_SIZE, partial=True))
        return keep_alive

    async def _checkout(self, origin: Origin, connect_timeout: float | None) -> tuple[IOStream, bool]:
        pool = self._idle.get(origin)
        now = time.monotonic()
        while pool:
            stream, since = pool.pop()
            if now - since < _IDLE_SECONDS and _still_open(stream):
                return stream, True
            stream.close()
        scheme, host, port = origin
        stream = await self._tcp.connect(
            host,
            port,
            ssl_options=self._tls if scheme == "https" else None,
            timeout=connect_timeout or None,
        )
        stream.set_nodelay(True)
        return stream, False

    def _checkin(self, origin: Origin, stream: IOStream, keep_alive: bool) -> None:
        pool = self._idle[origin]
        if keep_alive and not stream.closed() and len(pool) < _MAX_IDLE_PER_ORIGIN:
            pool.append((stream, time.monotonic()))
        else:
            stream.close()


def _request_bytes(request: HTTPRequest, host: str, target: str) -> bytes:
    body = request.body or b""
    headers = httputil.HTTPHeaders(request.headers)
    headers.setdefault("Host", host)
    headers["Content-Length"] = str(len(body))
    headers["Accept-Encoding"] = "identity"  # streamed text must not wait in a decompressor
    lines = [f"{request.method} {target} HTTP/1.1"]
    lines += [f"{name}: {value}" for name, value in headers.get_all()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def _still_open(stream: IOStream) -> bool:
    """An idle keep-alive socket that polls readable has been closed by the peer (or sent junk)."""
    if stream.closed():
        return False
    try:
        readable, _, _ = select.select([stream.fileno()], [], [], 0)
    except (OSError, ValueError):
        return False
    return not readable
