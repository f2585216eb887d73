"""Resumable streams kept in this process: a bounded, numbered event log per stream that readers follow.

The upstream call writes into a stream's log (it is the relay's sink) and outlives the request that
started it; any number of readers replay the log from a Last-Event-ID and then follow it live. With no
reader for RESUME_GRACE_SECS the call is cancelled; an ended stream stays readable for RESUME_TTL_SECS.
Every stored event carries its `id: <n>` line, so a replay is byte-identical to the first delivery.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections import deque
from collections.abc import Awaitable, Callable
from itertools import islice
from typing import Protocol

from tornado.ioloop import IOLoop

from server.config import Settings
from server.metrics import Metrics

log = logging.getLogger("gateway.resume")

Cancel = Callable[[str, str], None]  # (error_type, message): ends the stream's upstream call


class StreamNotFoundError(Exception):
    """Unknown, past its TTL, or someone else's: all look the same to the asker."""


class StreamExpiredError(Exception):
    """The reader asked for events already dropped to keep the stream under RESUME_MAX_BYTES."""


def new_stream_id() -> str:
    """160 random bits, URL-safe."""
    return secrets.token_urlsafe(20)


def numbered(event_id: int, event: bytes) -> bytes:
    return b"id: %d\n" % event_id + event


class ResumableStream(Protocol):
    """What a reader needs of a stream, wherever its upstream call runs."""

    id: str

    async def read(self, after: int) -> tuple[list[bytes], int, bool]:
        """The events with id > `after`, waiting for at least one unless the stream has ended:
        (events, id of the last one, ended). StreamExpiredError when some were already dropped."""

    async def check(self, after: int) -> None:
        """StreamExpiredError when the events after `after` are no longer all kept."""

    async def attach(self, resume: bool) -> None: ...

    async def detach(self) -> None: ...

    async def cancel(self) -> None: ...


class OwnedStream:
    """A stream whose upstream call runs in this process: the relay's sink, its readers, its grace timer.

    As a sink it never blocks the relay on a reader: readers follow at their own pace."""

    started = True  # each reader's response has its own status and headers
    gone = False  # the log records everything, including why the stream ended

    def __init__(self, settings: Settings, metrics: Metrics, owner: str | None) -> None:
        self.settings = settings
        self.metrics = metrics
        self.id = new_stream_id()
        self.owner = owner
        self.readers = 0
        self.ended = False
        self.on_resume: Callable[[], None] = lambda: None
        self._grace_timer: object | None = None
        self._cancel: Cancel = lambda error_type, message: None
        self._task: asyncio.Future[None] | None = None

    def start(self, server_timing: str) -> None:
        """Nothing to send: readers start their own responses."""

    def run(self, relay: Awaitable[None], cancel: Cancel, finish: Callable[[], Awaitable[None]]) -> None:
        """Run the relay detached from any request; `finish` (the slot's release) runs at its real end."""
        self._cancel = cancel
        self._task = asyncio.ensure_future(self._run(relay, finish))

    async def _run(self, relay: Awaitable[None], finish: Callable[[], Awaitable[None]]) -> None:
        try:
            await relay
        except Exception:
            log.exception("resumable stream %s failed", self.id)
        finally:
            await self.closed()
            self._stop_grace()
            await finish()
            IOLoop.current().call_later(self.settings.resume_ttl, self.forget)

    async def closed(self) -> None:
        """The relay is over: make sure readers see the end."""
        self.ended = True

    def forget(self) -> None:
        """RESUME_TTL_SECS after the end."""

    async def attach(self, resume: bool) -> None:
        self.readers += 1
        self._stop_grace()
        if resume:
            self.on_resume()

    async def detach(self) -> None:
        self.readers -= 1
        if self.readers == 0 and not self.ended:
            self.metrics.streams_detached.inc()
            self._grace_timer = IOLoop.current().call_later(self.settings.resume_grace, self._grace_over)

    async def cancel(self) -> None:
        self.stop("cancelled", "stream cancelled by the client")

    def stop(self, error_type: str, message: str) -> None:
        self._cancel(error_type, message)

    def _stop_grace(self) -> None:
        if self._grace_timer is not None:
            IOLoop.current().remove_timeout(self._grace_timer)
            self._grace_timer = None
            self.metrics.streams_detached.dec()

    def _grace_over(self) -> None:
        self._grace_timer = None
        self.metrics.streams_detached.dec()
        self.stop("client_disconnected", "no reader for RESUME_GRACE_SECS")


class MemoryStream(OwnedStream):
    """The events in a deque bounded by RESUME_MAX_BYTES (oldest dropped); readers wait on a future."""

    def __init__(self, store: MemoryResumeStore, owner: str | None) -> None:
        super().__init__(store.settings, store.metrics, owner)
        self.store = store
        self.events: deque[bytes] = deque()
        self.first_id = 0  # id of events[0]
        self.next_id = 0
        self._size = 0
        self._changed: asyncio.Future[None] | None = None

    # -- the sink the relay writes to ----------------------------------------------------------------
    def write(self, events: list[bytes]) -> None:
        limit = self.settings.resume_max_bytes
        for event in events:
            data = numbered(self.next_id, event)
            self.next_id += 1
            self.events.append(data)
            self._size += len(data)
        while self._size > limit and len(self.events) > 1:
            self._size -= len(self.events.popleft())
            self.first_id += 1
        self._wake()

    def send(self, events: list[bytes]) -> None:
        self.write(events)

    def end(self, events: list[bytes]) -> None:
        self.write(events)
        self.ended = True
        self._wake()

    async def closed(self) -> None:
        self.ended = True
        self._wake()

    def forget(self) -> None:
        self.store.forget(self.id)

    # -- readers --------------------------------------------------------------------------------------
    async def read(self, after: int) -> tuple[list[bytes], int, bool]:
        while self.next_id <= after + 1 and not self.ended:
            if self._changed is None:
                self._changed = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._changed)
        await self.check(after)
        events = list(islice(self.events, after + 1 - self.first_id, None))
        return events, self.next_id - 1, self.ended

    async def check(self, after: int) -> None:
        if after + 1 < self.first_id:
            raise StreamExpiredError

    def _wake(self) -> None:
        if self._changed is not None:
            changed, self._changed = self._changed, None
            changed.set_result(None)


class MemoryResumeStore:
    """The streams of this process, by id."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self._streams: dict[str, MemoryStream] = {}

    async def create(self, owner: str | None) -> MemoryStream:
        stream = MemoryStream(self, owner)
        self._streams[stream.id] = stream
        return stream

    async def find(self, stream_id: str, owner: str | None) -> MemoryStream:
        stream = self._streams.get(stream_id)
        if stream is None or stream.owner != owner:
            raise StreamNotFoundError
        return stream

    def forget(self, stream_id: str) -> None:
        self._streams.pop(stream_id, None)

    async def close(self) -> None:
        """Nothing to release: the streams live in this process."""


class ResumeStore(Protocol):
    async def create(self, owner: str | None) -> OwnedStream: ...

    async def find(self, stream_id: str, owner: str | None) -> ResumableStream: ...

    async def close(self) -> None: ...
