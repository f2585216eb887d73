"""The whole Chat Completions request carried through /v1 as sent, checked by exact path; /chat's image parts.

Raw sockets against the fault upstream, which records the upstream request the gateway made.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.conftest import RunningGateway, api_error, chat, request
from tests.fault_upstream import FaultUpstream, Scenario, chunk_json

HELLO = [{"role": "user", "content": "hi"}]
PIXEL = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        "strict": True,
    },
    "cache_control": {"type": "ephemeral"},
}
CONVERSATION = [
    {"role": "developer", "content": "Use tools.", "cache_control": {"type": "ephemeral"}},
    {
        "role": "user",
        "content": [
            {"type": "text", "text": "What is in this picture, and the weather?", "cache_control": {"type": "ephemeral"}},
            {"type": "image_url", "image_url": {"url": PIXEL, "detail": "low"}},
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
            {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
            {"type": "file", "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBERi0="}},
        ],
    },
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}}],
        "reasoning": "the user wants the weather",
    },
    {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 3}'},
    {"role": "assistant", "content": [{"type": "refusal", "refusal": "I cannot see pictures."}]},
    {"role": "user", "content": "ok", "name": "ann"},
]
EVERY_FIELD: dict[str, Any] = {
    "model": "vendor/model-a",
    "messages": CONVERSATION,
    "tools": [WEATHER_TOOL],
    "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
    "parallel_tool_calls": False,
    "response_format": {
        "type": "json_schema",
        "json_schema": {"name": "Answer", "strict": True, "schema": {"type": "object", "properties": {}, "additionalProperties": False}},
    },
    "stop": ["END", "STOP"],
    "seed": -3,
    "top_p": 0.5,
    "top_k": 40,
    "temperature": 0,
    "frequency_penalty": -1.5,
    "presence_penalty": 2,
    "repetition_penalty": 1.1,
    "min_p": 0.05,
    "top_a": 0.2,
    "logit_bias": {"50256": -100, "11": 5.5},
    "logprobs": True,
    "top_logprobs": 5,
    "max_completion_tokens": 77,
    "user": "user-7",
    "n": 1,
    "models": ["vendor/model-b", "vendor/model-c"],
    "provider": {"order": ["OpenAI"], "allow_fallbacks": False, "sort": "price"},
    "reasoning": {"effort": "high", "exclude": False},
    "transforms": ["middle-out"],
    "plugins": [{"id": "web", "max_results": 3}],
    "usage": {"include": True},
}


async def completions(port: int, body: Any, headers: dict[str, str] | None = None) -> Any:
    return await request(port, "POST", "/v1/chat/completions", body, headers)


@pytest.mark.parametrize("stream", [False, True])
async def test_every_documented_field_is_forwarded_as_sent(gateway: RunningGateway, upstream: FaultUpstream, stream: bool) -> None:
    upstream.scenarios = [Scenario(json_body={"id": "x", "choices": []})]
    body = dict(EVERY_FIELD, stream=stream)
    response = await completions(gateway.port, body)
    assert response.status == 200, response.body
    sent = upstream.requests[0]["body"]
    added = {"stream": True, "stream_options": {"include_usage": True}} if stream else {"stream": False}
    assert sent == {**EVERY_FIELD, **added}
    assert list(sent)[: len(EVERY_FIELD)] == list(EVERY_FIELD)  # same order too


async def test_non_stream_answer_is_relayed_byte_exact(gateway: RunningGateway, upstream: FaultUpstream) -> None:
    answer = (
        b'{"id":"gen-1", "object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":null,'
        b'"refusal":null,"reasoning":"hm\\u00e9","tool_calls":[{"id":"c1","type":"function","function":{"name":"f",'
        b'"arguments":"{\\"a\\": 1}"}}]},"logprobs":{"content":[]},"finish_reason":"tool_calls","native_finish_reason":"tool_use"}],'
        b'"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3,"cost":0.5}, "provider":"X"}'
    )
    upstream.scenarios = [Scenario(raw_body=answer.decode())]
    response = await completions(gateway.port, {"messages": HELLO, "tools": [WEATHER_TOOL]})
    assert response.status == 200
    assert response.header("Content-Type") == "application/json"
    assert response.body == answer


async def test_stream_relays_tool_call_reasoning_and_logprob_deltas_byte_exact(gateway: RunningGateway, upstream: FaultUpstream) -> None:
    call = {"index": 0, "id": "call_9", "type": "function", "function": {"name": "get_weather", "arguments": ""}}
    lines = [
        json.dumps({"id": "g", "choices": [{"index": 0, "delta": {"role": "assistant", "reasoning": "thinking"}, "finish_reason": None}]}),
        json.dumps({"id": "g", "choices": [{"index": 0, "delta": {"tool_calls": [call]}, "logprobs": {"content": []}}]}),
        json.dumps({"id": "g", "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": '{"ci'}}]}}]}),
        chunk_json(None, "tool_calls", native_finish_reason="tool_use"),
    ]
    upstream.scenarios = [Scenario(raw_lines=lines)]
    response = await completions(gateway.port, {"messages": HELLO, "tools": [WEATHER_TOOL], "stream": True})
    assert response.body == b"".join(f"data: {line}\n\n".encode() for line in lines) + b"data: [DONE]\n\n"


async def test_pictures_count_against_the_body_cap_not_the_prompt_length(start_gateway, upstream: FaultUpstream) -> None:
    gateway = start_gateway(MAX_PROMPT_LENGTH="5", MAX_BODY_BYTES="4096")
    picture = "data:image/jpeg;base64," + "A" * 3000
    message = {"role": "user", "content": [{"type": "text", "text": "hey"}, {"type": "image_url", "image_url": {"url": picture}}]}
    response = await completions(gateway.port, {"messages": [message], "stream": True})
    assert response.status == 200
    assert upstream.requests[0]["body"]["messages"] == [message]
    big = dict(message, content=[{"type": "image_url", "image_url": {"url": picture + "A" * 2000}}])
    assert (await completions(gateway.port, {"messages": [big]})).status == 413
    # /v1 allows MAX_PROMPT_LENGTH x 64 characters of text per message: 320 here, in any number of parts
    long_text = dict(message, content=[{"type": "text", "text": "x" * 200}, {"type": "text", "text": "y" * 121}])
    too_long = await completions(gateway.port, {"messages": [long_text]})
    assert (too_long.status, too_long.json()["error"]["code"]) == (400, "prompt_too_long")
    assert len(upstream.requests) == 1


def _user(*parts: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": list(parts)}]}


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"messages": HELLO, "toolz": []}, "toolz", "unknown_field"),
        (
            _user({"type": "image_url", "image_url": {"url": "http://example.com/a.png"}}),
            "messages[0].content[0].image_url.url",
            "invalid_url",
        ),
        (
            _user({"type": "image_url", "image_url": {"url": "data:text/plain;base64,AA=="}}),
            "messages[0].content[0].image_url.url",
            "invalid_url",
        ),
        (_user({"type": "image_url", "image_url": "https://x.test/a.png"}), "messages[0].content[0].image_url", "invalid_type"),
        (
            _user({"type": "image_url", "image_url": {"url": PIXEL, "detail": "ultra"}}),
            "messages[0].content[0].image_url.detail",
            "unsupported_value",
        ),
        (_user({"type": "text", "text": "a"}, {"type": "video"}), "messages[0].content[1].type", "unsupported_content"),
        (_user({"type": "text", "text": 5}), "messages[0].content[0].text", "invalid_type"),
        (_user({"type": "text", "text": "a\x00"}), "messages[0].content[0].text", "invalid_characters"),
        (_user({"type": "input_audio", "input_audio": {"data": "AA=="}}), "messages[0].content[0].input_audio.format", "missing_field"),
        (_user({"type": "file", "file": {"filename": "a.pdf"}}), "messages[0].content[0].file", "missing_field"),
        (
            {"messages": [{"role": "system", "content": [{"type": "image_url", "image_url": {"url": PIXEL}}]}]},
            "messages[0].content[0].type",
            "unsupported_content",
        ),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id", "missing_field"),
        ({"messages": [{"role": "assistant", "content": None}]}, "messages[0].content", "invalid_type"),
        (
            {"messages": [{"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f"}}]}]},
            "messages[0].tool_calls[0].function.arguments",
            "missing_field",
        ),
        ({"messages": HELLO, "tools": {"type": "function"}}, "tools", "invalid_type"),
        ({"messages": HELLO, "tools": [{"type": "function", "function": {"name": "bad name"}}]}, "tools[0].function.name", "invalid_value"),
        ({"messages": HELLO, "tools": [{"type": "retrieval"}]}, "tools[0].type", "unsupported_value"),
        (
            {"messages": HELLO, "tools": [{"type": "function", "function": {"name": "f", "parameters": []}}]},
            "tools[0].function.parameters",
            "invalid_type",
        ),
        ({"messages": HELLO, "tool_choice": "sometimes"}, "tool_choice", "unsupported_value"),
        ({"messages": HELLO, "tool_choice": {"type": "function"}}, "tool_choice.function", "missing_field"),
        ({"messages": HELLO, "parallel_tool_calls": "yes"}, "parallel_tool_calls", "invalid_type"),
        ({"messages": HELLO, "response_format": {"type": "xml"}}, "response_format.type", "unsupported_value"),
        ({"messages": HELLO, "response_format": {"type": "json_schema"}}, "response_format.json_schema", "missing_field"),
        (
            {"messages": HELLO, "response_format": {"type": "json_schema", "json_schema": {"name": "A", "schema": "x"}}},
            "response_format.json_schema.schema",
            "invalid_type",
        ),
        ({"messages": HELLO, "top_k": -1}, "top_k", "out_of_range"),
        ({"messages": HELLO, "repetition_penalty": 3}, "repetition_penalty", "out_of_range"),
        ({"messages": HELLO, "min_p": 1.5}, "min_p", "out_of_range"),
        ({"messages": HELLO, "top_a": "a"}, "top_a", "invalid_type"),
        ({"messages": HELLO, "logit_bias": {"50256": 101}}, "logit_bias.50256", "out_of_range"),
        ({"messages": HELLO, "logit_bias": {"word": 1}}, "logit_bias.word", "invalid_type"),
        ({"messages": HELLO, "logprobs": 1}, "logprobs", "invalid_type"),
        ({"messages": HELLO, "top_logprobs": 21}, "top_logprobs", "out_of_range"),
        ({"messages": HELLO, "models": "vendor/a"}, "models", "invalid_type"),
        ({"messages": HELLO, "models": ["vendor/a", "nope"]}, "models[1]", "invalid_model"),
        ({"messages": HELLO, "provider": ["OpenAI"]}, "provider", "invalid_type"),
        ({"messages": HELLO, "reasoning": {"effort": 3}}, "reasoning.effort", "invalid_type"),
        ({"messages": HELLO, "transforms": [1]}, "transforms", "invalid_type"),
        ({"messages": HELLO, "plugins": [{"max_results": 3}]}, "plugins[0].id", "missing_field"),
        ({"messages": HELLO, "usage": {"include": "yes"}}, "usage.include", "invalid_type"),
    ],
)
async def test_each_invalid_field_names_its_exact_path(
    gateway: RunningGateway, upstream: FaultUpstream, body: Any, param: str, code: str
) -> None:
    response = await completions(gateway.port, body)
    assert response.status == 400, response.body
    error = response.json()["error"]
    assert (error["param"], error["code"], error["type"]) == (param, code, "invalid_request_error")
    assert upstream.requests == []


async def test_fallback_models_are_checked_against_allowed_models(start_gateway, upstream: FaultUpstream) -> None:
    gateway = start_gateway(ALLOWED_MODELS="vendor/a")
    ok = await completions(gateway.port, {"messages": HELLO, "models": ["vendor/a", "anthropic/claude-3.5-sonnet"], "stream": True})
    assert ok.status == 200
    refused = await completions(gateway.port, {"messages": HELLO, "models": ["vendor/a", "vendor/b"]})
    error = refused.json()["error"]
    assert (error["param"], error["code"]) == ("models[1]", "model_not_allowed")
    assert error["message"] == "model 'vendor/b' is not allowed; allowed: anthropic/claude-3.5-sonnet, vendor/a"


# -- /chat: image parts in, text events out --------------------------------------------------------------


async def test_chat_forwards_image_parts_unchanged(gateway: RunningGateway, upstream: FaultUpstream) -> None:
    message = {"role": "user", "content": [{"type": "text", "text": "What is this?"}, {"type": "image_url", "image_url": {"url": PIXEL}}]}
    response = await chat(gateway.port, {"messages": [message]})
    assert response.status == 200
    assert response.text == "Hello, world!"
    assert upstream.requests[0]["body"]["messages"] == [message]


async def test_chat_done_carries_tool_calls_finish_reason(gateway: RunningGateway, upstream: FaultUpstream) -> None:
    upstream.scenarios = [Scenario(pieces=["a"], finish_reason="tool_calls")]
    response = await chat(gateway.port, {"prompt": "hi"})
    assert response.events[-1]["type"] == "done"
    assert response.events[-1]["finish_reason"] == "tool_calls"


@pytest.mark.parametrize(
    ("message", "error_type", "field"),
    [
        (
            {"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "AA==", "format": "wav"}}]},
            "unsupported_content",
            "type",
        ),
        ({"role": "user", "content": [{"type": "image_url", "image_url": {"url": "ftp://x"}}]}, "invalid_url", "image_url.url"),
        ({"role": "tool", "content": "x", "tool_call_id": "c"}, "invalid_role", None),
    ],
)
async def test_chat_keeps_its_small_schema(
    gateway: RunningGateway, upstream: FaultUpstream, message: Any, error_type: str, field: str | None
) -> None:
    response = await chat(gateway.port, {"messages": [message]})
    body = api_error(response, 400, error_type)
    if field:
        assert f"messages[0].content[0].{field}" in body["message"]
    assert upstream.requests == []
