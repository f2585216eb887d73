"""The one stream lifecycle (handlers/relay.py): what both protocols now share, over real sockets."""

from __future__ import annotations

import json
import logging

from server.config import load_settings
from server.http_client import PooledAsyncHTTPClient
from server.upstream import UpstreamCall, UpstreamError
from tests.conftest import free_port, request
from tests.fault_upstream import FaultUpstream, Scenario


async def test_connection_failure_carries_its_cause(io_loop) -> None:
    settings = load_settings({"OPENROUTER_API_KEY": "k", "OPENROUTER_BASE_URL": f"http://127.0.0.1:{free_port()}", "UPSTREAM_RETRIES": "0"})
    client = PooledAsyncHTTPClient(force_instance=True)
    call = UpstreamCall(client, settings, {"model": "a/b", "messages": []}, {})
    try:
        await call.stream(lambda events: None)
    except UpstreamError as error:
        assert error.message == "could not connect to the upstream"
        assert isinstance(error.__cause__, OSError), error.__cause__
    else:
        raise AssertionError("a refused connection must fail")
    finally:
        client.close()


async def test_openai_stream_logs_prompt_and_answer_like_chat(start_gateway, upstream: FaultUpstream, caplog) -> None:
    caplog.set_level(logging.INFO, logger="gateway.stream")
    gateway = start_gateway(LOG_PROMPTS="true")
    upstream.scenarios = [Scenario(pieces=["Ans", "wer"])]
    body = {"messages": [{"role": "user", "content": "the prompt"}], "stream": True}
    response = await request(gateway.port, "POST", "/v1/chat/completions", body, {"X-Request-ID": "v1-prompts"})
    assert response.status == 200
    finished = [r for r in caplog.records if r.getMessage() == "stream finished"]
    assert len(finished) == 1
    assert (finished[0].prompt, finished[0].answer) == ("the prompt", "Answer")
    assert json.loads(response.body.split(b"\n\n")[0][6:])["choices"][0]["delta"]["content"] == "Ans"
