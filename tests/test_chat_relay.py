"""POST /chat over real sockets against the fault upstream: framing, byte-exact relay, failures."""

from __future__ import annotations

import asyncio
import json
import re
import ssl

from bench.procs import SelfSigned
from server.demo_upstream import DemoOptions, start_demo_upstream
from tests.conftest import RunningGateway, build_request, chat, connect, eventually, hang_up_after_upstream_called, read_response
from tests.fault_upstream import FaultUpstream, Scenario, chunk_json

TRICKY = ["Hé", "llo 👋🏽 ", "世界", ' "quoted" \\ back', "\nnew line", " ∑ done"]


async def test_stream_events_are_framed_exactly_as_the_seed(gateway: RunningGateway, upstream: FaultUpstream) -> None:
    response = await chat(gateway.port, {"prompt": "hi"}, {"X-Request-ID": "req-1"})
    assert response.status == 200
    assert response.header("Content-Type") == "text/event-stream; charset=utf-8"
    assert response.header("Cache-Control") == "no-cache"
    assert response.header("X-Accel-Buffering") == "no"
    assert response.header("X-Request-ID") == "req-1"
    assert re.fullmatch(r"gateway;dur=\d+\.\d\d", response.header("Server-Timing") or "")
    expected = (
        b'data: {"content": "", "request_id": "req-1", "type": "connected"}\n\n'
        b'data: {"content": "Hello", "request_id": "req-1", "type": "content"}\n\n'
        b'data: {"content": ", ", "request_id": "req-1", "type": "content"}\n\n'
        b'data: {"content": "world", "request_id": "req-1", "type": "content"}\n\n'
        b'data: {"content": "!", "request_id": "req-1", "type": "content"}\n\n'
        b'data: {"content": "", "request_id": "req-1", "type": "done", "finish_reason": "stop", '
        b'"usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}}\n\n'
    )
    assert response.body == expected


async def test_upstream_request_carries_key_model_prompt_and_request_id(start_gateway, upstream: FaultUpstream) -> None:
    gateway = start_gateway(APP_URL="https://app.example", APP_TITLE="My App")
    prompt = 'Tell me\tabout "JSON" ✓ 😀'
    await chat(gateway.port, {"prompt": prompt}, {"X-Request-ID": "abc.123"})
    sent = upstream.requests[0]
    assert sent["headers"]["Authorization"] == "Bearer sk-test-secret-key"
    assert sent["headers"]["Accept"] == "text/event-stream"
    assert sent["headers"]["X-Request-Id"] == "abc.123"
    assert sent["headers"]["Http-Referer"] == "https://app.example"
    assert sent["headers"]["X-Title"] == "My App"
    assert sent["body"] == {
        "model": "anthropic/claude-3.5-sonnet",
        "messages": [{"role": "user", "content": prompt}],
        "stream": True,
        "stream_options": {"include_usage": True},
        "usage": {"include": True},
    }


async def test_byte_by_byte_upstream_with_multibyte_text_relays_exactly(gateway: RunningGateway, upstream: FaultUpstream) -> None:
    upstream.scenarios = [Scenario(pieces=TRICKY, byte_by_byte=True)]
    response = await chat(gateway.port, {"prompt": "x"})
    assert response.text == "".join(TRICKY)
    assert [e["type"] for e in response.events] == ["connected"] + ["content"] * len(TRICKY) + ["done"]


async def test_crlf_and_cr_line_endings(gateway: RunningGateway, upstream: FaultUpstream) -> None:
    for newline in ("\r\n", "\r"):
        upstream.scenarios = [Scenario(pieces=TRICKY, newline=newline, byte_by_byte=True)]
        response = await chat(gateway.port, {"prompt": "x"})
        assert response.text == "".join(TRICKY), newline
        assert response.events[-1]["type"] == "done"


async def test_malformed_data_line_is_skipped(gateway: RunningGateway, upstream: FaultUpstream) -> None:
    upstream.scenarios = [Scenario(raw_lines=[chunk_json("a"), "{not json", '"a string"', chunk_json("b")])]
    response = await chat(gateway.port, {"prompt": "x"})
    assert response.text == "ab"
    assert response.events[-1]["type"] == "done"


async def test_mid_stream_error_object_becomes_terminal_error(gateway: RunningGateway, upstream: FaultUpstream) -> None:
    error_line = json.dumps(
        {
            "id": "g",
            "error": {"code": 502, "message": "Provider overloaded"},
            "choices": [{"delta": {"content": ""}, "finish_reason": "error"}],
        }
    )
    upstream.scenarios = [Scenario(raw_lines=[chunk_json("partial"), error_line], send_done=True)]
    response = await chat(gateway.port, {"prompt": "x"})
    events = response.events
    assert [e["type"] for e in events] == ["connected", "content", "error"]
    assert "Provider overloaded" in events[-1]["content"]
    assert events[-1]["error_type"] == "upstream_error"


async def test_upstream_http_errors_become_error_events_with_status(start_gateway, upstream: FaultUpstream) -> None:
    gateway = start_gateway(UPSTREAM_RETRIES="0")
    for status in (400, 401, 402, 429, 500, 503):
        upstream.scenarios = [Scenario(status=status, error_body={"error": {"message": f"nope {status}", "code": status}})]
        response = await chat(gateway.port, {"prompt": "x"})
        assert response.status == 200
        last = response.events[-1]
        assert last["type"] == "error", status
        assert last["status"] == status
        assert f"nope {status}" in last["content"]
        assert "sk-test-secret-key" not in response.body.decode()


