"""`ApiError` and the two error shapes: the seed's for /chat and the rest, OpenAI's for /v1 routes."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from tornado.web import HTTPError

# error_type -> OpenAI's `type` for the same failure, so SDKs map it to the right exception
_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    429: "rate_limit_error",
}
# error_type -> OpenAI's `type` where the status alone would name the wrong one
_OPENAI_TYPES_BY_ERROR = {"budget_exceeded": "insufficient_quota"}


class ApiError(HTTPError):
    """An error answer: HTTP status, a stable `error_type`, a precise message, optional headers."""

    def __init__(
        self,
        status: int,
        error_type: str,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        field: str | None = None,
    ) -> None:
        super().__init__(status)
        self.error_type = error_type
        self.message = message
        self.headers = headers or {}
        self.field = field


def body_too_large(message: str) -> ApiError:
    """413: answered before the body is read, so the connection closes after it (and says so)."""
    return ApiError(413, "body_too_large", message, headers={"Connection": "close"})


def utc_timestamp() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def seed_error_body(status: int, error_type: str, message: str, request_id: str) -> dict[str, Any]:
    return {
        "message": message,
        "code": status,
        "error_type": error_type,
        "request_id": request_id,
        "timestamp": utc_timestamp(),
    }


def openai_error_body(status: int, error_type: str, message: str, request_id: str, field: str | None = None) -> dict[str, Any]:
    kind = _OPENAI_TYPES_BY_ERROR.get(error_type) or _OPENAI_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": field, "code": error_type, "request_id": request_id}}
