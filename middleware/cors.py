"""CORS: `*` by default, or an allow-list of origins echoed back with `Vary: Origin`."""

from __future__ import annotations

from tornado.web import RequestHandler

ALLOW_METHODS = "GET, POST, OPTIONS"
ALLOW_HEADERS = "Content-Type, Authorization, X-Request-ID"
EXPOSE_HEADERS = "X-Request-ID, Retry-After, RateLimit-Limit, RateLimit-Remaining, RateLimit-Reset, Server-Timing"
MAX_AGE = "600"


class CorsPolicy:
    def __init__(self, allowed_origins: tuple[str, ...]) -> None:
        self.any_origin = "*" in allowed_origins
        self.allowed = frozenset(allowed_origins)

    def apply(self, handler: RequestHandler, origin: str | None) -> bool:
        """Set the response's CORS headers; False when the Origin is not allowed (no Allow-* headers then)."""
        if self.any_origin:
            handler.set_header("Access-Control-Allow-Origin", "*")
        else:
            handler.add_header("Vary", "Origin")
            if origin is None or origin not in self.allowed:
                return False
            handler.set_header("Access-Control-Allow-Origin", origin)
        handler.set_header("Access-Control-Expose-Headers", EXPOSE_HEADERS)
        return True

    def preflight(self, handler: RequestHandler) -> None:
        handler.set_header("Access-Control-Allow-Methods", ALLOW_METHODS)
        handler.set_header("Access-Control-Allow-Headers", ALLOW_HEADERS)
        handler.set_header("Access-Control-Max-Age", MAX_AGE)