async def test_refused_connection_is_an_error_event(start_gateway, upstream: FaultUpstream) -> None:
    from tests.conftest import free_port

    gateway = start_gateway(OPENROUTER_BASE_URL=f"http://127.0.0.1:{free_port()}/api/v1", UPSTREAM_RETRIES="0")
    response = await chat(gateway.port, {"prompt": "x"})
    assert [e["type"] for e in response.events] == ["connected", "error"]
    assert response.events[-1]["error_type"] == "upstream_error"


async def test_cut_before_done_is_an_error_never_done(start_gateway, upstream: FaultUpstream) -> None:
    gateway = start_gateway(UPSTREAM_RETRIES="0")
    upstream.scenarios = [Scenario(cut_after=2)]
    response = await chat(gateway.port, {"prompt": "x"})
    assert [e["type"] for e in response.events] == ["connected", "content", "content", "error"]
    upstream.scenarios = [Scenario(send_done=False)]
    response = await chat(gateway.port, {"prompt": "x"})
    assert response.events[-1]["type"] == "error"


async def test_twenty_concurrent_streams(start_gateway, upstream: FaultUpstream) -> None:
    gateway = start_gateway(MAX_STREAMS_PER_CLIENT="20")
    upstream.scenarios = [Scenario(pieces=[f"p{i} " for i in range(20)], delay=0.005)]
    responses = await asyncio.gather(*(chat(gateway.port, {"prompt": f"n{i}"}, {"X-Request-ID": f"r{i}"}) for i in range(20)))
    for index, response in enumerate(responses):
        assert response.text == "".join(f"p{i} " for i in range(20))
        assert {e["request_id"] for e in response.events} == {f"r{index}"}


async def test_client_disconnect_mid_stream_closes_upstream(gateway: RunningGateway, upstream: FaultUpstream) -> None:
    upstream.scenarios = [Scenario(pieces=["tok "] * 1000, delay=0.01)]
    async with connect(gateway.port) as (reader, writer):
        writer.write(build_request("POST", "/chat", b'{"prompt": "x"}'))
        await writer.drain()
        await read_response(reader, until=lambda body: b'"type": "content"' in body)
    assert await upstream.wait_closed(timeout=1.0)
    await eventually(lambda: len(gateway.gateway.streams) == 0, "the stream to end")
    assert gateway.gateway.http_client.open_connections() == 0


async def test_client_disconnect_before_first_byte_closes_upstream(gateway: RunningGateway, upstream: FaultUpstream) -> None:
    upstream.scenarios = [Scenario(hang_before_headers=True)]
    await hang_up_after_upstream_called(gateway.port, upstream)
    assert await upstream.wait_closed(timeout=1.0)


async def test_pooled_connection_is_reused(gateway: RunningGateway, upstream: FaultUpstream) -> None:
    for _ in range(3):
        response = await chat(gateway.port, {"prompt": "x"})
        assert response.events[-1]["type"] == "done"
    assert gateway.gateway.http_client.open_connections() == 1


async def test_http10_upstream_body_read_until_close(start_gateway) -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.0 200 OK\r\nContent-Type: text/event-stream\r\n\r\n")
        for piece in ("old ", "school"):
            writer.write(f"data: {chunk_json(piece)}\n\n".encode())
            await writer.drain()
        writer.write(b"data: [DONE]\n\n")
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    gateway = start_gateway(OPENROUTER_BASE_URL=f"http://127.0.0.1:{port}/v1")
    try:
        for _ in range(2):
            response = await chat(gateway.port, {"prompt": "x"})
            assert response.text == "old school"
            assert response.events[-1]["type"] == "done"
        assert gateway.gateway.http_client.open_connections() == 0
    finally:
        server.close()


async def test_emoji_split_into_two_surrogate_escapes_is_relayed_joinable(gateway: RunningGateway, upstream: FaultUpstream) -> None:
    halves = ['{"choices": [{"delta": {"content": "hi \\ud83d"}}]}', '{"choices": [{"delta": {"content": "\\ude00!"}}]}']
    upstream.scenarios = [Scenario(raw_lines=halves)]
    response = await chat(gateway.port, {"prompt": "x"})
    assert [e["type"] for e in response.events] == ["connected", "content", "content", "done"]
    assert b"\\ud83d" in response.body and b"\\ude00" in response.body  # kept as escapes, not mangled
    assert response.text.encode("utf-16", "surrogatepass").decode("utf-16") == "hi 😀!"


async def test_https_upstream_streams_over_one_pooled_tls_connection(start_gateway, tmp_path, monkeypatch) -> None:
    """A provider over TLS (the demo upstream with a throwaway self-signed certificate, trusted the way an operator
    trusts a private CA: SSL_CERT_FILE); an untrusted certificate fails the request instead of streaming."""
    certificate = SelfSigned.make(str(tmp_path))
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(certificate.cert, certificate.key)
    server, url = start_demo_upstream(DemoOptions(delay=0, answer_words=5), tls=tls)
    try:
        untrusted = start_gateway(OPENROUTER_BASE_URL=url, UPSTREAM_RETRIES="0")
        refused = await chat(untrusted.port, {"prompt": "x"})
        assert refused.events[-1]["type"] == "error"
        assert refused.events[-1]["error_type"] == "upstream_error"

        monkeypatch.setenv("SSL_CERT_FILE", certificate.cert)  # read by OpenSSL when the client's context is made
        gateway = start_gateway(OPENROUTER_BASE_URL=url)
        for _ in range(2):
            response = await chat(gateway.port, {"prompt": "x"})
            assert response.events[-1]["type"] == "done"
            assert len(response.text.split()) == 5
        assert gateway.gateway.http_client.open_connections() == 1
    finally:
        server.stop()
