"""`PooledAsyncHTTPClient`: Tornado's `AsyncHTTPClient` interface with keep-alive and a hard abort.

Why not the stock clients: `SimpleAsyncHTTPClient` opens a new TCP (and TLS) connection per request,
which adds a handshake to every first token, and it has no way to cut a request short: raising from
`streaming_callback` only acts when the next chunk arrives, and `future.cancel()` / `client.close()`
leave the upstream socket open. A gateway must close the upstream the moment its client leaves.

So this client speaks HTTP/1.1 itself, as an asyncio `Protocol` on the loop's own transports, keeps idle
connections per origin for reuse, and `abort(request)` closes that request's socket at once — the
upstream sees the close whether we are connecting, waiting for headers or mid-body. Each network read
goes straight from the transport to `streaming_callback` (one call per read, not per HTTP chunk), with
no stream buffer, read future or coroutine hop in between: that is what a stream costs in memory and
latency, measured in bench/ (Tornado's `IOStream` read path cost ~2 KB and a loop iteration per read).
Tornado's own chunked reader (6.6) also coalesces small chunks and drops what it holds when the peer
closes; a provider that sends text and then dies must not lose that text.

`streaming_callback` may return an awaitable: reading pauses until it is done, which gives
back-pressure from a slow client.
"""

from __future__ import annotations

import asyncio
import contextvars
import re
import socket
import ssl
import time
from collections import defaultdict, deque
from collections.abc import Callable
from io import BytesIO
from typing import Any
from urllib.parse import urlsplit

from tornado import httputil
from tornado.httpclient import AsyncHTTPClient, HTTPRequest, HTTPResponse

Origin = tuple[str, str, int]  # scheme, host, port

_IDLE_SECONDS = 30.0  # drop pooled connections idle longer than this; providers close theirs after ~60 s
_MAX_IDLE_PER_ORIGIN = 256
_MAX_HEADER_BYTES = 64 * 1024
_HEAD_END = re.compile(rb"\r?\n\r?\n")


class RequestAbortedError(Exception):
    """The request was aborted by `abort()` (client gone, timeout, shutdown)."""


class ProtocolError(Exception):
    """The upstream's answer is not valid HTTP/1.1."""


class ConnectionClosedError(Exception):
    """The upstream closed the connection before the response was complete."""


