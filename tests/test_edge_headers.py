"""The edge over real sockets: security headers, CORS, request ids, 404/405/500 and the one error shape."""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

from app.routes import make_app
from handlers.base import BaseHandler
from server.config import load_settings
from server.logs import RequestContextFilter
from server.state import Gateway
from tests.conftest import RawResponse, RunningGateway, api_error, chat, head_and_get, request, same_headers
from tests.fault_upstream import FaultUpstream

KEY = "sk-client-key-1"
AUTH = {"Authorization": f"Bearer {KEY}"}

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "strict-origin-when-cross-origin",
    "Permissions-Policy": "accelerometer=(), camera=(), geolocation=(), gyroscope=(), magnetometer=(), microphone=(), payment=(), usb=()",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Strict-Transport-Security": "max-age=31536000; includeSubDomains",
    "X-XSS-Protection": "0",
}
EXPOSED = "X-Request-ID, Retry-After, RateLimit-Limit, RateLimit-Remaining, RateLimit-Reset, Server-Timing, X-Budget-Limit"
UUID4 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


def assert_secure(response: RawResponse) -> None:
    for name, value in SECURITY_HEADERS.items():
        assert response.header(name) == value, (name, response.status)
    assert response.header("Server") is None
    assert "TornadoServer" not in response.raw_headers
    assert response.header("X-Request-ID")


def allow_headers(response: RawResponse) -> list[str]:
    return [name for name in response.headers if name.startswith("access-control-allow-")]


# -- security headers ---------------------------------------------------------------------------------


async def test_security_headers_on_every_kind_of_response(start_gateway, upstream: FaultUpstream) -> None:
    gateway = start_gateway(CLIENT_API_KEYS=KEY, MAX_BODY_BYTES="1024")
    port = gateway.port
    cases: list[tuple[int, RawResponse]] = [
        (200, await request(port, "GET", "/health")),
        (200, await chat(port, {"prompt": "hi"}, AUTH)),
        (204, await request(port, "OPTIONS", "/chat", headers={"Origin": "https://a.example"})),
        (400, await chat(port, {"promt": "hi"}, AUTH)),
        (401, await chat(port, {"prompt": "hi"})),
        (404, await request(port, "GET", "/nope")),
        (405, await request(port, "GET", "/chat", headers=AUTH)),
        (413, await chat(port, {"prompt": "x" * 2000}, AUTH)),
        (415, await request(port, "POST", "/chat", raw=b"hi", headers={"Content-Type": "text/plain", **AUTH})),
    ]
    limited = start_gateway(RATE_LIMIT="1")
    await chat(limited.port, {"prompt": "hi"})
    cases.append((429, await chat(limited.port, {"prompt": "hi"})))
    for status, response in cases:
        assert response.status == status
        assert_secure(response)


async def test_hsts_can_be_turned_off_or_shortened(start_gateway) -> None:
    off = await request(start_gateway(HSTS_ENABLED="false").port, "GET", "/health")
    assert off.header("Strict-Transport-Security") is None
    assert off.header("X-Frame-Options") == "DENY"
    short = await request(start_gateway(HSTS_MAX_AGE="300").port, "GET", "/nope")
    assert short.header("Strict-Transport-Security") == "max-age=300; includeSubDomains"


# -- CORS ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/chat", "/health", "/no/such/path"])
async def test_preflight_on_any_route(gateway: RunningGateway, path: str) -> None:
    response = await request(gateway.port, "OPTIONS", path, headers={"Origin": "https://a.example"})
    assert response.status == 204
    assert response.body == b""
    assert response.header("Access-Control-Allow-Origin") == "*"
    assert response.header("Access-Control-Allow-Methods") == "GET, POST, DELETE, OPTIONS"
    assert response.header("Access-Control-Allow-Headers") == "Content-Type, Authorization, X-Request-ID, Last-Event-ID"
    assert response.header("Access-Control-Max-Age") == "600"
    assert EXPOSED in (response.header("Access-Control-Expose-Headers") or "")
    assert response.header("Vary") is None


