"""`GET /v1/models` and `GET /v1/models/{id}`: the provider's catalogue, cached, single-flight, filtered, never a 5xx.

Driven over real sockets against the fault upstream's scriptable `GET /models`.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from server.config import ConfigError, load_settings
from tests.conftest import RunningGateway, request
from tests.fault_upstream import FaultUpstream

SONNET = {"id": "anthropic/claude-3.5-sonnet", "name": "Claude", "created": 7, "context_length": 200000, "pricing": {"prompt": "0.1"}}
MINI = {"id": "openai/gpt-4o-mini", "context_length": 128000, "pricing": {"prompt": "0.2"}, "owned_by": "OpenAI Inc."}
LLAMA = {"id": "meta-llama/llama-3-8b", "context_length": 8192}
CATALOGUE = {"data": [SONNET, MINI, LLAMA, {"name": "no id"}]}


async def models(gateway: RunningGateway, path: str = "/v1/models") -> Any:
    return await request(gateway.port, "GET", path)


async def test_lists_the_providers_catalogue_in_openai_shape(gateway: RunningGateway, upstream: FaultUpstream) -> None:
    upstream.catalogue = CATALOGUE
    response = await models(gateway)
    assert response.status == 200
    assert response.json() == {
        "object": "list",
        "data": [
            {**SONNET, "object": "model", "owned_by": "anthropic"},  # the provider's created kept
            {**MINI, "object": "model", "created": 0},  # the provider's owned_by kept
            {**LLAMA, "object": "model", "created": 0, "owned_by": "meta-llama"},
        ],
    }
    sent = upstream.catalogue_requests[0]
    assert sent["Authorization"] == "Bearer sk-test-secret-key"


async def test_allowed_models_filter_the_list_and_the_configured_model_stays(start_gateway, upstream: FaultUpstream) -> None:
    upstream.catalogue = CATALOGUE
    gateway = start_gateway(ALLOWED_MODELS="meta-llama/llama-3-8b")
    listed = [model["id"] for model in (await models(gateway)).json()["data"]]
    assert listed == ["anthropic/claude-3.5-sonnet", "meta-llama/llama-3-8b"]
    hidden = await models(gateway, "/v1/models/openai/gpt-4o-mini")
    assert hidden.status == 404
    assert hidden.json()["error"]["code"] == "model_not_found"


async def test_one_upstream_call_per_period_and_across_concurrent_misses(gateway: RunningGateway, upstream: FaultUpstream) -> None:
    upstream.catalogue = CATALOGUE
    upstream.catalogue_delay = 0.3  # every client below asks while the first fetch is still out
    answers = await asyncio.gather(*(models(gateway) for _ in range(12)))
    assert {response.status for response in answers} == {200}
    assert all(len(response.json()["data"]) == 3 for response in answers)
    assert (await models(gateway)).status == 200
    assert len(upstream.catalogue_requests) == 1


async def test_each_period_fetches_again(start_gateway, upstream: FaultUpstream) -> None:
    upstream.catalogue = CATALOGUE
    gateway = start_gateway(MODELS_CACHE_SECS="0")
    await models(gateway)
    upstream.catalogue = {"data": [LLAMA]}
    assert [model["id"] for model in (await models(gateway)).json()["data"]] == ["meta-llama/llama-3-8b"]
    assert len(upstream.catalogue_requests) == 2


@pytest.mark.parametrize("failure", ["status", "not_json_list"])
async def test_provider_error_serves_the_last_good_copy(start_gateway, upstream: FaultUpstream, failure: str) -> None:
    upstream.catalogue = CATALOGUE
    gateway = start_gateway(MODELS_CACHE_SECS="0")
    good = (await models(gateway)).json()
    if failure == "status":
        upstream.catalogue_status = 503
    else:
        upstream.catalogue = {"data": "oops"}
    again = await models(gateway)
    assert again.status == 200
    assert again.json() == good
    assert len(upstream.catalogue_requests) == 2


async def test_unreachable_provider_serves_the_configured_models(start_gateway, upstream: FaultUpstream) -> None:
    upstream.stop()
    gateway = start_gateway(ALLOWED_MODELS="openai/gpt-4o-mini,anthropic/claude-3.5-sonnet")
    response = await models(gateway)
    assert response.status == 200
    assert response.json()["data"] == [
        {"id": "anthropic/claude-3.5-sonnet", "object": "model", "created": 0, "owned_by": "anthropic"},
        {"id": "openai/gpt-4o-mini", "object": "model", "created": 0, "owned_by": "openai"},
    ]
    assert (await models(gateway, "/v1/models/openai/gpt-4o-mini")).json()["id"] == "openai/gpt-4o-mini"


@pytest.mark.parametrize("path", ["/v1/models/openai/gpt-4o-mini", "/v1/models/openai%2Fgpt-4o-mini"])
async def test_retrieve_one_model_by_id_with_or_without_encoding(gateway: RunningGateway, upstream: FaultUpstream, path: str) -> None:
    upstream.catalogue = CATALOGUE
    response = await models(gateway, path)
    assert response.status == 200
    assert response.json() == {**MINI, "object": "model", "created": 0}


async def test_unknown_model_is_openais_404(gateway: RunningGateway, upstream: FaultUpstream) -> None:
    upstream.catalogue = CATALOGUE
    response = await models(gateway, "/v1/models/vendor/nope")
    assert response.status == 404
    assert response.json()["error"] == {
        "message": "The model 'vendor/nope' does not exist or is not available here",
        "type": "not_found_error",
        "param": "model",
        "code": "model_not_found",
        "request_id": response.header("X-Request-ID"),
    }


def test_models_cache_secs_setting() -> None:
    base = {"OPENROUTER_API_KEY": "k"}
    assert load_settings(base, env_file=None).models_cache_secs == 300
    assert load_settings({**base, "MODELS_CACHE_SECS": "0"}, env_file=None).models_cache_secs == 0
    with pytest.raises(ConfigError, match="MODELS_CACHE_SECS"):
        load_settings({**base, "MODELS_CACHE_SECS": "-1"}, env_file=None)
