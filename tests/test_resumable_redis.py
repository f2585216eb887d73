"""Resumable streams with RESUME_BACKEND=redis: started on one gateway process, resumed and cancelled on another."""

from __future__ import annotations

import http.client
import json
from typing import Any

import pytest

from tests.services import GatewayProcess, RedisServer, http_request, wait_for
from tests.test_resumable import blocks, parse, text

pytestmark = pytest.mark.redis

KEYS = "ck-alice-0000000001,ck-bob-00000000002"
ALICE = {"Authorization": "Bearer ck-alice-0000000001"}
BOB = {"Authorization": "Bearer ck-bob-00000000002"}


def pair(spawn: Any, redis_server: RedisServer, **env: str) -> tuple[GatewayProcess, GatewayProcess]:
    shared = {"REDIS_URL": redis_server.url, "DEMO_DELAY_MS": "40", "CLIENT_API_KEYS": KEYS, **env}
    return spawn(GatewayProcess, name="a", **shared), spawn(GatewayProcess, name="b", **shared)


def start_and_drop(port: int, events: int) -> list[bytes]:
    """POST a resumable /chat, read `events` events line by line, hang up."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request(
        "POST", "/chat", body=json.dumps({"prompt": "hi", "resumable": True}), headers={"Content-Type": "application/json", **ALICE}
    )
    response = connection.getresponse()
    assert response.status == 200
    body = b""
    while len(blocks(body)) < events:
        body += response.readline()
    connection.close()
    return blocks(body)


def attempts(gateway: GatewayProcess) -> int:
    return len(gateway.logged("upstream attempt"))


def test_stream_started_on_one_process_resumes_on_another(spawn, redis_server: RedisServer) -> None:
    a, b = pair(spawn, redis_server)
    first = start_and_drop(a.port, 3)
    stream_id = parse(first[0])[1]["stream_id"]
    assert http_request(b.port, "GET", f"/chat/streams/{stream_id}", headers=BOB).json()["error_type"] == "stream_not_found"
    rest = http_request(b.port, "GET", f"/chat/streams/{stream_id}", headers={**ALICE, "Last-Event-ID": str(parse(first[-1])[0])})
    assert rest.status == 200
    events = first + blocks(rest.body)
    assert [parse(event)[0] for event in events] == list(range(len(events)))
    assert parse(events[-1])[1]["type"] == "done"
    replay = http_request(b.port, "GET", f"/chat/streams/{stream_id}", headers=ALICE)
    assert replay.body == b"".join(events)
    assert text(events) == text(blocks(http_request(a.port, "POST", "/chat", {"prompt": "hi"}, ALICE).body))
    assert (attempts(a), attempts(b)) == (2, 0)  # the resumable stream's one call, and the plain comparison's
    finished = a.wait_for_log(lambda r: r["msg"] == "stream finished" and "resumes" in r)
    assert finished["resumes"] == 1  # the replay after the end came too late for the line


def test_delete_on_another_process_cancels_the_owner_call(spawn, redis_server: RedisServer) -> None:
    a, b = pair(spawn, redis_server, DEMO_DELAY_MS="300")
    first = start_and_drop(a.port, 2)
    stream_id = parse(first[0])[1]["stream_id"]
    assert http_request(b.port, "DELETE", f"/chat/streams/{stream_id}", headers=BOB).status == 404
    assert http_request(b.port, "DELETE", f"/chat/streams/{stream_id}", headers=ALICE).status == 204
    cancelled = a.wait_for_log(lambda r: r["msg"] == "stream cancelled", timeout=5)
    assert cancelled["error_type"] == "cancelled"
    after = http_request(b.port, "GET", f"/chat/streams/{stream_id}", headers=ALICE)
    last = after.events[-1]
    assert (last["type"], last["error_type"]) == ("error", "cancelled")


def test_grace_expiry_across_processes(spawn, redis_server: RedisServer) -> None:
    a, b = pair(spawn, redis_server, DEMO_DELAY_MS="300", RESUME_GRACE_SECS="0.5")
    first = start_and_drop(a.port, 2)
    stream_id = parse(first[0])[1]["stream_id"]
    a.wait_for_log(lambda r: r["msg"] == "stream client disconnected", timeout=5)
    late = http_request(b.port, "GET", f"/chat/streams/{stream_id}", headers=ALICE)
    assert late.events[-1]["error_type"] == "client_disconnected"
    wait_for(lambda: redis_ttl_ok(redis_server, stream_id), "the ended stream's keys to carry the TTL")


def redis_ttl_ok(redis_server: RedisServer, stream_id: str) -> bool:
    import socket

    with socket.create_connection(("127.0.0.1", redis_server.port), timeout=1) as sock:
        sock.sendall(f"PTTL tas:resume:{stream_id}\r\nPTTL tas:resume:{stream_id}:meta\r\n".encode())
        answer = b""
        while answer.count(b"\r\n") < 2:
            answer += sock.recv(64)
    ttls = [int(line[1:]) for line in answer.split(b"\r\n")[:2]]
    return all(0 < ttl <= 600_000 for ttl in ttls)
