"""The terminal client: as a subprocess against `python run.py --demo`, and in-process against the fault upstream
for the failures the demo never produces (a mid-stream error, client keys, a non-gateway server)."""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from client import chat as client
from client.chat import ChatError, stream_chat
from server.demo_upstream import FILLER
from tests.conftest import ROOT, RunningGateway, free_port
from tests.fault_upstream import FaultUpstream, Scenario, chunk_json
from tests.services import GatewayProcess, metric, wait_for
from tests.tcp_relay import TcpRelay

REQUEST_ID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


def demo_answer(prompt: str) -> str:
    return f'You said: "{prompt}". {FILLER}'


def run_client(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "client.chat", *args],
        cwd=ROOT,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    server = GatewayProcess(tmp_path_factory.mktemp("demo"), DEMO_DELAY_MS="20", SHUTDOWN_TIMEOUT_SECS="1").start()
    yield server
    server.kill()


# -- as a person uses it: a subprocess -------------------------------------------------------------------


def test_run_py_chat_streams_the_answer_to_stdout_as_it_arrives(demo: GatewayProcess) -> None:
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "run.py"), "chat", "--url", demo.url, "Hello there"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None
    first = os.read(process.stdout.fileno(), 65536)  # whatever the first flush carried
    assert first and demo_answer("Hello there").encode().startswith(first)
    assert process.poll() is None  # the first words are out while the answer is still streaming
    rest, errors = process.communicate(timeout=30)
    assert (first + rest).decode() == demo_answer("Hello there") + "\n"
    assert errors == b""
    assert process.returncode == 0


def test_closed_stdout_aborts_the_request_quietly(demo: GatewayProcess) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "client.chat", "--url", demo.url, "A long answer, please"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None and process.stderr is not None
    assert os.read(process.stdout.fileno(), 65536).startswith(b"You")
    process.stdout.close()  # like `| head -c 3` exiting
    assert process.wait(10) == client.EXIT_BROKEN_PIPE
    assert process.stderr.read() == b""
    demo.wait_for_log(lambda line: line.get("outcome") == "cancelled")  # the client cancelled the stream: upstream closed


def test_prompt_from_stdin(demo: GatewayProcess) -> None:
    done = run_client("--url", demo.url, stdin="What is SSE?\n")
    assert done.stdout == demo_answer("What is SSE?") + "\n"
    assert done.returncode == 0


def test_gateway_error_goes_to_stderr_with_the_request_id_and_exit_code_1(demo: GatewayProcess) -> None:
    done = run_client("--url", demo.url, "x" * 5000)
    assert done.returncode == 1
    assert done.stdout == ""
    match = re.fullmatch(rf"error: (.+) \(HTTP 400, (\w+)\) \(request id ({REQUEST_ID})\)\n", done.stderr)
    assert match, done.stderr
    assert "4000" in match.group(1)
    logged = demo.wait_for_log(lambda line: line.get("request_id") == match.group(3) and line.get("status") == 400)
    assert logged["path"] == "/chat"


def test_unreachable_gateway_fails_with_exit_code_1() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    done = run_client("--url", url, "hi")
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.startswith(f"error: request to {url}/chat failed: ")
    assert "Connection refused" in done.stderr


def test_usage_errors_exit_2(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("  \n"))
    for argv, message in ((["--url", "http://127.0.0.1:1"], "no prompt"), (["--timeout", "0", "hi"], "--timeout must be")):
        with pytest.raises(SystemExit) as exited:
            client.main(argv)
        assert exited.value.code == 2
        assert message in capsys.readouterr().err


