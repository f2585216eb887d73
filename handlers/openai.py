"""The OpenAI-compatible API: `POST /v1/chat/completions`, `GET /v1/models`, and OpenAI-shaped 404s under /v1/.

Streaming passes the upstream's `chat.completion.chunk` lines through unchanged, in order, as
`data: {...}\\n\\n`, then `data: [DONE]\\n\\n`. The status line goes out only with the first upstream chunk,
so an upstream failure before that keeps its HTTP status with an OpenAI error body (the SDKs raise the
matching exception); a failure after it becomes an OpenAI error chunk followed by `data: [DONE]`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable
from typing import Any

from tornado.web import stream_request_body

from handlers.base import BaseHandler, NotFoundHandler
from handlers.streaming import StreamingHandler
from middleware.errors import ApiError, openai_error_body
from middleware.openai_validation import OpenAIChatRequest, validate_openai_chat
from server.sse import SSEEvent, encode_data
from server.upstream import UpstreamCall, UpstreamError, upstream_headers

DONE_EVENT = b"data: [DONE]\n\n"
# how a failure with no upstream HTTP error status reaches an OpenAI client
_STATUS_OF = {"upstream_timeout": 504, "server_shutdown": 503}


def error_status(error: UpstreamError) -> int:
    """The upstream's own HTTP error status when it sent one; else 504 (timeout), 503 (shutdown) or 502."""
    if error.status is not None and error.status >= 400:
        return error.status
    return _STATUS_OF.get(error.error_type, 502)


def _usage_only(data: str) -> bool:
    """The final usage chunk (`"choices": []`), which OpenAI sends only to clients that asked for usage."""
    return not json.loads(data).get("choices")


def _answer_text(choices: Any) -> str:
    """The first choice's message text of a non-streaming answer ("" when it has none)."""
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        message = choices[0].get("message")
        if isinstance(message, dict) and isinstance(message.get("content"), str):
            return str(message["content"])
    return ""


