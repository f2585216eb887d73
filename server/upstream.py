"""One chat-completions call to the provider: retries, fallback models, timeouts, cancellation.

`UpstreamCall.stream()` posts the request, feeds the response bytes through the incremental SSE parser
and hands each read's batch of events to the consumer; it knows nothing about the client's format.
Retries (connect failure, 429, 5xx, a stream cut short) happen only while the consumer has not
`commit()`-ed, i.e. before anything reached the client, so text is never duplicated. Every way a call
can end other than `[DONE]` raises `UpstreamError` with an `error_type` the handlers turn into their
client's error format.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any

from tornado import httputil
from tornado.httpclient import HTTPRequest, HTTPResponse
from tornado.ioloop import IOLoop

from server.config import Settings
from server.http_client import PooledAsyncHTTPClient, StreamingRequest
from server.sse import DONE, LineTooLongError, SSEEvent, SSEParser

log = logging.getLogger("gateway.upstream")

RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})
_NO_HEADERS = httputil.HTTPHeaders()  # before a response head arrives; shared, never written to
_MAX_ERROR_BODY = 64 * 1024
_STREAM_MAX_MESSAGE = "stream exceeded STREAM_MAX_SECS"
_AFTER_DONE_GRACE = 1.0  # seconds a provider may take to end its body after [DONE]

EventsConsumer = Callable[[list[SSEEvent]], Awaitable[None] | None]


class UpstreamError(Exception):
    """Why a call ended without `[DONE]`; `error_type` is what the client sees."""

    def __init__(
        self,
        error_type: str,
        message: str,
        status: int | None = None,
        *,
        retryable: bool = False,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.message = message
        self.status = status
        self.retryable = retryable
        self.retry_after = retry_after


def error_from_response(status: int, body: bytes, headers: httputil.HTTPHeaders) -> UpstreamError:
    """Turn a non-2xx answer into an error carrying the provider's own message (never our key)."""
    message = ""
    try:
        parsed = json.loads(body)
        error = parsed.get("error") if isinstance(parsed, dict) else None
        if isinstance(error, dict):
            message = str(error.get("message") or "")
        elif isinstance(error, str):
            message = error
    except ValueError:
        message = body[:200].decode("utf-8", "replace").strip()
    return UpstreamError(
        "upstream_error",
        f"upstream returned HTTP {status}" + (f": {message}" if message else ""),
        status,
        retryable=status in RETRYABLE_STATUS,
        retry_after=_retry_after_seconds(headers.get("Retry-After")),
    )


