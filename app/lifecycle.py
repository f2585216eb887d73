"""Start, signals and drain: what happens between `python run.py` and exit code 0.

SIGTERM or SIGINT: stop accepting, answer /health with 503 on connections still open (every answer then
says `Connection: close`, so a proxy stops reusing them), let streams finish for up to
SHUTDOWN_TIMEOUT_SECS, end the rest with a `server_shutdown` error, close upstream sockets, exit 0.
A second signal exits at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
from collections.abc import Coroutine
from dataclasses import replace
from typing import Any

import uvloop
from tornado.ioloop import IOLoop, PeriodicCallback
from tornado.netutil import bind_sockets

from app.routes import make_app
from server.config import Settings
from server.demo_upstream import DemoOptions, start_demo_upstream
from server.listener import GatewayServer, default_max_connections
from server.metrics import Metrics
from server.state import Gateway

log = logging.getLogger("gateway")

_LAG_INTERVAL = 0.25  # seconds between event-loop lag samples
_AFTER_SHUTDOWN_EVENTS = 5.0  # seconds to let cancelled streams write their error event


def run(main: Coroutine[Any, Any, None]) -> None:
    """Run `main` on uvloop: its C event loop cut the loop lag with ~10,000 open streams (bench/) and
    costs nothing elsewhere. GC is tuned first: see `tune_gc`."""
    tune_gc()
    uvloop.run(main)


def tune_gc() -> None:
    """Keep the collector from pausing the loop under many open streams.

    Each relayed event allocates short-lived objects that refcounting frees, but they still count toward
    CPython's generation-0 threshold (700), and every full collection rescans every object of every open
    stream: with 5,000 streams one full pass took ~600 ms. So: a larger young generation, full passes
    rare, and everything alive after start-up frozen out of future scans."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def make_server(settings: Settings, gateway: Gateway) -> GatewayServer:
    """HEADER_TIMEOUT_SECS bounds a new connection's wait for its first request head, READ_TIMEOUT_SECS
    reading a request body, IDLE_TIMEOUT_SECS a keep-alive connection waiting for its next request's
    headers. WRITE_TIMEOUT_SECS is enforced per flush by the streaming handlers: Tornado has no
    whole-response write deadline, and one must never cut a healthy long stream."""
    return GatewayServer(
        make_app(settings, gateway),
        max_connections=settings.max_connections or default_max_connections(),
        header_timeout=settings.header_timeout,
        accept_errors=gateway.metrics.accept_errors,
        rejected=gateway.metrics.connections_rejected,
        idle_connection_timeout=settings.idle_timeout,
        body_timeout=settings.read_timeout,
        max_body_size=settings.max_body_bytes + 65536,
        decompress_request=False,
    )


class LoopLagMonitor:
    """How late a periodic timer fires: the event loop's responsiveness under load, on /metrics."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.expected = 0.0
        self.timer = PeriodicCallback(self._sample, _LAG_INTERVAL * 1000)

    def start(self) -> None:
        self.expected = IOLoop.current().time() + _LAG_INTERVAL
        self.timer.start()

    def _sample(self) -> None:
        now = IOLoop.current().time()
        self.metrics.loop_lag.observe(max(0.0, now - self.expected))
        self.expected = now + _LAG_INTERVAL

    def stop(self) -> None:
        self.timer.stop()


async def drain(server: GatewayServer, gateway: Gateway) -> None:
    gateway.draining = True
    server.conn_params.no_keep_alive = True  # every answer from now on says `Connection: close`: proxies move on
    server.stop()
    timeout = gateway.settings.shutdown_timeout
    log.warning("shutting down: waiting up to %gs for %d streams", timeout, len(gateway.streams))
    if not await gateway.streams.wait_idle(timeout):
        log.warning("shutdown deadline passed: ending %d streams", len(gateway.streams))
        for stream in gateway.streams:
            stream.shutdown()
        await gateway.streams.wait_idle(_AFTER_SHUTDOWN_EVENTS)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(server.close_all_connections(), 1.0)
    gateway.http_client.close()
    await gateway.limiter.close()
    if gateway.resume is not None:
        await gateway.resume.close()
    log.info("shutdown complete")


async def serve(settings: Settings, sockets: list[socket.socket] | None = None, *, worker: bool = False) -> None:
    """Run until a signal, then drain. Returns normally (exit 0) after a drain.

    A pre-forked worker (app/workers.py) gets the parent's listening `sockets` and obeys SIGTERM
    only: the parent turns SIGINT into one SIGTERM per worker, so a terminal's Ctrl-C (sent to the
    whole process group) is not counted twice as "second signal: exit now"."""
    if settings.demo:
        _, base_url = start_demo_upstream(DemoOptions(delay=settings.demo_delay))
        settings = replace(settings, base_url=base_url, api_key="demo")
        log.warning("demo mode: answers are simulated by the built-in demo upstream at %s; no provider is called", base_url)
    if settings.open_relay:
        log.warning(
            "CLIENT_API_KEYS is not set and HOST=%s is not loopback: anyone who can reach this port can spend the upstream key",
            settings.host,
        )
    gateway = Gateway.create(settings)
    server = make_server(settings, gateway)
    sockets = sockets or bind_sockets(settings.port, settings.host)
    server.add_sockets(sockets)
    port = sockets[0].getsockname()[1]
    log.info("listening on http://%s:%d (model %s, at most %d connections)", settings.host, port, settings.model, server.max_connections)
    monitor = LoopLagMonitor(gateway.metrics)
    monitor.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        if stop.is_set():
            log.warning("second %s: exiting now", signal.Signals(signum).name)
            os._exit(1)
        log.warning("received %s", signal.Signals(signum).name)
        stop.set()

    for signum in (signal.SIGTERM,) if worker else (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    await stop.wait()
    monitor.stop()
    await drain(server, gateway)
