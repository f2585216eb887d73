"""`POST /chat`: the seed's API. A prompt (or messages) in; `connected`, `content`..., then `done` or `error` out.

Each event is `data: {"content": str, "request_id": str, "type": ...}\\n\\n`; `done` adds `finish_reason`
and `usage` when the upstream reported them, `error` adds `error_type` (and `status` for upstream HTTP
errors). Exactly one terminal event ends every stream the client is still there to read.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable
from typing import Any

from tornado.web import stream_request_body

from handlers.streaming import ClientGoneError, StreamingHandler
from middleware.validation import validate_chat
from server.completions import encode_json_string
from server.logs import prompt_fields
from server.sse import SSEEvent
from server.upstream import UpstreamCall, UpstreamError, upstream_headers

CONTENT_PREFIX = b'data: {"content": '


def chat_event(kind: str, content: str, request_id: str, **extra: Any) -> bytes:
    event = {"content": content, "request_id": request_id, "type": kind, **extra}
    return b"data: " + json.dumps(event, ensure_ascii=False).encode("utf-8") + b"\n\n"


@stream_request_body
class ChatHandler(StreamingHandler):
    route = "/chat"

    async def post(self) -> None:
        settings = self.gateway.settings
        request = validate_chat(self.take_body(), settings)
        await self.take_stream_slot()
        try:
            await self._relay(request.messages, request.model, request.options, request.prompt_chars)
        finally:
            await self.release_stream_slot()

    async def _relay(self, messages: list[dict[str, str]], model: str, options: dict[str, Any], prompt_chars: int) -> None:
        settings = self.gateway.settings
        request_id = self.request_id
        # the suffix of every content event, built once per stream: the id is [A-Za-z0-9._:-] only
        self._content_suffix = f', "request_id": "{request_id}", "type": "content"}}\n\n'.encode()
        self.events = 0
        self.ttft = None
        self.finish_reason = None
        self.usage = None
        self.answer: list[str] | None = [] if settings.log_prompts else None
        self.set_server_timing(time.monotonic() - self.started_at)  # headers go out before the upstream call
        self.begin_stream()
        try:
            await self.send_now(chat_event("connected", "", request_id))
        except ClientGoneError:
            self.log_outcome("client_disconnected", 0, None, model=model, prompt_chars=prompt_chars)
            return
        payload = {"model": model, "messages": messages, "stream": True, "stream_options": {"include_usage": True}, **options}
        payload = self.metered_payload(payload)
        self.call = UpstreamCall(self.gateway.http_client, settings, payload, upstream_headers(settings, request_id))
        self.call.on_attempt = self.gateway.metrics.upstream_attempt
        self.gateway.metrics.request_overhead.observe(time.monotonic() - self.started_at)
        fields: dict[str, Any] = {"model": model, "prompt_chars": prompt_chars}
        try:
            await self.call.stream(self._on_events)
        except UpstreamError as error:
            fields.update(prompt_fields(settings.log_prompts, messages, "".join(self.answer or ())))
            outcome = self.outcome_of(error)
            self.log_outcome(outcome, self.events, self.ttft, upstream_status=self.call.status, error_type=error.error_type, **fields)
            if outcome != "client_disconnected" and not self._client_gone:
                await self.settle_budget()
                extra: dict[str, Any] = {"error_type": error.error_type}
                if error.status is not None:
                    extra["status"] = error.status
                self.finish(chat_event("error", error.message, request_id, **extra))
            return
        fields.update(prompt_fields(settings.log_prompts, messages, "".join(self.answer or ())))
        done: dict[str, Any] = {}
        if self.finish_reason is not None:
            done["finish_reason"] = self.finish_reason
        if self.usage is not None:
            done["usage"] = self.usage
        self.log_outcome(
            "finished",
            self.events,
            self.ttft,
            upstream_status=self.call.status,
            usage=self.usage,
            finish_reason=self.finish_reason,
            **fields,
        )
        await self.settle_budget()
        self.finish(chat_event("done", "", request_id, **done))

    def _on_events(self, events: list[SSEEvent]) -> Awaitable[None] | None:
        """One upstream read's events -> one write and one flush of content events."""
        started = time.monotonic()
        out = []
        for _, chunk in self.read_chunks(events):
            if chunk.content:
                if self.answer is not None:
                    self.answer.append(chunk.content)
                out.append(CONTENT_PREFIX + encode_json_string(chunk.content) + self._content_suffix)
        if out and self.ttft is None:
            self.ttft = started - self.started_at
        return self.write_batch(out, self.chunk_failure, started)
