"""`StreamingHandler`: what /chat and /v1/chat/completions share about a request that opens a stream.

It reads the JSON body under the size cap, takes a stream slot, builds the upstream call and the relay
that owns the stream's lifecycle, and cancels the upstream call the moment the client leaves. The
protocols differ only in their `Encoder` (handlers/relay.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import Any

from tornado.web import HTTPError

from handlers.follow import FollowerMixin
from handlers.relay import Encoder, OutcomeLog, Relay
from handlers.sink import ClientSink, Sink
from handlers.slot import StreamSlot
from server.context import bind_request
from server.errors import ApiError, LimiterUnavailableError, body_too_large
from server.upstream import UpstreamCall, upstream_headers


class StreamingHandler(FollowerMixin):
    protected = True

    _body: bytearray | None = None
    slot: StreamSlot
    sink: ClientSink
    outcome: OutcomeLog

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
        self.slot = StreamSlot(self.gateway)
        self.sink = ClientSink(self, self.gateway.settings, self.on_connection_close)
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

    # -- the stream -------------------------------------------------------------------------------
    def outcome_log(self, model: str, prompt_chars: int) -> OutcomeLog:
        gateway = self.gateway
        fields = {"model": model, "prompt_chars": prompt_chars}
        budgets = gateway.budgets if self.budget is not None else None  # only a metered client's calls are charged
        self.outcome = OutcomeLog(gateway.metrics, self.started_at, self.key_id, fields, budgets, self.client_id)
        return self.outcome

    def upstream_call(self, payload: dict[str, Any], accept: str = "text/event-stream") -> UpstreamCall:
        settings = self.gateway.settings
        headers = dict(upstream_headers(settings, self.request_id), Accept=accept)
        call = UpstreamCall(self.gateway.http_client, settings, self.metered(payload), headers)
        call.on_attempt = self.gateway.metrics.upstream_attempt
        return call

    def metered(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Usage (and OpenRouter's cost) always asked for, and the answer capped to the tokens left in the client's
        budget, so one call cannot overshoot it by a whole answer; a client's smaller value is kept."""
        payload = dict(payload, usage={"include": True})
        left = self.budget.tokens_left if self.budget is not None else None
        if left is not None:
            name = "max_completion_tokens" if "max_completion_tokens" in payload else "max_tokens"
            payload[name] = min(payload.get(name) or self.gateway.settings.max_tokens_limit, left)
        return payload

    def relay(self, payload: dict[str, Any], encoder: Encoder, messages: Sequence[dict[str, Any]], sink: Sink | None = None) -> Relay:
        """The relay of this request's stream into its own response (or into `sink`)."""
        return Relay(self.upstream_call(payload), encoder, sink or self.sink, self.slot, self.outcome, messages)

    # -- ending -----------------------------------------------------------------------------------
    def log_exception(self, typ: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        """An exception nobody expected: Tornado logs its traceback (once); the stream's outcome is still counted."""
        super().log_exception(typ, value, tb)
        outcome = getattr(self, "outcome", None)
        if outcome is not None and not isinstance(value, (HTTPError, ApiError, LimiterUnavailableError)):
            outcome("internal_error", error_type="internal_error")

    def on_connection_close(self) -> None:
        """The client left: close the upstream socket now (also while waiting for its first byte)."""
        if self._finished:
            return
        self.sink.close()
        self.stop_following()
        bind_request(self.request_id)
        self.slot.cancel("client_disconnected", "client disconnected")
