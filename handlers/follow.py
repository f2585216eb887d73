"""`FollowerMixin`: a response that reads a resumable stream's event log, replaying then following it live."""

from __future__ import annotations

import asyncio

from handlers.base import BaseHandler
from handlers.sink import ClientGoneError, ClientSink
from server.resume import ResumableStream, StreamExpiredError


class FollowerMixin(BaseHandler):
    _following: asyncio.Future[None] | None = None

    async def follow(self, stream: ResumableStream, after: int, sink: ClientSink, *, resume: bool) -> None:
        """Send every event with id > `after`, then the live ones until the terminal event or the client leaves.
        While attached, this reader keeps the stream's upstream call alive."""
        await stream.attach(resume)
        try:
            self._following = asyncio.ensure_future(self._copy(stream, after, sink))
            await self._following
        except (asyncio.CancelledError, ClientGoneError):
            pass
        except StreamExpiredError:  # fell more than RESUME_MAX_BYTES behind: a resume now gets 410
            sink.end([])
        finally:
            self._following = None
            await stream.detach()

    @staticmethod
    async def _copy(stream: ResumableStream, after: int, sink: ClientSink) -> None:
        while True:
            events, after, ended = await stream.read(after)
            if ended:
                sink.end(events)
                return
            if events:
                await sink.send_now(events)

    def stop_following(self) -> None:
        if self._following is not None:
            self._following.cancel()
