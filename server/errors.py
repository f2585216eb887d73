"""The errors the core raises for the edge to answer: a refused request (`ApiError`) and a limiter that cannot decide.

Plain exceptions, not Tornado's `HTTPError`: the core knows what went wrong and its status, the edge
(`middleware/edge.py`) knows how each route family spells it on the wire.
"""

from __future__ import annotations


class ApiError(Exception):
    """An error answer: HTTP status, a stable `error_type`, a precise message, optional headers and field."""

    def __init__(
        self,
        status: int,
        error_type: str,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        field: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status
        self.error_type = error_type
        self.message = message
        self.headers = headers or {}
        self.field = field


def body_too_large(message: str) -> ApiError:
    """413: answered before the body is read, so the connection closes after it (and says so)."""
    return ApiError(413, "body_too_large", message, headers={"Connection": "close"})


class LimiterUnavailableError(Exception):
    """The shared limiter (Redis) cannot decide and RATE_LIMIT_FAIL_MODE=closed: the request must wait."""

    def __init__(self, retry_after: int) -> None:
        super().__init__("the rate limiter is unreachable; retry shortly")
        self.retry_after = retry_after
