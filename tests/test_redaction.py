"""Our secrets never leave: a provider that quotes the credentials it was sent reaches no client and no log line.

The fault upstream echoes the Authorization header it received (`Bearer <OPENROUTER_API_KEY>`) into its
error bodies and in-stream error chunks; client keys are quoted the same way. Every byte a client reads and
every log line (JSON and console) must show `[redacted]` instead, on /chat and /v1, streaming or not.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from server.redact import REDACTED, Redactor
from tests.conftest import RawResponse, RunningGateway, request
from tests.fault_upstream import ECHO_AUTHORIZATION, FaultUpstream, Scenario, chunk_json

API_KEY = "sk-test-secret-key"  # the gateway's upstream key in start_gateway
CLIENT_KEYS = ("client-key-one", "client-key-two")
SECRETS = (API_KEY, *CLIENT_KEYS)
QUOTED = f"Invalid API key: {ECHO_AUTHORIZATION}; other keys: {CLIENT_KEYS[1]}"
ROUTES = [("/chat", True), ("/v1/chat/completions", True), ("/v1/chat/completions", False)]


@pytest.fixture
def keyed(start_gateway: Callable[..., RunningGateway]) -> RunningGateway:
    return start_gateway(CLIENT_API_KEYS=",".join(CLIENT_KEYS), UPSTREAM_RETRIES="1", RETRY_MAX_WAIT_SECS="0.01")


async def ask(gateway: RunningGateway, path: str, stream: bool) -> RawResponse:
    body: dict[str, Any] = {"prompt": "x"} if path == "/chat" else {"messages": [{"role": "user", "content": "x"}], "stream": stream}
    return await request(gateway.port, "POST", path, body, {"Authorization": f"Bearer {CLIENT_KEYS[0]}"})


def assert_nothing_leaks(response: RawResponse, logs: str) -> None:
    client_bytes = response.raw_headers + response.body.decode()
    for secret in SECRETS:
        assert secret not in client_bytes, client_bytes
        assert secret not in logs, logs
    assert REDACTED in client_bytes


@pytest.mark.parametrize("log_format", ["json", "console"])
@pytest.mark.parametrize(("path", "stream"), ROUTES)
async def test_error_body_quoting_our_keys_is_redacted_for_client_and_log(
    keyed: RunningGateway, upstream: FaultUpstream, capture_logs: Callable[..., Any], path: str, stream: bool, log_format: str
) -> None:
    # 503 then 503: the first is logged at WARN as a failed attempt, the second reaches the client
    upstream.scenarios = [Scenario(status=503, error_body={"error": {"message": QUOTED}})]
    logs = capture_logs(log_format, log_color="never")
    response = await ask(keyed, path, stream)
    assert response.status == (200 if path == "/chat" else 503)
    assert len(upstream.requests) == 2 and upstream.requests[0]["headers"]["Authorization"] == f"Bearer {API_KEY}"
    assert "upstream attempt 1 failed" in logs.getvalue()
    assert_nothing_leaks(response, logs.getvalue())


@pytest.mark.parametrize("path", ["/chat", "/v1/chat/completions"])
async def test_in_stream_error_chunk_quoting_our_keys_is_redacted(
    keyed: RunningGateway, upstream: FaultUpstream, capture_logs: Callable[..., Any], path: str
) -> None:
    error_line = json.dumps({"error": {"message": QUOTED, "code": 401}})
    upstream.scenarios = [Scenario(raw_lines=[chunk_json("Hi"), error_line], send_done=False, delay=0.05)]
    logs = capture_logs("json")
    response = await ask(keyed, path, True)
    assert response.status == 200 and b"Hi" in response.body
    assert b"upstream error: Invalid API key: Bearer " + REDACTED.encode() in response.body
    assert_nothing_leaks(response, logs.getvalue())


async def test_non_json_error_body_is_redacted_before_it_is_cut(keyed: RunningGateway, upstream: FaultUpstream) -> None:
    upstream.scenarios = [Scenario(status=401, raw_body="x" * 190 + ECHO_AUTHORIZATION)]  # the key straddles the 200-char cut
    response = await ask(keyed, "/v1/chat/completions", False)
    assert response.status == 401
    assert "sk-" not in response.json()["error"]["message"]


def test_redactor_replaces_longest_secrets_first_and_nothing_without_secrets() -> None:
    assert Redactor(["abc", "abcdef", ""])("key abcdef and abc.") == f"key {REDACTED} and {REDACTED}."
    assert Redactor(["", ""])("nothing to hide") == "nothing to hide"
