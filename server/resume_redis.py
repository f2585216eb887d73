"""Resumable streams in Redis, so a stream started on one worker or host resumes on any other.

The upstream call runs on the worker that started the stream (its `RedisStream`); every event goes into a
Redis Stream with the entry id `<n>-1` (the terminal marker is `<last>-2`), bounded by RESUME_MAX_BYTES with
XTRIM MINID. Readers on any worker replay with XREAD from their Last-Event-ID and block on it for live
events. Readers' comings and goings, resumes and DELETE reach the owning worker on a control channel
(one pattern subscription per worker). Every key expires: while running after STREAM_MAX_SECS plus the
grace and TTL, once ended after RESUME_TTL_SECS.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import deque
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import PubSub

from server.config import Settings
from server.metrics import Metrics
from server.resume import OwnedStream, StreamExpiredError, StreamNotFoundError, numbered

log = logging.getLogger("gateway.resume")

_BLOCK_MS = 1000  # a reader's XREAD wait; then it checks the stream still exists
_BATCH = 512


class _Keys:
    def __init__(self, prefix: str, stream_id: str) -> None:
        self.events = f"{prefix}resume:{stream_id}"
        self.meta = f"{prefix}resume:{stream_id}:meta"  # owner key id, first kept id
        self.control = f"{prefix}resume-ctl:{stream_id}"


async def _read(client: Redis, keys: _Keys, after: int) -> tuple[list[bytes], int, bool]:
    """What `ResumableStream.read` promises, from the Redis Stream."""
    while True:
        answer = await client.xread({keys.events: f"{after}-1" if after >= 0 else "0-0"}, count=_BATCH, block=_BLOCK_MS)
        if answer:
            break
        if not await client.exists(keys.meta):  # past its TTL while we waited
            return [], after, True
    events, last, ended = [], after, False
    for entry_id, fields in answer[0][1]:
        number, _, seq = entry_id.decode().partition("-")
        if seq == "2":
            ended = True
            break
        if int(number) != last + 1:
            raise StreamExpiredError
        last = int(number)
        events.append(fields[b"d"])
    return events, last, ended


async def _check(client: Redis, keys: _Keys, after: int) -> None:
    if after + 1 < int(await client.hget(keys.meta, "first") or 0):
        raise StreamExpiredError


class RedisStream(OwnedStream):
    """A stream owned here: one writer task appends each batch (a pipeline) in order."""

    def __init__(self, store: RedisResumeStore, owner: str | None) -> None:
        super().__init__(store.settings, store.metrics, owner)
        self.store = store
        self.keys = _Keys(store.prefix, self.id)
        self.next_id = 0
        self.first_id = 0
        self._sizes: deque[int] = deque()
        self._size = 0
        self._queue: asyncio.Queue[tuple[list[bytes], bool, asyncio.Future[None] | None]] = asyncio.Queue()
        self._writer = asyncio.ensure_future(self._write_loop())

    # -- the sink the relay writes to ----------------------------------------------------------------
    def write(self, events: list[bytes]) -> None:
        self._queue.put_nowait((events, False, None))

    def send(self, events: list[bytes]) -> asyncio.Future[None]:
        """Resolved once Redis has the events: Redis's pace is the upstream's back-pressure."""
        written = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((events, False, written))
        return written

    def end(self, events: list[bytes]) -> None:
        self._queue.put_nowait((events, True, None))

    async def closed(self) -> None:
        if not self.ended:
            self.end([])
        await self._writer

    async def _write_loop(self) -> None:
        while True:
            events, final, written = await self._queue.get()
            try:
                await self._append(events, final)
            except Exception as error:
                log.error("resume store unreachable, ending stream %s: %s", self.id, error)
                self.stop("internal_error", "the resumable stream store is unreachable")
                final = True
            if written is not None and not written.done():
                written.set_result(None)
            if final:
                self.ended = True
                return

    async def _append(self, events: list[bytes], final: bool) -> None:
        keys = self.keys
        pipe = self.store.client.pipeline(transaction=True)
        for event in events:
            data = numbered(self.next_id, event)
            pipe.xadd(keys.events, {"d": data}, id=f"{self.next_id}-1")
            self._sizes.append(len(data))
            self._size += len(data)
            self.next_id += 1
        while self._size > self.settings.resume_max_bytes and len(self._sizes) > 1:
            self._size -= self._sizes.popleft()
            self.first_id += 1
        if self.first_id:
            pipe.xtrim(keys.events, minid=f"{self.first_id}-0")
            pipe.hset(keys.meta, "first", self.first_id)
        if final:
            pipe.xadd(keys.events, {"d": b""}, id=f"{max(self.next_id - 1, 0)}-2")
        ttl = self.settings.resume_ttl if final else self.store.running_ttl
        pipe.pexpire(keys.events, math.ceil(ttl * 1000))
        pipe.pexpire(keys.meta, math.ceil(ttl * 1000))
        await pipe.execute()

    def forget(self) -> None:
        self.store.owned.pop(self.id, None)

    # -- readers (through Redis like everyone's) ------------------------------------------------------
    async def read(self, after: int) -> tuple[list[bytes], int, bool]:
        return await _read(self.store.client, self.keys, after)

    async def check(self, after: int) -> None:
        await _check(self.store.client, self.keys, after)


class RemoteStream:
    """A stream owned by another worker: read from Redis, control through its channel."""

    def __init__(self, store: RedisResumeStore, stream_id: str) -> None:
        self.store = store
        self.id = stream_id
        self.keys = _Keys(store.prefix, stream_id)

    async def read(self, after: int) -> tuple[list[bytes], int, bool]:
        return await _read(self.store.client, self.keys, after)

    async def check(self, after: int) -> None:
        await _check(self.store.client, self.keys, after)

    async def attach(self, resume: bool) -> None:
        await self.store.client.publish(self.keys.control, "resume" if resume else "attach")

    async def detach(self) -> None:
        await self.store.client.publish(self.keys.control, "detach")

    async def cancel(self) -> None:
        await self.store.client.publish(self.keys.control, "cancel")


class RedisResumeStore:
    def __init__(self, client: Redis, settings: Settings, metrics: Metrics, prefix: str = "tas:") -> None:
        self.client = client
        self.settings = settings
        self.metrics = metrics
        self.prefix = prefix
        self.running_ttl = settings.stream_max + settings.resume_grace + settings.resume_ttl + 60
        self.owned: dict[str, RedisStream] = {}
        self._pubsub: PubSub | None = None
        self._listener: asyncio.Future[None] | None = None

    @classmethod
    def from_url(cls, url: str, settings: Settings, metrics: Metrics) -> RedisResumeStore:
        """No socket timeout: readers block in XREAD (for _BLOCK_MS at a time)."""
        return cls(Redis.from_url(url, socket_connect_timeout=1.0), settings, metrics)

    async def create(self, owner: str | None) -> RedisStream:
        await self._listen()
        stream = RedisStream(self, owner)
        await self.client.hset(stream.keys.meta, mapping={"owner": owner or "", "first": 0})
        await self.client.pexpire(stream.keys.meta, math.ceil(self.running_ttl * 1000))
        self.owned[stream.id] = stream
        return stream

    async def find(self, stream_id: str, owner: str | None) -> RedisStream | RemoteStream:
        stored = await self.client.hget(_Keys(self.prefix, stream_id).meta, "owner")
        if stored is None or stored.decode() != (owner or ""):
            raise StreamNotFoundError
        return self.owned.get(stream_id) or RemoteStream(self, stream_id)

    async def _listen(self) -> None:
        if self._pubsub is None:
            self._pubsub = self.client.pubsub(ignore_subscribe_messages=True)
            await self._pubsub.psubscribe(f"{self.prefix}resume-ctl:*")
            self._listener = asyncio.ensure_future(self._dispatch(self._pubsub))

    async def _dispatch(self, pubsub: PubSub) -> None:
        """Control messages for the streams this worker owns; others' are ignored."""
        async for message in pubsub.listen():
            stream = self.owned.get(message["channel"].decode().rpartition(":")[2])
            if stream is not None:
                await _ACTIONS[message["data"]](stream)

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
        if self._pubsub is not None:
            await self._pubsub.aclose()
        await self.client.aclose()


_ACTIONS: dict[bytes, Any] = {
    b"attach": lambda stream: stream.attach(False),
    b"resume": lambda stream: stream.attach(True),
    b"detach": lambda stream: stream.detach(),
    b"cancel": lambda stream: stream.cancel(),
}
