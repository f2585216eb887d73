"""`Relay`: one stream's lifecycle, the same for every protocol.

Opening event (if the protocol has one) -> upstream call -> each read's chunks encoded and sent to the sink
-> a terminal event (`end` or `error`) -> one outcome line. The protocol supplies only an `Encoder`; the
sink is the client's response, or a resumable stream's event log that outlives the request.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from handlers.sink import ClientGoneError, Sink, server_timing
from handlers.slot import StreamSlot
from handlers.stream_state import StreamState, read_chunks
from server.budgets import Budgets, Charge
from server.completions import Chunk
from server.logs import prompt_fields
from server.metrics import Metrics
from server.sse import SSEEvent
from server.upstream import UpstreamCall, UpstreamError

log = logging.getLogger("gateway.stream")


class Encoder(Protocol):
    def opening(self) -> list[bytes] | None:
        """Sent before the upstream call; None: status and headers wait for the first upstream chunk."""

    def encode(self, chunks: list[tuple[SSEEvent, Chunk]]) -> list[bytes]: ...

    def error(self, error: UpstreamError) -> list[bytes]: ...

    def end(self, state: StreamState) -> list[bytes]: ...


def internal_error() -> UpstreamError:
    return UpstreamError("internal_error", "internal error; the gateway log has the details under this request id")


def outcome_of(error: UpstreamError) -> str:
    if error.error_type in ("client_disconnected", "upstream_timeout", "server_shutdown", "cancelled", "internal_error"):
        return error.error_type
    return "upstream_error"


@dataclass(slots=True)
class OutcomeLog:
    """The stream's one outcome line, its metrics and its charge to the client's budget, each once, at its real end."""

    metrics: Metrics
    started_at: float
    key_id: str | None
    fields: dict[str, Any] = field(default_factory=dict)  # model, prompt_chars
    budgets: Budgets | None = None
    client_id: str = ""  # whose budget pays
    logged: bool = False
    charge: Charge | None = None  # this call's spend, until `settle` hands it to the ledger

    def __call__(self, outcome: str, state: StreamState | None = None, **fields: Any) -> None:
        if self.logged:
            return
        self.logged = True
        state = state or StreamState()
        duration = time.monotonic() - self.started_at
        self.metrics.stream_ended(outcome, duration, state.ttft)
        self.charge = Charge.of(fields.pop("usage", None), self.fields.get("prompt_chars") or 0, state.relayed_chars)
        if self.charge is not None:
            self.metrics.charged(self.key_id, self.charge.prompt_tokens, self.charge.completion_tokens, self.charge.cost_usd)
        level = logging.INFO if outcome in ("finished", "client_disconnected") else logging.WARNING
        extra = {
            "outcome": outcome,
            "events": state.events,
            "duration_ms": round(duration * 1000, 2),
            "ttft_ms": None if state.ttft is None else round(state.ttft * 1000, 2),
            "key_id": self.key_id,
            **Charge.log_fields(self.charge),
            **fields,
            **self.fields,
        }
        log.log(level, "stream %s", outcome.replace("_", " "), extra=extra)

    async def settle(self) -> None:
        """Charge the call once; awaited before its last event, so the client's next request sees the spend."""
        charge, self.charge = self.charge, None
        if charge is not None and self.budgets is not None:
            await self.budgets.charge(self.client_id, charge.total_tokens, charge.cost_usd)


class Relay:
    """Runs `call` into `sink` through `encoder`; `slot.call` lets a drain or a departing client cancel it."""

    __slots__ = ("_sent_at", "call", "encoder", "log_prompts", "messages", "metrics", "outcome", "sink", "started_at", "state")

    def __init__(
        self,
        call: UpstreamCall,
        encoder: Encoder,
        sink: Sink,
        slot: StreamSlot,
        outcome: OutcomeLog,
        messages: Sequence[dict[str, Any]],
    ) -> None:
        self.call = call
        self.encoder = encoder
        self.sink = sink
        self.outcome = outcome
        self.metrics = outcome.metrics
        self.started_at = outcome.started_at
        self.log_prompts = call.settings.log_prompts
        self.messages = messages if self.log_prompts else ()  # the rest of the request is not held for the stream
        self.state = StreamState(answer=[] if self.log_prompts else None)
        self._sent_at = 0.0
        slot.call = call

    async def run(self) -> None:
        """Relay the stream to its end. Raises UpstreamError only when the call failed before the sink
        started (the caller answers with an HTTP status); a client that left ends it quietly."""
        sink = self.sink
        opening = self.encoder.opening()
        if opening is not None and not sink.gone:
            self._start()
            try:
                pending = sink.send(opening)
                if pending is not None:
                    await pending
            except ClientGoneError:
                pass
        if sink.gone:  # left while its slot was being taken or before `connected`: spend nothing upstream
            self.outcome("client_disconnected")
            return
        self._sent_at = time.monotonic()
        self.metrics.request_overhead.observe(self._sent_at - self.started_at)
        call = self.call
        try:
            try:
                await call.stream(self._on_events)
            except UpstreamError:
                raise
            except Exception as exc:  # a bug of ours: logged once, and the stream still ends with one terminal event
                log.exception("relaying the stream failed")
                raise internal_error() from exc
        except UpstreamError as error:
            outcome = outcome_of(error)
            state = self.state
            self.outcome(outcome, state, upstream_status=call.status, error_type=error.error_type, usage=state.usage, **self._prompt())
            await self.outcome.settle()  # a cut or cancelled call pays for what was generated
            if sink.gone:  # a client that left; a resumable stream's log still records why it ended
                return
            if not sink.started:
                raise
            sink.end(self.encoder.error(error))
            return
        state = self.state
        self.outcome(
            "finished",
            state,
            upstream_status=call.status,
            usage=state.usage,
            finish_reason=state.finish_reason,
            **self._prompt(),
        )
        await self.outcome.settle()
        if not sink.started:  # an upstream that answered [DONE] and nothing else
            self._start()
        sink.end(self.encoder.end(state))

    def cancel(self, error_type: str, message: str) -> None:
        self.call.cancel(error_type, message)

    def _prompt(self) -> dict[str, str]:
        return prompt_fields(self.log_prompts, self.messages, "".join(self.state.answer or ()))

    def _start(self) -> None:
        """Before the call: the gateway's time only; at the first chunk: the upstream's first byte apart."""
        now = time.monotonic()
        if self._sent_at:
            self.sink.start(server_timing(self._sent_at - self.started_at, now - self._sent_at))
        else:
            self.sink.start(server_timing(now - self.started_at))

    def _on_events(self, events: list[SSEEvent]) -> Awaitable[None] | None:
        """One upstream read -> one write and one flush; then the read's failure, if it ended in one."""
        started = time.monotonic()
        found = read_chunks(events, self.call)
        state = self.state
        state.note(found, started - self.started_at)
        out = self.encoder.encode(found.chunks)
        if not out:
            if found.failure is not None:
                raise found.failure
            return None
        self.call.commit()
        if not self.sink.started:
            self._start()
        state.events += len(out)
        self.metrics.stream_events.inc(len(out))
        if found.failure is not None:
            self.sink.write(out)  # what came before the failure; the error event follows it
            raise found.failure
        flushed = self.sink.send(out)
        self.metrics.event_overhead.observe(time.monotonic() - started)
        return flushed
