"""Every stream the client still reads ends with exactly one `done` or `error`, and everything we send is strict JSON.

Hostile input from both sides: lone surrogates from clients; NaN, Infinity, negative and non-numeric usage,
non-string finish reasons and nesting deeper than any parser allows from the upstream; and, standing in for
bugs nobody has found yet, a relay step made to raise. Each must end the stream with one terminal event, count
and log the outcome, and put only strict JSON on the wire and in the log.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from typing import Any

import pytest

import handlers.stream_state
import server.upstream
from tests.conftest import RawResponse, RunningGateway, chat, parse, request
from tests.fault_upstream import FaultUpstream, Scenario, chunk_json

DEEP = "[" * 50_000  # deeper than any JSON parser's stack
NAN_TOKENS = re.compile(r"\b(NaN|-?Infinity|nan|-?inf)\b")


def strict(text: str | bytes) -> Any:
    """json.loads that refuses NaN and Infinity, as every non-Python JSON parser does."""

    def refuse(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    return json.loads(text, parse_constant=refuse)


def terminal_events(response: RawResponse) -> list[dict[str, Any]]:
    events = [strict(line[6:]) for line in response.body.decode().split("\n") if line.startswith("data: ")]
    return [event for event in events if event["type"] in ("done", "error")]


def only_terminal(response: RawResponse) -> dict[str, Any]:
    ends = terminal_events(response)
    assert len(ends) == 1, response.body
    assert ends[0]["request_id"] == response.header("X-Request-ID")
    return ends[0]


def v1_data(response: RawResponse) -> list[Any]:
    lines = [line[6:] for line in response.body.decode().split("\n") if line.startswith("data: ")]
    assert lines[-1] == "[DONE]", response.body
    return [strict(line) for line in lines[:-1]]


def sample(metrics: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} (\S+)$", metrics, re.M)
    return float(match.group(1)) if match else 0.0


async def metrics_text(port: int) -> str:
    return (await request(port, "GET", "/metrics")).body.decode()


async def v1(port: int, body: dict[str, Any]) -> RawResponse:
    return await request(port, "POST", "/v1/chat/completions", {"model": "test/model", **body})


def openai_error(response: RawResponse, status: int, code: str) -> dict[str, Any]:
    assert response.status == status, response.body
    error = strict(response.body)["error"]
    assert (error["code"], error["request_id"]) == (code, response.header("X-Request-ID")), error
    return error  # type: ignore[no-any-return]


# -- lone surrogates from the client ----------------------------------------------------------------

LONE = "hi \ud800"  # json.dumps sends it as the escape "hi \\ud800"
CHAT_FIELDS = [
    ({"prompt": LONE}, "prompt"),
    ({"prompt": "x", "system": LONE}, "system"),
    ({"messages": [{"role": "user", "content": LONE}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": "x", "name": "\udc00"}]}, "messages[0].name"),
]
V1_FIELDS = [
    ({"messages": [{"role": "user", "content": LONE}]}, "messages[0].content"),
    (
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": LONE}]}]},
        "messages[0].content[1].text",
    ),
    ({"messages": [{"role": "user", "content": "x", "name": LONE}]}, "messages[0].name"),
    ({"messages": [{"role": "user", "content": "x"}], "stop": LONE}, "stop"),
    ({"messages": [{"role": "user", "content": "x"}], "stop": ["ok", LONE]}, "stop[1]"),
    ({"messages": [{"role": "user", "content": "x"}], "user": LONE}, "user"),
]


@pytest.mark.parametrize(("body", "field"), CHAT_FIELDS)
async def test_lone_surrogate_in_a_chat_string_is_a_400_naming_the_field(
    gateway: RunningGateway, upstream: FaultUpstream, body: dict[str, Any], field: str
) -> None:
    response = await chat(gateway.port, body)
    assert response.status == 400, response.body
    error = strict(response.body)
    assert error["error_type"] == "invalid_characters" and f"'{field}'" in error["message"], error
    assert upstream.requests == []


@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize(("body", "field"), V1_FIELDS)
async def test_lone_surrogate_in_a_v1_string_is_a_400_naming_the_field(
    gateway: RunningGateway, upstream: FaultUpstream, body: dict[str, Any], field: str, stream: bool
) -> None:
    error = openai_error(await v1(gateway.port, {**body, "stream": stream}), 400, "invalid_characters")
    assert error["param"] == field and f"'{field}'" in error["message"], error
    assert upstream.requests == []


async def test_an_escaped_surrogate_pair_is_just_an_emoji(gateway: RunningGateway, upstream: FaultUpstream) -> None:
    response = await chat(gateway.port, {"prompt": "hi \ud83d\ude00"})
    assert only_terminal(response)["type"] == "done"
    assert upstream.requests[0]["body"]["messages"][0]["content"] == "hi \U0001f600"


@pytest.mark.parametrize("path", ["/chat", "/v1/chat/completions"])
async def test_a_lone_surrogate_echoed_in_an_error_message_is_still_valid_json(
    start_gateway: Callable[..., RunningGateway], path: str
) -> None:
    gateway = start_gateway(ALLOWED_MODELS="test/model")
    messages = [{"role": "user", "content": "x"}]
    for body in ({"messages": messages, "\ud800": 1}, {"messages": messages, "model": "a/\ud800"}):
        response = await request(gateway.port, "POST", path, body)
        assert response.status == 400, response.body
        strict(response.body.decode("utf-8"))


@pytest.mark.parametrize("path", ["/chat", "/v1/chat/completions"])
async def test_a_lone_surrogate_in_an_upstream_error_message_ends_the_stream_with_valid_json(
    gateway: RunningGateway, upstream: FaultUpstream, path: str
) -> None:
    upstream.scenarios = [Scenario(status=400, error_body={"error": {"message": "bad \ud800 input"}})]
    response = await request(
        gateway.port, "POST", path, {"prompt": "x"} if path == "/chat" else {"messages": [{"role": "user", "content": "x"}]}
    )
    if path == "/chat":
        end = only_terminal(response)
        assert (end["type"], end["error_type"], end["content"]) == (
            "error",
            "upstream_error",
            "upstream returned HTTP 400: bad \ud800 input",
        )
    else:
        assert openai_error(response, 400, "upstream_error")["message"] == "upstream returned HTTP 400: bad \ud800 input"


# -- usage and finish_reason the upstream got wrong -------------------------------------------------

BAD_USAGE = (
    '{"prompt_tokens": 1e308, "completion_tokens": -5, "total_tokens": NaN, "cost": "abc", "reasoning_tokens": Infinity,'
    ' "prompt_tokens_details": {"cached_tokens": -Infinity, "audio_tokens": 2}, "image_tokens": 3, "is_byok": false}'
)
CLEAN_USAGE = {"prompt_tokens_details": {"audio_tokens": 2}, "image_tokens": 3, "is_byok": False}
BAD_LINES = [
    chunk_json("Hi"),
    json.dumps({"id": "g", "choices": [{"index": 0, "delta": {}, "finish_reason": {"reason": "stop"}}]}),
    '{"id": "g", "choices": [], "usage": ' + BAD_USAGE + "}",
    "[DONE]",
]


def assert_strict_log(stream_text: str) -> None:
    assert not NAN_TOKENS.search(stream_text), stream_text


async def test_bad_usage_and_finish_reason_are_dropped_from_a_strict_done(
    gateway: RunningGateway, upstream: FaultUpstream, capture_logs: Callable[..., Any]
) -> None:
    upstream.scenarios = [Scenario(raw_lines=BAD_LINES, send_done=False)]
    logs = capture_logs("json")
    for _ in range(2):  # twice: 1e308 + 1e308 would be +Inf in a counter
        response = await chat(gateway.port, {"prompt": "x"})
        end = only_terminal(response)
        assert end["type"] == "done" and "finish_reason" not in end, end
        assert end["usage"] == CLEAN_USAGE
    records = parse(logs)  # strict per line as well:
    [strict(line) for line in logs.getvalue().splitlines()]
    assert [r["outcome"] for r in records if r["msg"].startswith("stream ")] == ["finished", "finished"]
    metrics = await metrics_text(gateway.port)
    assert sample(metrics, 'chat_streams_total{outcome="finished"}') == 2
    for kind in ("prompt", "completion"):
        assert math.isfinite(sample(metrics, f'chat_tokens_total{{kind="{kind}"}}'))
    assert_strict_log(metrics)


async def test_bad_usage_never_reaches_a_console_log_line(
    gateway: RunningGateway, upstream: FaultUpstream, capture_logs: Callable[..., Any]
) -> None:
    upstream.scenarios = [
        Scenario(raw_lines=[chunk_json("Hi"), '{"choices": [], "usage": {"completion_tokens": NaN}}', "[DONE]"], send_done=False)
    ]
    logs = capture_logs("console", log_color="never")
    assert only_terminal(await chat(gateway.port, {"prompt": "x"}))["type"] == "done"
    assert "stream finished" in logs.getvalue()
    assert_strict_log(logs.getvalue())


async def test_v1_stream_relays_nan_as_null(gateway: RunningGateway, upstream: FaultUpstream, capture_logs: Callable[..., Any]) -> None:
    upstream.scenarios = [Scenario(raw_lines=BAD_LINES, send_done=False)]
    logs = capture_logs("json")
    response = await v1(
        gateway.port, {"messages": [{"role": "user", "content": "x"}], "stream": True, "stream_options": {"include_usage": True}}
    )
    assert response.status == 200
    chunks = v1_data(response)  # every line strict JSON
    assert chunks[-1]["usage"]["total_tokens"] is None and chunks[-1]["usage"]["completion_tokens"] == -5  # relayed, made valid
    parse(logs)
    assert_strict_log(logs.getvalue())
    assert math.isfinite(sample(await metrics_text(gateway.port), 'chat_tokens_total{kind="prompt"}'))


async def test_v1_non_stream_answer_with_nan_is_valid_json_and_counted_finitely(
    gateway: RunningGateway, upstream: FaultUpstream, capture_logs: Callable[..., Any]
) -> None:
    answer = (
        '{"id": "g", "object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi"},'
        ' "finish_reason": 7}], "usage": ' + BAD_USAGE + "}"
    )
    upstream.scenarios = [Scenario(raw_body=answer)]
    logs = capture_logs("json")
    response = await v1(gateway.port, {"messages": [{"role": "user", "content": "x"}]})
    assert response.status == 200, response.body
    body = strict(response.body)
    assert body["choices"][0]["message"]["content"] == "Hi" and body["usage"]["total_tokens"] is None
    outcome = [r for r in parse(logs) if r["msg"] == "stream finished"]
    assert len(outcome) == 1 and "finish_reason" not in outcome[0]
    assert all(math.isfinite(outcome[0].get(name) or 0) for name in ("prompt_tokens", "completion_tokens", "cost_usd"))
    assert_strict_log(logs.getvalue())
    metrics = await metrics_text(gateway.port)
    assert math.isfinite(sample(metrics, 'chat_tokens_total{kind="prompt"}'))
    assert sample(metrics, 'chat_streams_total{outcome="finished"}') == 1


# -- nesting deeper than the parser allows ----------------------------------------------------------

NESTED_ERROR = '{"error": {"message": ' + "[" * 1020 + "]" * 1020 + "}}"  # parses, but its repr would not fit the stack


@pytest.mark.parametrize(
    "scenario",
    [
        Scenario(status=400, raw_body=DEEP),
        Scenario(raw_lines=[chunk_json("Hi"), DEEP, "[DONE]"], send_done=False),
        Scenario(raw_lines=[chunk_json("Hi"), NESTED_ERROR], send_done=False),
    ],
    ids=["error-body", "data-line", "nested-error-message"],
)
async def test_deep_nesting_is_an_upstream_error_on_chat(gateway: RunningGateway, upstream: FaultUpstream, scenario: Scenario) -> None:
    upstream.scenarios = [scenario]
    end = only_terminal(await chat(gateway.port, {"prompt": "x"}))
    assert (end["type"], end["error_type"]) == ("error", "upstream_error"), end
    metrics = await metrics_text(gateway.port)
    assert sample(metrics, 'chat_streams_total{outcome="upstream_error"}') == 1


@pytest.mark.parametrize(
    ("scenario", "stream", "status"),
    [
        (Scenario(status=400, raw_body=DEEP), True, 400),
        (Scenario(status=400, raw_body=DEEP), False, 400),
        (Scenario(raw_lines=[DEEP], send_done=False), True, 502),
        (Scenario(raw_body=DEEP), False, 502),
        (Scenario(raw_body='{"choices": [], "n": NaN, "x": ' + "[" * 1020 + "]" * 1020 + "}"), False, 502),
    ],
    ids=["error-body-stream", "error-body", "data-line", "answer", "non-strict-answer-too-deep-to-re-encode"],
)
async def test_deep_nesting_is_an_upstream_error_on_v1(
    gateway: RunningGateway, upstream: FaultUpstream, scenario: Scenario, stream: bool, status: int
) -> None:
    upstream.scenarios = [scenario]
    openai_error(await v1(gateway.port, {"messages": [{"role": "user", "content": "x"}], "stream": stream}), status, "upstream_error")
    assert sample(await metrics_text(gateway.port), 'chat_streams_total{outcome="upstream_error"}') == 1


# -- anything else that goes wrong inside the relay -------------------------------------------------


@pytest.fixture
def broken_consumer(monkeypatch: pytest.MonkeyPatch) -> None:
    """A chunk whose text is `boom` makes the relay raise, as a bug in reading chunks would."""
    parse_chunk = handlers.stream_state.parse_chunk

    def parse_or_raise(data: str) -> Any:
        if "boom" in data:
            raise RuntimeError("boom in the relay")
        return parse_chunk(data)

    monkeypatch.setattr(handlers.stream_state, "parse_chunk", parse_or_raise)


@pytest.fixture
def broken_request(monkeypatch: pytest.MonkeyPatch) -> None:
    """Building the upstream request raises, as a bug outside the chunk consumer would."""

    def explode(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("boom in the relay")

    monkeypatch.setattr(server.upstream.UpstreamCall, "_request_for", explode)


def assert_one_traceback_and_outcome(logs: Any, metrics: str) -> None:
    records = parse(logs)
    assert sum("boom in the relay" in record.get("exc", "") for record in records) == 1, records
    outcomes = [r for r in records if r["msg"].startswith("stream ")]
    assert [(r["outcome"], r["error_type"]) for r in outcomes] == [("internal_error", "internal_error")]
    assert sample(metrics, 'chat_streams_total{outcome="internal_error"}') == 1


@pytest.mark.parametrize("broken", ["broken_consumer", "broken_request"])
async def test_unexpected_exception_on_chat_is_one_internal_error_event(
    request: pytest.FixtureRequest, gateway: RunningGateway, upstream: FaultUpstream, capture_logs: Callable[..., Any], broken: str
) -> None:
    request.getfixturevalue(broken)
    upstream.scenarios = [Scenario(pieces=["Hi", "boom"], delay=0.1)]  # "boom" in a read of its own
    logs = capture_logs("json")
    response = await chat(gateway.port, {"prompt": "x"})
    end = only_terminal(response)
    assert (end["type"], end["error_type"]) == ("error", "internal_error"), end
    assert "Traceback" not in response.body.decode()
    assert_one_traceback_and_outcome(logs, await metrics_text(gateway.port))


@pytest.mark.parametrize("stream", [True, False])
async def test_unexpected_exception_on_v1_before_the_stream_is_a_json_500(
    gateway: RunningGateway, upstream: FaultUpstream, capture_logs: Callable[..., Any], broken_request: None, stream: bool
) -> None:
    logs = capture_logs("json")
    response = await v1(gateway.port, {"messages": [{"role": "user", "content": "x"}], "stream": stream})
    assert openai_error(response, 500, "internal_error")["type"] == "server_error"
    assert "Traceback" not in response.body.decode()
    assert_one_traceback_and_outcome(logs, await metrics_text(gateway.port))


async def test_unexpected_exception_on_v1_mid_stream_is_an_error_chunk_then_done(
    gateway: RunningGateway, upstream: FaultUpstream, capture_logs: Callable[..., Any], broken_consumer: None
) -> None:
    upstream.scenarios = [Scenario(pieces=["Hi", "boom"], delay=0.1)]  # "boom" in a read of its own
    logs = capture_logs("json")
    response = await v1(gateway.port, {"messages": [{"role": "user", "content": "x"}], "stream": True})
    chunks = v1_data(response)
    assert chunks[0]["choices"][0]["delta"]["content"] == "Hi"
    error = chunks[-1]["error"]
    assert (error["code"], error["request_id"]) == ("internal_error", response.header("X-Request-ID"))
    assert_one_traceback_and_outcome(logs, await metrics_text(gateway.port))
