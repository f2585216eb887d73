"""POST /chat validation: 415, 413, each 400 case and forwarding in process (AsyncHTTPTestCase), then fuzzing.

Raw-socket tests (pytest functions) only for bytes the tornado HTTP client cannot send: a POST without
Content-Type (it adds one), a Content-Length whose body never comes, and chunked bodies sent while reading.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Coroutine, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tornado.netutil import bind_sockets

from app.lifecycle import make_server
from server.config import load_settings
from server.state import Gateway
from tests.apptest import GatewayTestCase
from tests.conftest import RawResponse, RunningGateway, api_error, build_request, connect, read_response, request
from tests.fault_upstream import FaultUpstream

FIELDS = "max_tokens, messages, model, prompt, resumable, system, temperature"
CONTENT_TYPE_MESSAGE = "Content-Type must be application/json"


def exact_body(size: int) -> bytes:
    body = json.dumps({"prompt": "x"}).encode()
    return body[:-2] + b"x" * (size - len(body)) + body[-2:]


# -- in process: 415, 413 and 400 ---------------------------------------------------------------------


class ContentTypeTest(GatewayTestCase):
    def test_content_type_must_be_json(self) -> None:
        for content_type in ("text/plain", "application/jsonx", "application/x-www-form-urlencoded", "json"):
            with self.subTest(content_type=content_type):
                response = self.request("POST", "/chat", raw=b'{"prompt": "hi"}', headers={"Content-Type": content_type})
                self.assertEqual(self.api_error(response, 415, "unsupported_media_type")["message"], CONTENT_TYPE_MESSAGE)
                self.assertEqual(self.upstream.requests, [])

    def test_json_with_charset_is_accepted(self) -> None:
        for content_type in ("application/json; charset=utf-8", "Application/JSON;charset=UTF-8"):
            with self.subTest(content_type=content_type):
                response = self.request("POST", "/chat", raw=b'{"prompt": "hi"}', headers={"Content-Type": content_type})
                self.assertEqual(response.code, 200)


class BodyLimitTest(GatewayTestCase):
    env = {"MAX_BODY_BYTES": "1024", "MAX_PROMPT_LENGTH": "4000"}

    def test_body_limit_is_inclusive_with_content_length(self) -> None:
        self.assertEqual(self.request("POST", "/chat", raw=exact_body(1024)).code, 200)
        self.api_error(self.request("POST", "/chat", raw=exact_body(1025)), 413, "body_too_large")


UNDECODABLE: list[tuple[bytes, str, str]] = [
    (b'{"prompt": "caf\xe9"}', "invalid_encoding", "request body is not valid UTF-8"),
    (b"", "invalid_json", "request body is not valid JSON: Expecting value at line 1 column 1"),
    (b'{"prompt": "hi"', "invalid_json", "request body is not valid JSON: Expecting ',' delimiter at line 1 column 16"),
    (b'{"prompt": NaN}', "invalid_json", "request body is not valid JSON: NaN is not a JSON value"),
    (
        b'{"prompt": "x", "max_tokens": ' + b"9" * 5000 + b"}",
        "invalid_json",
        "request body is not valid JSON: a number has too many digits",
    ),
    (b"[" * 30000 + b"]" * 30000, "invalid_json", "request body is not valid JSON: nested too deeply"),
    (b'["prompt", "hi"]', "invalid_json", "request body must be a JSON object"),
    (b'"hi"', "invalid_json", "request body must be a JSON object"),
    (b"null", "invalid_json", "request body must be a JSON object"),
]


class UndecodableTest(GatewayTestCase):
    def test_undecodable_bodies(self) -> None:
        for raw, error_type, message in UNDECODABLE:
            with self.subTest(raw=raw[:40], error_type=error_type):
                response = self.request("POST", "/chat", raw=raw)
                self.assertEqual(self.api_error(response, 400, error_type)["message"], message)
                self.assertEqual(self.upstream.requests, [])


CASES: list[tuple[dict[str, Any], str, str]] = [
    ({"promt": "hi"}, "unknown_field", f"unknown field 'promt'; expected some of: {FIELDS}"),
    ({"prompt": "hi", "stream": True}, "unknown_field", f"unknown field 'stream'; expected some of: {FIELDS}"),
    ({}, "missing_prompt", "send exactly one of 'prompt' or 'messages'"),
    ({"prompt": None}, "invalid_type", "'prompt' must be a string"),
    ({"prompt": ["hi"]}, "invalid_type", "'prompt' must be a string"),
    ({"prompt": 42}, "invalid_type", "'prompt' must be a string"),
    ({"prompt": ""}, "empty_prompt", "'prompt' must not be empty or blank"),
    ({"prompt": " \t\r\n\u00a0\u2003\u3000\u2028"}, "empty_prompt", "'prompt' must not be empty or blank"),
    ({"prompt": "a\x00b"}, "invalid_characters", "'prompt' contains control characters (only tab, CR and LF are allowed)"),
    ({"prompt": "bell\x07"}, "invalid_characters", "'prompt' contains control characters (only tab, CR and LF are allowed)"),
    ({"prompt": "esc\x1b[31m"}, "invalid_characters", "'prompt' contains control characters (only tab, CR and LF are allowed)"),
    ({"prompt": "x" * 11}, "prompt_too_long", "'prompt' is 11 characters; the limit is 10"),
    ({"prompt": "😀" * 11}, "prompt_too_long", "'prompt' is 11 characters; the limit is 10"),
    ({"prompt": "hi", "system": ""}, "empty_prompt", "'system' must not be empty or blank"),
    ({"prompt": "hi", "system": 1}, "invalid_type", "'system' must be a string"),
    ({"prompt": "hi", "system": "s\x00"}, "invalid_characters", "'system' contains control characters (only tab, CR and LF are allowed)"),
    ({"prompt": "hi", "temperature": "hot"}, "invalid_type", "'temperature' must be a number"),
    ({"prompt": "hi", "resumable": "yes"}, "invalid_type", "'resumable' must be true or false"),
    ({"prompt": "hi", "temperature": True}, "invalid_type", "'temperature' must be a number"),
    ({"prompt": "hi", "temperature": 2.01}, "out_of_range", "'temperature' must be between 0 and 2"),
    ({"prompt": "hi", "temperature": -0.1}, "out_of_range", "'temperature' must be between 0 and 2"),
    ({"prompt": "hi", "max_tokens": 0}, "out_of_range", "'max_tokens' must be between 1 and 100"),
    ({"prompt": "hi", "max_tokens": 101}, "out_of_range", "'max_tokens' must be between 1 and 100"),
    ({"prompt": "hi", "max_tokens": 1.5}, "invalid_type", "'max_tokens' must be an integer"),
    ({"prompt": "hi", "max_tokens": "10"}, "invalid_type", "'max_tokens' must be an integer"),
    ({"prompt": "hi", "model": "gpt-4"}, "invalid_model", "'model' must look like vendor/name"),
    ({"prompt": "hi", "model": ["a/b"]}, "invalid_type", "'model' must be a string"),
    ({"prompt": "hi", "messages": [{"role": "user", "content": "hi"}]}, "invalid_request", "send exactly one of 'prompt' or 'messages'"),
    ({"messages": []}, "invalid_type", "'messages' must be a non-empty array"),
    ({"messages": {"role": "user"}}, "invalid_type", "'messages' must be a non-empty array"),
    ({"messages": [{"role": "user", "content": "x"}] * 65}, "too_many_messages", "'messages' has 65 items; the limit is 64"),
    ({"messages": ["hi"]}, "invalid_type", "'messages[0]' must be an object"),
    ({"messages": [{"role": ["user"], "content": "x"}]}, "invalid_role", "'messages[0].role' must be one of system, user, assistant"),
    ({"messages": [{"role": "bot", "content": "x"}]}, "invalid_role", "'messages[0].role' must be one of system, user, assistant"),
    ({"messages": [{"role": "user", "content": "x", "tool": 1}]}, "unknown_field", "unknown field 'messages[0].tool'"),
    ({"messages": [{"role": "user", "content": "x", "name": 7}]}, "invalid_type", "'messages[0].name' must be a string"),
    ({"messages": [{"role": "user"}]}, "invalid_type", "'messages[0].content' must be a string or an array of content parts"),
    (
        {"messages": [{"role": "user", "content": "ok"}, {"role": "user", "content": "\t"}]},
        "empty_prompt",
        "'messages[1].content' must not be empty or blank",
    ),
    (
        {"messages": [{"role": "user", "content": "x" * 10}] * 64 + [{"role": "user", "content": "x"}]},
        "too_many_messages",
        "'messages' has 65 items; the limit is 64",
    ),
]


class FieldsTest(GatewayTestCase):
    env = {"MAX_PROMPT_LENGTH": "10", "MAX_TOKENS_LIMIT": "100"}

    def test_each_invalid_field_is_a_precise_400(self) -> None:
        for body, error_type, message in CASES:
            with self.subTest(body=json.dumps(body)[:80]):
                self.assertEqual(self.api_error(self.chat(body), 400, error_type)["message"], message)
                self.assertEqual(self.upstream.requests, [])


class PromptLimitTest(GatewayTestCase):
    env = {"MAX_PROMPT_LENGTH": "10"}

    def test_prompt_limit_is_inclusive_and_counts_code_points(self) -> None:
        for prompt in ("x" * 10, "😀" * 10, "é" * 10, "a\tb\r\nc\nd  "):
            with self.subTest(prompt=prompt):
                self.assertEqual(self.chat({"prompt": prompt}).code, 200)
                self.assertEqual(self.upstream.requests[-1]["body"]["messages"], [{"role": "user", "content": prompt}])


class ForwardingTest(GatewayTestCase):
    env = {"MAX_TOKENS_LIMIT": "100"}

    def test_optional_fields_are_forwarded_upstream(self) -> None:
        body = {"prompt": "hi", "system": "Be brief.", "model": "mistral/tiny-1.0", "temperature": 0, "max_tokens": 100}
        self.assertEqual(self.chat(body).code, 200)
        self.assertEqual(
            self.upstream.requests[0]["body"],
            {
                "model": "mistral/tiny-1.0",
                "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}],
                "stream": True,
                "stream_options": {"include_usage": True},
                "temperature": 0,
                "max_tokens": 100,
                "usage": {"include": True},
            },
        )
        self.assertEqual(self.chat({"prompt": "hi", "temperature": 2, "max_tokens": 1}).code, 200)
        self.assertEqual((self.upstream.requests[1]["body"]["temperature"], self.upstream.requests[1]["body"]["max_tokens"]), (2, 1))


class MessagesTest(GatewayTestCase):
    def test_messages_are_forwarded_in_order(self) -> None:
        messages = [
            {"role": "user", "content": "Hi", "name": "ann"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "Again\n"},
        ]
        self.assertEqual(self.chat({"messages": messages, "system": "Be brief."}).code, 200)
        self.assertEqual(self.upstream.requests[0]["body"]["messages"], [{"role": "system", "content": "Be brief."}, *messages])


class AllowedModelsTest(GatewayTestCase):
    env = {"ALLOWED_MODELS": "openai/gpt-4o-mini, meta/llama-3"}

    def test_allowed_models(self) -> None:
        self.assertEqual(self.chat({"prompt": "hi", "model": "meta/llama-3"}).code, 200)
        self.assertEqual(self.upstream.requests[-1]["body"]["model"], "meta/llama-3")
        refused = self.chat({"prompt": "hi", "model": "anthropic/claude-3-opus"})
        self.assertEqual(
            self.api_error(refused, 400, "model_not_allowed")["message"],
            "model 'anthropic/claude-3-opus' is not allowed; allowed: anthropic/claude-3.5-sonnet, openai/gpt-4o-mini, meta/llama-3",
        )
        self.assertEqual(len(self.upstream.requests), 1)


# -- raw sockets: bytes the HTTP client cannot send ---------------------------------------------------


def chunked(data: bytes, size: int = 8192) -> bytes:
    parts = [b"%x\r\n%s\r\n" % (len(data[i : i + size]), data[i : i + size]) for i in range(0, len(data), size)]
    return b"".join(parts) + b"0\r\n\r\n"


async def post_chunked(port: int, data: bytes) -> RawResponse:
    """Send a chunked body while reading: a server that answers early is heard, whatever it does with the rest."""
    async with connect(port) as (reader, writer):
        writer.write(build_request("POST", "/chat", chunked(data), {"Transfer-Encoding": "chunked"}))
        return await asyncio.wait_for(read_response(reader), 10)


async def test_missing_content_type_is_415(gateway: RunningGateway, upstream: FaultUpstream) -> None:
    raw = build_request("POST", "/chat", b'{"prompt": "hi"}').replace(b"Content-Type: application/json\r\n", b"")
    async with connect(gateway.port) as (reader, writer):
        writer.write(raw)
        response = await read_response(reader)
    assert api_error(response, 415, "unsupported_media_type")["message"] == CONTENT_TYPE_MESSAGE
    assert upstream.requests == []


async def test_oversized_content_length_is_413_before_the_body_is_sent(gateway: RunningGateway, upstream: FaultUpstream) -> None:
    async with connect(gateway.port) as (reader, writer):
        writer.write(build_request("POST", "/chat", headers={"Content-Type": "application/json", "Content-Length": "10000000"}))
        response = await asyncio.wait_for(read_response(reader), 5)  # not one body byte was sent
    body = api_error(response, 413, "body_too_large")
    assert body["message"] == "request body is 10000000 bytes; the limit is 65536"
    assert response.header("Connection") == "close"
    assert upstream.requests == []


@pytest.mark.parametrize("size", [1025, 70_000, 300_000, 5_000_000])
async def test_oversized_chunked_body_is_a_json_413(start_gateway, upstream: FaultUpstream, size: int) -> None:
    gateway = start_gateway(MAX_BODY_BYTES="1024", MAX_PROMPT_LENGTH="100000")
    response = await post_chunked(gateway.port, exact_body(size))
    body = api_error(response, 413, "body_too_large")
    assert body["message"] == "request body is larger than the limit of 1024 bytes"
    assert response.header("Connection") == "close"
    assert upstream.requests == []
    assert (await post_chunked(gateway.port, exact_body(1024))).status == 200  # exactly the limit, chunked


# -- fuzzing: random JSON and bytes never get a 5xx ---------------------------------------------------


class BackgroundGateway:
    """A fault upstream and a gateway on their own event loop thread, so sync hypothesis tests can call them."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.port: int = self.run(self._start())

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _start(self) -> int:
        self.upstream = FaultUpstream().start()
        environ = {"OPENROUTER_API_KEY": "sk-test", "OPENROUTER_BASE_URL": self.upstream.base_url, "RATE_LIMIT": "1000000"}
        self.settings = load_settings({**environ, "MAX_PROMPT_LENGTH": "64", "MAX_BODY_BYTES": "4096"})
        self.gateway = Gateway.create(self.settings)
        self.server = make_server(self.settings, self.gateway)
        sockets = bind_sockets(0, "127.0.0.1")
        self.server.add_sockets(sockets)
        return int(sockets[0].getsockname()[1])

    async def _stop(self) -> None:
        self.server.stop()
        self.upstream.stop()
        self.gateway.http_client.close()

    def close(self) -> None:
        self.run(self._stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture(scope="module")
def background() -> Iterator[BackgroundGateway]:
    running = BackgroundGateway()
    yield running
    running.close()


texts = st.text(st.characters(exclude_categories=("Cs",)), max_size=64)  # any code point JSON can carry, controls included
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=80),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
chat_bodies = st.fixed_dictionaries(
    {},
    optional={
        "prompt": st.text(max_size=80) | json_values,
        "system": st.text(max_size=80) | json_values,
        "model": st.sampled_from(["a/b", "openai/gpt-4o", "nope", ""]) | json_values,
        "temperature": st.floats() | json_values,
        "max_tokens": st.integers() | json_values,
        "messages": st.lists(
            st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "bot"]) | json_values, "content": texts | json_values}),
            max_size=3,
        ),
        "promt": json_values,
    },
)
near_valid = st.fixed_dictionaries(
    {"prompt": texts},
    optional={
        "system": texts,
        "model": st.sampled_from(["a/b", "openai/gpt-4o:free", "nope", ""]),
        "temperature": st.floats(-0.5, 2.5),
        "max_tokens": st.integers(-1, 40000),
    },
)
bodies = st.one_of(
    st.binary(max_size=300),
    near_valid.map(lambda value: json.dumps(value, ensure_ascii=False).encode()),
    near_valid.map(lambda value: json.dumps(value).encode()),
    json_values.map(lambda value: json.dumps(value).encode()),
    chat_bodies.map(lambda value: json.dumps(value, ensure_ascii=False).encode()),
    chat_bodies.map(lambda value: json.dumps(value).encode()[:-1]),  # truncated
)


@settings(max_examples=100, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=bodies, content_type=st.sampled_from(["application/json", "application/json; charset=utf-8", "text/plain"]))
def test_random_bodies_never_get_a_5xx(background: BackgroundGateway, body: bytes, content_type: str) -> None:
    response: RawResponse = background.run(request(background.port, "POST", "/chat", raw=body, headers={"Content-Type": content_type}))
    assert response.status < 500, response.body
    if response.status == 200:
        assert response.events[-1]["type"] == "done"
    else:
        assert response.status in (400, 413, 415)
        body_json = response.json()
        assert set(body_json) == {"message", "code", "error_type", "request_id", "timestamp"}