def _retry_after_seconds(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff


def upstream_headers(settings: Settings, request_id: str) -> dict[str, str]:
    headers = {
        "Authorization": f"Bearer {settings.api_key or 'demo'}",
        "Content-Type": "application/json",
        "Accept": "text/event-stream",
        "X-Request-ID": request_id,
    }
    if settings.app_url:
        headers["HTTP-Referer"] = settings.app_url
    if settings.app_title:
        headers["X-Title"] = settings.app_title
    return headers


class UpstreamCall:
    """A single logical call (possibly several attempts) for one client request."""

    __slots__ = (
        "_cause",
        "_connect_timed_out",
        "_loop",
        "_request",
        "_stopped",
        "_stream_deadline",
        "_wake",
        "attempts",
        "client",
        "committed",
        "headers",
        "models",
        "on_attempt",
        "payload",
        "response_headers",
        "settings",
        "status",
    )

    def __init__(
        self,
        client: PooledAsyncHTTPClient,
        settings: Settings,
        payload: dict[str, Any],
        headers: dict[str, str],
    ) -> None:
        self.client = client
        self.settings = settings
        self.payload = payload
        self.headers = headers
        self.models = [payload["model"], *(m for m in settings.fallback_models if m != payload["model"])]
        self.attempts = 0
        self.on_attempt: Callable[[int | None, bool], None] | None = None  # (status, is_retry), for metrics
        self.committed = False
        self.status: int | None = None
        self.response_headers = _NO_HEADERS
        self._loop = IOLoop.current()
        self._request: HTTPRequest | None = None
        self._connect_timed_out = False
        self._cause: BaseException | None = None  # why the last connection failed, chained onto its UpstreamError
        self._stopped: UpstreamError | None = None
        self._wake: asyncio.Event | None = None  # made only when a backoff has to wait
        self._stream_deadline = self._loop.time() + settings.stream_max

    # -- control from the handler ----------------------------------------------------------------
    def commit(self) -> None:
        """The consumer has written to its client: from now on nothing may be retried, so the request (a long
        conversation, as a dict and as JSON bytes) need not stay in memory for the rest of the answer. The pooled
        client re-sends a request's body only on a stale connection, before any byte of its answer."""
        if not self.committed:
            self.committed = True
            self.payload = {}
            if self._request is not None:
                self._request.body = b""

    def cancel(self, error_type: str, message: str) -> None:
        """Stop now (client gone, shutdown, timeout): close the upstream socket, wake any backoff."""
        if self._stopped is None:
            self._stopped = UpstreamError(error_type, message)
        if self._request is not None:
            self.client.abort(self._request)
        if self._wake is not None:
            self._wake.set()

    # -- the call ---------------------------------------------------------------------------------
    def stream(self, consumer: EventsConsumer) -> Awaitable[None]:
        """Relay the stream to `consumer` until `[DONE]`; raise `UpstreamError` on any other end."""
        return self._with_retries(lambda model: self._stream_attempt(model, consumer))

    def complete(self) -> Awaitable[dict[str, Any]]:
        """Non-streaming call: the provider's `chat.completion` JSON."""
        return self._with_retries(self._complete_attempt)

    async def _with_retries(self, attempt: Callable[[str], Awaitable[Any]]) -> Any:
        """STREAM_MAX_SECS has no timer of its own: each attempt's timer fires at it when it comes first,
        and backoff never sleeps past it (thousands of open streams, one timer each fewer)."""
        last: UpstreamError | None = None
        for model_index, model in enumerate(self.models):
            if model_index:
                log.warning("falling back to model %s", model)
            # the primary model gets UPSTREAM_RETRIES more tries; each fallback model one
            for retry in range(self.settings.upstream_retries + 1 if model_index == 0 else 1):
                if retry:
                    await self._backoff(retry, last)
                if self._loop.time() >= self._stream_deadline:
                    self._timeout(_STREAM_MAX_MESSAGE)
                self._raise_if_stopped()
                try:
                    return await attempt(model)
                except UpstreamError as exc:
                    last = exc
                    self._raise_if_stopped()
                    if self.committed or not exc.retryable:
                        raise
                    log.warning(
                        "upstream attempt %d failed: %s",
                        self.attempts,
                        exc.message,
                        extra={"attempt": self.attempts, "upstream_status": exc.status},
                    )
        assert last is not None
        raise last

    def _raise_if_stopped(self) -> None:
        if self._stopped is not None:
            raise self._stopped

    async def _backoff(self, retry: int, last: UpstreamError | None) -> None:
        delay = min(self.settings.retry_max_wait, 0.25 * 2 ** (retry - 1)) * (0.5 + random.random() / 2)
        if last is not None and last.retry_after is not None:
            delay = min(self.settings.retry_max_wait, last.retry_after)
        delay = min(delay, self._stream_deadline - self._loop.time())
        if delay > 0 and self._stopped is None:
            self._wake = self._wake or asyncio.Event()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)

    def _request_for(self, model: str, **callbacks: Any) -> HTTPRequest:
        self.attempts += 1
        body = dict(self.payload, model=model)
        log.info("upstream attempt %d model=%s", self.attempts, model, extra={"attempt": self.attempts, "model": model})
        return StreamingRequest(
            self.settings.base_url + "/chat/completions",
            method="POST",
            headers=self.headers,
            body=json.dumps(body, ensure_ascii=False).encode("utf-8"),
            connect_timeout=self.settings.upstream_connect_timeout,
            **callbacks,
        )

    async def _fetch(self, request: HTTPRequest) -> HTTPResponse | None:
        """The response, or None when the connection failed (refused, reset, aborted)."""
        self._request = request
        response: HTTPResponse | None = None
        self._connect_timed_out = False
        self._cause = None
        try:
            response = await self.client.fetch(request, raise_error=False)
        except TimeoutError as exc:  # the connect timeout
            self._connect_timed_out = True
            self._cause = exc
        except Exception as exc:  # other connection-level failures raise even with raise_error=False
            self._cause = exc
        finally:
            self._request = None
        if self.on_attempt is not None:
            self.on_attempt(response.code if response is not None else None, self.attempts > 1)
        self._raise_if_stopped()
        return response

    def _connection_error(self) -> UpstreamError:
        if self._connect_timed_out:
            error = UpstreamError("upstream_timeout", "could not connect within UPSTREAM_CONNECT_TIMEOUT_SECS", retryable=True)
        elif self.status is None:
            error = UpstreamError("upstream_error", "could not connect to the upstream", retryable=True)
        else:
            error = UpstreamError("upstream_error", "upstream connection closed before the stream finished", self.status, retryable=True)
        error.__cause__ = self._cause
        return error

    async def _complete_attempt(self, model: str) -> dict[str, Any]:
        self.status = None
        first_byte = self.timeout_at(self._loop.time() + self.settings.first_token_timeout, "no answer within FIRST_TOKEN_TIMEOUT_SECS")
        try:
            response = await self._fetch(self._request_for(model))
        finally:
            self._loop.remove_timeout(first_byte)
        if response is None:
            raise self._connection_error()
        self.status = response.code
        self.response_headers = response.headers
        if not 200 <= response.code < 300:
            raise error_from_response(response.code, response.body, response.headers)
        try:
            parsed = json.loads(response.body)
        except ValueError:
            raise UpstreamError("upstream_error", "upstream sent a malformed JSON answer", response.code) from None
        if not isinstance(parsed, dict) or "error" in parsed:
            raise error_from_response(502, response.body, response.headers)
        return parsed

    async def _stream_attempt(self, model: str, consumer: EventsConsumer) -> None:
        attempt = _StreamAttempt(self, consumer)
        request = self._request_for(model, streaming_callback=attempt.on_chunk, on_headers=attempt.on_headers)
        attempt.arm_first_token()
        try:
            response = await self._fetch(request)
        finally:
            attempt.disarm()
        await attempt.finish(response)

    def timeout_at(self, due: float, message: str) -> object:
        """A timeout at `due` (loop time), or at the STREAM_MAX_SECS deadline when that comes first."""
        if self._stream_deadline <= due:
            due, message = self._stream_deadline, _STREAM_MAX_MESSAGE
        return self._loop.call_at(due, self._timeout, message)

    def _timeout(self, message: str) -> None:
        log.warning("upstream timeout: %s", message)
        self.cancel("upstream_timeout", message)


