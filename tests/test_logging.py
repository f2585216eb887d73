"""Logging: real log lines, parsed, from requests over real sockets (in-process) and from `python run.py --demo`.

In-process tests configure the root logger with a StringIO stream through `configure_logging`, exactly
as run.py configures it with stderr, and restore pytest's handlers afterwards.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
from collections.abc import Callable
from typing import Any

import pytest
from colorama import Fore, Style
from tornado.log import enable_pretty_logging

from handlers.base import BaseHandler
from server.client_keys import key_id
from server.config import load_settings
from server.logs import TORNADO_LOGGERS, ConsoleFormatter, JsonFormatter, prompt_fields
from tests.conftest import RunningGateway, chat, connect, parse, read_response, request
from tests.fault_upstream import FaultUpstream, Scenario
from tests.services import GatewayProcess

ISO_UTC_MS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
# What a client can put into a logged value: newline, CR, quote, backslash, non-ASCII, the separators
# str.splitlines() also splits on, an ANSI escape, NUL and a lone surrogate (from a JSON "\ud800").
RAW_PATH = '/caf\u00e9/"q"/%0A/\u4e16'.encode()  # UTF-8 bytes, quotes and an encoded newline, as sent on the wire
NASTY = '/a\nb\r"c"\\ é 世界 😀 \u2028\u2029\x85\x0b\x1c\x1b[31mred\x00\ud800'


class TtyStream(io.StringIO):
    def isatty(self) -> bool:
        return True


async def get_raw_path(port: int, raw_path: bytes, request_id: str) -> int:
    """GET with a request target sent byte for byte; the response status."""
    async with connect(port) as (reader, writer):
        writer.write(b"GET " + raw_path + b" HTTP/1.1\r\nHost: x\r\nX-Request-ID: " + request_id.encode() + b"\r\n\r\n")
        await writer.drain()
        return (await read_response(reader)).status


def by_msg(records: list[dict[str, Any]], request_id: str, prefix: str) -> dict[str, Any]:
    found = [r for r in records if r.get("request_id") == request_id and r["msg"].startswith(prefix)]
    assert len(found) == 1, (prefix, found)
    return found[0]


# -- JSON lines from real requests -------------------------------------------------------------------


async def test_json_lifecycle_lines_of_a_stream(start_gateway: Callable[..., RunningGateway], capture_logs) -> None:
    stream = capture_logs()
    gateway = start_gateway()
    response = await chat(gateway.port, {"prompt": "hi there"}, {"X-Request-ID": "life-1"})
    assert response.events[-1]["type"] == "done"
    records = parse(stream)
    for record in records:
        assert ISO_UTC_MS.fullmatch(record["ts"]), record
        assert {"ts", "level", "logger", "msg"} <= record.keys()
    started = by_msg(records, "life-1", "started")
    assert started["logger"] == "gateway.access"
    assert (started["level"], started["method"], started["path"], started["client_ip"]) == ("INFO", "POST", "/chat", "127.0.0.1")
    connected = by_msg(records, "life-1", "upstream connected")
    assert connected["logger"] == "gateway.upstream"
    assert connected["upstream_status"] == 200
    finished = by_msg(records, "life-1", "stream finished")
    assert finished["outcome"] == "finished"
    assert finished["events"] == 4
    assert finished["completion_tokens"] == 4
    assert finished["prompt_chars"] == len("hi there")
    assert finished["upstream_status"] == 200
    assert finished["model"] == "anthropic/claude-3.5-sonnet"
    assert 0 <= finished["ttft_ms"] <= finished["duration_ms"]
    completed = by_msg(records, "life-1", "completed")
    assert (completed["level"], completed["method"], completed["path"], completed["status"]) == ("INFO", "POST", "/chat", 200)
    assert completed["duration_ms"] >= 0
    assert records.index(started) < records.index(connected) < records.index(finished)
    assert records.index(connected) < records.index(completed)
    assert not [r for r in records if r["logger"] == "tornado.access"]  # one access log, ours


async def test_every_line_of_a_request_carries_its_request_id(
    start_gateway: Callable[..., RunningGateway], upstream: FaultUpstream, capture_logs
) -> None:
    stream = capture_logs(level="DEBUG")
    gateway = start_gateway(RETRY_MAX_WAIT_SECS="0")
    upstream.scenarios = [Scenario(status=503), Scenario(pieces=["a", "b"], delay=0.01)]
    for rid in ("seq-1", "seq-2"):  # seq-1 is retried: warning and second attempt come from the upstream client
        assert (await chat(gateway.port, {"prompt": "x"}, {"X-Request-ID": rid})).events[-1]["type"] == "done"
    sequential = parse(stream)
    for rid in ("seq-1", "seq-2"):
        first = sequential.index(by_msg(sequential, rid, "started"))
        last = sequential.index(by_msg(sequential, rid, "completed"))
        assert all(r.get("request_id") == rid for r in sequential[first : last + 1]), sequential[first : last + 1]
        assert by_msg(sequential, rid, "stream finished")["outcome"] == "finished"
    seq_1 = [r for r in sequential if r.get("request_id") == "seq-1"]
    upstream_lines = [r for r in seq_1 if r["logger"] == "gateway.upstream"]
    assert [r["upstream_status"] for r in upstream_lines if r["msg"].startswith("upstream connected")] == [503, 200]
    assert any(r["level"] == "WARNING" and "503" in r["msg"] for r in upstream_lines)  # the retry warning

    # Interleaved streams on pooled upstream connections: no line loses or borrows an id.
    ids = [f"par-{i}" for i in range(6)]
    responses = await asyncio.gather(*(chat(gateway.port, {"prompt": "x"}, {"X-Request-ID": rid}) for rid in ids))
    assert all(r.events[-1]["type"] == "done" for r in responses)
    concurrent = parse(stream)[len(sequential) :]
    assert concurrent and all(r.get("request_id") in ids for r in concurrent), [r for r in concurrent if r.get("request_id") not in ids]
    for rid in ids:
        assert {"started", "stream finished", "completed"} <= {r["msg"] for r in concurrent if r["request_id"] == rid}
        by_msg(concurrent, rid, "upstream connected")


async def test_keys_never_reach_a_log_line(start_gateway: Callable[..., RunningGateway], upstream: FaultUpstream, capture_logs) -> None:
    stream = capture_logs(level="DEBUG")
    upstream_key, client_key, other_key = "sk-or-v1-UPSTREAMKEY7f3a9", "ck-CLIENTKEY-4b1d", "ck-OTHERKEY-9e2c"
    gateway = start_gateway(OPENROUTER_API_KEY=upstream_key, CLIENT_API_KEYS=f"{client_key},{other_key}", RETRY_MAX_WAIT_SECS="0")
    upstream.scenarios = [Scenario(status=500), Scenario()]
    auth = {"Authorization": f"Bearer {client_key}", "X-Request-ID": "keyed-1"}
    assert (await chat(gateway.port, {"prompt": "x"}, auth)).events[-1]["type"] == "done"
    assert (await chat(gateway.port, {"prompt": "x"}, {"Authorization": "Bearer ck-WRONGKEY-0000"})).status == 401
    assert upstream.requests[0]["headers"]["Authorization"] == f"Bearer {upstream_key}"  # the key was really used
    text = stream.getvalue()
    for secret in (upstream_key, client_key, other_key, "ck-WRONGKEY-0000", "UPSTREAMKEY", "CLIENTKEY"):
        assert secret not in text
    assert by_msg(parse(stream), "keyed-1", "stream finished")["key_id"] == key_id(client_key)


async def test_prompts_and_answers_are_not_logged_by_default(
    start_gateway: Callable[..., RunningGateway], upstream: FaultUpstream, capture_logs
) -> None:
    stream = capture_logs(level="DEBUG")
    gateway = start_gateway()
    upstream.scenarios = [Scenario(pieces=["ANSWER", "-TEXT-", "9f1c"])]
    response = await chat(gateway.port, {"prompt": "PROMPT-TEXT-3e7a\nsecond line"})
    assert response.text == "ANSWER-TEXT-9f1c"
    text = stream.getvalue()
    assert "PROMPT-TEXT" not in text and "ANSWER" not in text and "9f1c" not in text
    assert all("prompt" not in r and "answer" not in r for r in parse(stream))


async def test_log_prompts_logs_prompt_and_answer_on_one_line(
    start_gateway: Callable[..., RunningGateway], upstream: FaultUpstream, capture_logs
) -> None:
    stream = capture_logs()
    gateway = start_gateway(LOG_PROMPTS="true")
    prompt = 'first line\nsecond "quoted" line\r\n\u2028ünïcode 😀'
    upstream.scenarios = [Scenario(pieces=["An", "swer\n", "two"])]
    assert (await chat(gateway.port, {"prompt": prompt}, {"X-Request-ID": "prompts-1"})).text == "Answer\ntwo"
    finished = by_msg(parse(stream), "prompts-1", "stream finished")
    assert (finished["prompt"], finished["answer"]) == (prompt, "Answer\ntwo")


async def test_client_controlled_path_cannot_break_a_json_line(gateway: RunningGateway, capture_logs) -> None:
    stream = capture_logs()
    assert await get_raw_path(gateway.port, RAW_PATH, "path-1") == 404
    completed = by_msg(parse(stream), "path-1", "completed")
    assert completed["path"].encode("latin-1") == RAW_PATH  # Tornado decodes the request line as latin-1
    assert (completed["status"], completed["level"]) == (404, "WARNING")


async def test_uncaught_exception_is_one_line_with_exc_and_request_id(gateway: RunningGateway, capture_logs) -> None:
    class BoomHandler(BaseHandler):
        route = "/boom"

        def get(self) -> None:
            raise RuntimeError("boom\nsecond line")

    gateway.server.request_callback.wildcard_router.add_rules([(r"/boom", BoomHandler)])  # type: ignore[attr-defined]
    stream = capture_logs()
    response = await request(gateway.port, "GET", "/boom", headers={"X-Request-ID": "boom-1"})
    assert response.status == 500
    assert response.json()["error_type"] == "internal_error"
    records = parse(stream)
    error = by_msg(records, "boom-1", "Uncaught exception")
    assert (error["logger"], error["level"]) == ("tornado.application", "ERROR")
    assert error["exc"].startswith("Traceback (most recent call last):")
    assert error["exc"].endswith("RuntimeError: boom\nsecond line")
    completed = by_msg(records, "boom-1", "completed")
    assert (completed["status"], completed["level"]) == (500, "ERROR")


async def test_tornado_loggers_share_the_one_formatter(gateway: RunningGateway, capture_logs) -> None:
    enable_pretty_logging()  # what tornado.options would do: a second handler with Tornado's own format
    logging.getLogger("tornado.access").addHandler(logging.StreamHandler(io.StringIO()))  # a stray per-logger handler
    stream = capture_logs(level="INFO")
    root = logging.getLogger()
    assert len(root.handlers) == 1 and isinstance(root.handlers[0].formatter, JsonFormatter)
    for name in TORNADO_LOGGERS:
        assert logging.getLogger(name).handlers == []
        logging.getLogger(name).warning("from %s", name)
    async with connect(gateway.port) as (reader, writer):  # a malformed request: Tornado's general logger
        writer.write(b"NOT-HTTP\r\n\r\n")
        await writer.drain()
        await reader.read()
    records = parse(stream)
    assert [r["logger"] for r in records[:3]] == list(TORNADO_LOGGERS)
    malformed = [r for r in records if r["logger"] == "tornado.general" and r["msg"].startswith("Malformed HTTP message")]
    assert len(malformed) == 1


# -- formatters, in-process ------------------------------------------------------------------------------


def test_json_escapes_everything_a_client_can_send(capture_logs) -> None:
    stream = capture_logs()
    log = logging.getLogger("gateway.test")
    log.info("model %s", NASTY, extra={"path": NASTY, "method": "GET", "status": 404})
    try:
        raise ValueError("multi\nline " + NASTY)
    except ValueError:
        log.exception("failed")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    for line in lines:
        line.encode("utf-8")  # a lone surrogate must not fail the write
    first, second = (json.loads(line) for line in lines)
    assert first["msg"] == "model " + NASTY
    assert first["path"] == NASTY
    assert second["exc"].endswith("ValueError: multi\nline " + NASTY)


def test_prompt_with_newlines_is_one_json_line_when_log_prompts_is_on(capture_logs) -> None:
    assert prompt_fields(False, [{"role": "user", "content": "secret"}], "answer") == {}
    stream = capture_logs()
    prompt = 'line one\nline "two"\r\n\u2028ünïcode'
    fields = prompt_fields(True, [{"role": "user", "content": prompt}], "the\nanswer")
    assert fields == {"prompt": prompt, "answer": "the\nanswer"}
    logging.getLogger("gateway.stream").info("stream finished", extra={"outcome": "finished", **fields})
    [record] = parse(stream)
    assert (record["prompt"], record["answer"]) == (prompt, "the\nanswer")
    system = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    assert prompt_fields(True, system) == {"prompt": "system: be brief\nuser: hi"}


def test_console_line_layout_and_colors(capture_logs) -> None:
    stream = capture_logs(log_format="console", log_color="always", level="DEBUG")
    log = logging.getLogger("gateway.access")
    cases = [
        (logging.INFO, "GET", 200, Fore.GREEN, Fore.BLUE, Fore.GREEN),
        (logging.INFO, "POST", 302, Fore.GREEN, Fore.GREEN, Fore.CYAN),
        (logging.WARNING, "DELETE", 404, Fore.YELLOW, Fore.RED, Fore.YELLOW),
        (logging.ERROR, "PUT", 503, Fore.RED, Fore.YELLOW, Fore.RED),
        (logging.DEBUG, "OPTIONS", 204, Fore.CYAN, Fore.MAGENTA, Fore.GREEN),
    ]
    for level, method, status, *_ in cases:
        extra = {"request_id": "rid-1", "method": method, "path": "/chat", "status": status, "duration_ms": 12.5, "outcome": "finished"}
        log.log(level, "completed", extra=extra)
    lines = stream.getvalue().splitlines()
    assert len(lines) == len(cases)
    for line, (level, method, status, level_color, method_color, status_color) in zip(lines, cases, strict=True):
        name = {logging.WARNING: "WARN"}.get(level, logging.getLevelName(level))
        reset = Style.RESET_ALL
        expected = (
            f" {level_color}{name:<5}{reset} {Fore.MAGENTA}[rid-1]{reset} {method_color}{method}{reset} /chat "
            f'{status_color}{status}{reset} 12.5ms completed outcome="finished"'
        )
        assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}", line[:23]), line
        assert line[23:] == expected


def test_console_escapes_without_breaking_the_line(capture_logs) -> None:
    stream = capture_logs(log_format="console", log_color="never")
    log = logging.getLogger("gateway.test")
    log.warning("model %s", NASTY, extra={"path": NASTY, "prompt": "a\nb"})
    try:
        raise ValueError("multi\nline")
    except ValueError:
        log.exception("failed")
    text = stream.getvalue()
    lines = text.splitlines()
    assert len(lines) == 2
    assert "\x1b" not in text and "\x00" not in text
    text.encode("utf-8")
    assert '/a\\nb\\r"c"\\ é 世界 😀 \\u2028\\u2029\\u0085\\u000b\\u001c\\u001b[31mred\\u0000\\ud800' in lines[0]
    assert 'prompt="a\\nb"' in lines[0]
    assert "exc=" in lines[1] and "ValueError: multi\\nline" in lines[1]


@pytest.mark.parametrize(
    ("log_format", "log_color", "no_color", "tty", "expected"),
    [
        ("auto", "auto", False, True, "color"),  # a terminal: colored console
        ("auto", "auto", False, False, "json"),  # a pipe or file: JSON
        ("auto", "auto", True, True, "plain"),  # NO_COLOR
        ("auto", "always", True, True, "color"),  # LOG_COLOR=always beats NO_COLOR
        ("auto", "never", False, True, "plain"),
        ("console", "auto", False, False, "plain"),  # console into a pipe: no colors
        ("console", "always", False, False, "color"),
        ("json", "always", False, True, "json"),
    ],
)
def test_format_and_color_selection(capture_logs, log_format: str, log_color: str, no_color: bool, tty: bool, expected: str) -> None:
    stream = capture_logs(log_format=log_format, log_color=log_color, no_color=no_color, stream=TtyStream() if tty else io.StringIO())
    formatter = logging.getLogger().handlers[0].formatter
    if expected == "json":
        assert isinstance(formatter, JsonFormatter)
    else:
        assert isinstance(formatter, ConsoleFormatter) and formatter.color is (expected == "color")
    logging.getLogger("gateway").info("hello")
    assert ("\x1b[" in stream.getvalue()) is (expected == "color")


def test_no_color_and_log_settings_come_from_config() -> None:
    base = {"OPENROUTER_API_KEY": "k"}
    assert load_settings(base).no_color is False
    assert load_settings({**base, "NO_COLOR": ""}).no_color is False  # no-color.org: an empty value does not count
    assert load_settings({**base, "NO_COLOR": "1"}).no_color is True
    settings = load_settings({**base, "LOG_FORMAT": "json", "LOG_LEVEL": "warn", "LOG_PROMPTS": "true"})
    assert (settings.log_format, settings.log_level, settings.log_prompts) == ("json", "WARNING", True)


def test_log_level_filters_lines(capture_logs) -> None:
    stream = capture_logs(level="WARNING")
    log = logging.getLogger("gateway")
    log.info("quiet")
    log.warning("loud")
    assert [r["msg"] for r in parse(stream)] == ["loud"]


# -- the real process ------------------------------------------------------------------------------------


async def test_run_demo_writes_json_lines_to_stderr(io_loop: Any, spawn: Any) -> None:
    process = spawn(GatewayProcess, DEMO_DELAY_MS="0", LOG_FORMAT="json", LOG_LEVEL="DEBUG")
    response = await chat(process.port, {"prompt": 'two\nlines "quoted" ü'}, {"X-Request-ID": "proc-1"})
    assert response.events[-1]["type"] == "done"
    assert await get_raw_path(process.port, RAW_PATH, "proc-2") == 404
    assert process.stop() == 0
    lines = process.log().splitlines()
    records = [json.loads(line) for line in lines]  # every stderr line, not only those that look like JSON
    assert all(ISO_UTC_MS.fullmatch(r["ts"]) for r in records)
    for prefix in ("started", "upstream connected", "stream finished", "completed"):
        by_msg(records, "proc-1", prefix)
    assert by_msg(records, "proc-1", "stream finished")["events"] > 0
    assert by_msg(records, "proc-2", "completed")["path"].encode("latin-1") == RAW_PATH
    assert "two\nlines" not in "\n".join(r.get("prompt", "") for r in records)
    assert any(r["msg"].startswith("demo mode") and r["level"] == "WARNING" for r in records)
