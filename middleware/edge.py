"""`EdgeMixin`: the base every handler inherits, so no route (404, 405 and errors included) skips the edge.

In order, for each request: request id and security/CORS headers (`set_default_headers`, re-applied on
every error), preflight, client key (401), rate limit (429), method (405), Content-Type (415) and body
size (413) — all before the body is read and before any upstream call. Errors render in one shape per
route family. Any method reaches the edge, made-up ones included: Tornado would refuse them before
`prepare()`, so without the rate limit and with the raw method as a metrics label.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from functools import cached_property
from types import TracebackType
from typing import Any

from tornado.web import HTTPError, RequestHandler

from middleware.client_ip import client_ip
from middleware.errors import gateway_error_body, openai_error_body
from middleware.request_id import resolve_request_id
from middleware.security_headers import API_CSP, apply_security_headers
from server.budgets import Standing
from server.context import bind_request
from server.cors import PREFLIGHT_HEADERS
from server.errors import ApiError, LimiterUnavailableError, body_too_large
from server.jsonio import dumps
from server.state import Gateway

access_log = logging.getLogger("gateway.access")

_JSON_TYPES = ("application/json",)
_HANDLER_METHODS = ("GET", "HEAD", "POST", "DELETE", "OPTIONS")  # the methods any handler here implements


class _EveryMethod(tuple[str, ...]):
    """A SUPPORTED_METHODS that holds every method, so `prepare()` (the edge) decides the 405, not Tornado."""

    def __contains__(self, method: object) -> bool:
        return True


class EdgeMixin(RequestHandler):
    SUPPORTED_METHODS = _EveryMethod()
    csp = API_CSP
    error_style = "gateway"  # "openai" on /v1 routes: the shape those SDKs parse
    protected = False  # needs a client key when CLIENT_API_KEYS is set
    rate_limited = True
    route = "unmatched"  # the route template: the only path label metrics and logs aggregate by

    _request_id: str | None = None
    key_id: str | None = None
    _limit_headers: dict[str, str] | None = None
    _head_sent = False
    budget: Standing | None = None  # the client's budget before this call, when it has one

    # -- identity ---------------------------------------------------------------------------------
    @property
    def gateway(self) -> Gateway:
        return self.application.settings["gateway"]  # type: ignore[no-any-return]

    @property
    def request_id(self) -> str:
        if self._request_id is None:
            self._request_id = resolve_request_id(self.request.headers.get("X-Request-ID"))
        return self._request_id

    @cached_property
    def client_ip(self) -> str:
        """Computed once per request: the log line, the rate limit and the stream slot all ask."""
        headers = self.request.headers
        return client_ip(
            self.request.remote_ip or "",
            headers.get("X-Forwarded-For"),
            headers.get("X-Real-IP"),
            self.gateway.settings.trusted_proxies,
        )

    @property
    def client_id(self) -> str:
        """Whom rate limits count against: the client key when keys are on, else the client IP."""
        return f"key:{self.key_id}" if self.key_id else f"ip:{self.client_ip}"

    # -- headers on every response ------------------------------------------------------------------
    def set_default_headers(self) -> None:
        if self._head_sent:
            return  # `clear()` after the head went out: nothing more is sent
        settings = self.gateway.settings
        apply_security_headers(self, self.csp, settings.hsts_max_age if settings.hsts_enabled else None)
        self.set_header("X-Request-ID", self.request_id)
        self.apply_headers(self.gateway.cors.headers(self.request.headers.get("Origin")))
        self.apply_headers(self._limit_headers or {})

    def apply_headers(self, headers: Mapping[str, str]) -> None:
        for name, value in headers.items():
            self.set_header(name, value)

    def head_sent(self) -> None:
        """The status line and headers are on the wire: a long stream need not hold its ~20 headers for its whole
        life, so `clear()` takes them back to Tornado's three."""
        self._head_sent = True
        self.clear()

    # -- the edge ----------------------------------------------------------------------------------
    async def prepare(self) -> None:
        self.started_at = time.monotonic()
        self._context = bind_request(self.request_id)
        access_log.info(
            "started",
            extra={"method": self.request.method, "path": self.request.path, "client_ip": self.client_ip},
        )
        if self.request.method == "OPTIONS":
            return
        served = self.request.method in self.allowed_methods()
        gateway = self.gateway
        if self.protected and gateway.client_keys.enabled:
            self.key_id = gateway.client_keys.identify(self.request.headers.get("Authorization"))
            if self.key_id is None:
                gateway.metrics.rate_limited("unauthorized")
                raise ApiError(
                    401,
                    "unauthorized",
                    "missing or invalid client key: send Authorization: Bearer <key>",
                    headers={"WWW-Authenticate": "Bearer"},
                )
        if self.rate_limited or not served:  # a route exempt from the limit is exempt only for what it serves
            settings = gateway.settings
            decision = await gateway.limiter.take(self.client_id, settings.rate_limit, settings.rate_limit_burst)
            self._keep_headers(decision.headers())
            if not decision.allowed:
                gateway.metrics.rate_limited("rate")
                raise ApiError(429, "rate_limited", f"rate limit of {settings.rate_limit:g} requests/second exceeded; retry later")
        if self.protected and served:
            limits = gateway.budgets.limits_for(self.key_id)
            if limits.metered:
                self.budget = await gateway.budgets.standing(self.client_id, limits)
                self._keep_headers(self.budget.headers() if self.budget else {})
        if not served:
            self.refuse_method()
        if self.request.method == "POST":
            self._check_body_headers()

    def refuse_method(self) -> None:
        """A method this route does not serve: 405 (with `Allow`, from `write_error`)."""
        raise HTTPError(405)

    def _keep_headers(self, values: dict[str, str]) -> None:
        """Set now and again on an error answer (which clears the headers first)."""
        self._limit_headers = {**(self._limit_headers or {}), **values}
        self.apply_headers(values)

    def _check_body_headers(self) -> None:
        content_type = self.request.headers.get("Content-Type", "")
        if content_type.split(";", 1)[0].strip().lower() not in _JSON_TYPES:
            raise ApiError(415, "unsupported_media_type", "Content-Type must be application/json")
        limit = self.gateway.settings.max_body_bytes
        length = self.request.headers.get("Content-Length")
        if length is not None and length.strip().isdigit() and int(length) > limit:
            raise body_too_large(f"request body is {int(length)} bytes; the limit is {limit}")

    def options(self, *args: Any) -> None:
        """CORS preflight on any route: 204, never rate limited."""
        if self.gateway.cors.allows(self.request.headers.get("Origin")):
            self.apply_headers(PREFLIGHT_HEADERS)  # the Origin headers are already set, by set_default_headers
        self.set_status(204)
        self.finish()

    # -- errors ------------------------------------------------------------------------------------
    def write_error(self, status_code: int, **kwargs: Any) -> None:
        error = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(error, LimiterUnavailableError):
            error = ApiError(503, "rate_limiter_unavailable", str(error), headers={"Retry-After": str(error.retry_after)})
        if isinstance(error, ApiError):
            self.write_api_error(error)
            return
        if status_code == 404:
            error = ApiError(404, "not_found", f"no route for {self.request.method} {self.request.path}")
        elif status_code == 405:
            allowed = self.allowed_methods()
            error = ApiError(
                405,
                "method_not_allowed",
                f"{self.request.method} is not allowed here; use {', '.join(allowed)}",
                headers={"Allow": ", ".join(allowed)},
            )
        elif status_code >= 500:
            error = ApiError(status_code, "internal_error", "internal server error; the request id is in the log")
        else:
            error = ApiError(status_code, "bad_request", self._reason)
        self.write_api_error(error)

    def write_api_error(self, error: ApiError) -> None:
        self.set_status(error.status_code)
        self.apply_headers(error.headers)
        if self.error_style == "openai":
            body = openai_error_body(error.status_code, error.error_type, error.message, self.request_id, error.field)
        else:
            body = gateway_error_body(error.status_code, error.error_type, error.message, self.request_id)
        self.set_header("Content-Type", "application/json")
        self.finish(dumps(body))  # a message may quote client input: a lone surrogate stays an escape

    def log_exception(self, typ: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        """A refused request is an answer, not a crash: no traceback for it."""
        if not isinstance(value, (ApiError, LimiterUnavailableError)):
            super().log_exception(typ, value, tb)

    def allowed_methods(self) -> list[str]:
        return [m for m in _HANDLER_METHODS if getattr(type(self), m.lower()) is not getattr(RequestHandler, m.lower())]

    def on_finish(self) -> None:
        duration = time.monotonic() - getattr(self, "started_at", time.monotonic())
        self.gateway.metrics.request_finished(self.route, self.request.method or "", self.get_status(), duration)


def log_completed(handler: RequestHandler) -> None:
    """Tornado's `log_function`: the one access line per request, in our format."""
    status = handler.get_status()
    level = logging.INFO if status < 400 else logging.WARNING if status < 500 else logging.ERROR
    request = handler.request
    access_log.log(
        level,
        "completed",
        extra={
            "method": request.method,
            "path": request.path,
            "status": status,
            "duration_ms": round(request.request_time() * 1000, 2),
            "key_id": getattr(handler, "key_id", None),
            "request_id": getattr(handler, "request_id", None),
        },
    )
