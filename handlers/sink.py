"""Where a relay's encoded events go. `ClientSink` is an HTTP response held open as an event stream.

A sink takes whole events (`list[bytes]`, each one complete SSE event) so a sink that numbers events
(the resumable event log) can; the client sink joins them into one write. The client sink writes and
flushes with a write timeout (a client that stops reading for WRITE_TIMEOUT_SECS is gone; a healthy long
stream is never cut) and sends `: ping` heartbeats while idle.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Protocol

from tornado import gen
from tornado.ioloop import IOLoop
from tornado.iostream import StreamClosedError

from middleware.edge import EdgeMixin
from server.config import Settings
from server.sse import encode_comment
from server.upstream import UpstreamError

HEARTBEAT = encode_comment("ping")


class ClientGoneError(UpstreamError):
    """The client closed the connection or stopped reading; raised into the relay, it ends the call."""

    def __init__(self, message: str) -> None:
        super().__init__("client_disconnected", message)


class Sink(Protocol):
    started: bool  # status and headers are committed (for a log: always)
    gone: bool  # nobody will ever read what is sent now

    def start(self, server_timing: str) -> None: ...

    def write(self, events: list[bytes]) -> None: ...

    def send(self, events: list[bytes]) -> Awaitable[None] | None: ...

    def end(self, events: list[bytes]) -> None: ...


def server_timing(gateway_seconds: float, upstream_seconds: float | None = None) -> str:
    """`gateway;dur=…[, upstream;dur=…]`: where the time before the first byte went, for devtools."""
    timing = f"gateway;dur={gateway_seconds * 1000:.2f}"
    if upstream_seconds is not None:
        timing += f", upstream;dur={upstream_seconds * 1000:.2f}"
    return timing


class Heartbeat:
    """Calls `ping` whenever nothing was written for `interval` seconds; one timer, re-armed lazily."""

    __slots__ = ("_timer", "interval", "last", "ping")

    def __init__(self, interval: float, ping: Callable[[], None]) -> None:
        self.interval = interval
        self.ping = ping
        self.last = 0.0
        self._timer: object | None = None

    def touch(self) -> None:
        self.last = time.monotonic()

    def start(self) -> None:
        self.touch()
        self._arm(self.interval)

    def stop(self) -> None:
        if self._timer is not None:
            IOLoop.current().remove_timeout(self._timer)
            self._timer = None

    def _arm(self, delay: float) -> None:
        self._timer = IOLoop.current().call_later(delay, self._fire)

    def _fire(self) -> None:
        idle = time.monotonic() - self.last
        if idle >= self.interval:
            self.ping()  # may stop us (client gone)
            if self._timer is None:
                return
            idle = 0.0
        self._arm(self.interval - idle)


class ClientSink:
    """The response of `handler`; `on_gone` runs when a heartbeat finds the client gone."""

    __slots__ = ("gone", "handler", "head_pending", "heartbeat", "on_gone", "started", "write_timeout")

    def __init__(self, handler: EdgeMixin, settings: Settings, on_gone: Callable[[], None]) -> None:
        self.handler = handler
        self.write_timeout = settings.write_timeout
        self.heartbeat = Heartbeat(settings.heartbeat, self._ping)
        self.on_gone = on_gone
        self.started = False
        self.head_pending = False  # started, and the head not flushed yet
        self.gone = False

    def start(self, server_timing: str) -> None:
        handler = self.handler
        self.started = self.head_pending = True
        handler.set_header("Server-Timing", server_timing)
        handler.set_header("Content-Type", "text/event-stream; charset=utf-8")
        handler.set_header("Cache-Control", "no-cache")
        handler.set_header("X-Accel-Buffering", "no")
        stream = getattr(handler.request.connection, "stream", None)
        if stream is not None:
            stream.set_nodelay(True)  # small SSE writes go out now, not after Nagle's delay
        self.heartbeat.start()

    def write(self, events: list[bytes]) -> None:
        """Buffer without flushing: what came before a failure, the error event follows in `end`."""
        self.handler.write(events[0] if len(events) == 1 else b"".join(events))

    def send(self, events: list[bytes]) -> Awaitable[None] | None:
        """Write and flush: None when the bytes are already on the socket (the usual case, no timer needed),
        else an awaitable bounded by WRITE_TIMEOUT_SECS. ClientGoneError when the client left."""
        if self.gone:
            raise ClientGoneError("client disconnected")
        self.write(events)
        self.heartbeat.touch()
        try:
            flushed = self.handler.flush()
        except StreamClosedError:
            flushed = None
        if flushed is None or (flushed.done() and flushed.exception() is not None):
            self.close()
            raise ClientGoneError("client disconnected")
        if self.head_pending:
            self.head_pending = False
            self.handler.head_sent()
        return None if flushed.done() else self._await_flush(flushed)

    async def send_now(self, events: list[bytes]) -> None:
        pending = self.send(events)
        if pending is not None:
            await pending

    def end(self, events: list[bytes]) -> None:
        self.heartbeat.stop()
        self.handler.finish(b"".join(events))

    def close(self) -> None:
        """The client left: nothing more is written."""
        self.gone = True
        self.heartbeat.stop()

    async def _await_flush(self, flushed: Awaitable[None]) -> None:
        try:
            await gen.with_timeout(timedelta(seconds=self.write_timeout), flushed)
        except (StreamClosedError, gen.TimeoutError):
            self.close()
            raise ClientGoneError("client disconnected or stopped reading") from None

    def _ping(self) -> None:
        try:
            pending = self.send([HEARTBEAT])
        except ClientGoneError:
            self.on_gone()
            return
        if pending is not None:
            IOLoop.current().add_future(gen.convert_yielded(self._ping_done(pending)), lambda _: None)

    async def _ping_done(self, pending: Awaitable[None]) -> None:
        try:
            await pending
        except ClientGoneError:
            self.on_gone()
