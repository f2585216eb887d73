"""CORS: `*` by default, or an allow-list of origins echoed back with `Vary: Origin`."""

from __future__ import annotations

from tornado.web import RequestHandler

ALLOW_METHODS = "GET, POST, DELETE, OPTIONS"
ALLOW_HEADERS = "Content-Type, Authorization, X-Request-ID, Last-Event-ID"
EXPOSE_HEADERS = "X-Request-ID, Retry-After, RateLimit-Limit, RateLimit-Remaining, RateLimit-Reset, Server-Timing"
MAX_AGE = "600"


class CorsPolicy:
    def __init__(self, allowed_origins: tuple[str, ...]) -> None:
        self.any_origin = "*" in allowed_origins
        self.allowed = frozenset(origin.rstrip("/") for origin in allowed_origins)  # browsers send no trailing slash

    def allows(self, origin: str | None) -> bool:
        return self.any_origin or (origin is not None and origin in self.allowed)

    def apply(self, handler: RequestHandler, origin: str | None) -> None:
        """Set the response's CORS headers: none of the Allow-* ones when the Origin is not allowed."""
        if self.any_origin:
            handler.set_header("Access-Control-Allow-Origin", "*")
        else:
            handler.set_header("Vary", "Origin")  # the answer depends on Origin: caches must key on it
            if origin is None or origin not in self.allowed:
                return
            handler.set_header("Access-Control-Allow-Origin", origin)
        handler.set_header("Access-Control-Expose-Headers", EXPOSE_HEADERS)

    def preflight(self, handler: RequestHandler) -> None:
        """The preflight answer's extra headers (for an allowed Origin; the caller checks)."""
        handler.set_header("Access-Control-Allow-Methods", ALLOW_METHODS)
        handler.set_header("Access-Control-Allow-Headers", ALLOW_HEADERS)
        handler.set_header("Access-Control-Max-Age", MAX_AGE)