class StreamingRequest(HTTPRequest):
    """An `HTTPRequest` that may also take `on_headers(status, headers)`: the parsed head, once, instead of
    `header_callback`'s line-by-line replay (which the caller would only parse again)."""

    def __init__(self, url: str, on_headers: Callable[[int, httputil.HTTPHeaders], None] | None = None, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self.on_headers = on_headers


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


class _Connection(asyncio.Protocol):
    """One upstream socket. Each network read goes straight to the response being received."""

    __slots__ = ("closed", "exchange", "transport")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.exchange: _Exchange | None = None
        self.closed = False

    def send(self, request: HTTPRequest, message: bytes) -> _Exchange:
        assert self.transport is not None
        self.exchange = _Exchange(request, self)
        self.transport.write(message)
        return self.exchange

    def close(self) -> None:
        """Close now, unsent bytes dropped: the upstream sees the close at once."""
        if not self.closed and self.transport is not None:
            self.transport.abort()
        self.closed = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # small writes go out now

    def data_received(self, data: bytes) -> None:
        if self.exchange is not None:
            self.exchange.context.run(self.exchange.feed, data)
        else:  # an idle keep-alive connection must stay silent
            self.close()

    def eof_received(self) -> None:
        return None  # the transport closes; connection_lost ends the exchange

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.exchange is not None:
            self.exchange.context.run(self.exchange.connection_lost, exc)


class _Exchange:
    """One response being received on a `_Connection`: head, then the body by its framing.

    `finished` resolves to whether the connection may be reused, once the body is complete and the
    consumer of its last piece is done; or fails (`ConnectionClosedError`, `ProtocolError`, or what the
    consumer raised)."""

    __slots__ = (
        "_consumer",
        "_decoder",
        "_ended",
        "_error",
        "_framing",
        "_head",
        "_remaining",
        "body",
        "code",
        "connection",
        "context",
        "finished",
        "headers",
        "keep_alive",
        "reason",
        "request",
        "started",
        "version",
    )

    def __init__(self, request: HTTPRequest, connection: _Connection) -> None:
        self.request = request
        self.connection = connection
        # the transport calls back in the context of whoever opened the connection: run this request's
        # callbacks (and log lines, with their request id) in the context of this request
        self.context = contextvars.copy_context()
        self.code = 0
        self.reason = ""
        self.version = "HTTP/1.1"
        self.headers = httputil.HTTPHeaders()
        self.body: BytesIO | None = None if request.streaming_callback is not None else BytesIO()
        self.started = False  # some of the head has arrived
        self.keep_alive = False
        self.finished: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._head = bytearray()
        self._framing = "head"  # head | chunked | length | close
        self._decoder: ChunkedDecoder | None = None
        self._remaining = 0  # body bytes still to come (Content-Length framing)
        self._consumer: asyncio.Future[Any] | None = None  # the streaming_callback's pending awaitable
        self._ended = False
        self._error: BaseException | None = None

    # -- from the connection ----------------------------------------------------------------------
    def feed(self, data: bytes) -> None:
        if self._ended or self._error is not None:
            self.keep_alive = False  # bytes after the response: the connection cannot be reused
            return
        self.started = True
        try:
            if self._framing == "head":
                data = self._read_head(data)
                if self._framing == "head" or self._ended:
                    return
            self._read_body(data)
        except Exception as exc:
            self._fail(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._framing == "close":
            self._end()  # that is how this body ends
        else:
            error = ConnectionClosedError("upstream closed the connection" if exc is None else str(exc))
            error.__cause__ = exc  # a reset or a TLS error: the caller tells them apart
            self._fail(error)

    # -- head -------------------------------------------------------------------------------------
    def _read_head(self, data: bytes) -> bytes:
        """Buffer until the blank line; parse it; return the bytes after it."""
        self._head += data
        match = _HEAD_END.search(self._head)
        if match is None:
            if len(self._head) > _MAX_HEADER_BYTES:
                raise ProtocolError("response head too long")
            return b""
        head, rest = bytes(self._head[: match.start()]), bytes(self._head[match.end() :])
        self._head = bytearray()
        self._headers_received(head.decode("latin-1"))
        if 100 <= self.code < 200:  # an interim response: the real head follows
            return self._read_head(rest) if rest else b""
        self._choose_framing()
        if self._ended and rest:
            self.keep_alive = False  # bytes nobody asked for
        return rest

    def _headers_received(self, text: str) -> None:
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

    def _choose_framing(self) -> None:
        headers = self.headers
        connection = headers.get("Connection", "").lower()
        self.keep_alive = connection == "keep-alive" or (self.version == "HTTP/1.1" and connection != "close")
        if self.request.method == "HEAD" or self.code in (204, 304):
            self._end()
        elif "chunked" in headers.get("Transfer-Encoding", "").lower():
            self._framing, self._decoder = "chunked", ChunkedDecoder()
        elif "Content-Length" in headers:
            try:
                self._remaining = int(headers["Content-Length"])
            except ValueError:
                raise ProtocolError("invalid Content-Length") from None
            self._framing = "length"
            if self._remaining <= 0:
                self._end()
        else:  # the body ends when the connection does
            self._framing, self.keep_alive = "close", False

    # -- body -------------------------------------------------------------------------------------
    def _read_body(self, data: bytes) -> None:
        if not data:
            return
        if self._decoder is not None:
            payload = self._decoder.feed(data)
            ended = self._decoder.done
            self.keep_alive = self.keep_alive and not self._decoder.trailing
        elif self._framing == "length":
            payload = data[: self._remaining]
            self.keep_alive = self.keep_alive and len(data) <= self._remaining
            self._remaining -= len(payload)
            ended = self._remaining == 0
        else:
            payload, ended = data, False
        self._deliver(payload)
        if ended:
            self._end()

    def _deliver(self, payload: bytes) -> None:
        """One network read's body bytes to the request; an awaitable it returns pauses reading until done."""
        if not payload:
            return
        if self.body is not None:
            self.body.write(payload)
            return
        result = self.request.streaming_callback(payload)  # type: ignore[misc]
        if result is None:
            return
        consumer = asyncio.ensure_future(result)
        if consumer.done():
            self._consumed(consumer)
            return
        self._consumer = consumer
        self._pause(True)
        consumer.add_done_callback(self._consumed)

    def _consumed(self, consumer: asyncio.Future[Any]) -> None:
        paused, self._consumer = self._consumer is not None, None
        error = consumer.exception() if not consumer.cancelled() else asyncio.CancelledError()
        if error is not None:
            self._fail(error)
            return
        if paused:  # an awaitable done at once (a flush that went straight out) never paused reading
            self._pause(False)
        self._settle()

    def _pause(self, paused: bool) -> None:
        transport = self.connection.transport
        if transport is not None and not self.connection.closed:
            (transport.pause_reading if paused else transport.resume_reading)()

    # -- ending -----------------------------------------------------------------------------------
    def _end(self) -> None:
        self._ended = True
        self._settle()

    def _fail(self, error: BaseException) -> None:
        if self._error is None and not self.finished.done():
            self._error = error
            self.connection.close()
        self._settle()

    def _settle(self) -> None:
        """Resolve `finished` once nothing is pending: a consumer still writing the last piece comes first."""
        if self._consumer is not None or self.finished.done():
            return
        if self._error is not None:
            self.connection.exchange = None
            self.finished.set_exception(self._error)
        elif self._ended:
            self.connection.exchange = None
            self.finished.set_result(self.keep_alive)


class PooledAsyncHTTPClient(AsyncHTTPClient):
    """An `AsyncHTTPClient` with per-origin keep-alive pooling and `abort(request)`."""

    def initialize(self, defaults: dict[str, Any] | None = None) -> None:  # type: ignore[override]
        super().initialize(defaults)
        self._idle: dict[Origin, deque[tuple[_Connection, float]]] = defaultdict(deque)
        # per request in flight: its connection, or the connect attempt while there is none yet
        self._active: dict[int, _Connection | asyncio.Future[Any] | None] = {}
        self._aborted: set[int] = set()
        self._tasks: set[asyncio.Future[None]] = set()
        self._tls = ssl.create_default_context()

    # -- public ---------------------------------------------------------------------------------
    def abort(self, request: HTTPRequest) -> None:
        """Close `request`'s upstream connection now (or stop connecting); its fetch fails with
        `RequestAbortedError`."""
        key = id(request)
        if key in self._active:
            self._aborted.add(key)
            target = self._active[key]
            if isinstance(target, _Connection):
                target.close()
            elif target is not None:
                target.cancel()

    def open_connections(self) -> int:
        """Upstream sockets currently held (in use plus idle in the pool)."""
        busy = sum(1 for target in self._active.values() if isinstance(target, _Connection) and not target.closed)
        return busy + sum(1 for pool in self._idle.values() for connection, _ in pool if not connection.closed)

    def close(self) -> None:
        for pool in self._idle.values():
            for connection, _ in pool:
                connection.close()
        self._idle.clear()
        for target in self._active.values():
            if isinstance(target, _Connection):
                target.close()
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
        except (Exception, asyncio.CancelledError) as exc:  # every failure becomes a 599 HTTPResponse, as in Tornado
            aborted = key in self._aborted or isinstance(exc, asyncio.CancelledError)
            error = RequestAbortedError("request aborted") if aborted else exc
            response = HTTPResponse(request, 599, error=error, request_time=time.monotonic() - start)
        else:
            if exchange.body is not None:
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
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        while True:
            connection, reused = await self._checkout(origin, request.connect_timeout, key)
            if key in self._aborted:
                connection.close()
                raise RequestAbortedError("request aborted")
            self._active[key] = connection
            exchange = connection.send(request, _request_bytes(request, parts.netloc, target))  # not held for the whole stream
            try:
                keep_alive = await exchange.finished
            except ConnectionClosedError:
                if reused and not exchange.started and key not in self._aborted:
                    continue  # the pooled connection had gone stale; try a fresh one
                raise
            if key in self._aborted:
                raise RequestAbortedError("request aborted")
            self._checkin(origin, connection, keep_alive)
            return exchange

    async def _checkout(self, origin: Origin, connect_timeout: float | None, key: int) -> tuple[_Connection, bool]:
        pool = self._idle.get(origin)
        now = time.monotonic()
        while pool:
            connection, since = pool.pop()
            if now - since < _IDLE_SECONDS and not connection.closed:
                return connection, True
            connection.close()
        attempt = asyncio.ensure_future(self._connect(origin, connect_timeout))
        self._active[key] = attempt  # abort() cancels it
        try:
            return await attempt, False
        except asyncio.CancelledError:
            raise RequestAbortedError("request aborted") from None

    async def _connect(self, origin: Origin, timeout: float | None) -> _Connection:
        scheme, host, port = origin
        connect = asyncio.get_running_loop().create_connection(_Connection, host, port, ssl=self._tls if scheme == "https" else None)
        _, connection = await asyncio.wait_for(connect, timeout or None)
        return connection

    def _checkin(self, origin: Origin, connection: _Connection, keep_alive: bool) -> None:
        pool = self._idle[origin]
        if keep_alive and not connection.closed and len(pool) < _MAX_IDLE_PER_ORIGIN:
            pool.append((connection, time.monotonic()))
        else:
            connection.close()


def _request_bytes(request: HTTPRequest, host: str, target: str) -> bytes:
    body = request.body or b""
    headers = httputil.HTTPHeaders(request.headers)
    headers.setdefault("Host", host)
    headers["Content-Length"] = str(len(body))
    headers["Accept-Encoding"] = "identity"  # streamed text must not wait in a decompressor
    lines = [f"{request.method} {target} HTTP/1.1"]
    lines += [f"{name}: {value}" for name, value in headers.get_all()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
