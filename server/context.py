"""The request id of the request being served, for every log line, via `contextvars`.

Tornado runs each request's handler in its own task, and tasks started from it (the upstream fetch)
copy the context, so binding once in the handler reaches every line logged on the request's behalf.
"""

from __future__ import annotations

from contextvars import ContextVar, Token

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)


def bind_request(request_id: str) -> Token[str | None]:
    return request_id_var.set(request_id)
