"""`GET /health`: 200 `{"status": "ok"}`, or 503 `{"status": "draining"}` once shutdown has begun.

`HEAD /health` answers the same status and headers without the body: load balancers probe with HEAD.
"""

from __future__ import annotations

import os

from handlers.base import BaseHandler


class HealthHandler(BaseHandler):
    route = "/health"
    rate_limited = False

    def get(self) -> None:
        gateway = self.gateway
        if gateway.draining:
            self.set_status(503)
        self.set_header("Cache-Control", "no-store")
        self.write(
            {
                "status": "draining" if gateway.draining else "ok",
                "streams_active": len(gateway.streams),
                "demo": gateway.settings.demo,
                "model": gateway.settings.model,
                "pid": os.getpid(),  # which worker answered, when WORKERS > 1
            }
        )

    def head(self) -> None:
        self.get()  # Tornado sends the headers (Content-Length included) and drops the body for HEAD
