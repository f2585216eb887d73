"""`GET /chat/streams/{stream_id}` resumes a resumable /chat stream; `DELETE` cancels it.

GET replays every event with an id greater than `Last-Event-ID` (header, or `?last_event_id=`), byte for
byte as first sent, then follows the stream live until its terminal event. Unknown, expired and someone
else's streams are the same 404 `stream_not_found`; events already dropped (RESUME_MAX_BYTES) are 410.
"""

from __future__ import annotations

import time

from handlers.follow import FollowerMixin
from handlers.sink import ClientSink, server_timing
from server.errors import ApiError
from server.resume import ResumableStream, StreamExpiredError, StreamNotFoundError


class StreamsHandler(FollowerMixin):
    route = "/chat/streams/{stream_id}"
    protected = True

    sink: ClientSink | None = None

    async def _find(self, stream_id: str) -> ResumableStream:
        store = self.gateway.resume
        try:
            if store is None:
                raise StreamNotFoundError
            return await store.find(stream_id, self.key_id)
        except StreamNotFoundError:
            raise ApiError(404, "stream_not_found", "no such stream (unknown, expired, or not yours)") from None

    def _last_event_id(self) -> int:
        raw = self.request.headers.get("Last-Event-ID") or self.get_query_argument("last_event_id", "")
        if not raw:
            return -1
        if not raw.strip().isdigit():
            raise ApiError(400, "invalid_request", "Last-Event-ID must be an event id such as 3")
        return int(raw)

    async def get(self, stream_id: str) -> None:
        after = self._last_event_id()
        stream = await self._find(stream_id)
        try:
            await stream.check(after)
        except StreamExpiredError:
            raise ApiError(410, "stream_expired", "the events after that id were dropped (RESUME_MAX_BYTES)") from None
        self.sink = ClientSink(self, self.gateway.settings, self.on_connection_close)
        self.sink.start(server_timing(time.monotonic() - self.started_at))
        await self.follow(stream, after, self.sink, resume=True)

    async def delete(self, stream_id: str) -> None:
        await (await self._find(stream_id)).cancel()
        self.set_status(204)
        self.finish()

    def on_connection_close(self) -> None:
        if self.sink is not None:
            self.sink.close()
        self.stop_following()
