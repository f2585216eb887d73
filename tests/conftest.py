"""Shared fixtures: a fault upstream and a gateway, both on real loopback sockets in the test's IOLoop.

Tests are `async def` functions run by pytest-tornasync on its `io_loop` fixture.
"""

from __future__ import annotations

import asyncio
import inspect
import io
import json
import logging
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.lifecycle import make_server  # noqa: E402
from server.config import Settings, load_settings  # noqa: E402
from server.logs import configure_logging  # noqa: E402
from server.state import Gateway  # noqa: E402
from tests.fault_upstream import FaultUpstream  # noqa: E402

pytest_plugins = ["tests.services"]  # redis-server / nginx / supervisord / run.py subprocess fixtures


@pytest.fixture
def upstream(io_loop: Any) -> Iterator[FaultUpstream]:
    fault = FaultUpstream().start()
    yield fault
    fault.stop()


@pytest.fixture
def capture_logs() -> Iterator[Callable[..., io.StringIO]]:
    """`capture_logs(log_format="json", level="DEBUG", ...)` -> the StringIO every log line goes to."""
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level

    def configure(
        log_format: str = "json", level: str = "DEBUG", log_color: str = "auto", no_color: bool = False, stream: io.StringIO | None = None
    ) -> io.StringIO:
        stream = stream if stream is not None else io.StringIO()
        configure_logging(log_format, log_color, level, stream, no_color=no_color)
        return stream

    yield configure
    for handler in root.handlers[:]:
        root.removeHandler(handler)
    for handler in saved_handlers:
        root.addHandler(handler)
    root.setLevel(saved_level)


def parse(stream: io.StringIO) -> list[dict[str, Any]]:
    """Every line must be exactly one JSON object; `splitlines()` splits on every line separator Python knows."""
    return [json.loads(line) for line in stream.getvalue().splitlines()]


@dataclass
class RunningGateway:
    settings: Settings
    gateway: Gateway
    server: HTTPServer
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


TEST_ENV = {"OPENROUTER_API_KEY": "sk-test-secret-key", "RATE_LIMIT": "1000"}  # every test gateway's settings, before its own


@pytest.fixture
def start_gateway(io_loop: Any, upstream: FaultUpstream) -> Iterator[Callable[..., RunningGateway]]:
    """`start_gateway(RATE_LIMIT="2", ...)`: a gateway on a free port, pointed at the fault upstream."""
    started: list[RunningGateway] = []

    def start(**env: str) -> RunningGateway:
        settings = load_settings({**TEST_ENV, "OPENROUTER_BASE_URL": upstream.base_url, **env})
        gateway = Gateway.create(settings)
        server = make_server(settings, gateway)
        sockets = bind_sockets(0, "127.0.0.1")
        server.add_sockets(sockets)
        running = RunningGateway(settings, gateway, server, sockets[0].getsockname()[1])
        started.append(running)
        return running

    yield start
    for running in started:
        running.server.stop()
        running.gateway.http_client.close()


@pytest.fixture
def gateway(start_gateway: Callable[..., RunningGateway]) -> RunningGateway:
    return start_gateway()


# -- a raw HTTP/1.1 client: byte-exact bodies, and the power to hang up at any moment -----------------


def sse_events(body: bytes) -> list[dict[str, Any]]:
    """The `data:` payloads of an SSE body, parsed as JSON (/chat format)."""
    return [json.loads(line[6:]) for line in body.decode().split("\n") if line.startswith("data: ") and line != "data: [DONE]"]


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes
    raw_headers: str = ""
    chunks: list[bytes] = field(default_factory=list)

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def events(self) -> list[dict[str, Any]]:
        return sse_events(self.body)

    @property
    def text(self) -> str:
        return "".join(event["content"] for event in self.events if event.get("type") == "content")


