"""The edge in process (AsyncHTTPTestCase): security headers, CORS, request ids, 404/405/500 and the one error shape.

One raw-socket test (a pytest function): HEAD then GET pipelined on one connection, the only way to see
that a HEAD answer sends no body bytes (the tornado HTTP client never reuses a connection).
"""

from __future__ import annotations

import re
import uuid

from tornado.httputil import HTTPHeaders
from tornado.web import Application

from handlers.base import BaseHandler
from tests.apptest import GatewayTestCase, log_records
from tests.conftest import RunningGateway, head_and_get, same_headers

KEY = "sk-client-key-1"
AUTH = {"Authorization": f"Bearer {KEY}"}
ORIGIN = {"Origin": "https://a.example"}

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "strict-origin-when-cross-origin",
    "Permissions-Policy": "accelerometer=(), camera=(), geolocation=(), gyroscope=(), magnetometer=(), microphone=(), payment=(), usb=()",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Strict-Transport-Security": "max-age=31536000; includeSubDomains",
    "X-XSS-Protection": "0",
}
EXPOSED = "X-Request-ID, Retry-After, RateLimit-Limit, RateLimit-Remaining, RateLimit-Reset, Server-Timing, X-Budget-Limit"
UUID4 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


def assert_secure(headers: HTTPHeaders) -> None:
    for name, value in SECURITY_HEADERS.items():
        assert headers.get(name) == value, name
    assert headers.get("Server") is None
    assert "TornadoServer" not in str(headers)
    assert headers.get("X-Request-ID")


def allow_headers(headers: HTTPHeaders) -> list[str]:
    return [name for name in headers if name.lower().startswith("access-control-allow-")]


# -- security headers ---------------------------------------------------------------------------------


class KeyedSmallBodyTest(GatewayTestCase):
    env = {"CLIENT_API_KEYS": KEY, "MAX_BODY_BYTES": "1024"}

    def test_security_headers_on_every_kind_of_response(self) -> None:
        cases = [
            (200, lambda: self.request("GET", "/health")),
            (200, lambda: self.chat({"prompt": "hi"}, AUTH)),
            (204, lambda: self.request("OPTIONS", "/chat", headers=ORIGIN)),
            (400, lambda: self.chat({"promt": "hi"}, AUTH)),
            (401, lambda: self.chat({"prompt": "hi"})),
            (404, lambda: self.request("GET", "/nope")),
            (405, lambda: self.request("GET", "/chat", headers=AUTH)),
            (413, lambda: self.chat({"prompt": "x" * 2000}, AUTH)),
            (415, lambda: self.request("POST", "/chat", raw=b"hi", headers={"Content-Type": "text/plain", **AUTH})),
        ]
        for case, (status, send) in enumerate(cases):
            with self.subTest(case=case, status=status):
                response = send()
                self.assertEqual(response.code, status)
                assert_secure(response.headers)


class RateLimitOneTest(GatewayTestCase):
    env = {"RATE_LIMIT": "1"}

    def test_security_headers_on_a_429(self) -> None:
        self.chat({"prompt": "hi"})
        response = self.chat({"prompt": "hi"})
        self.assertEqual(response.code, 429)
        assert_secure(response.headers)

    def test_preflight_is_never_rate_limited(self) -> None:
        for _ in range(5):
            response = self.request("OPTIONS", "/chat", headers=ORIGIN)
            self.assertEqual(response.code, 204)
            self.assertIsNone(response.headers.get("RateLimit-Limit"))
        self.assertEqual(self.chat({"prompt": "hi"}).code, 200)  # the bucket was not touched


class HstsOffTest(GatewayTestCase):
    env = {"HSTS_ENABLED": "false"}

    def test_hsts_can_be_turned_off(self) -> None:
        off = self.request("GET", "/health")
        self.assertIsNone(off.headers.get("Strict-Transport-Security"))
        self.assertEqual(off.headers.get("X-Frame-Options"), "DENY")


class HstsShortTest(GatewayTestCase):
    env = {"HSTS_MAX_AGE": "300"}

    def test_hsts_can_be_shortened(self) -> None:
        short = self.request("GET", "/nope")
        self.assertEqual(short.headers.get("Strict-Transport-Security"), "max-age=300; includeSubDomains")


# -- CORS, request ids, 404 and 405 with the default settings -----------------------------------------


