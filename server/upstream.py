"""One chat-completions call to the provider: retries, fallback models, timeouts, cancellation.

`UpstreamCall.stream()` posts the request, feeds the response bytes through the incremental SSE parser
and hands each read's batch of events to the consumer; it knows nothing about the client's format.
Retries (connect failure, 429, 5xx, a stream cut short) happen only while the consumer has not
`commit()`-ed, i.e. before anything reached the client, so text is never duplicated. Every way a call
can end other than `[DONE]` raises `UpstreamError` with an `error_type` the handlers turn into their
client's error format. Nothing the provider sends is held without a cap: one SSE line and one SSE event
(MAX_UPSTREAM_LINE_BYTES, MAX_UPSTREAM_EVENT_BYTES), a non-streaming answer (MAX_UPSTREAM_BODY_BYTES), an
error body (64 KiB, then the connection is closed).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

from tornado import httputil
from tornado.httpclient import HTTPRequest, HTTPResponse
from tornado.ioloop import IOLoop

from server.completions import error_text
from server.config import Settings
from server.http_client import PooledAsyncHTTPClient, RequestAbortedError, StreamingRequest
from server.jsonio import NestingTooDeepError, decode, dumps, loads
from server.redact import Redactor, redactor_for
from server.sse import DONE, EventTooLargeError, LineTooLongError, SSEEvent, SSEParser
from server.upstream_failures import failure_message

log = logging.getLogger("gateway.upstream")

RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})
_NO_HEADERS = httputil.HTTPHeaders()  # before a response head arrives; shared, never written to
_MAX_ERROR_BODY = 64 * 1024
_STREAM_MAX_MESSAGE = "stream exceeded STREAM_MAX_SECS"
_AFTER_DONE_GRACE = 1.0  # seconds a provider may take to end its body after [DONE] before its connection is closed

EventsConsumer = Callable[[list[SSEEvent]], Awaitable[None] | None]


class Completion(NamedTuple):
    """A non-streaming answer: parsed for the log, and its bytes to relay unchanged."""

    answer: dict[str, Any]
    body: bytes


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


def error_from_response(status: int, body: bytes, headers: httputil.HTTPHeaders, redact: Redactor) -> UpstreamError:
    """Turn a non-2xx answer into an error carrying the provider's own message, our secrets redacted."""
    try:
        parsed = loads(body)
        message = redact(error_text(parsed.get("error"))) if isinstance(parsed, dict) else ""
    except ValueError:  # not JSON (or nested too deeply): its start, redacted before the cut so no key is left half
        message = redact(body[:4096].decode("utf-8", "replace"))[:200].strip()
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
        "_failure",
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
        self._failure: Exception | None = None  # why the last fetch failed below HTTP
        self._stopped: UpstreamError | None = None
        self._wake: asyncio.Event | None = None  # made only when a backoff has to wait
        self._stream_deadline = self._loop.time() + settings.stream_max

    @property
    def redact(self) -> Redactor:
        """Our secrets out of the provider's text, before it reaches a client or a log line."""
        return redactor_for(self.settings)

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

    def complete(self) -> Awaitable[Completion]:
        """Non-streaming call: the provider's `chat.completion` JSON, parsed and as sent."""
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

    def _send(self, request: HTTPRequest) -> asyncio.Future[HTTPResponse]:
        """Start one attempt's HTTP request; `_received` reads what became of it."""
        self._request = request
        self._failure = None
        return self.client.fetch(request, raise_error=False)  # type: ignore[return-value]

    def _received(self, fetch: asyncio.Future[HTTPResponse]) -> HTTPResponse | None:
        """The response, or None when the connection failed (refused, reset, invalid HTTP, aborted)."""
        self._request = None
        response: HTTPResponse | None = None
        error = None if not fetch.cancelled() else RequestAbortedError("request aborted")
        error = error or fetch.exception()
        if error is None:
            response = fetch.result()
        elif not isinstance(error, RequestAbortedError):  # ours (a cancel, a cap, a body kept open after [DONE]) is no failure
            # the connect timeout and other connection-level failures raise even with raise_error=False
            self._failure = error if isinstance(error, Exception) else None
            if not isinstance(error, TimeoutError):
                message = failure_message(error, self.status is not None)
                log.warning("upstream request failed: %s (%s: %s)", message, type(error).__name__, error, extra={"attempt": self.attempts})
        if self.on_attempt is not None:
            self.on_attempt(response.code if response is not None else None, self.attempts > 1)
        self._raise_if_stopped()
        return response

    def close_connection(self) -> None:
        """Stop reading the current attempt's answer without failing the call: its socket closes, unpooled."""
        if self._request is not None:
            self.client.abort(self._request)

    def _connection_error(self) -> UpstreamError:
        if isinstance(self._failure, TimeoutError):
            error = UpstreamError("upstream_timeout", "could not connect within UPSTREAM_CONNECT_TIMEOUT_SECS", retryable=True)
        else:
            error = UpstreamError("upstream_error", failure_message(self._failure, self.status is not None), self.status, retryable=True)
        error.__cause__ = self._failure  # the failure below HTTP, for the log's traceback
        return error

    async def _complete_attempt(self, model: str) -> Completion:
        attempt = _CompleteAttempt(self)
        request = self._request_for(model, streaming_callback=attempt.on_chunk, on_headers=attempt.on_headers)
        return attempt.answer(await attempt.run(request))

    async def _stream_attempt(self, model: str, consumer: EventsConsumer) -> None:
        attempt = _StreamAttempt(self, consumer)
        request = self._request_for(model, streaming_callback=attempt.on_chunk, on_headers=attempt.on_headers)
        await attempt.finish(await attempt.run(request))

    def timeout_at(self, due: float, message: str) -> object:
        """A timeout at `due` (loop time), or at the STREAM_MAX_SECS deadline when that comes first."""
        if self._stream_deadline <= due:
            due, message = self._stream_deadline, _STREAM_MAX_MESSAGE
        return self._loop.call_at(due, self._timeout, message)

    def _timeout(self, message: str) -> None:
        log.warning("upstream timeout: %s", message)
        self.cancel("upstream_timeout", message)


