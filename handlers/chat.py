"""`POST /chat`: the seed's API. A prompt (or messages) in; `connected`, `content`..., then `done` or `error` out.

Each event is `data: {"content": str, "request_id": str, "type": ...}\\n\\n`; `done` adds `finish_reason`
and `usage` when the upstream reported them, `error` adds `error_type` (and `status` for upstream HTTP
errors). Exactly one terminal event ends every stream the client is still there to read.
"""

from __future__ import annotations

import json
from typing import Any

from tornado.web import stream_request_body

from handlers.stream_state import StreamState
from handlers.streaming import StreamingHandler
from middleware.validation import validate_chat
from server.completions import Chunk, encode_json_string
from server.sse import SSEEvent
from server.upstream import UpstreamError

CONTENT_PREFIX = b'data: {"content": '


def chat_event(kind: str, content: str, request_id: str, **extra: Any) -> bytes:
    event = {"content": content, "request_id": request_id, "type": kind, **extra}
    return b"data: " + json.dumps(event, ensure_ascii=False).encode("utf-8") + b"\n\n"


class ChatEncoder:
    """/chat's events; `connected` goes out before the upstream call."""

    __slots__ = ("_content_suffix", "request_id")

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        # the suffix of every content event, built once per stream: the id is [A-Za-z0-9._:-] only
        self._content_suffix = f', "request_id": "{request_id}", "type": "content"}}\n\n'.encode()

    def opening(self) -> list[bytes]:
        return [chat_event("connected", "", self.request_id)]

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
        try:
            payload = {
                "model": request.model,
                "messages": request.messages,
                "stream": True,
                "stream_options": {"include_usage": True},
                **request.options,
            }
            await self.relay(payload, ChatEncoder(self.request_id), request.messages).run()
        finally:
            await self.slot.release()