def build_request(method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    merged = {"Content-Type": "application/json"} if body is not None else {}
    merged.update(headers or {})
    if body is not None and "Content-Length" not in merged and "Transfer-Encoding" not in merged:
        merged["Content-Length"] = str(len(body))
    lines += [f"{name}: {value}" for name, value in merged.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")


@asynccontextmanager
async def connect(port: int) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        yield reader, writer
    finally:
        writer.close()


async def read_response(
    reader: asyncio.StreamReader, until: Callable[[bytes], bool] | None = None, *, bodyless: bool = False
) -> RawResponse:
    """Read one response; with `until`, stop (without reading the rest) once the body so far satisfies it.
    `bodyless`: the answer to a HEAD, whose Content-Length describes a body that is not sent."""
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, str] = {}
    for line in header_lines:
        if line:
            name, _, value = line.partition(":")
            key = name.strip().lower()
            headers[key] = headers[key] + ", " + value.strip() if key in headers else value.strip()
    status = int(status_line.split()[1])
    body = b""
    chunks = []
    if bodyless:
        return RawResponse(status, headers, body, head.decode("latin-1"))
    if headers.get("transfer-encoding") == "chunked":
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                break
            chunk = (await reader.readexactly(size + 2))[:-2]
            chunks.append(chunk)
            body += chunk
            if until is not None and until(body):
                break
    elif "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    return RawResponse(status, headers, body, head.decode("latin-1"), chunks)


async def request(
    port: int, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None, raw: bytes | None = None
) -> RawResponse:
    payload = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    async with connect(port) as (reader, writer):
        writer.write(build_request(method, path, payload, headers))
        await writer.drain()
        return await asyncio.wait_for(read_response(reader), 30)


async def head_and_get(port: int, path: str) -> tuple[RawResponse, RawResponse]:
    """HEAD then GET of `path`, pipelined on one connection: the GET parses only if the HEAD sent no body."""
    async with connect(port) as (reader, writer):
        writer.write(build_request("HEAD", path) + build_request("GET", path))
        head = await asyncio.wait_for(read_response(reader, bodyless=True), 30)
        return head, await asyncio.wait_for(read_response(reader), 30)


def same_headers(head: RawResponse, get: RawResponse) -> None:
    """Assert a HEAD answer has the GET's status and headers (but for the per-response ones)."""
    varying = {"date", "x-request-id"}
    assert head.status == get.status
    assert {k: v for k, v in head.headers.items() if k not in varying} == {k: v for k, v in get.headers.items() if k not in varying}


async def chat(port: int, body: Any, headers: dict[str, str] | None = None) -> RawResponse:
    return await request(port, "POST", "/chat", body, headers)


ERROR_FIELDS = {"message", "code", "error_type", "request_id", "timestamp"}


def error_body(status: int, header: Callable[[str], str | None], raw: bytes, expected: int, error_type: str) -> dict[str, Any]:
    """Assert the one JSON error shape (status, type, the response's request id) and return the body;
    `header` looks a response header up, so raw-socket and tornado-client responses share the check."""
    assert status == expected, raw
    assert header("Content-Type") == "application/json"
    body = json.loads(raw)
    assert set(body) == ERROR_FIELDS
    assert (body["code"], body["error_type"]) == (expected, error_type), body
    assert body["request_id"] == header("X-Request-ID")
    return body  # type: ignore[no-any-return]


def api_error(response: RawResponse, status: int, error_type: str) -> dict[str, Any]:
    return error_body(response.status, response.header, response.body, status, error_type)


async def hang_up_after_upstream_called(port: int, upstream: FaultUpstream) -> None:
    """Open a /chat stream, read its `connected` event, wait until the upstream has the request, hang up."""
    async with connect(port) as (reader, writer):
        writer.write(build_request("POST", "/chat", b'{"prompt": "x"}'))
        await writer.drain()
        await read_response(reader, until=lambda body: b"connected" in body)
        while not upstream.requests:
            await asyncio.sleep(0.01)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def eventually(condition: Callable[[], Any], what: str, timeout: float = 5.0) -> None:
    """Poll `condition` (a function, sync or async) until it holds; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        await asyncio.sleep(0.01)
