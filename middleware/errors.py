"""The two error shapes on the wire: the gateway's own for /chat and the rest, OpenAI's for /v1 routes."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

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


def utc_timestamp() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def gateway_error_body(status: int, error_type: str, message: str, request_id: str) -> dict[str, Any]:
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
