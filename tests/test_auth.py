"""Client keys over real sockets: 401s, key ids in logs (never keys), keys files, the open-relay warning."""

from __future__ import annotations

import hashlib
import logging

import pytest

from server.client_keys import ClientKeys, bearer_token, key_id
from tests.conftest import api_error, chat, request
from tests.fault_upstream import FaultUpstream
from tests.services import GatewayProcess

KEY_ONE = "ck-live-one-7f3a9c"
KEY_TWO = "ck-live-two-b81e22"


@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer", "Bearer ", f"Basic {KEY_ONE}", "Bearer ck-live-one", f"Bearer {KEY_ONE}x", f"Bearer {KEY_ONE.upper()}"],
)
async def test_missing_or_wrong_key_is_401_before_any_upstream_call(
    start_gateway, upstream: FaultUpstream, authorization: str | None
) -> None:
    gateway = start_gateway(CLIENT_API_KEYS=f"{KEY_ONE},{KEY_TWO}")
    headers = {} if authorization is None else {"Authorization": authorization}
    response = await chat(gateway.port, {"prompt": "hi"}, headers)
    body = api_error(response, 401, "unauthorized")
    assert body["message"] == "missing or invalid client key: send Authorization: Bearer <key>"
    assert response.header("WWW-Authenticate") == "Bearer"
    assert upstream.requests == []


async def test_valid_keys_pass_and_the_upstream_sees_only_the_gateway_key(start_gateway, upstream: FaultUpstream) -> None:
    gateway = start_gateway(CLIENT_API_KEYS=f"{KEY_ONE}, {KEY_TWO}")
    for key in (KEY_ONE, KEY_TWO):
        response = await chat(gateway.port, {"prompt": "hi"}, {"Authorization": f"bearer  {key} "})
        assert response.status == 200
        assert response.events[-1]["type"] == "done"
    assert [sent["headers"]["Authorization"] for sent in upstream.requests] == ["Bearer sk-test-secret-key"] * 2


async def test_health_and_preflight_need_no_key(start_gateway) -> None:
    gateway = start_gateway(CLIENT_API_KEYS=KEY_ONE)
    assert (await request(gateway.port, "GET", "/health")).status == 200
    assert (await request(gateway.port, "OPTIONS", "/chat", headers={"Origin": "https://a.example"})).status == 204


async def test_keys_file_adds_to_the_list(start_gateway, upstream: FaultUpstream, tmp_path) -> None:
    keys_file = tmp_path / "keys.txt"
    keys_file.write_text(f"# one key a line\n\n  {KEY_TWO}  \n", encoding="utf-8")
    gateway = start_gateway(CLIENT_API_KEYS=KEY_ONE, CLIENT_API_KEYS_FILE=str(keys_file))
    assert gateway.settings.client_api_keys == (KEY_ONE, KEY_TWO)
    assert (await chat(gateway.port, {"prompt": "hi"}, {"Authorization": f"Bearer {KEY_TWO}"})).status == 200
    assert (await chat(gateway.port, {"prompt": "hi"}, {"Authorization": "Bearer # one key a line"})).status == 401


async def test_logs_show_the_key_id_never_the_key(start_gateway, upstream: FaultUpstream, caplog: pytest.LogCaptureFixture) -> None:
    gateway = start_gateway(CLIENT_API_KEYS=KEY_ONE)
    wrong = "ck-wrong-secret-0042"
    with caplog.at_level(logging.DEBUG):
        await chat(gateway.port, {"prompt": "hi"}, {"Authorization": f"Bearer {KEY_ONE}"})
        await chat(gateway.port, {"prompt": "hi"}, {"Authorization": f"Bearer {wrong}"})
    expected_id = hashlib.sha256(KEY_ONE.encode()).hexdigest()[:8]
    completed = [record for record in caplog.records if record.getMessage() == "completed"]
    assert [(record.status, record.key_id) for record in completed] == [(200, expected_id), (401, None)]  # type: ignore[attr-defined]
    for record in caplog.records:
        text = str(record.__dict__) + record.getMessage()
        assert KEY_ONE not in text and wrong not in text


def test_key_id_and_bearer_parsing() -> None:
    assert key_id("abc") == hashlib.sha256(b"abc").hexdigest()[:8]
    assert bearer_token("Bearer  tok ") == "tok"
    assert bearer_token("Token tok") is None
    keys = ClientKeys(("k1", "k2"))
    assert keys.enabled and not ClientKeys(()).enabled
    assert keys.identify("Bearer k2") == key_id("k2")
    assert keys.identify("Bearer k") is None
    assert keys.identify(None) is None


def relay_warnings(gateway: GatewayProcess) -> list[str]:
    return [record["msg"] for record in gateway.records() if record["level"] == "WARNING" and "CLIENT_API_KEYS is not set" in record["msg"]]


async def test_open_relay_warning_off_loopback_without_keys(io_loop, spawn) -> None:
    gateway = spawn(GatewayProcess, HOST="0.0.0.0")  # reachable from anywhere; we connect via 127.0.0.1 only
    assert (await request(gateway.port, "GET", "/health")).status == 200
    assert gateway.stop() == 0
    assert relay_warnings(gateway) == [
        "CLIENT_API_KEYS is not set and HOST=0.0.0.0 is not loopback: anyone who can reach this port can spend the upstream key"
    ]

    keyed = spawn(GatewayProcess, name="keyed", HOST="0.0.0.0", CLIENT_API_KEYS=KEY_ONE)
    assert (await chat(keyed.port, {"prompt": "hi"})).status == 401
    assert keyed.stop() == 0
    assert relay_warnings(keyed) == []
    assert KEY_ONE not in keyed.log()
