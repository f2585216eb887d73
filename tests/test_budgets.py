"""Token and cost budgets per client (issue 17), over real sockets: what is charged, the 429 before any
upstream call, max tokens capped to what is left, the headers and /v1/usage, window reset, per-key
overrides, and one budget shared by two gateway processes through a real redis-server."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from server.client_keys import key_id
from server.config import ConfigError, load_settings
from tests.conftest import RawResponse, RunningGateway, api_error, chat, free_port, request
from tests.fault_upstream import FaultUpstream, Scenario
from tests.services import GatewayProcess, RedisServer, http_request, metric

USAGE_7 = {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}


async def usage(port: int, headers: dict[str, str] | None = None) -> dict[str, Any]:
    response = await request(port, "GET", "/v1/usage", headers=headers)
    assert response.status == 200, response.body
    return response.json()  # type: ignore[no-any-return]


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def stream_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.name == "gateway.stream"]


async def test_without_a_budget_nothing_is_charged_or_stored(start_gateway: Callable[..., RunningGateway]) -> None:
    gateway = start_gateway()  # TOKEN_BUDGET and COST_BUDGET_USD off
    response = await chat(gateway.port, {"prompt": "hi"})
    assert response.status == 200 and response.header("X-Budget-Limit") is None
    assert len(gateway.gateway.budgets.ledger._spend) == 0  # type: ignore[attr-defined]  # no ledger work on the hot path


async def test_reported_usage_is_charged_and_shown_in_headers_and_v1_usage(start_gateway: Callable[..., RunningGateway]) -> None:
    gateway = start_gateway(TOKEN_BUDGET="100")
    first = await chat(gateway.port, {"prompt": "hi"})
    assert first.events[-1]["type"] == "done"
    assert (first.header("X-Budget-Limit"), first.header("X-Budget-Remaining")) == ("100", "100")  # before this call's charge
    assert 0 < int(first.header("X-Budget-Reset") or 0) <= 86400
    assert first.header("X-Budget-Limit-USD") is None  # no cost budget
    second = await chat(gateway.port, {"prompt": "hi"})
    assert second.header("X-Budget-Remaining") == "93"
    shown = await usage(gateway.port)
    assert shown["tokens"] == {"limit": 100, "used": 14, "remaining": 86}
    assert shown["cost_usd"] == {"limit": None, "used": 0, "remaining": None}
    assert 0 < shown["window"]["reset_secs"] <= 86400
    resets_at = time.mktime(time.strptime(shown["window"]["resets_at"], "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
    assert resets_at % 86400 == 0  # windows are aligned to the epoch


async def test_v1_calls_are_charged_in_both_modes_and_usage_is_always_requested(
    start_gateway: Callable[..., RunningGateway], upstream: FaultUpstream
) -> None:
    gateway = start_gateway(TOKEN_BUDGET="100", CLIENT_API_KEYS="k1")
    upstream.scenarios = [Scenario(), Scenario(json_body={"choices": [{"message": {"content": "ok"}}], "usage": USAGE_7})]
    body = {"messages": [{"role": "user", "content": "hi"}]}
    streamed = await request(gateway.port, "POST", "/v1/chat/completions", {**body, "stream": True}, bearer("k1"))
    assert b'"usage"' not in streamed.body  # the client did not ask for the usage chunk
    whole = await request(gateway.port, "POST", "/v1/chat/completions", body, bearer("k1"))
    assert whole.status == 200 and whole.header("X-Budget-Remaining") == "93"
    assert [sent["body"]["usage"] for sent in upstream.requests] == [{"include": True}] * 2
    assert upstream.requests[0]["body"]["stream_options"] == {"include_usage": True}
    assert (await usage(gateway.port, bearer("k1")))["tokens"]["used"] == 14


async def test_a_call_without_usage_is_charged_the_estimate(
    start_gateway: Callable[..., RunningGateway], upstream: FaultUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    gateway = start_gateway(TOKEN_BUDGET="1000")
    upstream.scenarios = [Scenario(usage=None), Scenario(cut_after=2, usage=None)]
    caplog.set_level(logging.INFO, "gateway.stream")
    # system + prompt = 10 characters, "Hello, world!" relayed = 13: ceil(23 / 4) = 6
    answered = await chat(gateway.port, {"system": "sys", "prompt": "1234567"})
    assert answered.text == "Hello, world!"
    assert (await usage(gateway.port))["tokens"]["used"] == 6
    finished = stream_lines(caplog)[-1]
    assert (finished.outcome, finished.usage_estimated, finished.prompt_tokens, finished.completion_tokens) == ("finished", True, 3, 3)  # type: ignore[attr-defined]
    cut = await chat(gateway.port, {"prompt": "12345678"})  # "Hello, " relayed, then the upstream hangs up: ceil(15 / 4) = 4
    assert cut.events[-1]["type"] == "error"
    assert (await usage(gateway.port))["tokens"]["used"] == 10
    assert stream_lines(caplog)[-1].usage_estimated is True  # type: ignore[attr-defined]


async def test_a_call_the_provider_refused_is_not_charged(
    start_gateway: Callable[..., RunningGateway], upstream: FaultUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    gateway = start_gateway(TOKEN_BUDGET="1000", UPSTREAM_RETRIES="0")
    upstream.scenarios = [Scenario(status=400)]
    caplog.set_level(logging.INFO, "gateway.stream")
    assert (await chat(gateway.port, {"prompt": "hi"})).events[-1]["error_type"] == "upstream_error"
    assert (await request(gateway.port, "POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]})).status == 400
    assert (await usage(gateway.port))["tokens"]["used"] == 0
    assert [(r.prompt_tokens, r.usage_estimated) for r in stream_lines(caplog)] == [(None, False)] * 2  # type: ignore[attr-defined]


async def test_a_spent_client_gets_429_before_any_upstream_call(
    start_gateway: Callable[..., RunningGateway], upstream: FaultUpstream
) -> None:
    gateway = start_gateway(TOKEN_BUDGET="10", CLIENT_API_KEYS="k1")
    for _ in range(2):  # 7, then 7 more: over the budget of 10
        assert (await chat(gateway.port, {"prompt": "hi"}, bearer("k1"))).events[-1]["type"] == "done"
    refused = await chat(gateway.port, {"prompt": "hi"}, bearer("k1"))
    body = api_error(refused, 429, "budget_exceeded")
    assert "resets in" in body["message"]
    assert 1 <= int(refused.header("Retry-After") or 0) <= 86400
    assert (refused.header("X-Budget-Limit"), refused.header("X-Budget-Remaining")) == ("10", "0")
    openai = await request(gateway.port, "POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}, bearer("k1"))
    assert openai.status == 429 and openai.header("Retry-After")
    error = openai.json()["error"]
    assert (error["type"], error["code"]) == ("insufficient_quota", "budget_exceeded")
    assert len(upstream.requests) == 2
    assert (await usage(gateway.port, bearer("k1")))["tokens"] == {"limit": 10, "used": 14, "remaining": 0}
    assert (await request(gateway.port, "GET", "/v1/models", headers=bearer("k1"))).header("X-Budget-Remaining") == "0"
    metrics = (await request(gateway.port, "GET", "/metrics")).body.decode()
    assert "budget_exceeded_total 2.0" in metrics
    assert f'chat_tokens_total{{key_id="{key_id("k1")}",kind="completion"}} 8.0' in metrics


async def test_max_tokens_is_capped_to_the_tokens_left(start_gateway: Callable[..., RunningGateway], upstream: FaultUpstream) -> None:
    gateway = start_gateway(TOKEN_BUDGET="20", MAX_TOKENS_LIMIT="1000")
    assert (await chat(gateway.port, {"prompt": "hi"})).status == 200  # 7 spent, 13 left
    upstream.scenarios = [Scenario(usage={"total_tokens": 1})]
    await chat(gateway.port, {"prompt": "hi"})
    await chat(gateway.port, {"prompt": "hi", "max_tokens": 500})
    await chat(gateway.port, {"prompt": "hi", "max_tokens": 5})  # a smaller value is kept
    v1 = {"messages": [{"role": "user", "content": "hi"}], "stream": True}
    await request(gateway.port, "POST", "/v1/chat/completions", {**v1, "max_completion_tokens": 900})
    assert [sent["body"]["max_tokens"] for sent in upstream.requests[1:4]] == [13, 12, 5]
    last = upstream.requests[4]["body"]
    assert last["max_completion_tokens"] == 10 and "max_tokens" not in last  # the client's field name is kept


async def test_the_window_resets(start_gateway: Callable[..., RunningGateway]) -> None:
    gateway = start_gateway(TOKEN_BUDGET="5", BUDGET_WINDOW_SECS="2")
    await chat(gateway.port, {"prompt": "hi"})
    refused = await chat(gateway.port, {"prompt": "hi"})
    assert refused.status == 429 and int(refused.header("Retry-After") or 0) <= 2
    deadline = time.monotonic() + 10
    while (answer := await chat(gateway.port, {"prompt": "hi"})).status == 429:
        assert time.monotonic() < deadline, "the window never reset"
        await asyncio.sleep(0.1)
    assert answer.events[-1]["type"] == "done" and answer.header("X-Budget-Remaining") == "5"


async def test_per_key_overrides_and_a_cost_budget(
    start_gateway: Callable[..., RunningGateway], upstream: FaultUpstream, tmp_path: Path
) -> None:
    keys = tmp_path / "keys"
    keys.write_text("# key tokens cost\nsmall 8\ndefault\nrich - 0\npricey - 0.00002\nunmetered 0\n")
    gateway = start_gateway(TOKEN_BUDGET="100", COST_BUDGET_USD="1", CLIENT_API_KEYS_FILE=str(keys))
    upstream.scenarios = [Scenario(usage={**USAGE_7, "cost": 0.000015})]

    async def call(key: str) -> RawResponse:
        return await chat(gateway.port, {"prompt": "hi"}, bearer(key))

    for key in ("small", "pricey", "default", "rich", "unmetered"):
        assert (await call(key)).status == 200
    assert (await call("small")).status == 200  # 7 of 8 tokens: one left, not none
    assert upstream.requests[-1]["body"]["max_tokens"] == 1
    assert (await call("small")).status == 429
    assert (await call("pricey")).header("X-Budget-Remaining-USD") == "0.000005"
    pricey = await call("pricey")  # $0.00003 of $0.00002: spent
    assert pricey.status == 429
    assert (pricey.header("X-Budget-Limit-USD"), pricey.header("X-Budget-Remaining-USD")) == ("0.00002", "0")
    assert (await usage(gateway.port, bearer("pricey")))["cost_usd"] == {"limit": 0.00002, "used": 0.00003, "remaining": 0.0}
    default = await call("default")
    assert (default.header("X-Budget-Limit"), default.header("X-Budget-Limit-USD"), default.header("X-Budget-Remaining-USD")) == (
        "100",
        "1",
        "0.999985",
    )
    rich = await usage(gateway.port, bearer("rich"))
    assert (rich["tokens"]["limit"], rich["cost_usd"]["limit"]) == (100, None)
    unmetered = await call("unmetered")
    assert unmetered.header("X-Budget-Limit") is None and unmetered.header("X-Budget-Limit-USD") == "1"


def test_key_file_lines_are_checked(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    base = {"OPENROUTER_API_KEY": "x"}
    keys.write_text("k1 10 0.5\nk2 - 2\nk3\n")
    settings = load_settings({**base, "CLIENT_API_KEYS_FILE": str(keys)})
    assert settings.client_api_keys == ("k1", "k2", "k3")
    assert settings.budget_overrides == (("k1", 10, 0.5), ("k2", None, 2.0))
    for bad in ("k1 ten\n", "k1 1 2 3\n", "k1 -5\n", "k1 - nan\n"):
        keys.write_text(bad)
        with pytest.raises(ConfigError) as caught:
            load_settings({**base, "CLIENT_API_KEYS_FILE": str(keys)})
        assert caught.value.variable == "CLIENT_API_KEYS_FILE" and "k1" not in str(caught.value)
    with pytest.raises(ConfigError):
        load_settings({**base, "TOKEN_BUDGET": "-1"})


@pytest.mark.redis
def test_one_budget_across_two_gateway_processes_sharing_redis(spawn: Callable[..., Any], redis_server: RedisServer) -> None:
    env = {"RATE_LIMIT_BACKEND": "redis", "REDIS_URL": redis_server.url, "TOKEN_BUDGET": "40", "COST_BUDGET_USD": "1"}
    first = spawn(GatewayProcess, "first", **env)
    second = spawn(GatewayProcess, "second", **env)
    answer = first.chat()
    assert answer.status == 200 and answer.events[-1]["type"] == "done"
    assert answer.headers["x-budget-remaining"] == "40"
    charged = first.wait_for_log(lambda record: record["msg"] == "stream finished")
    assert charged["usage_estimated"] is False and charged["prompt_tokens"] + charged["completion_tokens"] >= 40  # max_tokens 40
    assert charged["cost_usd"] > 0  # the demo reports cost when asked
    refused = second.chat()
    assert refused.status == 429 and refused.json()["error_type"] == "budget_exceeded"
    assert refused.headers["x-budget-remaining"] == "0"
    shown = http_request(second.port, "GET", "/v1/usage").json()
    assert shown["tokens"]["used"] == charged["prompt_tokens"] + charged["completion_tokens"]
    assert shown["cost_usd"]["used"] == pytest.approx(charged["cost_usd"])
    assert metric(second.port, "budget_exceeded_total") == 1


@pytest.mark.parametrize(("mode", "status"), [("open", 200), ("closed", 503)])
async def test_an_unreachable_redis_follows_the_fail_mode(start_gateway: Callable[..., RunningGateway], mode: str, status: int) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    gateway = start_gateway(TOKEN_BUDGET="1", RATE_LIMIT_BACKEND="redis", REDIS_URL=dead, RATE_LIMIT_FAIL_MODE=mode)
    answer = await chat(gateway.port, {"prompt": "hi"})
    assert answer.status == status and answer.header("X-Budget-Limit") is None
    assert (await request(gateway.port, "GET", "/v1/usage")).status == 503
