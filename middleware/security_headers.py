"""Security headers for every response, errors included."""

from __future__ import annotations

from tornado.web import RequestHandler

API_CSP = "default-src 'none'; frame-ancestors 'none'"
PAGE_CSP = "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"

PERMISSIONS_POLICY = ", ".join(
    f"{feature}=()" for feature in ("accelerometer", "camera", "geolocation", "gyroscope", "magnetometer", "microphone", "payment", "usb")
)

_FIXED = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "strict-origin-when-cross-origin",
    "Permissions-Policy": PERMISSIONS_POLICY,
    "Cross-Origin-Resource-Policy": "same-origin",
    # OWASP now advises 0: the legacy XSS auditor can itself be abused to leak data; CSP is the real defence.
    "X-XSS-Protection": "0",
}


def apply_security_headers(handler: RequestHandler, csp: str, hsts_max_age: int | None) -> None:
    """Set the fixed headers, the route's CSP and HSTS (None: off), and drop Tornado's version banner."""
    for name, value in _FIXED.items():
        handler.set_header(name, value)
    handler.set_header("Content-Security-Policy", csp)
    if hsts_max_age is not None:
        handler.set_header("Strict-Transport-Security", f"max-age={hsts_max_age}; includeSubDomains")
    handler.clear_header("Server")
