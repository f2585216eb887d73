"""Prometheus metrics (prometheus_client), one registry per application.

Labels are bounded: the route template, the method (`other` outside `METHOD_LABELS`: a client can send
any token as a method), the status, an outcome or reason from a fixed set; never a raw path, key or IP.
Hot-path updates happen once per upstream read, not once per event.
`*_created` series are off: they double the scrape and nothing here reads them.
"""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.multiprocess import MultiProcessCollector

CONTENT_TYPE = CONTENT_TYPE_LATEST
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # set by app/workers.py before it forks

_HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)  # streams too
_LLM_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 8.0, 13.0, 20.0, 30.0, 45.0, 60.0)
_STREAM_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)
_OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)
_LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)

METHOD_LABELS = frozenset({"GET", "HEAD", "POST", "OPTIONS"})

disable_created_metrics()


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None, *, per_key: bool = False) -> None:
        """`per_key`: label spend by key id (client keys on: the label set is bounded by the configured keys)."""
        self.registry = registry or CollectorRegistry()
        self.per_key = per_key
        r = self.registry
        self.http_requests = Counter("http_requests", "HTTP requests answered", ["route", "method", "status"], registry=r)
        self.http_duration = Histogram(
            "http_request_duration_seconds", "HTTP request duration, streams included", ["route"], buckets=_HTTP_BUCKETS, registry=r
        )
        self.streams_active = Gauge("chat_streams_active", "Streams open now", registry=r, multiprocess_mode="livesum")
        self.ttft = Histogram(
            "chat_time_to_first_token_seconds", "Request arrival to first content event", buckets=_LLM_LATENCY_BUCKETS, registry=r
        )
        self.stream_duration = Histogram("chat_stream_duration_seconds", "Whole stream duration", buckets=_STREAM_BUCKETS, registry=r)
        self.stream_events = Counter("chat_stream_events", "Events relayed to clients", registry=r)
        self.streams = Counter("chat_streams", "Streams ended, by outcome", ["outcome"], registry=r)
        spend_labels = ["key_id"] if per_key else []
        self.tokens = Counter("chat_tokens", "Tokens charged (reported, else estimated)", ["kind", *spend_labels], registry=r)
        self.cost = Counter("chat_cost_usd", "US dollars charged (as reported by the upstream)", spend_labels, registry=r)
        self.budget_exceeded = Counter("budget_exceeded", "Calls refused because the client's budget was spent", registry=r)
        self.upstream_requests = Counter("upstream_requests", "Upstream attempts by HTTP status (error: no status)", ["status"], registry=r)
        self.upstream_retries = Counter("upstream_retries", "Upstream attempts beyond the first", registry=r)
        self.stream_resumes = Counter("chat_stream_resumes", "Readers that reattached to a resumable stream", registry=r)
        self.streams_detached = Gauge(
            "chat_streams_detached", "Resumable streams running with no reader", registry=r, multiprocess_mode="livesum"
        )
        self.client_disconnects = Counter("client_disconnects", "Clients that left mid-stream", registry=r)
        self.rate_limited_total = Counter("rate_limited", "Requests refused at the edge", ["reason"], registry=r)
        self.overhead = Histogram("gateway_overhead_seconds", "Time spent in the gateway", ["phase"], buckets=_OVERHEAD_BUCKETS, registry=r)
        # bound once: `labels()` takes a lock and a dict lookup, and `event` is observed on every upstream read
        self.request_overhead = self.overhead.labels("request")
        self.event_overhead = self.overhead.labels("event")
        self.rate_limit_store_errors = Counter(
            "rate_limit_store_errors", "Rate-limit decisions made without Redis (store unreachable)", registry=r
        )
        self.accept_errors = Counter(
            "accept_errors", "accept() failures for lack of descriptors or memory (each pauses accepting briefly)", registry=r
        )
        self.connections_rejected = Counter("connections_rejected", "Connections closed at accept: MAX_CONNECTIONS reached", registry=r)
        self.loop_lag = Histogram("event_loop_lag_seconds", "How late a periodic timer fires", buckets=_LAG_BUCKETS, registry=r)

    def request_finished(self, route: str, method: str, status: int, seconds: float) -> None:
        self.http_requests.labels(route, method if method in METHOD_LABELS else "other", str(status)).inc()
        self.http_duration.labels(route).observe(seconds)

    def rate_limited(self, reason: str) -> None:
        self.rate_limited_total.labels(reason).inc()

    def upstream_attempt(self, status: int | None, retry: bool) -> None:
        self.upstream_requests.labels(str(status) if status else "error").inc()
        if retry:
            self.upstream_retries.inc()

    def stream_ended(self, outcome: str, seconds: float, ttft: float | None) -> None:
        self.streams.labels(outcome).inc()
        self.stream_duration.observe(seconds)
        if ttft is not None:
            self.ttft.observe(ttft)
        if outcome == "client_disconnected":
            self.client_disconnects.inc()

    def charged(self, key: str | None, prompt_tokens: int, completion_tokens: int, cost_usd: float) -> None:
        labels = [key or ""] if self.per_key else []
        self.tokens.labels("prompt", *labels).inc(prompt_tokens)
        self.tokens.labels("completion", *labels).inc(completion_tokens)
        if cost_usd:
            (self.cost.labels(*labels) if labels else self.cost).inc(cost_usd)

    def render(self) -> bytes:
        """This process's registry; with several workers, every worker's values summed from the shared directory."""
        if os.environ.get(MULTIPROC_ENV):
            registry = CollectorRegistry()
            MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)


def _count(value: Any) -> float:
    """A token count from (cleaned) usage; anything but a number (a boolean, an object) counts as none."""
    return value if isinstance(value, int | float) and not isinstance(value, bool) else 0
