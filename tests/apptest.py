"""GatewayTestCase: in-process handler tests on tornado's AsyncHTTPTestCase, against `make_app(...)`.

A test class states only its settings (`env`, over `TEST_ENV`); each test gets a fresh FaultUpstream and
gateway on the test's IOLoop, and helpers that send any method, header and body bytes the tornado HTTP
client can send. What needs exact wire bytes stays a raw-socket test (tests/conftest.py).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

from tornado.httpclient import HTTPResponse
from tornado.testing import AsyncHTTPTestCase
from tornado.web import Application

from app.routes import make_app
from server.config import load_settings
from server.logs import RequestContextFilter
from server.state import Gateway
from tests.conftest import TEST_ENV, error_body, sse_events
from tests.fault_upstream import FaultUpstream

TIMEOUT = 30.0  # seconds for one request: generous, the machine may be loaded


class GatewayTestCase(AsyncHTTPTestCase):
    env: ClassVar[dict[str, str]] = {}  # this class's settings, over TEST_ENV

    def get_app(self) -> Application:
        self.upstream = FaultUpstream().start()  # on this test's IOLoop, like the gateway
        self.settings = load_settings({**TEST_ENV, "OPENROUTER_BASE_URL": self.upstream.base_url, **self.env})
        self.gateway = Gateway.create(self.settings)
        return make_app(self.settings, self.gateway)

    def tearDown(self) -> None:
        self.gateway.http_client.close()  # the pooled upstream connections, before the loop closes
        self.upstream.stop()
        super().tearDown()

    def request(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None, raw: bytes | None = None
    ) -> HTTPResponse:
        """`body` is sent as JSON, `raw` as is, both as application/json unless `headers` say otherwise.
        Any method goes (made-up ones too), with or without a body; a non-2xx answer is returned, not raised."""
        payload = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        merged = {"Content-Type": "application/json"} if payload is not None else {}
        merged.update(headers or {})
        return self.io_loop.run_sync(
            lambda: self.http_client.fetch(
                self.get_url(path), method=method, body=payload, headers=merged, raise_error=False, allow_nonstandard_methods=True
            ),
            timeout=TIMEOUT,
        )

    def chat(self, body: Any, headers: dict[str, str] | None = None) -> HTTPResponse:
        return self.request("POST", "/chat", body, headers)

    def events(self, response: HTTPResponse) -> list[dict[str, Any]]:
        return sse_events(response.body)

    def api_error(self, response: HTTPResponse, status: int, error_type: str) -> dict[str, Any]:
        """Assert the one JSON error shape (status, type, the response's request id) and return the body."""
        return error_body(response.code, response.headers.get, response.body, status, error_type)


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.addFilter(RequestContextFilter())  # as the gateway's own handler does: each record gets its request id

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextmanager
def log_records(level: int = logging.DEBUG) -> Iterator[list[logging.LogRecord]]:
    """Every log record emitted inside the block, request id included (pytest's caplog is for functions only)."""
    root = logging.getLogger()
    handler, saved = _Records(), root.level
    root.addHandler(handler)
    root.setLevel(level)
    try:
        yield handler.records
    finally:
        root.removeHandler(handler)
        root.setLevel(saved)