class _Attempt:
    """One HTTP attempt: the response head, the progress timers, and an error body read only up to its cap."""

    __slots__ = ("call", "error_body", "error_cut", "failure", "last_progress", "loop", "reading_error", "sent_at", "settings", "timer")

    first_token_message = "no first token within FIRST_TOKEN_TIMEOUT_SECS"

    def __init__(self, call: UpstreamCall) -> None:
        self.call = call
        self.settings = call.settings
        self.loop = call._loop
        self.error_body = bytearray()
        self.error_cut = False  # we stopped reading a long error body
        self.reading_error = False  # the answer is an error: its body is kept only for the message
        self.failure: UpstreamError | None = None
        self.sent_at = 0.0
        self.last_progress = 0.0
        self.timer: object | None = None
        call.status = None
        call.response_headers = _NO_HEADERS

    async def run(self, request: HTTPRequest) -> HTTPResponse | None:
        self.arm_first_token()
        fetch = self.call._send(request)
        try:
            with contextlib.suppress(Exception):  # `_received` reads the failure from the future
                await fetch
            return self.call._received(fetch)
        finally:
            self.disarm()

    # timers: one handle at a time (first token, then idleness, each cut short by STREAM_MAX_SECS);
    # idle re-arms lazily instead of on every read
    def arm_first_token(self) -> None:
        self.sent_at = self.loop.time()
        self.timer = self.call.timeout_at(self.sent_at + self.settings.first_token_timeout, self.first_token_message)

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
        self.reading_error = not 200 <= status < 300
        ttfb = (self.loop.time() - self.sent_at) * 1000
        log.info("upstream connected: HTTP %d after %.1f ms", status, ttfb, extra={"upstream_status": status, "ttfb_ms": round(ttfb, 2)})

    def _take_error_body(self, chunk: bytes) -> None:
        """Keep the first 64 KiB of an error body for its message, then close the connection: no more is read."""
        room = _MAX_ERROR_BODY - len(self.error_body)
        self.error_body += chunk[:room]
        if len(chunk) >= room and not self.error_cut:
            self.error_cut = True
            self.call.close_connection()

    def _fail(self, error: UpstreamError) -> None:
        if self.failure is None:
            self.failure = error
        self.call.cancel(error.error_type, error.message)

    def _raise_unless_answered(self, response: HTTPResponse | None) -> None:
        """Raise what the upstream's answer, if any, says went wrong: our own failure, its error, the connection's."""
        if self.failure is not None:
            raise self.failure
        if self.reading_error and (self.error_cut or response is not None):
            status = self.call.status
            if status is None or 200 <= status < 300:  # a 2xx JSON body where a stream was expected
                status = 502
            raise error_from_response(status, bytes(self.error_body), self.call.response_headers, self.call.redact)
        if response is None:
            raise self.call._connection_error()


