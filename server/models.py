"""The model catalogue behind `GET /v1/models`: the provider's list, cached, filtered, never an error.

One upstream call per MODELS_CACHE_SECS however many clients ask: concurrent misses share one fetch
(single-flight). Entries keep the provider's fields (context_length, pricing...) and get OpenAI's
`object`, `created` and `owned_by` when missing. With ALLOWED_MODELS set only the models clients may
choose are shown. When the provider is unreachable or answers an error, the last good copy is served,
else OPENROUTER_MODEL and ALLOWED_MODELS, and the fetch is tried again after at most
`_RETRY_AFTER_FAILURE` seconds.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from tornado.httpclient import HTTPRequest
from tornado.ioloop import IOLoop

from server.config import Settings
from server.http_client import PooledAsyncHTTPClient
from server.schemas.common import allowed_models
from server.upstream import upstream_headers

log = logging.getLogger("gateway.models")

Model = dict[str, Any]
_FETCH_TIMEOUT = 10.0  # seconds a client waits for the provider's list before getting the fallback
_RETRY_AFTER_FAILURE = 10.0  # seconds: a provider outage costs one call per this, not one per client


def model_entry(raw: Model) -> Model:
    """A provider entry in OpenAI's shape, its own fields kept."""
    entry = dict(raw)
    entry.setdefault("object", "model")
    entry.setdefault("created", 0)
    entry.setdefault("owned_by", entry["id"].split("/", 1)[0])
    return entry


class ModelCatalogue:
    def __init__(self, settings: Settings, client: PooledAsyncHTTPClient) -> None:
        self.settings = settings
        self.client = client
        allowed = allowed_models(settings)
        self._allowed = frozenset(allowed)
        self._fallback = [model_entry({"id": model}) for model in allowed or (settings.model,)]
        self._good: list[Model] | None = None
        self._fresh_until = 0.0  # monotonic time
        self._refreshing: asyncio.Future[None] | None = None

    async def models(self, request_id: str) -> list[Model]:
        """The visible models: fresh, last good, or the configured fallback."""
        if time.monotonic() >= self._fresh_until:
            if self._refreshing is None:
                self._refreshing = asyncio.ensure_future(self._refresh(request_id))
            # shielded: one waiting client that goes away must not cancel the fetch the others share
            await asyncio.shield(self._refreshing)
        return self._good if self._good is not None else self._fallback

    async def find(self, model_id: str, request_id: str) -> Model | None:
        return next((model for model in await self.models(request_id) if model["id"] == model_id), None)

    async def _refresh(self, request_id: str) -> None:
        try:
            self._good = await self._fetch(request_id)
            self._fresh_until = time.monotonic() + self.settings.models_cache_secs
        except ValueError as exc:
            log.warning("model catalogue unavailable (%s); serving the %s", exc, "last good copy" if self._good else "configured models")
            self._fresh_until = time.monotonic() + min(self.settings.models_cache_secs, _RETRY_AFTER_FAILURE)
        finally:
            self._refreshing = None

    async def _fetch(self, request_id: str) -> list[Model]:
        """The provider's list, filtered; ValueError when it cannot be had."""
        settings = self.settings
        headers = dict(upstream_headers(settings, request_id), Accept="application/json")
        del headers["Content-Type"]
        request = HTTPRequest(settings.base_url + "/models", headers=headers, connect_timeout=settings.upstream_connect_timeout)
        loop = IOLoop.current()
        timer = loop.call_later(min(_FETCH_TIMEOUT, settings.first_token_timeout), self.client.abort, request)
        try:
            response = await self.client.fetch(request, raise_error=False)
        except Exception as exc:  # connection-level failures raise even with raise_error=False
            raise ValueError(f"could not reach the provider: {exc}") from None
        finally:
            loop.remove_timeout(timer)
        if response.code != 200:
            raise ValueError(f"HTTP {response.code}")
        try:
            listed = json.loads(response.body)["data"]
        except (ValueError, TypeError, KeyError):
            raise ValueError("not a JSON object with a data array") from None
        if not isinstance(listed, list):
            raise ValueError("not a JSON object with a data array")
        entries = [model_entry(raw) for raw in listed if isinstance(raw, dict) and isinstance(raw.get("id"), str)]
        return [entry for entry in entries if not self._allowed or entry["id"] in self._allowed]
