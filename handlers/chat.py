"""`POST /chat`: the gateway's own simple API. A prompt (or messages) in; `connected`, `content`..., then `done` or `error` out.

Each event is `data: {"content": str, "request_id": str, "type": ...}\\n\\n`; `done` adds `finish_reason`
and `usage` when the upstream reported them, `error` adds `error_type` (and `status` for upstream HTTP
errors). Exactly one terminal event ends every stream the client is still there to read.
"""

from __future__ import annotations

import time
from functools import partial
from typing import Any

from tornado.web import stream_request_body

from handlers.relay import OutcomeLog
from handlers.sink import server_timing
from handlers.slot import StreamSlot
from handlers.stream_state import StreamState
from handlers.streaming import StreamingHandler
from server.completions import Chunk
from server.jsonio import dumps, encode_json_string
from server.resume import ResumeStore
from server.schemas.chat import validate_chat
from server.sse import SSEEvent
from server.upstream import UpstreamError

CONTENT_PREFIX = b'data: {"content": '


def chat_event(kind: str, content: str, request_id: str, **extra: Any) -> bytes:
    return b"data: " + dumps({"content": content, "request_id": request_id, "type": kind, **extra}) + b"\n\n"


class ChatEncoder:
    """/chat's events; `connected` goes out before the upstream call."""

    __slots__ = ("_content_suffix", "request_id", "stream_id")

    def __init__(self, request_id: str, stream_id: str | None = None) -> None:
        self.request_id = request_id
        self.stream_id = stream_id  # a resumable stream's: `connected` carries it
        # the suffix of every content event, built once per stream: the id is [A-Za-z0-9._:-] only
        self._content_suffix = f', "request_id": "{request_id}", "type": "content"}}\n\n'.encode()

    def opening(self) -> list[bytes]:
        if self.stream_id is None:
            return [chat_event("connected", "", self.request_id)]
        return [chat_event("connected", "", self.request_id, stream_id=self.stream_id)]

    def encode(self, chunks: list[tuple[SSEEvent, Chunk]]) -> list[bytes]:
        suffix = self._content_suffix
        return [CONTENT_PREFIX + encode_json_string(chunk.content) + suffix for _, chunk in chunks if chunk.content]

    def error(self, error: UpstreamError) -> list[bytes]:
        extra: dict[str, Any] = {"error_type": error.error_type}
        if error.status is not None:
            extra["status"] = error.status
        return [chat_event("error", error.message, self.request_id, **extra)]

    def end(self, state: StreamState) -> list[bytes]:
        done: dict[str, Any] = {}
        if state.finish_reason is not None:
            done["finish_reason"] = state.finish_reason
        if state.usage is not None:
            done["usage"] = state.usage
        return [chat_event("done", "", self.request_id, **done)]


@stream_request_body
class ChatHandler(StreamingHandler):
    route = "/chat"

    async def post(self) -> None:
        request = validate_chat(self.take_body(), self.gateway.settings)
        self.outcome_log(request.model, request.prompt_chars)
        await self.slot.acquire(self.client_id)
        payload = {
            "model": request.model,
            "messages": request.messages,
            "stream": True,
            "stream_options": {"include_usage": True},
            **request.options,
        }
        store = self.gateway.resume if request.resumable else None
        messages = request.messages
        del request  # for the rest of the answer the call alone holds the conversation, until it commits
        if store is not None:
            await self._resumable(store, payload, messages)
            return
        relay = self.relay(payload, ChatEncoder(self.request_id), messages)
        del payload, messages
        try:
            await relay.run()
        finally:
            await self.slot.release()

    async def _resumable(self, store: ResumeStore, payload: dict[str, Any], messages: list[dict[str, Any]]) -> None:
        """The upstream call writes into a stream of its own, which holds the slot until it really ends;
        this response is its first reader."""
        stream = await store.create(self.key_id)
        self.outcome.fields["resumes"] = 0
        stream.on_resume = partial(_count_resume, self.outcome)
        relay = self.relay(payload, ChatEncoder(self.request_id, stream.id), messages, sink=stream)
        del payload, messages
        slot, self.slot = self.slot, StreamSlot(self.gateway)  # leaving no longer cancels the call: the grace timer does
        stream.run(relay.run(), relay.cancel, slot.release)
        self.sink.start(server_timing(time.monotonic() - self.started_at))
        await self.follow(stream, -1, self.sink, resume=False)


def _count_resume(outcome: OutcomeLog) -> None:
    outcome.fields["resumes"] += 1
    outcome.metrics.stream_resumes.inc()