async def test_wildcard_origin_on_plain_and_error_responses(gateway: RunningGateway) -> None:
    for response in (await request(gateway.port, "GET", "/health"), await request(gateway.port, "GET", "/nope")):
        assert response.header("Access-Control-Allow-Origin") == "*"
        assert EXPOSED in (response.header("Access-Control-Expose-Headers") or "")


async def test_origin_list_echoes_allowed_and_ignores_others(start_gateway) -> None:
    gateway = start_gateway(CORS_ALLOWED_ORIGINS="https://a.example, https://b.example")
    allowed = await request(gateway.port, "GET", "/health", headers={"Origin": "https://b.example"})
    assert allowed.header("Access-Control-Allow-Origin") == "https://b.example"
    assert allowed.header("Vary") == "Origin"
    assert EXPOSED in (allowed.header("Access-Control-Expose-Headers") or "")
    preflight = await request(gateway.port, "OPTIONS", "/chat", headers={"Origin": "https://a.example"})
    assert preflight.status == 204
    assert preflight.header("Access-Control-Allow-Origin") == "https://a.example"
    assert preflight.header("Access-Control-Allow-Methods") == "GET, POST, DELETE, OPTIONS"

    for method, path in (("GET", "/health"), ("OPTIONS", "/chat"), ("GET", "/nope")):
        denied = await request(gateway.port, method, path, headers={"Origin": "https://evil.example"})
        assert allow_headers(denied) == [], (method, path)
        assert denied.header("Access-Control-Expose-Headers") is None
        assert denied.header("Vary") == "Origin"
    no_origin = await request(gateway.port, "GET", "/health")
    assert allow_headers(no_origin) == []


async def test_preflight_is_never_rate_limited(start_gateway, upstream: FaultUpstream) -> None:
    gateway = start_gateway(RATE_LIMIT="1")
    for _ in range(5):
        response = await request(gateway.port, "OPTIONS", "/chat", headers={"Origin": "https://a.example"})
        assert response.status == 204
        assert response.header("RateLimit-Limit") is None
    assert (await chat(gateway.port, {"prompt": "hi"})).status == 200  # the bucket was not touched


# -- request id ---------------------------------------------------------------------------------------


async def test_valid_request_id_is_echoed_everywhere_and_forwarded(gateway: RunningGateway, upstream: FaultUpstream) -> None:
    rid = "client-1.trace:A_b-" + "x" * 109  # 128 characters, every allowed class
    assert len(rid) == 128
    response = await chat(gateway.port, {"prompt": "hi"}, {"X-Request-ID": rid})
    assert response.header("X-Request-ID") == rid
    assert {event["request_id"] for event in response.events} == {rid}
    assert upstream.requests[0]["headers"]["X-Request-Id"] == rid
    for method, path in (("GET", "/health"), ("GET", "/nope"), ("OPTIONS", "/chat"), ("GET", "/chat")):
        assert (await request(gateway.port, method, path, headers={"X-Request-ID": rid})).header("X-Request-ID") == rid


@pytest.mark.parametrize("inbound", ["", "has space", "semi;colon", "x" * 129, "é", "a/b", "<script>"])
async def test_bad_request_id_is_replaced_by_a_uuid4(gateway: RunningGateway, upstream: FaultUpstream, inbound: str) -> None:
    response = await chat(gateway.port, {"prompt": "hi"}, {"X-Request-ID": inbound})
    generated = response.header("X-Request-ID") or ""
    assert UUID4.fullmatch(generated)
    assert uuid.UUID(generated).version == 4
    assert upstream.requests[-1]["headers"]["X-Request-Id"] == generated
    assert {event["request_id"] for event in response.events} == {generated}


