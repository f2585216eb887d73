"""The load generator: raw asyncio protocols speaking just enough HTTP/1.1 to time SSE streams.

Why not an HTTP library: the machine has two cores and the load generator competes with what it measures,
so it does the least work that still checks the answer: it decodes the chunked body, notes when the
first non-empty `"content"` string arrives (time to first token, the same rule for the gateway's
`{"content": "...", "type": "content"}` events and for OpenAI `delta` chunks) and counts content events.
Connections are kept alive between sequential requests, as a real client library would.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from dataclasses import dataclass, field

# A non-empty JSON "content" string: the gateway's content events and OpenAI deltas, not `connected`/finish chunks.
CONTENT = re.compile(rb'"content": ?"(?!")')


@dataclass(frozen=True)
class Target:
    """Where a stream request goes and what it sends."""

    name: str
    port: int
    path: str
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()

    def request(self) -> bytes:
        lines = [f"POST {self.path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json", f"Content-Length: {len(self.body)}"]
        lines += [f"{name}: {value}" for name, value in self.headers]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + self.body


def gateway_target(port: int, name: str = "gateway") -> Target:
    return Target(name, port, "/chat", json.dumps({"prompt": "bench"}).encode())


def openai_target(name: str, port: int, path: str, model: str, token: str) -> Target:
    """An OpenAI-format streaming request: what the gateway itself sends upstream."""
    body = {"model": model, "messages": [{"role": "user", "content": "bench"}], "stream": True, "stream_options": {"include_usage": True}}
    return Target(name, port, path, json.dumps(body).encode(), (("Authorization", f"Bearer {token}"),))


@dataclass
class StreamResult:
    status: int = 0
    ttft: float | None = None  # seconds from sending the request to the first content token
    duration: float = 0.0
    events: int = 0  # non-empty content strings seen
    complete: bool = False  # the body ended cleanly (last chunk received)


class _Response:
    """Incremental HTTP/1.1 response reader: status, chunked body, content scanning."""

    def __init__(self, sent_at: float, keep_body: bool) -> None:
        self.sent_at = sent_at
        self.keep_body = keep_body
        self.result = StreamResult()
        self.raw = bytearray()
        self.body = bytearray()
        self.headers_done = False
        self.chunk_left = 0  # bytes of chunk data still to come (+2 for its CRLF)
        self.scanned = 0
        self.done = asyncio.get_running_loop().create_future()

    def feed(self, data: bytes) -> None:
        self.raw += data
        if not self.headers_done:
            end = self.raw.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.raw[:end]).decode("latin-1")
            self.result.status = int(head.split(" ", 2)[1])
            if "transfer-encoding: chunked" not in head.lower():
                raise ValueError(f"expected a chunked streaming response, got: {head[:200]!r}")
            del self.raw[: end + 4]
            self.headers_done = True
        self._decode()
        if self.result.ttft is None and CONTENT.search(self.body, max(0, self.scanned - 16)):
            self.result.ttft = time.perf_counter() - self.sent_at
        self.scanned = len(self.body)
        if not self.keep_body and self.result.ttft is not None:  # count whole events, then forget them
            cut = self.body.rfind(b"\n\n") + 2
            if cut > 1:
                self.result.events += len(CONTENT.findall(self.body, 0, cut))
                del self.body[:cut]
                self.scanned = len(self.body)

    def _decode(self) -> None:
        raw = self.raw
        position = 0
        while position < len(raw):
            if self.chunk_left:
                take = min(self.chunk_left, len(raw) - position)
                self.body += raw[position : position + take]
                position += take
                self.chunk_left -= take
                continue
            line_end = raw.find(b"\r\n", position)
            if line_end < 0:
                break
            line = raw[position:line_end]
            if not line:  # the CRLF after a chunk's data
                position = line_end + 2
                continue
            size = int(line.split(b";", 1)[0], 16)
            if size == 0:
                if raw.find(b"\r\n\r\n", line_end) < 0:
                    break
                self.finish(complete=True)
                position = len(raw)
                break
            self.chunk_left = size
            position = line_end + 2
        del raw[:position]

    def finish(self, complete: bool) -> None:
        if self.done.done():
            return
        result = self.result
        result.complete = complete
        result.duration = time.perf_counter() - self.sent_at
        if self.keep_body:
            result.events = len(CONTENT.findall(self.body))
        else:
            result.events += len(CONTENT.findall(self.body))
        self.done.set_result(result)


class Connection(asyncio.Protocol):
    """One keep-alive client connection; one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.response: _Response | None = None
        self.closed = asyncio.get_running_loop().create_future()

    @classmethod
    async def open(cls, port: int) -> Connection:
        _, protocol = await asyncio.get_running_loop().create_connection(cls, "127.0.0.1", port)
        return protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.get_extra_info("socket").setsockopt(6, 1, 1)  # TCP_NODELAY

    def data_received(self, data: bytes) -> None:
        if self.response is not None:
            try:
                self.response.feed(data)
            except ValueError as exc:
                if not self.response.done.done():
                    self.response.done.set_exception(exc)
                self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.response is not None:
            self.response.finish(complete=False)
        if not self.closed.done():
            self.closed.set_result(None)

    def start(self, target: Target, keep_body: bool = True) -> asyncio.Future[StreamResult]:
        """Send one request; the future resolves when its response ends (or the connection drops)."""
        assert self.transport is not None
        self.response = _Response(time.perf_counter(), keep_body)
        self.transport.write(target.request())
        return self.response.done

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    @property
    def usable(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()


async def stream_once(connection: Connection | None, target: Target) -> tuple[StreamResult, Connection]:
    """One stream on `connection` (a new one when None or closed); returns the result and the connection."""
    if connection is None or not connection.usable:
        connection = await Connection.open(target.port)
    result = await connection.start(target)
    return result, connection


async def sequential(target: Target, count: int) -> list[StreamResult]:
    connection: Connection | None = None
    results = []
    for _ in range(count):
        result, connection = await stream_once(connection, target)
        results.append(result)
    if connection is not None:
        connection.close()
    return results


@dataclass
class LoadResult:
    streams: int = 0
    failed: int = 0
    events: int = 0
    seconds: float = 0.0
    ttfts: list[float] = field(default_factory=list)

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0


async def closed_loop(target: Target, concurrency: int, seconds: float, expected_events: int) -> LoadResult:
    """`concurrency` workers run streams back to back for `seconds`; a stream short of its events counts as failed."""
    total = LoadResult()
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        connection: Connection | None = None
        while time.perf_counter() < deadline:
            result, connection = await stream_once(connection, target)
            if result.complete and result.status == 200 and result.events >= expected_events:
                total.streams += 1
                total.events += result.events
                if result.ttft is not None:
                    total.ttfts.append(result.ttft)
            else:
                total.failed += 1
        if connection is not None:
            connection.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    total.seconds = time.perf_counter() - started
    return total


@dataclass
class OpenStreams:
    """Streams held open (each on its own connection) until `close()`."""

    connections: list[Connection] = field(default_factory=list)
    responses: list[asyncio.Future[StreamResult]] = field(default_factory=list)
    first_tokens: list[float] = field(default_factory=list)

    def streaming(self) -> int:
        """Streams that are still open and have delivered at least one content token."""
        return sum(1 for c in self.connections if c.usable and c.response is not None and c.response.result.ttft is not None)

    def ended(self) -> int:
        return sum(1 for f in self.responses if f.done())

    async def close(self) -> None:
        for connection in self.connections:
            connection.close()
        await asyncio.gather(*(c.closed for c in self.connections), return_exceptions=True)


async def open_streams(target: Target, count: int, in_flight: int = 200) -> OpenStreams:
    """Open `count` streams, at most `in_flight` connecting at once (the listen backlog is finite)."""
    held = OpenStreams()
    gate = asyncio.Semaphore(in_flight)

    async def one() -> None:
        async with gate:
            connection = await Connection.open(target.port)
            held.connections.append(connection)
            held.responses.append(connection.start(target, keep_body=False))

    await asyncio.gather(*(one() for _ in range(count)))
    return held
