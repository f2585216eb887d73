"""Client keys: 401s, key ids in logs (never keys), keys files (in process, on AsyncHTTPTestCase), the
open-relay warning (a real `python run.py`: it is logged at start-up)."""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

from server.client_keys import ClientKeys, bearer_token, key_id
from tests.apptest import GatewayTestCase, log_records
from tests.conftest import chat, request
from tests.services import GatewayProcess

KEY_ONE = "ck-live-one-7f3a9c"
KEY_TWO = "ck-live-two-b81e22"
WRONG_AUTHORIZATIONS = [
    None,
    "",
    "Bearer",
    "Bearer ",
    f"Basic {KEY_ONE}",
    "Bearer ck-live-one",
    f"Bearer {KEY_ONE}x",
    f"Bearer {KEY_ONE.upper()}",
]


class TwoKeysTest(GatewayTestCase):
    env = {"CLIENT_API_KEYS": f"{KEY_ONE},{KEY_TWO}"}

    def test_missing_or_wrong_key_is_401_before_any_upstream_call(self) -> None:
        for authorization in WRONG_AUTHORIZATIONS:
            with self.subTest(authorization=authorization):
                response = self.chat({"prompt": "hi"}, {} if authorization is None else {"Authorization": authorization})
                body = self.api_error(response, 401, "unauthorized")
                self.assertEqual(body["message"], "missing or invalid client key: send Authorization: Bearer <key>")
                self.assertEqual(response.headers.get("WWW-Authenticate"), "Bearer")
                self.assertEqual(self.upstream.requests, [])


class SpacedKeysTest(GatewayTestCase):
    env = {"CLIENT_API_KEYS": f"{KEY_ONE}, {KEY_TWO}"}

    def test_valid_keys_pass_and_the_upstream_sees_only_the_gateway_key(self) -> None:
        for key in (KEY_ONE, KEY_TWO):
            response = self.chat({"prompt": "hi"}, {"Authorization": f"bearer  {key} "})
            self.assertEqual(response.code, 200)
            self.assertEqual(self.events(response)[-1]["type"], "done")
        self.assertEqual([sent["headers"]["Authorization"] for sent in self.upstream.requests], ["Bearer sk-test-secret-key"] * 2)


class OneKeyTest(GatewayTestCase):
    env = {"CLIENT_API_KEYS": KEY_ONE}

    def test_health_and_preflight_need_no_key(self) -> None:
        self.assertEqual(self.request("GET", "/health").code, 200)
        self.assertEqual(self.request("OPTIONS", "/chat", headers={"Origin": "https://a.example"}).code, 204)

    def test_logs_show_the_key_id_never_the_key(self) -> None:
        wrong = "ck-wrong-secret-0042"
        with log_records() as records:
            self.chat({"prompt": "hi"}, {"Authorization": f"Bearer {KEY_ONE}"})
            self.chat({"prompt": "hi"}, {"Authorization": f"Bearer {wrong}"})
        expected_id = hashlib.sha256(KEY_ONE.encode()).hexdigest()[:8]
        completed = [record for record in records if record.getMessage() == "completed"]
        self.assertEqual([(record.status, record.key_id) for record in completed], [(200, expected_id), (401, None)])  # type: ignore[attr-defined]
        for record in records:
            text = str(record.__dict__) + record.getMessage()
            self.assertNotIn(KEY_ONE, text)
            self.assertNotIn(wrong, text)


class KeysFileTest(GatewayTestCase):
    @classmethod
    def setUpClass(cls) -> None:
        folder = tempfile.TemporaryDirectory()
        cls.addClassCleanup(folder.cleanup)
        keys_file = Path(folder.name) / "keys.txt"
        keys_file.write_text(f"# one key a line\n\n  {KEY_TWO}  \n", encoding="utf-8")
        cls.env = {"CLIENT_API_KEYS": KEY_ONE, "CLIENT_API_KEYS_FILE": str(keys_file)}
        super().setUpClass()

    def test_keys_file_adds_to_the_list(self) -> None:
        self.assertEqual(self.settings.client_api_keys, (KEY_ONE, KEY_TWO))
        self.assertEqual(self.chat({"prompt": "hi"}, {"Authorization": f"Bearer {KEY_TWO}"}).code, 200)
        self.assertEqual(self.chat({"prompt": "hi"}, {"Authorization": "Bearer # one key a line"}).code, 401)


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
