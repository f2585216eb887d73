"""The README's in-process test example, quoted there word for word (tests/test_docs.py checks it)."""

import json

from tornado.testing import AsyncHTTPTestCase
from tornado.web import Application

from app.routes import make_app
from server.config import load_settings
from server.demo_upstream import DemoOptions, start_demo_upstream
from server.state import Gateway


class ChatTest(AsyncHTTPTestCase):
    def get_app(self) -> Application:
        _, base_url = start_demo_upstream(DemoOptions(delay=0))  # the built-in demo upstream, on this test's IOLoop
        settings = load_settings({"OPENROUTER_BASE_URL": base_url}, demo=True)
        self.gateway = Gateway.create(settings)  # what the handlers share: upstream pool, limiter, metrics
        return make_app(settings, self.gateway)

    def tearDown(self) -> None:
        self.gateway.http_client.close()  # the pooled upstream connections
        super().tearDown()

    def test_chat_streams_until_done(self) -> None:
        response = self.fetch("/chat", method="POST", body='{"prompt": "Say hello"}', headers={"Content-Type": "application/json"})
        self.assertEqual(response.code, 200)
        events = [json.loads(line.removeprefix("data: ")) for line in response.body.decode().splitlines() if line.startswith("data: ")]
        self.assertEqual([events[0]["type"], events[-1]["type"]], ["connected", "done"])

    def test_blank_prompt_is_a_400(self) -> None:
        response = self.fetch("/chat", method="POST", body='{"prompt": " "}', headers={"Content-Type": "application/json"})
        self.assertEqual((response.code, json.loads(response.body)["error_type"]), (400, "empty_prompt"))