def test_main_in_process_reads_stdin_and_reports_errors(
    demo: GatewayProcess, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("piped prompt\n"))
    assert client.main(["--url", demo.url]) == 0
    assert capsys.readouterr().out == demo_answer("piped prompt") + "\n"
    assert client.main(["--url", demo.url, "   "]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    expected = rf"error: 'prompt' must not be empty or blank \(HTTP 400, empty_prompt\) \(request id {REQUEST_ID}\)\n"
    assert re.fullmatch(expected, captured.err)


# -- resumable streams: a dropped connection, --no-resume, Ctrl-C ---------------------------------------------


@pytest.fixture
def relay(demo: GatewayProcess) -> Iterator[TcpRelay]:
    relay = TcpRelay(demo.port).start()
    yield relay
    relay.close()


def start_client(*args: str) -> tuple[subprocess.Popen[bytes], bytes]:
    """The client as a subprocess, and the first output it flushed (the answer is streaming by then)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "client.chat", *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert process.stdout is not None
    return process, os.read(process.stdout.fileno(), 65536)


def grown(demo: GatewayProcess, sample: str) -> Any:
    """How much a /metrics sample has grown since this call."""
    before = metric(demo.port, sample)
    return lambda: metric(demo.port, sample) - before


UPSTREAM_CALLS = 'upstream_requests_total{status="200"}'


def test_a_dropped_connection_resumes_with_no_text_twice_and_one_upstream_call(demo: GatewayProcess, relay: TcpRelay) -> None:
    calls, resumes = grown(demo, UPSTREAM_CALLS), grown(demo, "chat_stream_resumes_total")
    process, first = start_client("--url", relay.url, "Drop me halfway")
    assert relay.reset() == 1
    rest, errors = process.communicate(timeout=30)
    assert (first + rest).decode() == demo_answer("Drop me halfway") + "\n"
    assert (process.returncode, errors) == (0, b"")
    assert (calls(), resumes()) == (1, 1)


def test_no_resume_fails_on_a_dropped_connection_as_before(demo: GatewayProcess, relay: TcpRelay) -> None:
    resumes = grown(demo, "chat_stream_resumes_total")
    process, first = start_client("--url", relay.url, "--no-resume", "Drop me halfway")
    assert relay.reset() == 1
    rest, errors = process.communicate(timeout=30)
    assert process.returncode == 1
    assert demo_answer("Drop me halfway").startswith((first + rest).decode().rstrip("\n"))
    failed = re.fullmatch(rf"error: request to {relay.url}/chat failed: .+ \(request id ({REQUEST_ID})\)\n", errors.decode())
    assert failed, errors
    assert resumes() == 0
    # a plain stream: gone means gone
    demo.wait_for_log(lambda line: line.get("outcome") == "client_disconnected" and line.get("request_id") == failed.group(1))


def test_ctrl_c_cancels_the_stream_and_exits_130(demo: GatewayProcess) -> None:
    cancelled = grown(demo, 'chat_streams_total{outcome="cancelled"}')
    process, first = start_client("--url", demo.url, "Interrupt me")
    assert demo_answer("Interrupt me").encode().startswith(first)
    process.send_signal(signal.SIGINT)
    assert process.wait(10) == 130
    wait_for(lambda: cancelled() == 1, "the stream cancelled")  # the DELETE went out before the exit
    assert process.stderr is not None and process.stderr.read() == b"\n"


# -- failures the demo never produces: in-process against the fault upstream ------------------------------


async def test_mid_stream_error_keeps_the_text_and_raises_with_the_request_id(gateway: RunningGateway, upstream: FaultUpstream) -> None:
    error_line = '{"id": "g", "error": {"code": 502, "message": "Provider overloaded"}, "choices": []}'
    upstream.scenarios = [Scenario(raw_lines=[chunk_json("partial answer"), error_line])]
    out = io.StringIO()
    with pytest.raises(ChatError) as failed:
        await stream_chat(gateway.url, "x", out)
    assert out.getvalue() == "partial answer\n"
    assert re.fullmatch(rf".*Provider overloaded.* \(upstream_error\) \(request id {REQUEST_ID}\)", str(failed.value))


async def test_client_key_is_sent_as_bearer(start_gateway: Any) -> None:
    gateway = start_gateway(CLIENT_API_KEYS="k-cli-1")
    out = io.StringIO()
    with pytest.raises(ChatError) as failed:
        await stream_chat(gateway.url, "x", out)
    assert "(HTTP 401, unauthorized)" in str(failed.value)
    assert out.getvalue() == ""
    await stream_chat(gateway.url, "x", out, key="k-cli-1")
    assert out.getvalue() == "Hello, world!\n"


async def test_a_server_that_is_not_the_gateway(upstream: FaultUpstream) -> None:
    with pytest.raises(ChatError) as failed:
        await stream_chat(f"http://127.0.0.1:{upstream.port}", "x", io.StringIO())
    assert str(failed.value) == "HTTP 404 Not Found"


async def test_timeout_mid_stream(gateway: RunningGateway, upstream: FaultUpstream) -> None:
    upstream.scenarios = [Scenario(pieces=["one ", "two"], hang_after=1)]
    out = io.StringIO()
    with pytest.raises(ChatError) as failed:
        await stream_chat(gateway.url, "x", out, timeout=0.5)
    assert out.getvalue() == "one \n"
    assert re.fullmatch(rf"no complete answer within 0.5 seconds \(request id {REQUEST_ID}\)", str(failed.value))
    assert await upstream.wait_closed()  # the abort reached the gateway, which closed the upstream
