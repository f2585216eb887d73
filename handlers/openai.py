"""The OpenAI-compatible API: `POST /v1/chat/completions`, `GET /v1/models[/{id}]`, and OpenAI-shaped 404s under /v1/.

Streaming passes the upstream's `chat.completion.chunk` lines through unchanged, in order, as
`data: {...}\\n\\n`, then `data: [DONE]\\n\\n`. The status line goes out only with the first upstream chunk,
so an upstream failure before that keeps its HTTP status with an OpenAI error body (the SDKs raise the
matching exception); a failure after it becomes an OpenAI error chunk followed by `data: [DONE]`.
"""

from __future__ import annotations

import time

from tornado.web import stream_request_body

from handlers.base import BaseHandler, NotFoundHandler
from handlers.relay import Relay, outcome_of
from handlers.sink import server_timing
from handlers.stream_state import StreamState
from handlers.streaming import StreamingHandler
from middleware.errors import openai_error_body
from server.completions import Chunk, summarize_completion
from server.errors import ApiError
from server.jsonio import dumps, loads
from server.schemas.openai import OpenAIChatRequest, validate_openai_chat
from server.sse import SSEEvent, encode_data
from server.upstream import UpstreamCall, UpstreamError

DONE_EVENT = b"data: [DONE]\n\n"
# how a failure with no upstream HTTP error status reaches an OpenAI client
_STATUS_OF = {"upstream_timeout": 504, "server_shutdown": 503, "internal_error": 500}


def error_status(error: UpstreamError) -> int:
    """The upstream's own HTTP error status when it sent one; else 504 (timeout), 503 (shutdown), 500 (ours) or 502."""
    if error.status is not None and error.status >= 400:
        return error.status
    return _STATUS_OF.get(error.error_type, 502)


def _usage_only(data: str) -> bool:
    """The final usage chunk (`"choices": []`), which OpenAI sends only to clients that asked for usage."""
    return not loads(data).get("choices")


def http_error(error: UpstreamError, call: UpstreamCall) -> ApiError:
    """A failure before anything was sent: the upstream's status (or 502/503/504) and its message."""
    headers = {}
    retry_after = call.response_headers.get("Retry-After")
    if retry_after:
        headers["Retry-After"] = retry_after
    elif error.error_type == "server_shutdown":
        headers["Retry-After"] = "1"
    return ApiError(error_status(error), error.error_type, error.message, headers=headers)


class OpenAIEncoder:
    """Each upstream chunk's data unchanged; the status line waits for the first of them."""

    __slots__ = ("include_usage", "request_id")

    def __init__(self, request_id: str, include_usage: bool) -> None:
        self.request_id = request_id
        self.include_usage = include_usage

    def opening(self) -> None:
        return None

    def encode(self, chunks: list[tuple[SSEEvent, Chunk]]) -> list[bytes]:
        return [
            encode_data(chunk.strict_data or event.data)
            for event, chunk in chunks
            if self.include_usage or chunk.usage is None or not _usage_only(event.data)
        ]

    def error(self, error: UpstreamError) -> list[bytes]:
        body = openai_error_body(error_status(error), error.error_type, error.message, self.request_id)
        return [encode_data(dumps(body)), DONE_EVENT]

    def end(self, state: StreamState) -> list[bytes]:
        return [DONE_EVENT]


@stream_request_body
class ChatCompletionsHandler(StreamingHandler):
    route = "/v1/chat/completions"
    error_style = "openai"
    protected = True

    async def post(self) -> None:
        request = validate_openai_chat(self.take_body(), self.gateway.settings)
        self.outcome_log(request.model, request.prompt_chars)
        await self.slot.acquire(self.client_id)
        try:
            if not request.stream:
                await self._complete(request)
                return
            # usage is always requested: the gateway logs and counts it even when the client did not ask
            payload = dict(request.payload, stream=True, stream_options={"include_usage": True})
            relay = self.relay(payload, OpenAIEncoder(self.request_id, request.include_usage), request.payload["messages"])
            del request, payload  # for the rest of the answer the call alone holds the conversation, until it commits
            await self._stream(relay)
        finally:
            await self.slot.release()

    # -- stream: false ------------------------------------------------------------------------------
    async def _complete(self, request: OpenAIChatRequest) -> None:
        if self.sink.gone:  # left while the slot was being taken: spend nothing upstream
            self.outcome("client_disconnected")
            return
        call = self.slot.call = self.upstream_call(dict(request.payload, stream=False), "application/json")
        sent_at = time.monotonic()
        self.gateway.metrics.request_overhead.observe(sent_at - self.started_at)
        try:
            completion = await call.complete()
        except UpstreamError as error:
            outcome = outcome_of(error)
            self.outcome(outcome, upstream_status=call.status, error_type=error.error_type)
            if outcome == "client_disconnected":
                return
            raise http_error(error, call) from None
        summary = summarize_completion(completion.answer)
        state = StreamState(relayed_chars=len(summary.content))
        self.outcome("finished", state, upstream_status=call.status, usage=summary.usage, finish_reason=summary.finish_reason)
        await self.outcome.settle()
        self.set_header("Server-Timing", server_timing(sent_at - self.started_at, time.monotonic() - sent_at))
        self.set_header("Content-Type", "application/json")
        self.finish(completion.body)  # the provider's bytes (strict JSON): tool calls, logprobs and extra fields as sent

    # -- stream: true -------------------------------------------------------------------------------
    async def _stream(self, relay: Relay) -> None:
        try:
            await relay.run()
        except UpstreamError as error:
            raise http_error(error, relay.call) from None


class ModelsHandler(BaseHandler):
    """`GET /v1/models`: the provider's catalogue (cached, filtered by ALLOWED_MODELS) as OpenAI's model list."""

    route = "/v1/models"
    error_style = "openai"
    protected = True

    async def get(self) -> None:
        self.write({"object": "list", "data": await self.gateway.models.models(self.request_id)})


class ModelHandler(BaseHandler):
    """`GET /v1/models/{id}`: one model of that list (ids hold `/`, sent as is or URL-encoded), else OpenAI's 404."""

    route = "/v1/models/{id}"
    error_style = "openai"
    protected = True

    async def get(self, model_id: str) -> None:
        model = await self.gateway.models.find(model_id, self.request_id)
        if model is None:
            raise ApiError(404, "model_not_found", f"The model '{model_id}' does not exist or is not available here", field="model")
        self.write(model)


class OpenAINotFoundHandler(NotFoundHandler):
    """Unknown paths under /v1/: the 404 in OpenAI's error shape, which those SDKs parse."""

    error_style = "openai"
