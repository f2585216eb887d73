"""`StreamSlot`: a stream's claim on capacity, and the handle a drain uses to stop it.

Taken before any upstream call (per-client cap 429 first, then the process-wide cap 503) and held until
the stream really ends, which for a resumable stream can be long after its request left.
"""

from __future__ import annotations

from server.errors import ApiError
from server.state import Gateway
from server.upstream import UpstreamCall


class StreamSlot:
    __slots__ = ("_client", "_registered", "call", "gateway")

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.call: UpstreamCall | None = None  # set once the upstream call exists
        self._client: str | None = None
        self._registered = False

    async def acquire(self, client_id: str) -> None:
        gateway = self.gateway
        settings = gateway.settings
        if gateway.draining:
            raise ApiError(503, "server_shutdown", "server is shutting down; retry on another instance", headers={"Retry-After": "1"})
        if not await gateway.limiter.acquire_stream(client_id, settings.max_streams_per_client):
            message = f"at most {settings.max_streams_per_client} concurrent streams per client"
            raise self._refused("streams_per_client", 429, "too_many_streams", message)
        self._client = client_id
        if len(gateway.streams) >= settings.max_concurrent_streams:
            await self.release()
            message = f"the gateway is at its limit of {settings.max_concurrent_streams} streams"
            raise self._refused("concurrent_streams", 503, "server_busy", message)
        gateway.streams.add(self)
        self._registered = True
        gateway.metrics.streams_active.inc()

    def _refused(self, reason: str, status: int, error_type: str, message: str) -> ApiError:
        """A stream refused for capacity: counted by `reason`, worth retrying in a second."""
        self.gateway.metrics.rate_limited(reason)
        return ApiError(status, error_type, message, headers={"Retry-After": "1"})

    async def release(self) -> None:
        if self._registered:
            self._registered = False
            self.gateway.streams.discard(self)
            self.gateway.metrics.streams_active.dec()
        if self._client is not None:
            client, self._client = self._client, None
            await self.gateway.limiter.release_stream(client)

    def cancel(self, error_type: str, message: str) -> None:
        if self.call is not None:
            self.call.cancel(error_type, message)

    def shutdown(self) -> None:
        """The drain deadline passed: end this stream with a server_shutdown error."""
        self.cancel("server_shutdown", "server is shutting down")
