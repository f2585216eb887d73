"""deploy/: the gateway under supervisord (health, graceful stop, restart after kill -9) and behind nginx
(tokens pass through unbuffered, slow first tokens are not cut, a rolling restart loses no request), each run
from the shipped file with only paths and ports substituted."""

from __future__ import annotations

import configparser
import http.client
import itertools
import os
import re
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from server.config import load_settings
from tests.services import DEPLOY, ROOT, EventStream, GatewayProcess, Nginx, Supervisord, health, http_request, wait_for


def supervisor_conf() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=(";",))
    parser.read(DEPLOY / "supervisord.conf")
    return parser


def supervisor_program() -> configparser.SectionProxy:
    return supervisor_conf()["program:tornado-ai-stream"]


def nginx_directives() -> dict[str, list[str]]:
    """`name value;` lines of deploy/nginx.conf (comments dropped), values by name."""
    found: dict[str, list[str]] = {}
    for line in (DEPLOY / "nginx.conf").read_text().splitlines():
        if match := re.fullmatch(r"([a-z_]+)\s+(.+?);", line.split("#", 1)[0].strip()):
            found.setdefault(match[1], []).append(match[2])
    return found


def test_supervisord_program_matches_the_drain_contract() -> None:
    program = supervisor_program()
    assert program["stopsignal"] == "TERM"
    assert float(program["stopwaitsecs"]) > 30 + 5  # SHUTDOWN_TIMEOUT_SECS default + the ended streams' last events
    assert program["autorestart"] == "true"
    assert program["stopasgroup"] == "false" and program["killasgroup"] == "true"
    assert program["redirect_stderr"] == "true" and program["stdout_logfile_maxbytes"] == "50MB"


def test_supervisord_conf_runs_from_a_checkout_as_is() -> None:
    """Every path resolves inside this checkout and every directory supervisord writes to ships with it."""
    conf = supervisor_conf()

    def resolve(value: str) -> Path:
        return Path(os.path.normpath(value.replace("%(here)s", str(DEPLOY))))

    program = conf["program:tornado-ai-stream"]
    written = [conf["supervisord"]["logfile"], conf["supervisord"]["pidfile"], conf["unix_http_server"]["file"], program["stdout_logfile"]]
    for path in written:
        assert resolve(path).is_relative_to(ROOT) and resolve(path).parent.is_dir(), path
    assert resolve(program["directory"]) == ROOT
    assert resolve(program["command"].split()[0]) == ROOT / ".venv" / "bin" / "python"
    assert "user" not in program  # runs as whoever starts supervisord; the header says when to add user=


@pytest.mark.nginx
def test_nginx_site_streams_and_keeps_alive() -> None:
    site = nginx_directives()
    assert site["proxy_buffering"] == ["off"]
    assert site["proxy_http_version"] == ["1.1"]
    assert site["proxy_set_header"][0] == 'Connection ""'
    assert "X-Forwarded-For $proxy_add_x_forwarded_for" in site["proxy_set_header"]
    assert int(site["proxy_read_timeout"][0].rstrip("s")) > 15  # HEARTBEAT_SECS default
    assert site["keepalive"] == ["64"]
    assert set(site["proxy_next_upstream"][0].split()) >= {"error", "http_503", "non_idempotent"}  # a draining gateway's 503
    assert "TRUSTED_PROXIES" in (DEPLOY / "nginx.conf").read_text()


def test_nginx_waits_as_long_as_the_gateway_may_be_silent() -> None:
    """A /v1 answer sends nothing until its first token (streamed) or its end (not streamed), at most
    STREAM_MAX_SECS after the call starts; nginx must not answer its own 504 before the gateway does."""
    defaults = load_settings({"OPENROUTER_API_KEY": "k"})
    read_timeout = int(nginx_directives()["proxy_read_timeout"][0].rstrip("s"))
    assert read_timeout > max(defaults.first_token_timeout, defaults.stream_max)


