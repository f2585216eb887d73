"""CORS: `*` by default, or an allow-list of origins echoed back with `Vary: Origin`."""

from __future__ import annotations

ALLOW_METHODS = "GET, POST, DELETE, OPTIONS"
ALLOW_HEADERS = "Content-Type, Authorization, X-Request-ID, Last-Event-ID"
EXPOSE_HEADERS = (
    "X-Request-ID, Retry-After, RateLimit-Limit, RateLimit-Remaining, RateLimit-Reset, Server-Timing, "
    "X-Budget-Limit, X-Budget-Remaining, X-Budget-Reset, X-Budget-Limit-USD, X-Budget-Remaining-USD"
)
MAX_AGE = "600"
# the preflight answer's extra headers, for an allowed Origin
PREFLIGHT_HEADERS = {
    "Access-Control-Allow-Methods": ALLOW_METHODS,
    "Access-Control-Allow-Headers": ALLOW_HEADERS,
    "Access-Control-Max-Age": MAX_AGE,
}


class CorsPolicy:
    def __init__(self, allowed_origins: tuple[str, ...]) -> None:
        self.any_origin = "*" in allowed_origins
        self.allowed = frozenset(origin.rstrip("/") for origin in allowed_origins)  # browsers send no trailing slash

    def allows(self, origin: str | None) -> bool:
        return self.any_origin or (origin is not None and origin in self.allowed)

    def headers(self, origin: str | None) -> dict[str, str]:
        """The response's CORS headers: none of the Allow-* ones when the Origin is not allowed."""
        if self.any_origin:
            return {"Access-Control-Allow-Origin": "*", "Access-Control-Expose-Headers": EXPOSE_HEADERS}
        vary = {"Vary": "Origin"}  # the answer depends on Origin: caches must key on it
        if origin is None or origin not in self.allowed:
            return vary
        return {**vary, "Access-Control-Allow-Origin": origin, "Access-Control-Expose-Headers": EXPOSE_HEADERS}
