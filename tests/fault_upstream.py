"""A fault-injecting OpenRouter-compatible upstream for tests: real HTTP on a loopback port.

Each request takes the next `Scenario` from `FaultUpstream.scenarios` (the last one repeats), so a test
can script "503, 503, then a good stream" for retries. It records every request it received and
whether (and when) the gateway closed each connection, so tests can assert cancellation.
`raw_upstream` is for what Tornado would refuse to send: broken HTTP, resets, TLS a client cannot trust.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from tornado import web
from tornado.httpserver import HTTPServer
from tornado.iostream import StreamClosedError
from tornado.netutil import bind_sockets


@dataclass
class Scenario:
    pieces: list[str] = field(default_factory=lambda: ["Hello", ", ", "world", "!"])
    status: int = 200
    error_body: Any = None  # JSON body for non-2xx answers (default: OpenRouter's error shape)
    headers: dict[str, str] = field(default_factory=dict)
    newline: str = "\n"  # "\n", "\r\n" or "\r"
    byte_by_byte: bool = False  # flush every byte on its own
    delay: float = 0.0  # seconds between pieces
    headers_delay: float = 0.0  # seconds before sending headers
    hang_before_headers: bool = False
    hang_after: int | None = None  # stall (send nothing, keep open) after this many pieces
    cut_after: int | None = None  # close the socket after this many pieces
    comments_forever: float | None = None  # only ": OPENROUTER PROCESSING" every N seconds, no data
    raw_lines: list[str] | None = None  # instead of pieces: these data payloads verbatim
    usage: dict[str, int] | None = field(default_factory=lambda: {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7})
    finish_reason: str = "stop"
    send_done: bool = True
    hang_after_done: bool = False  # keep the body open after `data: [DONE]`
    endless_bytes: int = 0  # instead of any answer (any status, any mode): endless_head, blocks (`delay` apart) up to this many bytes, hang
    endless_head: bytes = b"data: "
    endless_block: bytes = b"x" * 65536  # the default makes one line without a newline
    json_body: Any = None  # non-streaming answer body (stream: false)
    json_piece_bytes: int = 0  # send that body in pieces of this many bytes, `delay` apart (`hang_after` pieces)
    raw_body: str | None = None  # instead of error_body / json_body: this body verbatim (may be invalid JSON)


ECHO_AUTHORIZATION = "{authorization}"  # in raw_lines, raw_body or error_body: replaced by the Authorization header received


def chunk_json(content: str | None, finish_reason: str | None = None, **extra: Any) -> str:
    choice: dict[str, Any] = {"index": 0, "delta": {"role": "assistant", "content": content}, "finish_reason": finish_reason}
    return json.dumps(
        {"id": "gen-test", "object": "chat.completion.chunk", "model": "test/model", "created": 1, "choices": [choice], **extra},
        ensure_ascii=False,
    )


class FaultUpstream:
    def __init__(self) -> None:
        self.scenarios: list[Scenario] = [Scenario()]
        self.requests: list[dict[str, Any]] = []
        self.closed: list[float] = []  # monotonic times at which the gateway closed a connection mid-answer
        self.endless_sent = 0  # bytes of endless bodies written so far
        # GET /models: the body (None: 404), its status, a delay before answering, and the requests seen
        self.catalogue: Any = None
        self.catalogue_status = 200
        self.catalogue_delay = 0.0
        self.catalogue_requests: list[dict[str, str]] = []
        self.server: HTTPServer | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/v1"

    def next_scenario(self) -> Scenario:
        return self.scenarios.pop(0) if len(self.scenarios) > 1 else self.scenarios[0]

    def start(self) -> FaultUpstream:
        sockets = bind_sockets(0, "127.0.0.1")
        self.port = sockets[0].getsockname()[1]
        self.server = HTTPServer(
            web.Application(
                [(r"/api/v1/chat/completions", _Handler, {"upstream": self}), (r"/api/v1/models", _ModelsHandler, {"upstream": self})],
                log_function=lambda h: None,
            )
        )
        self.server.add_sockets(sockets)
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()

    async def wait_closed(self, count: int = 1, timeout: float = 3.0) -> bool:
        deadline = time.monotonic() + timeout
        while len(self.closed) < count and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return len(self.closed) >= count


class _Handler(web.RequestHandler):
    def initialize(self, upstream: FaultUpstream) -> None:
        self.upstream = upstream
        self.gone = False

    def on_connection_close(self) -> None:
        if not self.gone:
            self.gone = True
            self.upstream.closed.append(time.monotonic())

    async def post(self) -> None:
        upstream = self.upstream
        body = json.loads(self.request.body)
        upstream.requests.append({"headers": dict(self.request.headers), "body": body})
        scenario = upstream.next_scenario()
        if scenario.hang_before_headers:
            await self._hang()
            return
        if scenario.headers_delay:
            await asyncio.sleep(scenario.headers_delay)
        for name, value in scenario.headers.items():
            self.set_header(name, value)
        streaming = scenario.status == 200 and body.get("stream")
        self.set_status(scenario.status)
        self.set_header("Content-Type", "text/event-stream" if streaming else "application/json")
        self.request.connection.stream.set_nodelay(True)  # type: ignore[attr-defined]
        if scenario.endless_bytes:
            await self._endless(scenario)
            return
        if scenario.status != 200:
            error = (
                scenario.error_body
                if scenario.error_body is not None
                else {"error": {"message": f"fault {scenario.status}", "code": scenario.status}}
            )
            self.finish(self._echo(scenario.raw_body if scenario.raw_body is not None else json.dumps(error)))
            return
        try:
            await (self._stream(scenario) if streaming else self._json(scenario))
        except StreamClosedError:
            self.on_connection_close()

    def _echo(self, text: str) -> str:
        """A careless provider quoting the credentials it was sent."""
        return text.replace(ECHO_AUTHORIZATION, self.request.headers.get("Authorization", ""))

    async def _send(self, text: str, scenario: Scenario) -> None:
        data = self._echo(text).replace("\n", scenario.newline).encode("utf-8")
        if scenario.byte_by_byte:
            for index in range(len(data)):
                self.write(data[index : index + 1])
                await self.flush()
                await asyncio.sleep(0)
        else:
            self.write(data)
            await self.flush()

    async def _hang(self) -> None:
        while not self.gone:
            await asyncio.sleep(0.01)

    async def _endless(self, scenario: Scenario) -> None:
        self.write(scenario.endless_head)
        sent = 0
        try:
            while sent < scenario.endless_bytes and not self.gone:
                if scenario.delay:
                    await asyncio.sleep(scenario.delay)
                self.write(scenario.endless_block)
                await self.flush()
                sent += len(scenario.endless_block)
                self.upstream.endless_sent += len(scenario.endless_block)
        except StreamClosedError:
            self.on_connection_close()
        await self._hang()

    async def _json(self, scenario: Scenario) -> None:
        text = self._echo(scenario.raw_body if scenario.raw_body is not None else json.dumps(scenario.json_body)).encode("utf-8")
        size = scenario.json_piece_bytes or len(text)
        for index, start in enumerate(range(0, len(text), size)):
            if scenario.hang_after is not None and index == scenario.hang_after:
                await self._hang()
                return
            if scenario.delay:
                await asyncio.sleep(scenario.delay)
            self.write(text[start : start + size])
            await self.flush()
        self.finish()

    async def _stream(self, scenario: Scenario) -> None:
        await self._send(": OPENROUTER PROCESSING\n\n", scenario)
        if scenario.comments_forever is not None:
            while not self.gone:
                await asyncio.sleep(scenario.comments_forever)
                await self._send(": OPENROUTER PROCESSING\n\n", scenario)
            return
        lines = scenario.raw_lines if scenario.raw_lines is not None else [chunk_json(piece) for piece in scenario.pieces]
        for index, line in enumerate(lines):
            if scenario.cut_after is not None and index == scenario.cut_after:
                self.request.connection.stream.close()  # type: ignore[attr-defined]
                return
            if scenario.hang_after is not None and index == scenario.hang_after:
                await self._hang()
                return
            if scenario.delay:
                await asyncio.sleep(scenario.delay)
            await self._send(f"data: {line}\n\n", scenario)
        if scenario.raw_lines is None:
            await self._send(f"data: {chunk_json('', scenario.finish_reason)}\n\n", scenario)
            if scenario.usage is not None:
                await self._send(f"data: {json.dumps({'id': 'gen-test', 'choices': [], 'usage': scenario.usage})}\n\n", scenario)
        if scenario.send_done:
            await self._send("data: [DONE]\n\n", scenario)
        if scenario.hang_after_done:
            await self._hang()
            return
        self.finish()


Answer = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def raw_upstream(answer: Answer, tls: ssl.SSLContext | None = None) -> AsyncIterator[tuple[str, list[int]]]:
    """A hand-written upstream on a free loopback port: `answer` speaks for each connection. Yields its base URL
    and the connections it accepted so far."""
    connections: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        try:
            await answer(reader, writer)
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=tls)
    try:
        yield f"{'https' if tls else 'http'}://127.0.0.1:{server.sockets[0].getsockname()[1]}", connections
    finally:
        server.close()


class _ModelsHandler(web.RequestHandler):
    def initialize(self, upstream: FaultUpstream) -> None:
        self.upstream = upstream

    async def get(self) -> None:
        upstream = self.upstream
        upstream.catalogue_requests.append(dict(self.request.headers))
        if upstream.catalogue_delay:
            await asyncio.sleep(upstream.catalogue_delay)
        if upstream.catalogue is None:
            raise web.HTTPError(404)
        self.set_status(upstream.catalogue_status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(upstream.catalogue))
