"""The listening side: what happens between a client's connect and its first request head.

- Out of descriptors (EMFILE, ENFILE) or kernel memory, `accept()` fails while the connection stays in
  the backlog, so Tornado's accept handler fails again on every loop pass: 100 % CPU and a traceback
  each time. Here the listening socket leaves the event loop for `ACCEPT_PAUSE` seconds instead, each
  failure counts in `accept_errors_total`, and one WARN per `WARN_INTERVAL` says how many there were.
- `MAX_CONNECTIONS`: past it a new connection is closed at once, before it costs more than its socket.
- `HEADER_TIMEOUT_SECS`: a new connection that has not sent its first request head by then is closed
  (a slow-head client no longer holds a descriptor for the whole IDLE_TIMEOUT_SECS).
"""

from __future__ import annotations

import errno
import logging
import math
import resource
import socket
import time
from collections.abc import Callable
from typing import Any, cast

from prometheus_client import Counter
from tornado import httputil
from tornado.http1connection import HTTP1ServerConnection
from tornado.httpserver import HTTPServer
from tornado.ioloop import IOLoop
from tornado.iostream import IOStream

log = logging.getLogger("gateway")

ACCEPT_PAUSE = 0.25  # seconds a listening socket sits out after accept() ran out of resources
WARN_INTERVAL = 5.0  # seconds between two warnings about the same condition
RESERVED_DESCRIPTORS = 64  # listening sockets, Redis, log files, the interpreter's own
_ACCEPT_BATCH = 128  # accepts per wake-up at most, as in Tornado: other work must not starve
_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


def default_max_connections() -> int:
    """(soft NOFILE - 64) // 2: a client connection may hold an upstream socket too, and 64 stay in reserve."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20  # Linux caps descriptors at fs.nr_open (1,048,576 by default) anyway
    return max(1, (soft - RESERVED_DESCRIPTORS) // 2)


class ThrottledWarning:
    """One WARN per WARN_INTERVAL for a condition that can repeat thousands of times a second, with its count."""

    def __init__(self, message: str, counter: Counter) -> None:
        self.message = message
        self.counter = counter
        self.count = 0
        self.last = -math.inf

    def __call__(self, detail: str) -> None:
        self.counter.inc()
        self.count += 1
        now = time.monotonic()
        if now - self.last >= WARN_INTERVAL:
            log.warning("%s: %s (count since the last such warning: %d)", self.message, detail, self.count)
            self.count = 0
            self.last = now


class Acceptor:
    """Tornado's `add_accept_handler`, except that running out of resources pauses accepting instead of spinning."""

    def __init__(self, sock: socket.socket, callback: Callable[[socket.socket, Any], None], on_error: ThrottledWarning) -> None:
        self.sock = sock
        self.callback = callback
        self.on_error = on_error
        self.loop = IOLoop.current()
        self.pause: object | None = None  # the timeout that resumes accepting
        self.listening = True
        self.loop.add_handler(sock, self._accept, IOLoop.READ)

    def _accept(self, fd: object, events: int) -> None:
        for _ in range(_ACCEPT_BATCH):
            if not self.listening:
                return
            try:
                connection, address = self.sock.accept()
            except BlockingIOError:
                return
            except ConnectionAbortedError:
                continue
            except OSError as error:
                if error.errno not in _OUT_OF_RESOURCES:
                    raise
                self.loop.remove_handler(self.sock)
                self.pause = self.loop.call_later(ACCEPT_PAUSE, self._resume)
                self.on_error(f"{error.strerror}; not accepting for {ACCEPT_PAUSE:g}s")
                return
            self.callback(connection, address)

    def _resume(self) -> None:
        self.pause = None
        self.loop.add_handler(self.sock, self._accept, IOLoop.READ)

    def remove(self) -> None:
        self.listening = False
        if self.pause is not None:
            self.loop.remove_timeout(self.pause)
        else:
            self.loop.remove_handler(self.sock)


class _FirstHead(httputil.HTTPMessageDelegate):
    """Passes a connection's first request through, stopping its head timer when the head is complete."""

    __slots__ = ("delegate", "server", "stream")

    def __init__(self, delegate: httputil.HTTPMessageDelegate, server: GatewayServer, stream: IOStream) -> None:
        self.delegate = delegate
        self.server = server
        self.stream = stream

    def headers_received(
        self, start_line: httputil.RequestStartLine | httputil.ResponseStartLine, headers: httputil.HTTPHeaders
    ) -> Any:
        self.server._stop_head_timer(self.stream)
        return self.delegate.headers_received(start_line, headers)

    def data_received(self, chunk: bytes) -> Any:
        return self.delegate.data_received(chunk)

    def finish(self) -> None:
        self.delegate.finish()

    def on_connection_close(self) -> None:
        self.delegate.on_connection_close()


class GatewayServer(HTTPServer):
    """HTTPServer with accept back-off, a connection cap and a deadline for a new connection's first head."""

    def initialize(  # type: ignore[override]
        self, *args: Any, max_connections: int, header_timeout: float, accept_errors: Counter, rejected: Counter, **kwargs: Any
    ) -> None:
        super().initialize(*args, **kwargs)
        self.max_connections = max_connections
        self.header_timeout = header_timeout
        self.open_connections = 0
        self._awaiting_head: dict[IOStream, object] = {}  # new connection -> the timeout that closes it
        self._accept_failed = ThrottledWarning("accept() failed", accept_errors)
        self._rejected = ThrottledWarning(f"MAX_CONNECTIONS={max_connections} reached", rejected)

    def add_sockets(self, sockets: Any) -> None:
        for sock in sockets:  # as TCPServer.add_sockets, whose `stop()` calls each `_handlers` entry to stop accepting
            self._sockets[sock.fileno()] = sock
            self._handlers[sock.fileno()] = Acceptor(sock, self._admit, self._accept_failed).remove

    def _admit(self, connection: socket.socket, address: Any) -> None:
        if self.open_connections >= self.max_connections:
            connection.close()
            self._rejected("closing new connections at once")
            return
        self._handle_connection(connection, address)

    def handle_stream(self, stream: IOStream, address: tuple) -> None:
        self.open_connections += 1
        self._awaiting_head[stream] = IOLoop.current().call_later(self.header_timeout, self._head_overdue, stream)
        super().handle_stream(stream, address)

    def _head_overdue(self, stream: IOStream) -> None:
        if self._awaiting_head.pop(stream, None) is not None:
            stream.close()

    def _stop_head_timer(self, stream: IOStream) -> None:
        timeout = self._awaiting_head.pop(stream, None)
        if timeout is not None:
            IOLoop.current().remove_timeout(timeout)

    def start_request(self, server_conn: object, request_conn: httputil.HTTPConnection) -> httputil.HTTPMessageDelegate:
        delegate = super().start_request(server_conn, request_conn)
        stream = cast(HTTP1ServerConnection, server_conn).stream
        if stream not in self._awaiting_head:  # a kept-alive connection: IDLE_TIMEOUT_SECS bounds its wait
            return delegate
        return _FirstHead(delegate, self, stream)

    def on_close(self, server_conn: object) -> None:
        self.open_connections -= 1
        self._stop_head_timer(cast(HTTP1ServerConnection, server_conn).stream)
        super().on_close(server_conn)