class _CompleteAttempt(_Attempt):
    """A non-streaming attempt: the answer read as it arrives, up to MAX_UPSTREAM_BODY_BYTES, timed like a stream
    (first byte, then idle gaps, then STREAM_MAX_SECS) instead of one deadline for the whole answer."""

    __slots__ = ("body",)

    first_token_message = "no answer within FIRST_TOKEN_TIMEOUT_SECS"

    def __init__(self, call: UpstreamCall) -> None:
        super().__init__(call)
        self.body = bytearray()

    def on_chunk(self, chunk: bytes) -> None:
        if self.reading_error:
            self._take_error_body(chunk)
            return
        cap = self.settings.max_upstream_body_bytes
        if len(self.body) + len(chunk) > cap:
            self._fail(UpstreamError("upstream_error", f"upstream answer larger than MAX_UPSTREAM_BODY_BYTES ({cap} bytes)"))
            return
        self.body += chunk
        if not chunk.isspace():  # whitespace a provider sends while it thinks is a keep-alive, not progress
            self._progress()

    def answer(self, response: HTTPResponse | None) -> Completion:
        self._raise_unless_answered(response)
        assert response is not None
        body = bytes(self.body)
        try:
            parsed, strict = decode(body)
        except ValueError:
            raise UpstreamError("upstream_error", "upstream sent a malformed JSON answer", response.code) from None
        if not isinstance(parsed, dict) or "error" in parsed:
            raise error_from_response(502, body, response.headers, self.call.redact)
        if strict:  # relayed as sent: tool calls, logprobs and extra fields byte-exact
            return Completion(parsed, body)
        try:  # NaN or Infinity in it: the client still gets strict JSON, with null in their place
            return Completion(parsed, dumps(parsed))
        except NestingTooDeepError:
            raise UpstreamError("upstream_error", "upstream answer is nested too deeply", response.code) from None


class _StreamAttempt(_Attempt):
    """A streaming attempt: the SSE parser, `[DONE]`, and back-pressure from the consumer."""

    __slots__ = ("consumer", "done", "parser", "relayed")

    def __init__(self, call: UpstreamCall, consumer: EventsConsumer) -> None:
        super().__init__(call)
        self.consumer = consumer
        self.parser = SSEParser(call.settings.max_upstream_line_bytes, call.settings.max_upstream_event_bytes)
        self.done = False
        # the response once the body ended, or None as soon as what came before `[DONE]` is relayed
        self.relayed: asyncio.Future[HTTPResponse | None] = asyncio.get_running_loop().create_future()

    async def run(self, request: HTTPRequest) -> HTTPResponse | None:
        """Until the body ends, or until what came before `[DONE]` is relayed: a provider that keeps its body
        open after `[DONE]` must not hold back our `done`. Its connection is then closed after a grace period
        unless the body ends in it (only then may the connection go back to the pool). One future serves both
        ends, so a stream waits on no task of its own."""
        self.arm_first_token()
        self.call._send(request).add_done_callback(self._received)
        try:
            return await self.relayed
        finally:
            self.disarm()

    def _received(self, fetch: asyncio.Future[HTTPResponse]) -> None:
        try:
            response = self.call._received(fetch)
        except UpstreamError as error:
            if not self.relayed.done():
                self.relayed.set_exception(error)
            return
        if not self.relayed.done():  # else `[DONE]` was relayed first: the rest of the body no longer matters
            self.relayed.set_result(response)

    def on_headers(self, status: int, headers: httputil.HTTPHeaders) -> None:
        super().on_headers(status, headers)
        self.reading_error = self.reading_error or headers.get("Content-Type", "").startswith("application/json")

    def on_chunk(self, chunk: bytes) -> Awaitable[None] | None:
        if self.reading_error:
            self._take_error_body(chunk)
            return None
        if self.done:
            return None
        try:
            events = self.parser.feed(chunk)
        except (LineTooLongError, EventTooLargeError) as exc:
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
                self.disarm()
                self.loop.call_later(_AFTER_DONE_GRACE, self.call.close_connection)
                break
        if not events:
            self._done_relayed()
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
        if result is None:
            self._done_relayed()
            return None
        return self._await_consumer(result)

    async def _await_consumer(self, result: Awaitable[None]) -> None:
        try:
            await result
        except UpstreamError as exc:  # the consumer's way to end the call (e.g. its client went away)
            self._fail(exc)
        self.last_progress = self.loop.time()  # time spent waiting on the client is not upstream idleness
        self._done_relayed()

    def _done_relayed(self) -> None:
        if self.done and self.failure is None and not self.relayed.done():
            self.relayed.set_result(None)

    async def finish(self, response: HTTPResponse | None) -> None:
        if self.failure is not None:
            raise self.failure
        if self.done:
            return
        self._raise_unless_answered(response)
        tail = self.parser.close()
        if tail:
            pending = self._deliver(tail)
            if pending is not None:
                await pending
        if not self.done:
            raise UpstreamError("upstream_error", "upstream stream ended before [DONE]", self.call.status, retryable=True)