class DefaultEdgeTest(GatewayTestCase):
    def test_preflight_on_any_route(self) -> None:
        for path in ("/chat", "/health", "/no/such/path"):
            with self.subTest(path=path):
                response = self.request("OPTIONS", path, headers=ORIGIN)
                self.assertEqual(response.code, 204)
                self.assertEqual(response.body, b"")
                self.assertEqual(response.headers.get("Access-Control-Allow-Origin"), "*")
                self.assertEqual(response.headers.get("Access-Control-Allow-Methods"), "GET, POST, DELETE, OPTIONS")
                self.assertEqual(
                    response.headers.get("Access-Control-Allow-Headers"), "Content-Type, Authorization, X-Request-ID, Last-Event-ID"
                )
                self.assertEqual(response.headers.get("Access-Control-Max-Age"), "600")
                self.assertIn(EXPOSED, response.headers.get("Access-Control-Expose-Headers") or "")
                self.assertIsNone(response.headers.get("Vary"))

    def test_wildcard_origin_on_plain_and_error_responses(self) -> None:
        for path in ("/health", "/nope"):
            with self.subTest(path=path):
                response = self.request("GET", path)
                self.assertEqual(response.headers.get("Access-Control-Allow-Origin"), "*")
                self.assertIn(EXPOSED, response.headers.get("Access-Control-Expose-Headers") or "")

    def test_valid_request_id_is_echoed_everywhere_and_forwarded(self) -> None:
        rid = "client-1.trace:A_b-" + "x" * 109  # 128 characters, every allowed class
        self.assertEqual(len(rid), 128)
        response = self.chat({"prompt": "hi"}, {"X-Request-ID": rid})
        self.assertEqual(response.headers.get("X-Request-ID"), rid)
        self.assertEqual({event["request_id"] for event in self.events(response)}, {rid})
        self.assertEqual(self.upstream.requests[0]["headers"]["X-Request-Id"], rid)
        for method, path in (("GET", "/health"), ("GET", "/nope"), ("OPTIONS", "/chat"), ("GET", "/chat")):
            with self.subTest(method=method, path=path):
                self.assertEqual(self.request(method, path, headers={"X-Request-ID": rid}).headers.get("X-Request-ID"), rid)

    def test_bad_request_id_is_replaced_by_a_uuid4(self) -> None:
        for inbound in ("", "has space", "semi;colon", "x" * 129, "é", "a/b", "<script>"):
            with self.subTest(inbound=inbound):
                response = self.chat({"prompt": "hi"}, {"X-Request-ID": inbound})
                generated = response.headers.get("X-Request-ID") or ""
                self.assertRegex(generated, f"^{UUID4.pattern}$")
                self.assertEqual(uuid.UUID(generated).version, 4)
                self.assertEqual(self.upstream.requests[-1]["headers"]["X-Request-Id"], generated)
                self.assertEqual({event["request_id"] for event in self.events(response)}, {generated})

    def test_every_log_line_of_a_request_carries_its_id(self) -> None:
        with log_records() as records:
            self.chat({"prompt": "hi"}, {"X-Request-ID": "trace-42"})
            self.request("GET", "/nope", headers={"X-Request-ID": "trace-43"})
        ours = [record for record in records if record.name.startswith(("gateway", "tornado"))]
        self.assertGreaterEqual({record.getMessage() for record in ours}, {"started", "completed"})
        self.assertEqual(sorted({record.request_id for record in ours}), ["trace-42", "trace-43"])  # type: ignore[attr-defined]
        self.assertTrue(all(record.request_id is not None for record in ours))  # type: ignore[attr-defined]

    def test_unknown_path_is_a_json_404_for_any_method(self) -> None:
        for method in ("GET", "POST", "DELETE"):
            with self.subTest(method=method):
                body = self.api_error(self.request(method, "/nope", body={} if method == "POST" else None), 404, "not_found")
                self.assertEqual(body["message"], f"no route for {method} /nope")
                self.assertRegex(body["timestamp"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")

    def test_wrong_method_is_a_json_405_with_allow(self) -> None:
        cases = [
            ("GET", "/chat", "POST, OPTIONS"),
            ("PUT", "/chat", "POST, OPTIONS"),
            ("POST", "/health", "GET, HEAD, OPTIONS"),
            ("X0000001", "/health", "GET, HEAD, OPTIONS"),
            ("get", "/chat", "POST, OPTIONS"),
        ]
        for method, path, allow in cases:
            with self.subTest(method=method, path=path):
                response = self.request(method, path, body={} if method != "GET" else None)
                body = self.api_error(response, 405, "method_not_allowed")
                self.assertEqual(response.headers.get("Allow"), allow)
                self.assertEqual(body["message"], f"{method} is not allowed here; use {allow}")

    def test_made_up_methods_reach_404_and_preflight(self) -> None:
        self.api_error(self.request("X0000004", "/no/such/path"), 404, "not_found")
        self.assertEqual(self.request("OPTIONS", "/health", headers=ORIGIN).code, 204)


class OriginListTest(GatewayTestCase):
    env = {"CORS_ALLOWED_ORIGINS": "https://a.example, https://b.example"}

    def test_origin_list_echoes_allowed_and_ignores_others(self) -> None:
        allowed = self.request("GET", "/health", headers={"Origin": "https://b.example"})
        self.assertEqual(allowed.headers.get("Access-Control-Allow-Origin"), "https://b.example")
        self.assertEqual(allowed.headers.get("Vary"), "Origin")
        self.assertIn(EXPOSED, allowed.headers.get("Access-Control-Expose-Headers") or "")
        preflight = self.request("OPTIONS", "/chat", headers=ORIGIN)
        self.assertEqual(preflight.code, 204)
        self.assertEqual(preflight.headers.get("Access-Control-Allow-Origin"), "https://a.example")
        self.assertEqual(preflight.headers.get("Access-Control-Allow-Methods"), "GET, POST, DELETE, OPTIONS")

        for method, path in (("GET", "/health"), ("OPTIONS", "/chat"), ("GET", "/nope")):
            with self.subTest(method=method, path=path):
                denied = self.request(method, path, headers={"Origin": "https://evil.example"})
                self.assertEqual(allow_headers(denied.headers), [])
                self.assertIsNone(denied.headers.get("Access-Control-Expose-Headers"))
                self.assertEqual(denied.headers.get("Vary"), "Origin")
        self.assertEqual(allow_headers(self.request("GET", "/health").headers), [])


class KeyedRateLimitOneTest(GatewayTestCase):
    env = {"RATE_LIMIT": "1", "CLIENT_API_KEYS": KEY}

    def test_made_up_methods_get_the_whole_edge(self) -> None:
        first = self.request("X0000001", "/health", headers={"X-Request-ID": "odd-1"})
        self.assertEqual(self.api_error(first, 405, "method_not_allowed")["request_id"], "odd-1")
        self.assertEqual(first.headers.get("RateLimit-Limit"), "1")  # /health is exempt for the methods it serves only
        assert_secure(first.headers)
        self.api_error(self.request("X0000002", "/health"), 429, "rate_limited")
        self.assertEqual(self.request("GET", "/health").code, 200)
        self.api_error(self.request("X0000003", "/chat"), 401, "unauthorized")  # the client key comes first


# -- 500 ----------------------------------------------------------------------------------------------


class BoomHandler(BaseHandler):
    route = "/boom"

    def get(self) -> None:
        raise RuntimeError("secret internal detail")


class UnexpectedExceptionTest(GatewayTestCase):
    def get_app(self) -> Application:
        """The real routes plus one that raises: an unexpected exception, end to end."""
        app = super().get_app()
        app.add_handlers(r".*", [(r"/boom", BoomHandler)])
        return app

    def test_unexpected_exception_is_a_json_500_without_the_trace(self) -> None:
        with log_records() as records:
            response = self.request("GET", "/boom", headers={"X-Request-ID": "boom-1"})
        body = self.api_error(response, 500, "internal_error")
        self.assertEqual(body["request_id"], "boom-1")
        self.assertNotIn(b"secret internal detail", response.body)
        self.assertNotIn(b"Traceback", response.body)
        assert_secure(response.headers)
        traced = [record for record in records if record.exc_info and "secret internal detail" in str(record.exc_info[1])]
        self.assertTrue(traced, "the stack trace goes to the log")
        self.assertEqual(self.request("GET", "/health").code, 200)  # the app survives


# -- raw socket: HEAD's wire framing ------------------------------------------------------------------


async def test_head_health_answers_like_get_without_a_body(gateway: RunningGateway) -> None:
    head, get = await head_and_get(gateway.port, "/health")
    assert head.status == 200 and get.json()["status"] == "ok"
    same_headers(head, get)
    assert head.header("Content-Length") == str(len(get.body)) and head.header("Cache-Control") == "no-store"
    assert_secure(HTTPHeaders.parse(head.raw_headers.partition("\r\n")[2]))