@pytest.mark.nginx
def test_a_rolling_restart_behind_nginx_loses_no_request(spawn: Callable[..., Any]) -> None:
    draining = spawn(GatewayProcess, name="a", DEMO_DELAY_MS="200", SHUTDOWN_TIMEOUT_SECS="30")
    serving = spawn(GatewayProcess, name="b")
    proxy = spawn(Nginx, draining.port, serving.port)
    for _ in range(6):  # nginx now keeps idle connections to both gateways
        assert http_request(proxy.port, "GET", "/health").status == 200
    kept = http.client.HTTPConnection("127.0.0.1", draining.port, timeout=10)
    kept.request("GET", "/health")
    kept.getresponse().read()
    held = EventStream(draining.port)  # keeps the drain going for the whole test
    assert held.next_event() is not None

    draining.signal(signal.SIGTERM)
    draining.wait_for_log(lambda record: record["msg"].startswith("shutting down"))
    kept.request("GET", "/health")
    refused = kept.getresponse()
    refused.read()
    assert refused.status == 503 and refused.getheader("Connection") == "close"  # nginx will not reuse it
    kept.close()

    answers = [http_request(proxy.port, "POST", "/chat", {"prompt": f"hi {i}"}) for i in range(20)]
    assert [a.status for a in answers] == [200] * 20, [a.body[:200] for a in answers if a.status != 200]
    assert all(a.events[-1]["type"] == "done" for a in answers)
    held.close()


@pytest.mark.nginx
def test_tokens_arrive_through_nginx_as_they_are_produced(spawn: Callable[..., Any]) -> None:
    gateway = spawn(GatewayProcess, DEMO_DELAY_MS="150", TRUSTED_PROXIES="127.0.0.1")
    proxy = spawn(Nginx, gateway.port)
    direct = EventStream(gateway.port)
    direct_ttft = direct.first_content()
    direct.close()
    through = EventStream(proxy.port, headers={"X-Forwarded-For": "203.0.113.9", "X-Request-ID": "via-nginx"})
    assert through.response.getheader("Content-Type") == "text/event-stream; charset=utf-8"
    arrivals = []
    while len(arrivals) < 3:
        event = through.next_event()
        assert event is not None
        if event[0]["type"] == "content":
            arrivals.append(event[1])
    through.close()
    assert arrivals[0] < direct_ttft + 0.05, (arrivals[0], direct_ttft)
    # One word per 150 ms upstream: each arrives on its own, not in a buffered burst.
    assert all(later - earlier > 0.1 for earlier, later in itertools.pairwise(arrivals)), arrivals
    started = [r for r in gateway.records() if r["msg"] == "started" and r.get("request_id") == "via-nginx"]
    assert started[0]["client_ip"] == "203.0.113.9"  # nginx appended its peer to X-Forwarded-For; 127.0.0.1 is trusted


@pytest.mark.supervisord
def test_supervisord_serves_restarts_after_kill_and_drains_on_stop(spawn: Callable[..., Any]) -> None:
    supervisor = spawn(Supervisord, DEMO_DELAY_MS="20")
    answer = wait_for(lambda: health(supervisor.port), "the gateway under supervisord")
    first = supervisor.gateway_pid()
    assert answer.status == 200 and answer.json()["pid"] == first

    os.kill(first, signal.SIGKILL)
    wait_for(lambda: supervisor.status() == "RUNNING" and supervisor.gateway_pid() != first, "supervisord to restart the gateway")
    second = supervisor.gateway_pid()
    answer = wait_for(lambda: health(supervisor.port), "the restarted gateway")
    assert answer.json()["pid"] == second

    stream = EventStream(supervisor.port)
    assert stream.next_event() is not None  # connected
    stopping: list[str] = []
    stopper = threading.Thread(target=lambda: stopping.append(supervisor.ctl("stop", "tornado-ai-stream")))
    stopper.start()
    events = stream.rest()
    stopper.join(20)
    assert events[-1]["type"] == "done"  # the open stream finished during the drain
    assert stopping == ["tornado-ai-stream: stopped\n"]
    assert supervisor.status() == "STOPPED"
    log = (supervisor.workdir / "supervisord.log").read_text()
    assert "stopped: tornado-ai-stream (exit status 0)" in log
    gateway_log = supervisor.gateway_log.read_text()
    assert '"msg": "received SIGTERM"' in gateway_log and '"msg": "shutdown complete"' in gateway_log
    with pytest.raises(ProcessLookupError):
        os.kill(second, 0)
