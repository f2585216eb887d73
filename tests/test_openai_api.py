"""The OpenAI-compatible API, driven by the real `openai` SDK and raw sockets against the fault upstream.

Also /chat's richer input (messages, model), checked in the upstream request the fault upstream recorded.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from typing import Any, TypeVar

import openai
import pytest

from tests.conftest import RunningGateway, build_request, chat, connect, eventually, read_response, request
from tests.fault_upstream import FaultUpstream, Scenario, chunk_json

T = TypeVar("T")

TRICKY = ["Hé", "llo 👋🏽 ", "世界", ' "quoted" \\ back', "\nnew line", " ∑ done"]
COMPLETION = {
    "id": "gen-1",
    "object": "chat.completion",
    "created": 1,
    "model": "test/model",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hé 世界 👋🏽"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7},
}
USAGE_LINE = json.dumps({"id": "gen-test", "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}})
HELLO = [{"role": "user", "content": "hi"}]


def async_client(gateway: RunningGateway, key: str = "sk-client") -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(api_key=key, base_url=f"{gateway.url}/v1", max_retries=0, timeout=10)


async def in_thread(fn: Callable[[], T]) -> T:
    """The sync SDK blocks: run it off the IOLoop so the gateway keeps serving."""
    return await asyncio.get_running_loop().run_in_executor(None, fn)


async def completions(port: int, body: Any, headers: dict[str, str] | None = None) -> Any:
    return await request(port, "POST", "/v1/chat/completions", body, headers)


def data_lines(body: bytes) -> list[str]:
    return [line for line in body.decode().split("\n") if line.startswith("data: ")]


# -- streaming ----------------------------------------------------------------------------------------


async def test_async_sdk_stream_text_arrives_exactly(gateway: RunningGateway, upstream: FaultUpstream) -> None:
    upstream.scenarios = [Scenario(pieces=TRICKY, byte_by_byte=True)]
    async with async_client(gateway) as client:
        stream = await client.chat.completions.create(model="test/model", messages=HELLO, stream=True)
        chunks = [chunk async for chunk in stream]
    assert "".join(chunk.choices[0].delta.content or "" for chunk in chunks) == "".join(TRICKY)
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(chunk.choices for chunk in chunks)  # no usage-only chunk: the client did not ask for usage


async def test_upstream_gets_the_upstream_key_usage_request_and_the_fields_as_sent(start_gateway, upstream: FaultUpstream) -> None:
    gateway = start_gateway(CLIENT_API_KEYS="k1")
    async with async_client(gateway, "k1") as client:
        stream = await client.chat.completions.create(
            model="vendor/model-a",
            messages=[
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "Hello "}, {"type": "text", "text": "there"}]},
                {"role": "assistant", "content": "Hi"},
                {"role": "user", "content": "again"},
            ],
            stream=True,
            temperature=0.5,
            top_p=0.9,
            max_completion_tokens=50,
            stop=["END"],
            presence_penalty=-1,
            frequency_penalty=1.5,
            seed=42,
            user="user-7",
        )
        async for _ in stream:
            pass
    sent = upstream.requests[0]
    assert sent["headers"]["Authorization"] == "Bearer sk-test-secret-key"
    assert sent["body"] == {
        "model": "vendor/model-a",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "Hello "}, {"type": "text", "text": "there"}]},
            {"role": "assistant", "content": "Hi"},
            {"role": "user", "content": "again"},
        ],
        "temperature": 0.5,
        "top_p": 0.9,
        "max_completion_tokens": 50,
        "stop": ["END"],
        "presence_penalty": -1,
        "frequency_penalty": 1.5,
        "seed": 42,
        "user": "user-7",
        "stream": True,
        "stream_options": {"include_usage": True},
        "usage": {"include": True},
    }


async def test_stream_passes_upstream_lines_through_byte_exact(gateway: RunningGateway, upstream: FaultUpstream) -> None:
    upstream.scenarios = [Scenario(pieces=TRICKY)]
    body = {"messages": HELLO, "stream": True, "stream_options": {"include_usage": True}}
    response = await completions(gateway.port, body, {"X-Request-ID": "v1-req"})
    assert response.status == 200
    assert response.header("Content-Type") == "text/event-stream; charset=utf-8"
    assert response.header("Cache-Control") == "no-cache"
    assert response.header("X-Request-ID") == "v1-req"
    assert re.fullmatch(r"gateway;dur=\d+\.\d\d, upstream;dur=\d+\.\d\d", response.header("Server-Timing") or "")
    sent = [chunk_json(piece) for piece in TRICKY] + [chunk_json("", "stop"), USAGE_LINE]
    assert response.body == b"".join(f"data: {line}\n\n".encode() for line in sent) + b"data: [DONE]\n\n"
    assert upstream.requests[0]["body"]["model"] == "anthropic/claude-3.5-sonnet"  # model optional -> OPENROUTER_MODEL


async def test_usage_chunk_only_for_clients_that_ask(gateway: RunningGateway, upstream: FaultUpstream) -> None:
    without = await completions(gateway.port, {"messages": HELLO, "stream": True})
    assert USAGE_LINE not in without.body.decode()
    assert data_lines(without.body)[-2] == f"data: {chunk_json('', 'stop')}"
    async with async_client(gateway) as client:
        stream = await client.chat.completions.create(
            model="test/model", messages=HELLO, stream=True, stream_options={"include_usage": True}
        )
        chunks = [chunk async for chunk in stream]
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 7


async def test_malformed_upstream_lines_are_skipped(gateway: RunningGateway, upstream: FaultUpstream) -> None:
    upstream.scenarios = [Scenario(raw_lines=[chunk_json("a"), "{not json", chunk_json("b")])]
    response = await completions(gateway.port, {"messages": HELLO, "stream": True})
    assert data_lines(response.body) == [f"data: {chunk_json('a')}", f"data: {chunk_json('b')}", "data: [DONE]"]


async def test_upstream_done_without_chunks_is_an_empty_stream(gateway: RunningGateway, upstream: FaultUpstream) -> None:
    upstream.scenarios = [Scenario(raw_lines=[])]
    response = await completions(gateway.port, {"messages": HELLO, "stream": True})
    assert response.status == 200
    assert response.body == b"data: [DONE]\n\n"


# -- stream: false --------------------------------------------------------------------------------------


async def test_sync_sdk_non_streaming_completion(gateway: RunningGateway, upstream: FaultUpstream) -> None:
    upstream.scenarios = [Scenario(json_body=COMPLETION)]

    def call() -> Any:
        with openai.OpenAI(api_key="x", base_url=f"{gateway.url}/v1", max_retries=0, timeout=10) as client:
            return client.chat.completions.create(model="test/model", messages=HELLO, max_tokens=5)

    completion = await in_thread(call)
    assert completion.choices[0].message.content == "Hé 世界 👋🏽"
    assert completion.usage is not None and completion.usage.total_tokens == 7
    sent = upstream.requests[0]
    assert sent["body"] == {"model": "test/model", "messages": HELLO, "max_tokens": 5, "stream": False, "usage": {"include": True}}
    assert sent["headers"]["Accept"] == "application/json"


async def test_sync_sdk_stream(gateway: RunningGateway, upstream: FaultUpstream) -> None:
    def call() -> str:
        with openai.OpenAI(api_key="x", base_url=f"{gateway.url}/v1", max_retries=0, timeout=10) as client:
            stream = client.chat.completions.create(model="test/model", messages=HELLO, stream=True)
            return "".join(chunk.choices[0].delta.content or "" for chunk in stream)

    assert await in_thread(call) == "Hello, world!"


# -- errors before the first byte keep their status -----------------------------------------------------


async def test_gateway_rate_limit_is_rate_limit_error(start_gateway) -> None:
    gateway = start_gateway(RATE_LIMIT="1", RATE_LIMIT_BURST="1")
    async with async_client(gateway) as client:
        await client.models.list()
        with pytest.raises(openai.RateLimitError) as caught:
            await client.chat.completions.create(model="test/model", messages=HELLO, stream=True)
    assert caught.value.status_code == 429
    assert caught.value.body["type"] == "rate_limit_error"  # type: ignore[index]
    assert caught.value.body["code"] == "rate_limited"  # type: ignore[index]


async def test_bad_client_key_is_authentication_error(start_gateway, upstream: FaultUpstream) -> None:
    gateway = start_gateway(CLIENT_API_KEYS="k1")
    async with async_client(gateway, "wrong") as client:
        with pytest.raises(openai.AuthenticationError):
            await client.chat.completions.create(model="test/model", messages=HELLO, stream=True)
        with pytest.raises(openai.AuthenticationError):
            await client.models.list()
    assert upstream.requests == []


@pytest.mark.parametrize("stream", [True, False])
async def test_upstream_402_before_streaming_is_api_status_error(start_gateway, upstream: FaultUpstream, stream: bool) -> None:
    gateway = start_gateway()
    upstream.scenarios = [Scenario(status=402, error_body={"error": {"message": "Insufficient credits", "code": 402}})]
    async with async_client(gateway) as client:
        with pytest.raises(openai.APIStatusError) as caught:
            await client.chat.completions.create(model="test/model", messages=HELLO, stream=stream)
    assert caught.value.status_code == 402
    assert "Insufficient credits" in caught.value.message


@pytest.mark.parametrize("status", [400, 401, 429, 503])
async def test_upstream_http_errors_keep_status_and_openai_shape(start_gateway, upstream: FaultUpstream, status: int) -> None:
    gateway = start_gateway(UPSTREAM_RETRIES="0")
    upstream.scenarios = [Scenario(status=status, headers={"Retry-After": "7"})]
    response = await completions(gateway.port, {"messages": HELLO, "stream": True})
    assert response.status == status
    assert response.header("Content-Type") == "application/json"
    error = response.json()["error"]
    assert error["message"] == f"upstream returned HTTP {status}: fault {status}"
    assert error["code"] == "upstream_error"
    assert error["type"] == {400: "invalid_request_error", 401: "authentication_error", 429: "rate_limit_error"}.get(status, "server_error")
    assert response.header("Retry-After") == "7"


async def test_cut_before_first_chunk_is_502(start_gateway, upstream: FaultUpstream) -> None:
    gateway = start_gateway(UPSTREAM_RETRIES="0")
    upstream.scenarios = [Scenario(cut_after=0)]
    response = await completions(gateway.port, {"messages": HELLO, "stream": True})
    assert response.status == 502
    assert response.json()["error"]["type"] == "server_error"


async def test_first_token_timeout_is_504_and_no_heartbeat_before_headers(start_gateway, upstream: FaultUpstream) -> None:
    gateway = start_gateway(FIRST_TOKEN_TIMEOUT_SECS="0.3", HEARTBEAT_SECS="0.05", UPSTREAM_RETRIES="0")
    upstream.scenarios = [Scenario(hang_before_headers=True)]
    response = await completions(gateway.port, {"messages": HELLO, "stream": True})
    assert response.status == 504
    assert response.json()["error"]["code"] == "upstream_timeout"
    assert b"ping" not in response.body


async def test_error_chunk_before_any_text_is_502(start_gateway, upstream: FaultUpstream) -> None:
    gateway = start_gateway()
    upstream.scenarios = [Scenario(raw_lines=[json.dumps({"error": {"message": "Provider overloaded", "code": 502}})])]
    response = await completions(gateway.port, {"messages": HELLO, "stream": True})
    assert response.status == 502
    assert response.json()["error"]["message"] == "upstream error: Provider overloaded"


@pytest.mark.parametrize("stream", [True, False])
async def test_shutdown_before_first_byte_is_503(gateway: RunningGateway, upstream: FaultUpstream, stream: bool) -> None:
    upstream.scenarios = [Scenario(hang_before_headers=True)]
    pending = asyncio.ensure_future(completions(gateway.port, {"messages": HELLO, "stream": stream}))
    await eventually(lambda: upstream.requests, "the upstream call")
    for handler in list(gateway.gateway.streams):
        handler.shutdown()
    response = await pending
    assert response.status == 503
    assert response.header("Retry-After") == "1"
    assert response.json()["error"]["code"] == "server_shutdown"


# -- failures after the first byte ----------------------------------------------------------------------


async def test_mid_stream_cut_is_error_chunk_then_done(gateway: RunningGateway, upstream: FaultUpstream) -> None:
    upstream.scenarios = [Scenario(cut_after=2)]
    response = await completions(gateway.port, {"messages": HELLO, "stream": True})
    lines = data_lines(response.body)
    assert lines[:2] == [f"data: {chunk_json('Hello')}", f"data: {chunk_json(', ')}"]
    error = json.loads(lines[2][6:])["error"]
    assert error["message"] == "upstream connection closed before the stream finished"
    assert error["type"] == "server_error"
    assert error["code"] == "upstream_error"
    assert lines[3:] == ["data: [DONE]"]
    assert len(upstream.requests) == 1  # never retried after text reached the client


async def test_mid_stream_cut_raises_api_error_in_sdk(gateway: RunningGateway, upstream: FaultUpstream) -> None:
    upstream.scenarios = [Scenario(cut_after=2)]
    received = []
    async with async_client(gateway) as client:
        stream = await client.chat.completions.create(model="test/model", messages=HELLO, stream=True)
        with pytest.raises(openai.APIError, match="closed before the stream finished"):
            async for chunk in stream:
                received.append(chunk.choices[0].delta.content)
    assert received == ["Hello", ", "]


async def test_upstream_error_chunk_becomes_openai_error_chunk(gateway: RunningGateway, upstream: FaultUpstream) -> None:
    failure = json.dumps({"id": "g", "error": {"code": 502, "message": "Provider overloaded"}, "choices": []})
    upstream.scenarios = [Scenario(raw_lines=[chunk_json("a"), failure, chunk_json("never")])]
    response = await completions(gateway.port, {"messages": HELLO, "stream": True})
    lines = data_lines(response.body)
    assert lines[0] == f"data: {chunk_json('a')}"
    assert json.loads(lines[1][6:])["error"]["message"] == "upstream error: Provider overloaded"
    assert lines[2:] == ["data: [DONE]"]


async def test_heartbeat_comments_only_after_headers(start_gateway, upstream: FaultUpstream) -> None:
    gateway = start_gateway(HEARTBEAT_SECS="0.05")
    upstream.scenarios = [Scenario(hang_after=1)]
    async with connect(gateway.port) as (reader, writer):
        writer.write(build_request("POST", "/v1/chat/completions", json.dumps({"messages": HELLO, "stream": True}).encode()))
        await writer.drain()
        response = await asyncio.wait_for(read_response(reader, until=lambda body: b": ping" in body), 5)
    assert response.body == f"data: {chunk_json('Hello')}\n\n: ping\n\n".encode()
    assert await upstream.wait_closed()


async def test_client_disconnect_before_first_byte_closes_upstream(gateway: RunningGateway, upstream: FaultUpstream) -> None:
    upstream.scenarios = [Scenario(hang_before_headers=True)]
    async with connect(gateway.port) as (_, writer):
        writer.write(build_request("POST", "/v1/chat/completions", json.dumps({"messages": HELLO, "stream": True}).encode()))
        await writer.drain()
        await eventually(lambda: upstream.requests, "the upstream call")
    assert await upstream.wait_closed()
    await eventually(lambda: not gateway.gateway.streams, "the stream to end")


async def test_client_disconnect_cancels_non_streaming_call(gateway: RunningGateway, upstream: FaultUpstream) -> None:
    upstream.scenarios = [Scenario(hang_before_headers=True)]
    async with connect(gateway.port) as (_, writer):
        writer.write(build_request("POST", "/v1/chat/completions", json.dumps({"messages": HELLO}).encode()))
        await writer.drain()
        await eventually(lambda: upstream.requests, "the upstream call")
    assert await upstream.wait_closed()


# -- validation -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({}, "messages", "missing_prompt"),
        ({"messages": []}, "messages", "invalid_type"),
        ({"messages": "hi"}, "messages", "invalid_type"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role", "invalid_role"),
        ({"messages": [{"role": "user", "content": "  "}]}, "messages[0].content", "empty_prompt"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content", "invalid_type"),
        ({"messages": [{"role": "user", "content": []}]}, "messages[0].content", "empty_prompt"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
            "messages[0].content[0].image_url.url",
            "missing_field",
        ),
        ({"messages": [{"role": "user", "content": "x"}] * 65}, "messages", "too_many_messages"),
        ({"messages": HELLO, "model": "nope"}, "model", "invalid_model"),
        ({"messages": HELLO, "model": 3}, "model", "invalid_type"),
        ({"messages": HELLO, "stream": "yes"}, "stream", "invalid_type"),
        ({"messages": HELLO, "temperature": 2.5}, "temperature", "out_of_range"),
        ({"messages": HELLO, "temperature": "hot"}, "temperature", "invalid_type"),
        ({"messages": HELLO, "top_p": 1.1}, "top_p", "out_of_range"),
        ({"messages": HELLO, "max_tokens": 0}, "max_tokens", "out_of_range"),
        ({"messages": HELLO, "max_tokens": 1.5}, "max_tokens", "invalid_type"),
        ({"messages": HELLO, "max_completion_tokens": 40000}, "max_completion_tokens", "out_of_range"),
        ({"messages": HELLO, "max_tokens": 5, "max_completion_tokens": 5}, "max_completion_tokens", "invalid_request"),
        ({"messages": HELLO, "stop": ["a", "b", "c", "d", "e"]}, "stop", "invalid_type"),
        ({"messages": HELLO, "stop": ""}, "stop", "invalid_type"),
        ({"messages": HELLO, "presence_penalty": -3}, "presence_penalty", "out_of_range"),
        ({"messages": HELLO, "frequency_penalty": True}, "frequency_penalty", "invalid_type"),
        ({"messages": HELLO, "seed": 2**63}, "seed", "out_of_range"),
        ({"messages": HELLO, "user": "u" * 257}, "user", "prompt_too_long"),
        ({"messages": HELLO, "stream_options": {"include_usage": True}}, "stream_options", "invalid_request"),
        ({"messages": HELLO, "stream": True, "stream_options": {"include_usage": 1}}, "stream_options.include_usage", "invalid_type"),
        ({"messages": HELLO, "stream": True, "stream_options": {"other": 1}}, "stream_options.other", "unknown_field"),
        ({"messages": HELLO, "stream": True, "stream_options": []}, "stream_options", "invalid_type"),
        ({"messages": HELLO, "n": 2}, "n", "unsupported_value"),
        ({"messages": HELLO, "logit_bais": {}}, "logit_bais", "unknown_field"),
    ],
)
async def test_validation_errors_are_openai_400s(
    gateway: RunningGateway, upstream: FaultUpstream, body: Any, param: str, code: str
) -> None:
    response = await completions(gateway.port, body)
    assert response.status == 400
    error = response.json()["error"]
    assert (error["param"], error["code"], error["type"]) == (param, code, "invalid_request_error")
    assert upstream.requests == []


async def test_message_text_limit_is_prompt_length_times_message_cap(start_gateway, upstream: FaultUpstream) -> None:
    gateway = start_gateway(MAX_PROMPT_LENGTH="10", MAX_BODY_BYTES="100000")
    at_limit = [{"role": "user", "content": "x" * 640}]
    assert (await completions(gateway.port, {"messages": at_limit, "stream": True})).status == 200
    over = [{"role": "user", "content": "x" * 320}, {"role": "user", "content": "x" * 321}]
    response = await completions(gateway.port, {"messages": over, "stream": True})
    assert response.status == 400
    assert response.json()["error"]["code"] == "prompt_too_long"


async def test_n_of_one_as_sdks_send_it_is_accepted_and_forwarded(gateway: RunningGateway, upstream: FaultUpstream) -> None:
    response = await completions(gateway.port, {"messages": HELLO, "stream": True, "n": 1})
    assert response.status == 200
    assert upstream.requests[0]["body"]["n"] == 1


async def test_null_optional_fields_mean_not_given(gateway: RunningGateway, upstream: FaultUpstream) -> None:
    body = {"messages": HELLO, "model": None, "stream": True, "temperature": None, "stop": None, "user": None}
    response = await completions(gateway.port, body)
    assert response.status == 200
    assert set(upstream.requests[0]["body"]) == {"model", "messages", "stream", "stream_options", "usage"}


async def test_sdk_raises_bad_request_with_param(gateway: RunningGateway) -> None:
    async with async_client(gateway) as client:
        with pytest.raises(openai.BadRequestError) as caught:
            await client.chat.completions.create(model="test/model", messages=HELLO, temperature=3)
    assert caught.value.param == "temperature"


async def test_edge_errors_on_v1_use_openai_shape(gateway: RunningGateway) -> None:
    not_json = await request(gateway.port, "POST", "/v1/chat/completions", raw=b"{", headers={"Content-Type": "text/plain"})
    assert not_json.status == 415
    assert not_json.json()["error"]["code"] == "unsupported_media_type"
    wrong_method = await request(gateway.port, "GET", "/v1/chat/completions")
    assert wrong_method.status == 405
    assert wrong_method.json()["error"]["code"] == "method_not_allowed"
    unknown = await request(gateway.port, "GET", "/v1/embeddings")
    assert unknown.status == 404
    assert unknown.json()["error"] == {
        "message": "no route for GET /v1/embeddings",
        "type": "not_found_error",
        "param": None,
        "code": "not_found",
        "request_id": unknown.header("X-Request-ID"),
    }
    assert "error" not in (await request(gateway.port, "GET", "/elsewhere")).json()  # other paths keep the seed shape


# -- /v1/models -----------------------------------------------------------------------------------------


async def test_models_lists_the_configured_model(gateway: RunningGateway) -> None:
    response = await request(gateway.port, "GET", "/v1/models")
    assert response.status == 200
    assert response.json() == {
        "object": "list",
        "data": [{"id": "anthropic/claude-3.5-sonnet", "object": "model", "created": 0, "owned_by": "anthropic"}],
    }


async def test_models_lists_allowed_models_via_sdk(start_gateway) -> None:
    gateway = start_gateway(ALLOWED_MODELS="openai/gpt-4o-mini,meta-llama/llama-3-8b", CLIENT_API_KEYS="k1")
    async with async_client(gateway, "k1") as client:
        page = await client.models.list()
    assert [(model.id, model.owned_by) for model in page.data] == [
        ("anthropic/claude-3.5-sonnet", "anthropic"),  # OPENROUTER_MODEL is always allowed, so listed too
        ("openai/gpt-4o-mini", "openai"),
        ("meta-llama/llama-3-8b", "meta-llama"),
    ]
    assert (await request(gateway.port, "GET", "/v1/models")).status == 401


# -- /chat learns messages and model ---------------------------------------------------------------------


async def test_chat_messages_model_and_options_reach_upstream(gateway: RunningGateway, upstream: FaultUpstream) -> None:
    body = {
        "messages": [{"role": "user", "content": "one"}, {"role": "assistant", "content": "two"}, {"role": "user", "content": "three"}],
        "model": "vendor/other-model",
        "system": "be terse",
        "temperature": 0.2,
        "max_tokens": 9,
    }
    response = await chat(gateway.port, body)
    assert response.text == "Hello, world!"
    assert upstream.requests[0]["body"] == {
        "model": "vendor/other-model",
        "messages": [{"role": "system", "content": "be terse"}, *body["messages"]],
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": 0.2,
        "max_tokens": 9,
        "usage": {"include": True},
    }


@pytest.mark.parametrize(
    ("body", "error_type"),
    [
        ({"prompt": "x", "messages": HELLO}, "invalid_request"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "invalid_role"),
        ({"prompt": "x", "model": "not-allowed/model"}, "model_not_allowed"),
    ],
)
async def test_chat_rejects_bad_messages_and_models(start_gateway, upstream: FaultUpstream, body: Any, error_type: str) -> None:
    gateway = start_gateway(ALLOWED_MODELS="vendor/a")
    response = await chat(gateway.port, body)
    assert response.status == 400
    assert response.json()["error_type"] == error_type
    assert upstream.requests == []