class _StreamAttempt:
    """State of one streaming attempt: status line, parser, progress timers, error body."""

    __slots__ = (
        "call",
        "consumer",
        "done",
        "error_body",
        "failure",
        "last_progress",
        "loop",
        "parser",
        "sent_at",
        "settings",
        "streaming",
        "timer",
    )

    def __init__(self, call: UpstreamCall, consumer: EventsConsumer) -> None:
        self.call = call
        self.consumer = consumer
        self.settings = call.settings
        self.loop = call._loop
        self.parser = SSEParser(call.settings.max_upstream_line_bytes)
        self.error_body = bytearray()
        self.sent_at = 0.0
        self.streaming = False
        self.done = False
        self.failure: UpstreamError | None = None
        self.last_progress = 0.0
        self.timer: object | None = None
        call.status = None
        call.response_headers = _NO_HEADERS

    # timers: one handle at a time (first token, then idleness, each cut short by STREAM_MAX_SECS);
    # idle re-arms lazily instead of on every event
    def arm_first_token(self) -> None:
        self.sent_at = self.loop.time()
        self.timer = self.call.timeout_at(
            self.sent_at + self.settings.first_token_timeout, "no first token within FIRST_TOKEN_TIMEOUT_SECS"
        )

    def _arm_idle(self) -> None:
        due = min(self.last_progress + self.settings.upstream_idle_timeout, self.call._stream_deadline)
        self.timer = self.loop.call_at(due, self._check_idle)

    def _check_idle(self) -> None:
        now = self.loop.time()
        if now >= self.call._stream_deadline:
            self.call._timeout(_STREAM_MAX_MESSAGE)
        elif now >= self.last_progress + self.settings.upstream_idle_timeout:
            self.call._timeout("no data within UPSTREAM_IDLE_TIMEOUT_SECS")
        else:
            self._arm_idle()

    def _progress(self) -> None:
        first = self.last_progress == 0.0
        self.last_progress = self.loop.time()
        if first:
            self.disarm()
            self._arm_idle()

    def disarm(self) -> None:
        if self.timer is not None:
            self.loop.remove_timeout(self.timer)
            self.timer = None

    # callbacks from the HTTP client
    def on_headers(self, status: int, headers: httputil.HTTPHeaders) -> None:
        """The response head: decide how to read the body."""
        self.call.status, self.call.response_headers = status, headers
        content_type = headers.get("Content-Type", "")
        self.streaming = 200 <= status < 300 and not content_type.startswith("application/json")
        ttfb = (self.loop.time() - self.sent_at) * 1000
        log.info("upstream connected: HTTP %d after %.1f ms", status, ttfb, extra={"upstream_status": status, "ttfb_ms": round(ttfb, 2)})

    def on_chunk(self, chunk: bytes) -> Awaitable[None] | None:
        if not self.streaming:
            if len(self.error_body) < _MAX_ERROR_BODY:
                self.error_body += chunk[: _MAX_ERROR_BODY - len(self.error_body)]
            return None
        if self.done:
            return None
        try:
            events = self.parser.feed(chunk)
        except LineTooLongError as exc:
            self._fail(UpstreamError("upstream_error", str(exc)))
            return None
        if not events:
            return None
        return self._deliver(events)

    def _deliver(self, events: list[SSEEvent]) -> Awaitable[None] | None:
        self._progress()
        for index, event in enumerate(events):
            if event.data == DONE:
                self.done = True
                events = events[:index]
                # a provider that keeps the body open after [DONE] must not delay our `done`
                self.loop.call_later(_AFTER_DONE_GRACE, self._close_after_done)
                break
        if not events:
            return None
        try:
            result = self.consumer(events)
        except UpstreamError as exc:
            self._fail(exc)
            return None
        except Exception:
            log.exception("relaying upstream events failed")
            self._fail(UpstreamError("internal_error", "internal error while relaying the stream"))
            return None
        return None if result is None else self._await_consumer(result)

    async def _await_consumer(self, result: Awaitable[None]) -> None:
        try:
            await result
        except UpstreamError as exc:  # the consumer's way to end the call (e.g. its client went away)
            self._fail(exc)
        self.last_progress = self.loop.time()  # time spent waiting on the client is not upstream idleness

    def _close_after_done(self) -> None:
        if self.call._request is not None:
            self.call.client.abort(self.call._request)

    def _fail(self, error: UpstreamError) -> None:
        if self.failure is None:
            self.failure = error
        self.call.cancel(error.error_type, error.message)

    async def finish(self, response: HTTPResponse | None) -> None:
        if self.failure is not None:
            raise self.failure
        if self.done:
            return
        if response is None:
            raise self.call._connection_error()
        if not self.streaming:
            status = response.code if not 200 <= response.code < 300 else 502
            raise error_from_response(status, bytes(self.error_body), response.headers)
        tail = self.parser.close()
        if tail:
            pending = self._deliver(tail)
            if pending is not None:
                await pending
        if not self.done:
            raise UpstreamError("upstream_error", "upstream stream ended before [DONE]", self.call.status, retryable=True)
