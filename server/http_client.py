"""`PooledAsyncHTTPClient`: Tornado's `AsyncHTTPClient` interface with keep-alive and a hard abort.

Why not the stock clients: `SimpleAsyncHTTPClient` opens a new TCP (and TLS) connection per request,
which adds a handshake to every first token, and it has no way to cut a request short: raising from
`streaming_callback` only acts when the next chunk arrives, and `future.cancel()` / `client.close()`
leave the upstream socket open. A gateway must close the upstream the moment its client leaves.

So this client is an asyncio `Protocol` on the loop's own transports that keeps idle connections per
origin for reuse, and `abort(request)` closes that request's socket at once — the upstream sees the
close whether we are connecting, waiting for headers or mid-body. The HTTP/1.1 framing is llhttp's (the
parser of Node.js, through httptools), strict: a response it cannot frame unambiguously fails with
`ProtocolError` and its connection is never reused. Each network read goes through the parser straight
to `streaming_callback` (one call per read, the body pieces of that read joined, not one per HTTP
chunk), with no stream buffer, read future or coroutine hop in between: that is what a stream costs in
memory and latency, measured in bench/ (Tornado's `IOStream` read path cost ~2 KB and a loop iteration
per read). Tornado's own chunked reader (6.6) also coalesces small chunks and drops what it holds when
the peer closes; a provider that sends text and then dies must not lose that text.

`streaming_callback` may return an awaitable: reading pauses until it is done, which gives
back-pressure from a slow client.
"""

from __future__ import annotations

import asyncio
import contextvars
import socket
import ssl
import time
from collections import defaultdict, deque
from collections.abc import Callable
from io import BytesIO
from typing import Any
from urllib.parse import urlsplit

import httptools
from tornado import httputil
from tornado.concurrent import Future
from tornado.httpclient import AsyncHTTPClient, HTTPRequest, HTTPResponse
from tornado.simple_httpclient import HTTPTimeoutError

Origin = tuple[str, int, ssl.SSLContext | None]  # host, port, TLS context (None: plain TCP)

_IDLE_SECONDS = 30.0  # drop pooled connections idle longer than this; providers close theirs after ~60 s
_MAX_IDLE_PER_ORIGIN = 256
_MAX_HEADER_BYTES = 64 * 1024

# Tornado's defaults this client changes: redirects are not followed and bodies not decompressed (both
# refused when asked for), and a stream has no whole-request deadline unless the request sets one
_CLIENT_DEFAULTS: dict[str, Any] = {"follow_redirects": False, "decompress_response": False, "request_timeout": None}

# HTTPRequest options this client does not implement, with the one value (besides unset) it accepts
_UNSUPPORTED: tuple[tuple[str, Any], ...] = (
    ("follow_redirects", False),
    ("decompress_response", False),
    ("expect_100_continue", False),
    ("allow_ipv6", True),
    ("proxy_host", None),
    ("proxy_port", None),
    ("proxy_username", None),
    ("proxy_password", ""),
    ("proxy_auth_mode", None),
    ("auth_username", None),
    ("auth_password", None),
    ("auth_mode", None),
    ("client_cert", None),
    ("client_key", None),
    ("ssl_options", None),
    ("network_interface", None),
    ("user_agent", None),
    ("body_producer", None),
    ("prepare_curl_callback", None),
)


class RequestAbortedError(Exception):
    """The request was aborted by `abort()` (client gone, timeout, shutdown)."""


class ProtocolError(Exception):
    """The upstream's answer is not valid HTTP/1.1, or not framed unambiguously."""


class ConnectionClosedError(Exception):
    """The upstream closed the connection before the response was complete."""


class _Surplus(Exception):
    """Bytes after the response was complete: stops the parser; the connection cannot be reused."""


