"""`Gateway`: the long-lived services one application shares, built once from the settings."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

from server.budgets import Budgets, make_ledger
from server.client_keys import ClientKeys
from server.config import Settings
from server.cors import CorsPolicy
from server.http_client import PooledAsyncHTTPClient
from server.metrics import Metrics
from server.models import ModelCatalogue
from server.rate_limit import LimiterStore, MemoryStore
from server.redis_store import RedisStore
from server.resume import MemoryResumeStore, ResumeStore
from server.resume_redis import RedisResumeStore


class Stoppable(Protocol):
    def shutdown(self) -> None: ...


class ActiveStreams:
    """The streams in flight, so a drain can wait for them and end the stragglers."""

    def __init__(self) -> None:
        self._streams: set[Stoppable] = set()
        self._idle = asyncio.Event()
        self._idle.set()

    def __len__(self) -> int:
        return len(self._streams)

    def __iter__(self) -> Iterator[Stoppable]:
        return iter(list(self._streams))

    def add(self, stream: Stoppable) -> None:
        self._streams.add(stream)
        self._idle.clear()

    def discard(self, stream: Stoppable) -> None:
        self._streams.discard(stream)
        if not self._streams:
            self._idle.set()

    async def wait_idle(self, timeout: float) -> bool:
        """True when every stream ended within `timeout` seconds."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True


@dataclass
class Gateway:
    settings: Settings
    http_client: PooledAsyncHTTPClient
    limiter: LimiterStore
    client_keys: ClientKeys
    cors: CorsPolicy
    metrics: Metrics
    models: ModelCatalogue
    budgets: Budgets
    resume: ResumeStore | None = None  # None: "resumable" requests are served as plain streams
    streams: ActiveStreams = field(default_factory=ActiveStreams)
    draining: bool = False

    @classmethod
    def create(cls, settings: Settings, metrics: Metrics | None = None, limiter: LimiterStore | None = None) -> Gateway:
        metrics = metrics or Metrics(per_key=bool(settings.client_api_keys))
        limiter = limiter or make_limiter(settings, metrics)
        http_client = PooledAsyncHTTPClient(force_instance=True)
        return cls(
            settings=settings,
            http_client=http_client,
            limiter=limiter,
            client_keys=ClientKeys(settings.client_api_keys),
            cors=CorsPolicy(settings.cors_allowed_origins),
            metrics=metrics,
            models=ModelCatalogue(settings, http_client),
            budgets=Budgets(settings, make_ledger(settings, limiter)),
            resume=make_resume_store(settings, metrics),
        )


def make_limiter(settings: Settings, metrics: Metrics) -> LimiterStore:
    """RATE_LIMIT_BACKEND=redis shares one budget per client across workers and hosts; memory is per process."""
    if settings.rate_limit_backend == "redis":
        return RedisStore.from_url(
            settings.redis_url,
            fail_open=settings.rate_limit_fail_mode == "open",
            stream_ttl=settings.stream_slot_ttl,
            on_error=metrics.rate_limit_store_errors.inc,
        )
    return MemoryStore()


def make_resume_store(settings: Settings, metrics: Metrics) -> ResumeStore | None:
    """Resumable streams need every process that may serve a resume to see the stream."""
    if not settings.resumable_streams:
        return None
    if settings.resume_backend == "redis":
        return RedisResumeStore.from_url(settings.redis_url, settings, metrics)
    return MemoryResumeStore(settings, metrics)
