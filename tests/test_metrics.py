"""`GET /metrics`: real scrapes parsed with prometheus_client's own parser while requests, errors,
disconnects and rate limits happen over real sockets."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from prometheus_client.parser import text_string_to_metric_families

from app.routes import make_app
from handlers.base import NotFoundHandler
from server.config import load_settings
from server.metrics import CONTENT_TYPE
from tests.conftest import ROOT, RunningGateway, build_request, chat, connect, free_port, read_response, request
from tests.fault_upstream import FaultUpstream, Scenario

Labels = tuple[tuple[str, str], ...]

# Every metric docs/observability.md lists, with its type (as the exposition's TYPE line says).
DOCUMENTED = {
    "http_requests": "counter",
    "http_request_duration_seconds": "histogram",
    "chat_streams_active": "gauge",
    "chat_time_to_first_token_seconds": "histogram",
    "chat_stream_duration_seconds": "histogram",
    "chat_stream_events": "counter",
    "chat_streams": "counter",
    "chat_tokens": "counter",
    "chat_cost_usd": "counter",
    "budget_exceeded": "counter",
    "upstream_requests": "counter",
    "upstream_retries": "counter",
    "client_disconnects": "counter",
    "rate_limited": "counter",
    "gateway_overhead_seconds": "histogram",
    "event_loop_lag_seconds": "histogram",
}


class Scrape:
    """One parsed /metrics answer: `scrape["http_requests_total", {"route": "/chat"}]` sums matching samples."""

    def __init__(self, text: str) -> None:
        self.types: dict[str, str] = {}
        self.samples: dict[tuple[str, Labels], float] = {}
        for family in text_string_to_metric_families(text):
            self.types[family.name] = family.type
            for sample in family.samples:
                self.samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value

    def __getitem__(self, key: str | tuple[str, dict[str, str]]) -> float:
        name, wanted = (key, {}) if isinstance(key, str) else key
        return sum(v for (n, labels), v in self.samples.items() if n == name and set(wanted.items()) <= set(labels))

    def label_values(self, name: str, label: str) -> set[str]:
        return {dict(labels)[label] for (n, labels) in self.samples if n == name and label in dict(labels)}


async def scrape(port: int, token: str | None = None) -> Scrape:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = await request(port, "GET", "/metrics", headers=headers)
    assert response.status == 200, response.body
    assert response.header("Content-Type") == CONTENT_TYPE and CONTENT_TYPE.startswith("text/plain; version=")
    return Scrape(response.body.decode())


async def eventually(port: int, check: Callable[[Scrape], bool], timeout: float = 5.0) -> Scrape:
    """Scrape until `check` holds: the gateway notices a closed client on its next event-loop turn, not at once."""
    deadline = time.monotonic() + timeout
    while True:
        current = await scrape(port)
        if check(current) or time.monotonic() > deadline:
            return current
        await asyncio.sleep(0.02)


async def test_every_documented_metric_is_exposed_with_its_type(gateway: RunningGateway) -> None:
    await chat(gateway.port, {"prompt": "x"})
    result = await scrape(gateway.port)
    for name, kind in DOCUMENTED.items():
        assert result.types.get(name) == kind, name
    assert not [name for (name, _) in result.samples if name.endswith("_created")]
    buckets = sorted(float(dict(labels)["le"]) for (name, labels) in result.samples if name == "chat_time_to_first_token_seconds_bucket")
    assert (buckets[0], buckets[-2], buckets[-1]) == (0.05, 60.0, float("inf"))  # 50 ms to 60 s


async def test_docs_list_every_exposed_metric(gateway: RunningGateway) -> None:
    page = (ROOT / "docs" / "observability.md").read_text(encoding="utf-8")
    section = page.split("\n## Metrics\n", 1)[1].split("\n## ", 1)[0]
    result = await scrape(gateway.port)
    for name, kind in result.types.items():
        exposed = f"{name}_total" if kind == "counter" else name
        assert f"| `{exposed}` | {kind} |" in section, exposed


async def test_http_requests_count_by_route_template_method_and_status(gateway: RunningGateway) -> None:
    for _ in range(2):
        assert (await request(gateway.port, "GET", "/health")).status == 200
    assert (await request(gateway.port, "POST", "/health", {})).status == 405
    assert (await request(gateway.port, "GET", "/no/such/path/4711?ip=10.1.2.3")).status == 404
    assert (await request(gateway.port, "OPTIONS", "/anything-else")).status == 204
    assert (await chat(gateway.port, {"prompt": ""})).status == 400
    result = await scrape(gateway.port)  # this scrape is counted only after it is rendered
    total = "http_requests_total"
    assert result[total, {"route": "/health", "method": "GET", "status": "200"}] == 2
    assert result[total, {"route": "/health", "method": "POST", "status": "405"}] == 1
    assert result[total, {"route": "unmatched", "method": "GET", "status": "404"}] == 1
    assert result[total, {"route": "unmatched", "method": "OPTIONS", "status": "204"}] == 1
    assert result[total, {"route": "/chat", "method": "POST", "status": "400"}] == 1
    assert result["http_request_duration_seconds_count", {"route": "/health"}] == 3
    assert result.label_values(total, "route") == {"/health", "unmatched", "/chat"}
    assert (await scrape(gateway.port))[total, {"route": "/metrics", "status": "200"}] == 1


def series(text: str) -> int:
    return sum(1 for line in text.splitlines() if line and not line.startswith("#"))


async def test_made_up_methods_cannot_grow_the_metrics(start_gateway: Callable[..., RunningGateway]) -> None:
    gateway = start_gateway(RATE_LIMIT="1000000000")
    assert (await request(gateway.port, "X0000000", "/health")).status == 405  # the `other` series, once
    await scrape(gateway.port)  # and the /metrics series
    before = (await request(gateway.port, "GET", "/metrics")).body.decode()
    count = 10_000
    async with connect(gateway.port) as (reader, writer):  # pipelined on one connection: fast enough for 10,000
        writer.write(b"".join(build_request(f"X{n:07d}", "/health") for n in range(1, count + 1)))
        for _ in range(count):
            answer = await asyncio.wait_for(read_response(reader), 30)
            assert answer.status == 405
    after = (await request(gateway.port, "GET", "/metrics")).body.decode()
    assert series(after) == series(before)
    result = Scrape(after)
    assert result["http_requests_total", {"route": "/health", "method": "other", "status": "405"}] == count + 1
    assert result.label_values("http_requests_total", "method") == {"GET", "other"}


def test_every_routed_handler_sets_its_route_template() -> None:
    settings = load_settings({"OPENROUTER_API_KEY": "k"})
    app = make_app(settings)
    assert app.settings["default_handler_class"] is NotFoundHandler and NotFoundHandler.route == "unmatched"
    routed = [rule.target for rule in app.wildcard_router.rules]
    assert len(routed) >= 4
    for handler in routed:
        if issubclass(handler, NotFoundHandler):  # catch-alls count their (unknown) paths as unmatched
            assert handler.route == "unmatched", handler
        else:
            assert handler.route.startswith("/") and handler.route != "unmatched", handler


async def test_a_stream_moves_the_chat_and_upstream_metrics(gateway: RunningGateway) -> None:
    before = await scrape(gateway.port)
    assert before["chat_streams_total"] == 0 and before["chat_streams_active"] == 0
    response = await chat(gateway.port, {"prompt": "hi"})
    assert response.events[-1]["type"] == "done"
    after = await scrape(gateway.port)
    assert after["chat_streams_total", {"outcome": "finished"}] == 1
    assert after["chat_stream_events_total"] == 4
    assert after["chat_tokens_total", {"kind": "prompt"}] == 3
    assert after["chat_tokens_total", {"kind": "completion"}] == 4
    assert after["chat_time_to_first_token_seconds_count"] == 1
    assert after["chat_stream_duration_seconds_count"] == 1
    assert after["upstream_requests_total", {"status": "200"}] == 1
    assert after["upstream_retries_total"] == 0
    assert after["gateway_overhead_seconds_count", {"phase": "request"}] == 1
    assert after["gateway_overhead_seconds_count", {"phase": "event"}] >= 1
    assert after["chat_streams_active"] == 0
    assert after["http_requests_total", {"route": "/chat", "status": "200"}] == 1


async def test_upstream_errors_and_retries(start_gateway: Callable[..., RunningGateway], upstream: FaultUpstream) -> None:
    gateway = start_gateway(RETRY_MAX_WAIT_SECS="0", UPSTREAM_RETRIES="1")
    upstream.scenarios = [Scenario(status=503), Scenario(), Scenario(status=500), Scenario(status=500), Scenario()]
    assert (await chat(gateway.port, {"prompt": "x"})).events[-1]["type"] == "done"  # 503, then 200
    failed = await chat(gateway.port, {"prompt": "x"})  # 500, retried once, 500 again
    assert failed.events[-1] == {**failed.events[-1], "type": "error", "error_type": "upstream_error", "status": 500}
    result = await scrape(gateway.port)
    assert result["upstream_requests_total", {"status": "503"}] == 1
    assert result["upstream_requests_total", {"status": "500"}] == 2
    assert result["upstream_requests_total", {"status": "200"}] == 1
    assert result["upstream_retries_total"] == 2
    assert result["chat_streams_total", {"outcome": "finished"}] == 1
    assert result["chat_streams_total", {"outcome": "upstream_error"}] == 1
    assert result["chat_tokens_total", {"kind": "completion"}] == 4  # only the stream that finished reported usage


async def test_unreachable_upstream_counts_as_status_error(start_gateway: Callable[..., RunningGateway]) -> None:
    gateway = start_gateway(OPENROUTER_BASE_URL=f"http://127.0.0.1:{free_port()}/api/v1", UPSTREAM_RETRIES="0")
    response = await chat(gateway.port, {"prompt": "x"})
    assert response.events[-1]["type"] == "error"
    result = await scrape(gateway.port)
    assert result["upstream_requests_total", {"status": "error"}] == 1
    assert result["chat_streams_total", {"outcome": "upstream_error"}] == 1


async def test_active_gauge_and_client_disconnect(gateway: RunningGateway, upstream: FaultUpstream) -> None:
    upstream.scenarios = [Scenario(pieces=["first", "never"], hang_after=1)]
    async with connect(gateway.port) as (reader, writer):
        writer.write(build_request("POST", "/chat", b'{"prompt": "x"}'))
        await writer.drain()
        await asyncio.wait_for(read_response(reader, until=lambda body: b'"first"' in body), 5)
        during = await scrape(gateway.port)
        assert during["chat_streams_active"] == 1
    assert await upstream.wait_closed()  # the gateway hung up on the upstream as soon as the client left
    after = await eventually(gateway.port, lambda s: s["client_disconnects_total"] == 1)
    assert after["client_disconnects_total"] == 1
    assert after["chat_streams_total", {"outcome": "client_disconnected"}] == 1
    assert after["chat_streams_active"] == 0
    assert after["chat_time_to_first_token_seconds_count"] == 1
    assert after["chat_stream_events_total"] == 1


async def test_rate_limits_count_by_reason(start_gateway: Callable[..., RunningGateway], upstream: FaultUpstream) -> None:
    limited = start_gateway(RATE_LIMIT="0.001", RATE_LIMIT_BURST="1")
    assert (await chat(limited.port, {"prompt": "x"})).status == 200
    assert (await chat(limited.port, {"prompt": "x"})).status == 429
    for _ in range(3):  # /metrics and /health are never rate limited
        await scrape(limited.port)
    result = await scrape(limited.port)
    assert result["rate_limited_total", {"reason": "rate"}] == 1
    assert result["http_requests_total", {"route": "/chat", "status": "429"}] == 1

    upstream.scenarios = [Scenario(pieces=["first", "never"], hang_after=1)]
    capped = start_gateway(MAX_STREAMS_PER_CLIENT="1", CLIENT_API_KEYS="ck-one")
    auth = {"Authorization": "Bearer ck-one"}
    async with connect(capped.port) as (reader, writer):  # one stream held open
        writer.write(build_request("POST", "/chat", b'{"prompt": "x"}', auth))
        await writer.drain()
        await asyncio.wait_for(read_response(reader, until=lambda body: b'"first"' in body), 5)
        assert (await chat(capped.port, {"prompt": "x"}, auth)).status == 429
        assert (await chat(capped.port, {"prompt": "x"})).status == 401
        result = await scrape(capped.port)
    assert result["rate_limited_total", {"reason": "streams_per_client"}] == 1
    assert result["rate_limited_total", {"reason": "unauthorized"}] == 1
    assert result["rate_limited_total", {"reason": "rate"}] == 0


async def test_global_stream_cap_counts_as_concurrent_streams(
    start_gateway: Callable[..., RunningGateway], upstream: FaultUpstream
) -> None:
    upstream.scenarios = [Scenario(pieces=["first", "never"], hang_after=1)]
    gateway = start_gateway(MAX_CONCURRENT_STREAMS="1")
    async with connect(gateway.port) as (reader, writer):
        writer.write(build_request("POST", "/chat", b'{"prompt": "x"}'))
        await writer.drain()
        await asyncio.wait_for(read_response(reader, until=lambda body: b'"first"' in body), 5)
        assert (await chat(gateway.port, {"prompt": "x"})).status == 503
        result = await scrape(gateway.port)
    assert result["rate_limited_total", {"reason": "concurrent_streams"}] == 1
    assert result["http_requests_total", {"route": "/chat", "status": "503"}] == 1


async def test_metrics_disabled_is_a_404(start_gateway: Callable[..., RunningGateway]) -> None:
    gateway = start_gateway(METRICS_ENABLED="false")
    response = await request(gateway.port, "GET", "/metrics")
    assert response.status == 404
    assert response.json()["error_type"] == "not_found"


async def test_metrics_token_is_required_when_set(start_gateway: Callable[..., RunningGateway]) -> None:
    gateway = start_gateway(METRICS_TOKEN="m-token-5d2f")
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic m-token-5d2f"}):
        response = await request(gateway.port, "GET", "/metrics", headers=headers)
        assert response.status == 401
        assert response.header("WWW-Authenticate") == 'Bearer realm="metrics"'
        assert response.json()["error_type"] == "unauthorized"
    result = await scrape(gateway.port, token="m-token-5d2f")
    assert result["http_requests_total", {"route": "/metrics", "status": "401"}] == 3


async def test_scrape_text_is_valid_exposition(gateway: RunningGateway) -> None:
    response = await request(gateway.port, "GET", "/metrics")
    assert response.header("Cache-Control") == "no-store"
    text = response.body.decode()
    assert "# TYPE http_requests_total counter" in text
    assert "# HELP chat_streams_active Streams open now" in text
