"""Resumable /chat streams (memory backend) over real sockets: drop, resume, replay, grace, cancel, bounds."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from typing import Any

from server.config import ConfigError, load_settings
from tests.conftest import ROOT, build_request, connect, eventually, read_response, request
from tests.fault_upstream import FaultUpstream, Scenario
from tests.services import GatewayProcess, gateway_env, http_request

PIECES = [f"word{i} " for i in range(12)]
KEYS = {"CLIENT_API_KEYS": "ck-alice-0000000001,ck-bob-00000000002"}
ALICE = {"Authorization": "Bearer ck-alice-0000000001"}
BOB = {"Authorization": "Bearer ck-bob-00000000002"}


def blocks(body: bytes) -> list[bytes]:
    """The complete SSE events of a body (comments such as heartbeats left out), each with its blank line."""
    return [block + b"\n\n" for block in body.split(b"\n\n")[:-1] if not block.startswith(b":")]


def parse(block: bytes) -> tuple[int | None, dict[str, Any]]:
    event_id, data = None, {}
    for line in block.decode().splitlines():
        if line.startswith("id: "):
            event_id = int(line[4:])
        elif line.startswith("data: "):
            data = json.loads(line[6:])
    return event_id, data


def text(events: list[bytes]) -> str:
    return "".join(data["content"] for _, data in map(parse, events) if data["type"] == "content")


async def start_and_drop(port: int, events: int, headers: dict[str, str] | None = None) -> list[bytes]:
    """POST a resumable /chat, read `events` complete events (or a few more that came in the same read), hang up."""
    async with connect(port) as (reader, writer):
        writer.write(build_request("POST", "/chat", json.dumps({"prompt": "x", "resumable": True}).encode(), headers))
        await writer.drain()
        response = await asyncio.wait_for(read_response(reader, until=lambda body: len(blocks(body)) >= events), 10)
    assert response.status == 200
    return blocks(response.body)


async def resume(port: int, stream_id: str, last_event_id: int | None = None, headers: dict[str, str] | None = None):
    sent = dict(headers or {})
    if last_event_id is not None:
        sent["Last-Event-ID"] = str(last_event_id)
    return await request(port, "GET", f"/chat/streams/{stream_id}", headers=sent)


async def test_drop_after_three_events_and_resume_gets_the_rest_once(start_gateway, upstream: FaultUpstream) -> None:
    gateway = start_gateway()
    upstream.scenarios = [Scenario(pieces=PIECES, delay=0.05)]
    first = await start_and_drop(gateway.port, 3)
    stream_id = parse(first[0])[1]["stream_id"]
    assert len(stream_id) >= 22 and parse(first[0])[0] == 0
    last = parse(first[-1])[0]
    rest = await resume(gateway.port, stream_id, last)
    assert rest.status == 200 and rest.header("Content-Type") == "text/event-stream; charset=utf-8"
    events = first + blocks(rest.body)
    assert [parse(event)[0] for event in events] == list(range(len(events)))
    assert text(events) == "".join(PIECES)
    assert parse(events[-1])[1]["type"] == "done"
    assert len(upstream.requests) == 1


async def test_resume_after_the_end_replays_byte_identical(start_gateway, upstream: FaultUpstream) -> None:
    gateway = start_gateway()
    first = await request(gateway.port, "POST", "/chat", {"prompt": "x", "resumable": True}, {"X-Request-ID": "orig-1"})
    stream_id = first.events[0]["stream_id"]
    again = await resume(gateway.port, stream_id)
    assert again.body == first.body
    assert again.header("X-Request-ID") != "orig-1"
    assert all(event["request_id"] == "orig-1" for event in again.events)
    tail = await request(gateway.port, "GET", f"/chat/streams/{stream_id}?last_event_id=2")
    assert tail.body == b"".join(blocks(first.body)[3:])
    assert len(upstream.requests) == 1


async def test_two_readers_each_get_the_whole_sequence(start_gateway, upstream: FaultUpstream) -> None:
    gateway = start_gateway()
    upstream.scenarios = [Scenario(pieces=PIECES, delay=0.05)]
    first = await start_and_drop(gateway.port, 2)
    stream_id = parse(first[0])[1]["stream_id"]
    one, two = await asyncio.gather(resume(gateway.port, stream_id), resume(gateway.port, stream_id))
    assert one.body == two.body
    assert text(blocks(one.body)) == "".join(PIECES)
    assert b"".join(first) == one.body[: len(b"".join(first))]
    assert len(upstream.requests) == 1


async def test_plain_stream_has_no_stream_id_and_no_ids(gateway, upstream: FaultUpstream) -> None:
    response = await request(gateway.port, "POST", "/chat", {"prompt": "x", "resumable": False})
    assert "stream_id" not in response.events[0]
    assert not any(line.startswith(b"id:") for line in response.body.split(b"\n"))


async def test_grace_expiry_closes_upstream_and_late_reader_gets_the_error(start_gateway, upstream: FaultUpstream) -> None:
    gateway = start_gateway(RESUME_GRACE_SECS="0.2")
    upstream.scenarios = [Scenario(hang_after=1)]
    first = await start_and_drop(gateway.port, 2)
    assert await upstream.wait_closed(timeout=5.0)
    late = await resume(gateway.port, parse(first[0])[1]["stream_id"])
    last = late.events[-1]
    assert (last["type"], last["error_type"]) == ("error", "client_disconnected")
    assert late.text == "Hello"
    await eventually(lambda: len(gateway.gateway.streams) == 0, "the streams to end")


async def test_reader_within_grace_keeps_the_call(start_gateway, upstream: FaultUpstream) -> None:
    gateway = start_gateway(RESUME_GRACE_SECS="2")
    upstream.scenarios = [Scenario(pieces=PIECES, delay=0.05)]
    first = await start_and_drop(gateway.port, 2)
    await eventually(lambda: gateway.gateway.metrics.streams_detached._value.get() == 1, "one detached stream")
    rest = await resume(gateway.port, parse(first[0])[1]["stream_id"], parse(first[-1])[0])
    assert rest.events[-1]["type"] == "done" and not upstream.closed
    assert gateway.gateway.metrics.stream_resumes._value.get() == 1
    assert gateway.gateway.metrics.streams_detached._value.get() == 0


async def test_delete_cancels_upstream_and_readers_get_cancelled(start_gateway, upstream: FaultUpstream) -> None:
    gateway = start_gateway()
    upstream.scenarios = [Scenario(hang_after=1)]
    first = await start_and_drop(gateway.port, 2)
    stream_id = parse(first[0])[1]["stream_id"]
    reader = asyncio.ensure_future(resume(gateway.port, stream_id, 1))
    await eventually(lambda: gateway.gateway.metrics.stream_resumes._value.get() == 1, "one resume")
    deleted = await request(gateway.port, "DELETE", f"/chat/streams/{stream_id}")
    assert deleted.status == 204
    assert await upstream.wait_closed(timeout=1.0)
    last = (await reader).events[-1]
    assert (last["type"], last["error_type"]) == ("error", "cancelled")


async def test_only_the_starting_key_may_read_or_cancel(start_gateway, upstream: FaultUpstream) -> None:
    gateway = start_gateway(**KEYS)
    upstream.scenarios = [Scenario(pieces=PIECES, delay=0.05)]
    first = await start_and_drop(gateway.port, 2, ALICE)
    stream_id = parse(first[0])[1]["stream_id"]
    for method in ("GET", "DELETE"):
        theirs = await request(gateway.port, method, f"/chat/streams/{stream_id}", headers=BOB)
        unknown = await request(gateway.port, method, "/chat/streams/no-such-stream", headers=ALICE)
        for answer in (theirs, unknown):
            assert answer.status == 404 and answer.json()["error_type"] == "stream_not_found"
        assert theirs.json()["message"] == unknown.json()["message"]
    mine = await resume(gateway.port, stream_id, headers=ALICE)
    assert text(blocks(mine.body)) == "".join(PIECES)


async def test_dropped_events_are_410(start_gateway, upstream: FaultUpstream) -> None:
    gateway = start_gateway(RESUME_MAX_BYTES="1024")
    upstream.scenarios = [Scenario(pieces=["x" * 200] * 12, delay=0.02)]
    first = await request(gateway.port, "POST", "/chat", {"prompt": "x", "resumable": True})
    stream_id = first.events[0]["stream_id"]
    expired = await resume(gateway.port, stream_id, 0)
    assert expired.status == 410 and expired.json()["error_type"] == "stream_expired"
    kept = await resume(gateway.port, stream_id, parse(blocks(first.body)[-2])[0])
    assert kept.events[-1]["type"] == "done"


async def test_detached_stream_counts_against_the_per_client_cap(start_gateway, upstream: FaultUpstream) -> None:
    gateway = start_gateway(MAX_STREAMS_PER_CLIENT="1")
    upstream.scenarios = [Scenario(hang_after=1), Scenario()]
    first = await start_and_drop(gateway.port, 2)
    refused = await request(gateway.port, "POST", "/chat", {"prompt": "x"})
    assert refused.status == 429
    assert (await request(gateway.port, "DELETE", f"/chat/streams/{parse(first[0])[1]['stream_id']}")).status == 204
    await eventually(lambda: len(gateway.gateway.streams) == 0, "the streams to end")
    assert (await request(gateway.port, "POST", "/chat", {"prompt": "x"})).status == 200


async def test_outcome_line_is_logged_once_at_the_real_end_with_resumes(start_gateway, upstream: FaultUpstream, caplog) -> None:
    caplog.set_level("INFO", logger="gateway.stream")
    gateway = start_gateway()
    upstream.scenarios = [Scenario(pieces=PIECES, delay=0.05)]
    first = await start_and_drop(gateway.port, 2)
    assert not [r for r in caplog.records if r.getMessage().startswith("stream ")]
    await resume(gateway.port, parse(first[0])[1]["stream_id"], parse(first[-1])[0])
    ended = [r for r in caplog.records if r.getMessage().startswith("stream ")]
    assert [(r.getMessage(), r.resumes) for r in ended] == [("stream finished", 1)]


def test_resume_settings() -> None:
    base = {"OPENROUTER_API_KEY": "k"}
    assert load_settings(base).resume_backend == "memory"
    assert load_settings({**base, "REDIS_URL": "redis://127.0.0.1:1/0"}).resume_backend == "redis"
    fractions = load_settings({**base, "RESUME_GRACE_SECS": "0.5", "RESUME_TTL_SECS": "0"})
    assert (fractions.resume_grace, fractions.resume_ttl) == (0.5, 0.0)
    assert not load_settings({**base, "WORKERS": "2"}).resumable_streams
    try:
        load_settings({**base, "WORKERS": "2", "RESUME_BACKEND": "memory"})
    except ConfigError as error:
        assert "RESUME_BACKEND" in str(error) and "WORKERS" in str(error)
    else:
        raise AssertionError("memory streams with several workers must be refused")


def test_explicit_memory_backend_with_workers_exits_2_with_one_line(tmp_path) -> None:
    env = gateway_env(8080, WORKERS="2", RESUME_BACKEND="memory")
    done = subprocess.run(
        [sys.executable, str(ROOT / "run.py"), "--demo"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "RESUME_BACKEND" in done.stderr and "WORKERS" in done.stderr


def test_memory_default_with_workers_serves_plain_streams_and_says_so_once(spawn) -> None:
    gateway = spawn(GatewayProcess, WORKERS="2")
    for _ in range(3):
        answer = http_request(gateway.port, "POST", "/chat", {"prompt": "hi", "resumable": True})
        assert "stream_id" not in answer.events[0] and not any(line.startswith(b"id:") for line in answer.body.split(b"\n"))
    assert len(gateway.logged("served as plain streams", "WARNING")) == 1
