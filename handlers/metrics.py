"""`GET /metrics`: Prometheus text exposition, optionally behind `METRICS_TOKEN`."""

from __future__ import annotations

import hmac

from handlers.base import BaseHandler
from server.client_keys import bearer_token
from server.errors import ApiError
from server.metrics import CONTENT_TYPE


class MetricsHandler(BaseHandler):
    route = "/metrics"
    rate_limited = False

    def get(self) -> None:
        token = self.gateway.settings.metrics_token
        if token:
            presented = bearer_token(self.request.headers.get("Authorization")) or ""
            if not hmac.compare_digest(presented.encode(), token.encode()):
                raise ApiError(
                    401,
                    "unauthorized",
                    "metrics need Authorization: Bearer <METRICS_TOKEN>",
                    headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
                )
        self.set_header("Content-Type", CONTENT_TYPE)
        self.set_header("Cache-Control", "no-store")
        self.write(self.gateway.metrics.render())
