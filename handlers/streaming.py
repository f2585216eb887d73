"""`StreamingHandler`: what /chat and /v1/chat/completions share about holding a stream open.

It reads the JSON body under the size cap, takes a stream slot (per-client cap, then global cap),
writes and flushes SSE bytes with a write timeout (a client that stops reading for WRITE_TIMEOUT_SECS is
gone; a healthy long stream is never cut), sends `: ping` heartbeats while idle, cancels the upstream
call the moment the client leaves, ends itself on shutdown, and logs each stream's outcome once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Iterator
from datetime import timedelta
from typing import Any

from tornado import gen, httputil
from tornado.ioloop import IOLoop
from tornado.iostream import StreamClosedError

from handlers.base import BaseHandler
from middleware.errors import ApiError, body_too_large
from server.budgets import Charge
from server.completions import Chunk, parse_chunk
from server.context import bind_request
from server.sse import SSEEvent, encode_comment
from server.upstream import UpstreamCall, UpstreamError

log = logging.getLogger("gateway.stream")

HEARTBEAT = encode_comment("ping")


class ClientGoneError(UpstreamError):
    """The client closed the connection or stopped reading; raised into the relay, it ends the call."""

    def __init__(self, message: str) -> None:
        super().__init__("client_disconnected", message)


class StreamingHandler(BaseHandler):
    protected = True

    call: UpstreamCall | None = None
    events = 0  # events relayed to the client
    relayed_chars = 0  # answer text relayed to the client: the estimate's base when the provider reports no usage
    ttft: float | None = None
    finish_reason: str | None = None
    usage: dict[str, int] | None = None
    chunk_failure: UpstreamError | None = None
    _body: bytearray | None = None
    _slot_client: str | None = None
    _registered = False
    _client_gone = False
    _outcome_logged = False
    _heartbeat_timer: object | None = None
    _charge: Charge | None = None  # this call's spend, until the ledger has it

    # -- request body (with @stream_request_body on the subclass) --------------------------------
    async def prepare(self) -> None:
        await super().prepare()
        if self.budget is not None and self.budget.exhausted:
            self.gateway.metrics.budget_exceeded.inc()
            raise ApiError(
                429,
                "budget_exceeded",
                f"this client's budget for the window is spent; it resets in {self.budget.retry_after} seconds",
                headers={"Retry-After": self.budget.retry_after},
            )
        self._body = bytearray()
        # Room for one more read than the limit, so an oversized chunked body reaches data_received
        # (and gets our JSON 413) instead of Tornado's bare 400.
        self.request.connection.set_max_body_size(self.gateway.settings.max_body_bytes + 65536)  # type: ignore[union-attr]

    def data_received(self, chunk: bytes) -> None:
        """Buffer up to MAX_BODY_BYTES; past it (a chunked body has no Content-Length) answer 413 at once.

        Finishing now makes Tornado drop the rest of the body and close the connection after the answer.
        """
        if self._body is None or self._finished:
            return
        limit = self.gateway.settings.max_body_bytes
        if len(self._body) + len(chunk) > limit:
            self._body = None
            error = body_too_large(f"request body is larger than the limit of {limit} bytes")
            self.send_error(413, exc_info=(ApiError, error, None))
            return
        self._body += chunk

    def take_body(self) -> bytes:
        """The request body, once: the buffer is let go, so a long conversation is not held twice for a whole stream."""
        body, self._body = bytes(self._body or b""), bytearray()
        return body

    # -- slots ------------------------------------------------------------------------------------
    async def take_stream_slot(self) -> None:
        """Per-client cap (429) first, then the process-wide cap (503); both before any upstream call."""
        gateway = self.gateway
        settings = gateway.settings
        if gateway.draining:
            raise ApiError(503, "server_shutdown", "server is shutting down; retry on another instance", headers={"Retry-After": "1"})
        if not await gateway.limiter.acquire_stream(self.client_id, settings.max_streams_per_client):
            gateway.metrics.rate_limited("streams_per_client")
            raise ApiError(
                429,
                "too_many_streams",
                f"at most {settings.max_streams_per_client} concurrent streams per client",
                headers={"Retry-After": "1"},
            )
        self._slot_client = self.client_id
        if len(gateway.streams) >= settings.max_concurrent_streams:
            await self.release_stream_slot()  # the caller's `finally` has not started yet
            gateway.metrics.rate_limited("concurrent_streams")
            raise ApiError(
                503,
                "server_busy",
                f"the gateway is at its limit of {settings.max_concurrent_streams} streams",
                headers={"Retry-After": "1"},
            )
        gateway.streams.add(self)
        self._registered = True
        gateway.metrics.streams_active.inc()

    async def release_stream_slot(self) -> None:
        await self.settle_budget()
        if self._registered:
            self._registered = False
            self.gateway.streams.discard(self)
            self.gateway.metrics.streams_active.dec()
        if self._slot_client is not None:
            client, self._slot_client = self._slot_client, None
            await self.gateway.limiter.release_stream(client)

    # -- budget -----------------------------------------------------------------------------------
    def metered_payload(self, payload: dict[str, Any]) -> dict[str, Any]:
        """The upstream payload with usage requested (and cost, from OpenRouter) and the answer's length
        capped to the tokens left in the client's budget, so one call cannot overshoot by a whole answer."""
        payload = dict(payload, usage={"include": True})
        left = self.budget.tokens_left if self.budget is not None else None
        if left is not None:
            name = "max_completion_tokens" if "max_completion_tokens" in payload else "max_tokens"
            payload[name] = min(payload.get(name) or self.gateway.settings.max_tokens_limit, left)
        return payload

    async def settle_budget(self) -> None:
        """Charge this call's spend to its client once; awaited before the last event, so the client's next
        request sees it."""
        charge, self._charge = self._charge, None
        if charge is not None:
            await self.gateway.budgets.charge(self.client_id, charge.total_tokens, charge.cost_usd)

    # -- writing ----------------------------------------------------------------------------------
    def begin_stream(self, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "text/event-stream; charset=utf-8")
        self.set_header("Cache-Control", "no-cache")
        self.set_header("X-Accel-Buffering", "no")
        stream = getattr(self.request.connection, "stream", None)
        if stream is not None:
            stream.set_nodelay(True)  # small SSE writes go out now, not after Nagle's delay
        self._last_write = time.monotonic()
        self._arm_heartbeat(self.gateway.settings.heartbeat)

    def read_chunks(self, events: list[SSEEvent]) -> Iterator[tuple[SSEEvent, Chunk]]:
        """One read's parsed chunks, malformed lines skipped; notes finish_reason and usage, and stops at a
        provider error inside the stream, leaving it in `chunk_failure` for `write_batch`."""
        self.chunk_failure = None
        for event in events:
            chunk = parse_chunk(event.data)
            if chunk is None:
                continue
            if chunk.error is not None:
                self.chunk_failure = UpstreamError(
                    "upstream_error", f"upstream error: {chunk.error}", self.call.status if self.call else None
                )
                return
            if chunk.finish_reason is not None:
                self.finish_reason = chunk.finish_reason
            if chunk.usage is not None:
                self.usage = chunk.usage
            self.relayed_chars += len(chunk.content)
            yield event, chunk

    def write_batch(self, out: list[bytes], failure: UpstreamError | None, started: float) -> Awaitable[None] | None:
        """One upstream read's client events: one write, one flush; then `failure`, if the read ended in one."""
        if not out:
            if failure is not None:
                raise failure
            return None
        assert self.call is not None
        self.call.commit()
        self.events += len(out)
        metrics = self.gateway.metrics
        metrics.stream_events.inc(len(out))
        data = out[0] if len(out) == 1 else b"".join(out)
        if failure is not None:
            self.write(data)  # what came before the failure; the error event follows it
            raise failure
        flushed = self.send(data)
        metrics.event_overhead.observe(time.monotonic() - started)
        return flushed

    def set_server_timing(self, gateway_seconds: float, upstream_seconds: float | None = None) -> None:
        """`Server-Timing: gateway;dur=…[, upstream;dur=…]`: where the time before the first byte went, for devtools."""
        timing = f"gateway;dur={gateway_seconds * 1000:.2f}"
        if upstream_seconds is not None:
            timing += f", upstream;dur={upstream_seconds * 1000:.2f}"
        self.set_header("Server-Timing", timing)

    def send(self, data: bytes) -> Awaitable[None] | None:
        """Write and flush: None when the bytes are already on the socket (the usual case, no timer needed),
        else an awaitable bounded by WRITE_TIMEOUT_SECS. ClientGoneError when the client left."""
        if self._client_gone:
            raise ClientGoneError("client disconnected")
        self.write(data)
        self._last_write = time.monotonic()
        headers_pending = not self._headers_written
        try:
            flushed = self.flush()
        except StreamClosedError:
            flushed = None
        if flushed is None or (flushed.done() and flushed.exception() is not None):
            self._client_gone = True
            raise ClientGoneError("client disconnected")
        if headers_pending:  # they are on the wire: a long stream need not hold ~20 header entries
            self._headers = httputil.HTTPHeaders()
        return None if flushed.done() else self._await_flush(flushed)

    async def send_now(self, data: bytes) -> None:
        pending = self.send(data)
        if pending is not None:
            await pending

    async def _await_flush(self, flushed: Awaitable[None]) -> None:
        try:
            await gen.with_timeout(timedelta(seconds=self.gateway.settings.write_timeout), flushed)
        except (StreamClosedError, gen.TimeoutError):
            self._client_gone = True
            raise ClientGoneError("client disconnected or stopped reading") from None

    def _arm_heartbeat(self, delay: float) -> None:
        self._heartbeat_timer = IOLoop.current().call_later(delay, self._heartbeat)

    def _heartbeat(self) -> None:
        self._heartbeat_timer = None
        if self._finished or self._client_gone:
            return
        idle = time.monotonic() - self._last_write
        interval = self.gateway.settings.heartbeat
        if idle >= interval:
            try:
                pending = self.send(HEARTBEAT)
            except ClientGoneError:
                self.on_connection_close()
                return
            if pending is not None:
                IOLoop.current().add_future(gen.convert_yielded(self._heartbeat_done(pending)), lambda _: None)
            idle = 0.0
        self._arm_heartbeat(interval - idle)

    async def _heartbeat_done(self, pending: Awaitable[None]) -> None:
        try:
            await pending
        except ClientGoneError:
            self.on_connection_close()

    def stop_heartbeat(self) -> None:
        if self._heartbeat_timer is not None:
            IOLoop.current().remove_timeout(self._heartbeat_timer)
            self._heartbeat_timer = None

    # -- ending -----------------------------------------------------------------------------------
    def on_connection_close(self) -> None:
        """The client left: close the upstream socket now (also while waiting for its first byte)."""
        if self._finished and not self._registered:
            return
        self._client_gone = True
        if self.call is not None:
            bind_request(self.request_id)
            self.call.cancel("client_disconnected", "client disconnected")

    def shutdown(self) -> None:
        """The drain deadline passed: end this stream with a server_shutdown error."""
        if self.call is not None:
            self.call.cancel("server_shutdown", "server is shutting down")

    def on_finish(self) -> None:
        self.stop_heartbeat()
        super().on_finish()

    def log_outcome(self, outcome: str, events: int, ttft: float | None, **fields: Any) -> None:
        if self._outcome_logged:
            return
        self._outcome_logged = True
        duration = time.monotonic() - self.started_at
        metrics = self.gateway.metrics
        metrics.stream_ended(outcome, duration, ttft)
        self._charge = Charge.of(fields.pop("usage", None), fields.get("prompt_chars") or 0, self.relayed_chars)
        if self._charge is not None:
            metrics.charged(self.key_id, self._charge.prompt_tokens, self._charge.completion_tokens, self._charge.cost_usd)
        level = logging.INFO if outcome in ("finished", "client_disconnected") else logging.WARNING
        extra = {
            "outcome": outcome,
            "events": events,
            "duration_ms": round(duration * 1000, 2),
            "ttft_ms": None if ttft is None else round(ttft * 1000, 2),
            "key_id": self.key_id,
            **Charge.log_fields(self._charge),
        }
        extra.update(fields)
        log.log(level, "stream %s", outcome.replace("_", " "), extra=extra)

    @staticmethod
    def outcome_of(error: UpstreamError) -> str:
        if error.error_type in ("client_disconnected", "upstream_timeout", "server_shutdown"):
            return error.error_type
        return "upstream_error"