class StreamingRequest(HTTPRequest):
    """An `HTTPRequest` that may also take `on_headers(status, headers)`: the parsed head, once, instead of
    `header_callback`'s line-by-line replay (which the caller would only parse again)."""

    def __init__(self, url: str, on_headers: Callable[[int, httputil.HTTPHeaders], None] | None = None, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self.on_headers = on_headers


def _unsupported_options(request: HTTPRequest) -> list[str]:
    """`name=value` of each option set on `request` (defaults applied) that this client would ignore."""
    found = []
    for name, accepted in _UNSUPPORTED:
        value = getattr(request, name)
        if value is not None and value != accepted:
            found.append(f"{name}={value!r}")
    return found


def _check_framing(headers: httputil.HTTPHeaders) -> None:
    """Refuse what llhttp accepts but we cannot relay as sent: a coding applied on top of chunked."""
    codings = headers.get_list("Transfer-Encoding")
    if codings and [coding.strip().lower() for coding in codings] != ["chunked"]:
        raise ProtocolError(f"unsupported Transfer-Encoding: {', '.join(codings)}")


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

    def pause_reading(self, paused: bool) -> None:
        if self.transport is not None and not self.closed:
            (self.transport.pause_reading if paused else self.transport.resume_reading)()

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
    """One response being received on a `_Connection`: each read fed to the parser, whose callbacks
    (the `on_*` methods) only record; the read's body then goes to the request in one piece.

    `finished` resolves to whether the connection may be reused, once the body is complete and the
    consumer of its last piece is done; or fails (`ConnectionClosedError`, `ProtocolError`, the
    transport's own error, or what the consumer raised)."""

    __slots__ = (
        "_complete",
        "_consumer",
        "_ended",
        "_error",
        "_head_bytes",
        "_head_done",
        "_interim",
        "_parser",
        "_pieces",
        "_until_close",
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
        self.started = False  # some of the answer has arrived
        self.keep_alive = False
        self.finished: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._parser: httptools.HttpResponseParser | None = httptools.HttpResponseParser(self)
        self._pieces: list[bytes] = []  # body bytes of the read being parsed
        self._head_bytes = 0  # bytes read before the final head was complete
        self._head_done = False  # the final (non-1xx) head is parsed
        self._interim = False  # parsing a 1xx head
        self._until_close = False  # no length given: the body ends when the connection does
        self._complete = False  # the parser has seen the whole response
        self._consumer: asyncio.Future[Any] | None = None  # the streaming_callback's pending awaitable
        self._ended = False
        self._error: BaseException | None = None

    # -- from the connection ----------------------------------------------------------------------
    def feed(self, data: bytes) -> None:
        if self._ended or self._error is not None or self._parser is None:
            self.keep_alive = False  # bytes after the response: the connection cannot be reused
            return
        self.started = True
        try:
            self._parse(self._parser, data)
            if self._pieces:
                pieces, self._pieces = self._pieces, []
                self._deliver(pieces[0] if len(pieces) == 1 else b"".join(pieces))
        except Exception as exc:
            self._fail(exc)
            return
        if self._complete:
            self._end()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._ended:
            return  # the response was whole; only its last consumer is still busy
        if exc is None and self._until_close:
            self._end()  # that is how this body ends
        else:
            self._fail(exc if exc is not None else ConnectionClosedError("upstream closed the connection"))

    def _parse(self, parser: httptools.HttpResponseParser, data: bytes) -> None:
        try:
            parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if not self._complete:
                cause = exc.__context__ if isinstance(exc, httptools.HttpParserCallbackError) else None
                raise (cause or ProtocolError(f"invalid HTTP response: {exc}")) from None
            self.keep_alive = False  # bytes after the response: the connection cannot be reused
        if not self._head_done:
            self._head_bytes += len(data)
            if self._head_bytes > _MAX_HEADER_BYTES:
                raise ProtocolError("response head too long")

    # -- parser callbacks -------------------------------------------------------------------------
    def on_message_begin(self) -> None:
        if self._complete:
            raise _Surplus  # a second response nobody asked for

    def on_status(self, reason: bytes) -> None:
        self.reason = reason.decode("latin-1")

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._head_done:  # after the head they are chunked trailer fields, not kept
            self.headers.add(name.decode("latin-1"), value.decode("latin-1"))

    def on_headers_complete(self) -> None:
        assert self._parser is not None
        code = self._parser.get_status_code()
        if code == 101:
            raise ProtocolError("upstream switched protocols")
        if 100 <= code < 200:
            self._interim = True  # the real head follows
            return
        _check_framing(self.headers)
        self.code, self.version = code, f"HTTP/{self._parser.get_http_version()}"
        self.keep_alive = self._parser.should_keep_alive()
        self._until_close = "Content-Length" not in self.headers and "Transfer-Encoding" not in self.headers
        self._head_done = True
        self._report_head()
        self._complete = self.request.method == "HEAD"  # whatever follows a HEAD answer's head is not its body

    def on_body(self, body: bytes) -> None:
        if self._complete:
            raise _Surplus
        self._pieces.append(body)

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim, self.reason, self.headers = False, "", httputil.HTTPHeaders()
        else:
            self._complete = True

    def _report_head(self) -> None:
        on_headers = getattr(self.request, "on_headers", None)
        if on_headers is not None:
            on_headers(self.code, self.headers)
        elif self.request.header_callback is not None:
            self.request.header_callback(f"{self.version} {self.code} {self.reason}\r\n")
            for name, value in self.headers.get_all():
                self.request.header_callback(f"{name}: {value}\r\n")
            self.request.header_callback("\r\n")

    # -- body -------------------------------------------------------------------------------------
    def _deliver(self, payload: bytes) -> None:
        """One network read's body bytes to the request; an awaitable it returns pauses reading until done."""
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
        self.connection.pause_reading(True)
        consumer.add_done_callback(self._consumed)

    def _consumed(self, consumer: asyncio.Future[Any]) -> None:
        paused, self._consumer = self._consumer is not None, None
        error = consumer.exception() if not consumer.cancelled() else asyncio.CancelledError()
        if error is not None:
            self._fail(error)
            return
        if paused:  # an awaitable done at once (a flush that went straight out) never paused reading
            self.connection.pause_reading(False)
        self._settle()

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
        if self._consumer is not None or self.finished.done() or not (self._ended or self._error is not None):
            return
        self._parser = None  # it refers back to this exchange: no cycle left for the collector
        self.connection.exchange = None
        if self._error is not None:
            self.finished.set_exception(self._error)
        else:
            self.finished.set_result(self.keep_alive)


class PooledAsyncHTTPClient(AsyncHTTPClient):
    """An `AsyncHTTPClient` with per-origin keep-alive pooling and `abort(request)`.

    It honours `connect_timeout`, `request_timeout` (none unless set), `validate_cert` and `ca_certs`, and
    refuses (`NotImplementedError`) a request that sets an option it does not implement."""

    def initialize(self, defaults: dict[str, Any] | None = None) -> None:  # type: ignore[override]
        super().initialize({**_CLIENT_DEFAULTS, **(defaults or {})})
        self._idle: dict[Origin, deque[tuple[_Connection, float]]] = defaultdict(deque)
        # per request in flight: its connection, or the connect attempt while there is none yet
        self._active: dict[int, _Connection | asyncio.Future[Any] | None] = {}
        self._stopped: dict[int, Exception] = {}  # requests cut short, with the error their fetch raises
        self._tasks: set[asyncio.Future[None]] = set()
        self._fetching: HTTPRequest | None = None  # the caller's request while `fetch()` hands Tornado's proxy of it on
        # one context per verification setting (making one reads the CA store); this one now, as SSL_CERT_FILE is
        self._tls: dict[tuple[bool, str | None], ssl.SSLContext] = {(True, None): ssl.create_default_context()}

    # -- public ---------------------------------------------------------------------------------
    def abort(self, request: HTTPRequest) -> None:
        """Close `request`'s upstream connection now (or stop connecting); its fetch fails with
        `RequestAbortedError`."""
        self._stop(id(request), RequestAbortedError("request aborted"))

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
    def fetch(self, request: str | HTTPRequest, raise_error: bool = True, **kwargs: Any) -> Future[HTTPResponse]:
        """Tornado's `fetch`, noting the request object the caller holds: `abort()` is given that one, while
        `fetch_impl` is handed Tornado's proxy of it."""
        if not isinstance(request, HTTPRequest):
            request, kwargs = HTTPRequest(url=request, **kwargs), {}
        self._fetching = request
        try:
            return super().fetch(request, raise_error, **kwargs)
        finally:
            self._fetching = None

    def fetch_impl(self, request: HTTPRequest, callback: Callable[[HTTPResponse], None]) -> None:
        unsupported = _unsupported_options(request)
        if unsupported:
            raise NotImplementedError(f"PooledAsyncHTTPClient does not implement {', '.join(unsupported)}")
        key = id(self._fetching if self._fetching is not None else request)
        self._active[key] = None
        task = asyncio.ensure_future(self._fetch(request, key, callback))
        self._tasks.add(task)  # the loop keeps only weak references to tasks
        task.add_done_callback(self._tasks.discard)

    async def _fetch(self, request: HTTPRequest, key: int, callback: Callable[[HTTPResponse], None]) -> None:
        start = time.monotonic()
        deadline = None
        if request.request_timeout:
            deadline = asyncio.get_running_loop().call_later(request.request_timeout, self._expire, key)
        try:
            exchange = await self._exchange(request, key)
        except (Exception, asyncio.CancelledError) as exc:  # every failure becomes a 599 HTTPResponse, as in Tornado
            error = self._stopped.get(key)
            if error is None:
                error = RequestAbortedError("request aborted") if isinstance(exc, asyncio.CancelledError) else exc
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
            if deadline is not None:
                deadline.cancel()
            self._active.pop(key, None)
            self._stopped.pop(key, None)
        callback(response)

    def _stop(self, key: int, error: Exception) -> None:
        """End the request `key` now with `error`: close its connection or cancel its connect attempt."""
        if key in self._active and key not in self._stopped:
            self._stopped[key] = error
            target = self._active[key]
            if isinstance(target, _Connection):
                target.close()
            elif target is not None:
                target.cancel()

    def _expire(self, key: int) -> None:
        self._stop(key, HTTPTimeoutError("Timeout during request"))  # Tornado's own clients' 599

    async def _exchange(self, request: HTTPRequest, key: int) -> _Exchange:
        parts = urlsplit(request.url)
        tls = self._tls_context(request) if parts.scheme == "https" else None
        origin: Origin = (parts.hostname or "", parts.port or (443 if tls else 80), tls)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        while True:
            connection, reused = await self._checkout(origin, request.connect_timeout, key)
            if key in self._stopped:
                connection.close()
                raise self._stopped[key]
            self._active[key] = connection
            exchange = connection.send(request, _request_bytes(request, parts.netloc, target))  # not held for the whole stream
            try:
                keep_alive = await exchange.finished
            except (ConnectionClosedError, ConnectionError):
                if reused and not exchange.started and key not in self._stopped:
                    continue  # the pooled connection had gone stale; try a fresh one
                raise
            if key in self._stopped:
                raise self._stopped[key]
            self._checkin(origin, connection, keep_alive)
            return exchange

    def _tls_context(self, request: HTTPRequest) -> ssl.SSLContext:
        verify, ca_certs = bool(request.validate_cert), request.ca_certs
        context = self._tls.get((verify, ca_certs))
        if context is None:
            context = ssl.create_default_context(cafile=ca_certs)
            if not verify:
                context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
            self._tls[verify, ca_certs] = context
        return context

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
        host, port, tls = origin
        connect = asyncio.get_running_loop().create_connection(_Connection, host, port, ssl=tls)
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