async def test_every_log_line_of_a_request_carries_its_id(
    gateway: RunningGateway, upstream: FaultUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.handler.addFilter(RequestContextFilter())
    with caplog.at_level(logging.DEBUG):
        await chat(gateway.port, {"prompt": "hi"}, {"X-Request-ID": "trace-42"})
        await request(gateway.port, "GET", "/nope", headers={"X-Request-ID": "trace-43"})
    ours = [record for record in caplog.records if record.name.startswith(("gateway", "tornado"))]
    assert {record.getMessage() for record in ours} >= {"started", "completed"}
    assert sorted({record.request_id for record in ours}) == ["trace-42", "trace-43"]  # type: ignore[attr-defined]
    assert all(record.request_id is not None for record in ours)  # type: ignore[attr-defined]


# -- 404, 405, 500 and the error shape ----------------------------------------------------------------


async def test_unknown_path_is_a_json_404_for_any_method(gateway: RunningGateway) -> None:
    for method in ("GET", "POST", "DELETE"):
        body = api_error(await request(gateway.port, method, "/nope", body={} if method == "POST" else None), 404, "not_found")
        assert body["message"] == f"no route for {method} /nope"
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", body["timestamp"])


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("GET", "/chat", "POST, OPTIONS"),
        ("PUT", "/chat", "POST, OPTIONS"),
        ("POST", "/health", "GET, HEAD, OPTIONS"),
        ("X0000001", "/health", "GET, HEAD, OPTIONS"),
        ("get", "/chat", "POST, OPTIONS"),
    ],
)
async def test_wrong_method_is_a_json_405_with_allow(gateway: RunningGateway, method: str, path: str, allow: str) -> None:
    response = await request(gateway.port, method, path, body={} if method != "GET" else None)
    body = api_error(response, 405, "method_not_allowed")
    assert response.header("Allow") == allow
    assert body["message"] == f"{method} is not allowed here; use {allow}"


async def test_made_up_methods_get_the_whole_edge(start_gateway) -> None:
    gateway = start_gateway(RATE_LIMIT="1", CLIENT_API_KEYS=KEY)
    first = await request(gateway.port, "X0000001", "/health", headers={"X-Request-ID": "odd-1"})
    assert api_error(first, 405, "method_not_allowed")["request_id"] == "odd-1"
    assert first.header("RateLimit-Limit") == "1"  # /health is exempt for the methods it serves only
    assert_secure(first)
    api_error(await request(gateway.port, "X0000002", "/health"), 429, "rate_limited")
    assert (await request(gateway.port, "GET", "/health")).status == 200
    api_error(await request(gateway.port, "X0000003", "/chat"), 401, "unauthorized")  # the client key comes first
    fresh = start_gateway()
    api_error(await request(fresh.port, "X0000004", "/no/such/path"), 404, "not_found")
    preflight = await request(fresh.port, "OPTIONS", "/health", headers={"Origin": "https://a.example"})
    assert preflight.status == 204


async def test_head_health_answers_like_get_without_a_body(gateway: RunningGateway) -> None:
    head, get = await head_and_get(gateway.port, "/health")
    assert head.status == 200 and get.json()["status"] == "ok"
    same_headers(head, get)
    assert head.header("Content-Length") == str(len(get.body)) and head.header("Cache-Control") == "no-store"
    assert_secure(head)


class BoomHandler(BaseHandler):
    route = "/boom"

    def get(self) -> None:
        raise RuntimeError("secret internal detail")


@pytest.fixture
def boom_port(io_loop: Any, upstream: FaultUpstream) -> Iterator[int]:
    """The real routes plus one that raises: an unexpected exception, end to end."""
    settings = load_settings({"OPENROUTER_API_KEY": "sk-test", "OPENROUTER_BASE_URL": upstream.base_url})
    gateway = Gateway.create(settings)
    app = make_app(settings, gateway)
    app.add_handlers(r".*", [(r"/boom", BoomHandler)])
    server = HTTPServer(app)
    sockets = bind_sockets(0, "127.0.0.1")
    server.add_sockets(sockets)
    yield sockets[0].getsockname()[1]
    server.stop()
    gateway.http_client.close()


async def test_unexpected_exception_is_a_json_500_without_the_trace(boom_port: int, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR):
        response = await request(boom_port, "GET", "/boom", headers={"X-Request-ID": "boom-1"})
    body = api_error(response, 500, "internal_error")
    assert body["request_id"] == "boom-1"
    assert b"secret internal detail" not in response.body and b"Traceback" not in response.body
    assert_secure(response)
    traced = [record for record in caplog.records if record.exc_info and "secret internal detail" in str(record.exc_info[1])]
    assert traced, "the stack trace goes to the log"
    assert (await request(boom_port, "GET", "/health")).status == 200  # the app survives