@stream_request_body
class ChatCompletionsHandler(StreamingHandler):
    route = "/v1/chat/completions"
    error_style = "openai"
    protected = True

    _streaming = False  # status and headers are committed

    async def post(self) -> None:
        request = validate_openai_chat(self.take_body(), self.gateway.settings)
        await self.take_stream_slot()
        try:
            if self._client_gone:  # left while the slot was being taken: spend nothing upstream
                self.log_outcome("client_disconnected", 0, None, model=request.model, prompt_chars=request.prompt_chars)
            elif request.stream:
                await self._stream(request)
            else:
                await self._complete(request)
        finally:
            await self.release_stream_slot()

    def _start_call(self, payload: dict[str, Any], accept: str) -> UpstreamCall:
        settings = self.gateway.settings
        headers = dict(upstream_headers(settings, self.request_id), Accept=accept)
        self.call = UpstreamCall(self.gateway.http_client, settings, self.metered_payload(payload), headers)
        self.call.on_attempt = self.gateway.metrics.upstream_attempt
        self._upstream_sent_at = time.monotonic()
        self._gateway_seconds = self._upstream_sent_at - self.started_at
        self.gateway.metrics.request_overhead.observe(self._gateway_seconds)
        return self.call

    def _set_server_timing(self) -> None:
        """Headers wait for the upstream here: show the gateway's share and the upstream's first byte apart."""
        self.set_server_timing(self._gateway_seconds, time.monotonic() - self._upstream_sent_at)

    def _http_error(self, error: UpstreamError) -> ApiError:
        """A failure before anything was sent: the upstream's status (or 502/503/504) and its message."""
        headers = {}
        retry_after = self.call.response_headers.get("Retry-After") if self.call is not None else None
        if retry_after:
            headers["Retry-After"] = retry_after
        elif error.error_type == "server_shutdown":
            headers["Retry-After"] = "1"
        return ApiError(error_status(error), error.error_type, error.message, headers=headers)

    # -- stream: false ------------------------------------------------------------------------------
    async def _complete(self, request: OpenAIChatRequest) -> None:
        fields: dict[str, Any] = {"model": request.model, "prompt_chars": request.prompt_chars}
        call = self._start_call(dict(request.payload, stream=False), "application/json")
        try:
            answer = await call.complete()
        except UpstreamError as error:
            outcome = self.outcome_of(error)
            self.log_outcome(outcome, 0, None, upstream_status=call.status, error_type=error.error_type, **fields)
            if outcome == "client_disconnected":
                return
            raise self._http_error(error) from None
        choices = answer.get("choices")
        finish_reason = choices[0].get("finish_reason") if isinstance(choices, list) and choices and isinstance(choices[0], dict) else None
        usage = answer.get("usage")
        self.relayed_chars = len(_answer_text(choices))
        self.log_outcome(
            "finished",
            0,
            None,
            upstream_status=call.status,
            usage=usage if isinstance(usage, dict) else None,
            finish_reason=finish_reason,
            **fields,
        )
        await self.settle_budget()
        self._set_server_timing()
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(answer, ensure_ascii=False))

    # -- stream: true -------------------------------------------------------------------------------
    async def _stream(self, request: OpenAIChatRequest) -> None:
        fields: dict[str, Any] = {"model": request.model, "prompt_chars": request.prompt_chars}
        self.events = 0
        self.ttft = None
        self.finish_reason = None
        self.usage = None
        self._include_usage = request.include_usage
        # usage is always requested: the gateway logs and counts it even when the client did not ask
        payload = dict(request.payload, stream=True, stream_options={"include_usage": True})
        call = self._start_call(payload, "text/event-stream")
        try:
            await call.stream(self._on_events)
        except UpstreamError as error:
            outcome = self.outcome_of(error)
            self.log_outcome(outcome, self.events, self.ttft, upstream_status=call.status, error_type=error.error_type, **fields)
            if outcome == "client_disconnected" or self._client_gone:
                return
            if not self._streaming:
                raise self._http_error(error) from None
            body = openai_error_body(error_status(error), error.error_type, error.message, self.request_id)
            await self.settle_budget()
            self.finish(encode_data(json.dumps(body, ensure_ascii=False)) + DONE_EVENT)
            return
        self.log_outcome(
            "finished",
            self.events,
            self.ttft,
            upstream_status=call.status,
            usage=self.usage,
            finish_reason=self.finish_reason,
            **fields,
        )
        await self.settle_budget()
        if not self._streaming:  # an upstream that answered [DONE] and nothing else
            self._begin()
        self.finish(DONE_EVENT)

    def _begin(self) -> None:
        self._streaming = True
        self._set_server_timing()
        self.begin_stream()

    def _on_events(self, events: list[SSEEvent]) -> Awaitable[None] | None:
        """One upstream read's chunks -> one write and one flush, each chunk's data unchanged."""
        started = time.monotonic()
        out = []
        for event, chunk in self.read_chunks(events):
            if chunk.usage is not None and not self._include_usage and _usage_only(event.data):
                continue
            if chunk.content and self.ttft is None:
                self.ttft = started - self.started_at
            out.append(encode_data(event.data))
        if out and not self._streaming:
            self._begin()
        return self.write_batch(out, self.chunk_failure, started)


class ModelsHandler(BaseHandler):
    """`GET /v1/models`: ALLOWED_MODELS, or the one configured model, as OpenAI's model list."""

    route = "/v1/models"
    error_style = "openai"
    protected = True

    def get(self) -> None:
        settings = self.gateway.settings
        models = settings.allowed_models or (settings.model,)
        self.write(
            {
                "object": "list",
                "data": [{"id": model, "object": "model", "created": 0, "owned_by": model.split("/", 1)[0]} for model in models],
            }
        )


class OpenAINotFoundHandler(NotFoundHandler):
    """Unknown paths under /v1/: the 404 in OpenAI's error shape, which those SDKs parse."""

    error_style = "openai"
