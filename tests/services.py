"""Real servers for the scale-out tests: redis-server, nginx, supervisord and `python run.py` subprocesses.

Each runs on a free loopback port, in its own session (so a teardown can kill a whole process group,
pre-forked workers included), logs to a file under the test's tmp_path, and is always stopped by its
fixture. Nothing is mocked: the binaries are the Debian packages `.ci/run` installs and PyPI's supervisor.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
T = TypeVar("T")


def wait_for(probe: Callable[[], T | None], what: str, timeout: float = 10.0, interval: float = 0.02) -> T:
    """Poll `probe` until it returns something truthy; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def binary(name: str) -> str:
    """A Debian binary (redis-server, nginx) or one installed next to this Python (supervisord)."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")
    assert found, f"{name} is not installed: .ci/run installs it (apt-get install redis-server nginx; pip supervisor)"
    return found


# -- plain HTTP -----------------------------------------------------------------------------------------


class Response:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line[6:]) for line in self.body.decode().split("\n") if line.startswith("data: ")]


def http_request(
    port: int, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None, timeout: float = 10.0
) -> Response:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        payload = None if body is None else json.dumps(body).encode()
        sent = {"Content-Type": "application/json"} if payload is not None else {}
        connection.request(method, path, body=payload, headers={**sent, **(headers or {})})
        answer = connection.getresponse()
        return Response(answer.status, {k.lower(): v for k, v in answer.getheaders()}, answer.read())
    finally:
        connection.close()


def health(port: int) -> Response | None:
    """/health, or None while nothing answers on the port."""
    try:
        return http_request(port, "GET", "/health", timeout=1.0)
    except OSError:
        return None


def metric(port: int, sample: str) -> float:
    """One sample's value from /metrics, e.g. `http_requests_total{method="GET",route="/health",status="200"}`."""
    for line in http_request(port, "GET", "/metrics").body.decode().splitlines():
        name, _, value = line.rpartition(" ")
        if name == sample:
            return float(value)
    return 0.0


class EventStream:
    """A /chat stream read event by event, with the arrival time of each."""

    def __init__(self, port: int, prompt: str = "hi", headers: dict[str, str] | None = None, timeout: float = 10.0) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        self.sent_at = time.monotonic()
        self.connection.request(
            "POST", "/chat", body=json.dumps({"prompt": prompt}), headers={"Content-Type": "application/json", **(headers or {})}
        )
        self.response = self.connection.getresponse()
        self.status = self.response.status

    def next_event(self) -> tuple[dict[str, Any], float] | None:
        """The next `data:` event and seconds since the request was sent; None at the end of the stream."""
        while True:
            line = self.response.readline()
            if not line:
                return None
            if line.startswith(b"data: "):
                return json.loads(line[6:]), time.monotonic() - self.sent_at

    def rest(self) -> list[dict[str, Any]]:
        events = []
        while (item := self.next_event()) is not None:
            events.append(item[0])
        return events

    def first_content(self) -> float:
        while (item := self.next_event()) is not None:
            if item[0]["type"] == "content":
                return item[1]
        raise AssertionError("stream ended before any content event")

    def close(self) -> None:
        self.connection.close()


# -- processes --------------------------------------------------------------------------------------------


class Service:
    """A subprocess in its own session, its output in a log file."""

    process: subprocess.Popen[bytes] | None = None

    def __init__(self, name: str, workdir: Path) -> None:
        self.name = name
        self.workdir = workdir
        self.log_path = workdir / f"{name}.log"

    def spawn(self, argv: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=cwd, start_new_session=True
            )

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def wait(self, timeout: float = 10.0) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def kill(self) -> None:
        """Teardown: the whole process group, whatever state it is in."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(5)
        self.process = None


class RedisServer(Service):
    def __init__(self, workdir: Path) -> None:
        super().__init__("redis", workdir)
        self.port = free_port()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        argv = [binary("redis-server"), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.spawn([*argv, "--dir", str(self.workdir)])
        wait_for(self.ping, f"redis-server on port {self.port}")
        return self

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16) == b"+PONG\r\n"
        except OSError:
            return False

    def stop(self) -> None:
        self.signal(signal.SIGTERM)
        self.wait()


GATEWAY_ENV = {"LOG_FORMAT": "json", "HOST": "127.0.0.1", "RATE_LIMIT": "1000", "DEMO_DELAY_MS": "0", "SHUTDOWN_TIMEOUT_SECS": "5"}


def gateway_env(port: int, **env: str) -> dict[str, str]:
    """The test runner's environment (PATH, coverage) plus the gateway's settings; never an inherited metrics
    dir, upstream or client keys."""
    inherited = ("PROMETHEUS_MULTIPROC_DIR", "OPENROUTER_", "CLIENT_API_KEYS")
    base = {k: v for k, v in os.environ.items() if not k.startswith(inherited)}
    return {**base, **GATEWAY_ENV, "PORT": str(port), **env}


class GatewayProcess(Service):
    """`python run.py --demo` (or, with `demo=False`, against the upstream its env names) with LOG_FORMAT=json
    on a free port. It runs in its workdir, so a developer's `.env` cannot change what a test sees."""

    def __init__(self, workdir: Path, name: str = "gateway", *, demo: bool = True, **env: str) -> None:
        super().__init__(name, workdir)
        self.port = free_port()
        self.argv = [sys.executable, str(ROOT / "run.py"), *(["--demo"] if demo else [])]
        self.env = gateway_env(self.port, **env)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> GatewayProcess:
        self.spawn(self.argv, env=self.env, cwd=self.workdir)
        wait_for(self.ready, f"{self.name} /health on port {self.port}")
        return self

    def stop(self) -> int:
        """SIGTERM and wait for the drain; the exit code."""
        self.signal(signal.SIGTERM)
        return self.wait()

    def wait_for_log(self, match: Callable[[dict[str, Any]], bool], timeout: float = 10.0) -> dict[str, Any]:
        """The first JSON log line, already written or still to come, for which `match` is true."""
        return wait_for(lambda: next((record for record in self.records() if match(record)), None), "a matching log line", timeout)

    def ready(self) -> bool:
        assert self.alive(), f"{self.name} exited:\n{self.log()}"
        answer = health(self.port)
        return answer is not None and answer.status == 200

    def records(self) -> list[dict[str, Any]]:
        """The JSON log lines."""
        return [json.loads(line) for line in self.log().splitlines() if line.startswith("{")]

    def logged(self, message: str, level: str | None = None) -> list[dict[str, Any]]:
        return [r for r in self.records() if message in r["msg"] and (level is None or r["level"] == level)]

    def chat(self, headers: dict[str, str] | None = None) -> Response:
        return http_request(self.port, "POST", "/chat", {"prompt": "hi"}, headers)


class Nginx(Service):
    """nginx (daemon off) with deploy/nginx.conf included, proxying to the gateways on `upstream_ports`."""

    def __init__(self, workdir: Path, *upstream_ports: int) -> None:
        super().__init__("nginx", workdir)
        self.port = free_port()
        self.upstream_ports = upstream_ports

    def start(self) -> Nginx:
        text = (DEPLOY / "nginx.conf").read_text()
        server_line = next(line for line in text.splitlines() if "server 127.0.0.1:8080" in line)
        servers = "\n".join(server_line.replace("127.0.0.1:8080", f"127.0.0.1:{port}") for port in self.upstream_ports)
        site = substitute(text, {server_line: servers, "listen 80;": f"listen 127.0.0.1:{self.port};"})
        (self.workdir / "site.conf").write_text(site)
        temp = self.workdir / "nginx-temp"
        temp.mkdir(exist_ok=True)
        main = (
            f"pid {self.workdir}/nginx.pid;\nerror_log {self.log_path} info;\nworker_processes 1;\n"
            "events { worker_connections 256; }\n"
            "http {\n"
            f"  access_log {self.workdir}/nginx-access.log;\n"
            "  proxy_ignore_headers X-Accel-Buffering;\n"  # the site's own proxy_buffering must do the job
            + "".join(f"  {kind}_temp_path {temp}/{kind};\n" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
            + f"  include {self.workdir}/site.conf;\n}}\n"
        )
        (self.workdir / "nginx-main.conf").write_text(main)
        self.spawn([binary("nginx"), "-p", str(self.workdir), "-c", str(self.workdir / "nginx-main.conf"), "-g", "daemon off;"])
        wait_for(self.answering, f"nginx on port {self.port}")
        return self

    def answering(self) -> bool:
        assert self.alive(), f"nginx exited:\n{self.log()}"
        return health(self.port) is not None


class Supervisord(Service):
    """supervisord -n with deploy/supervisord.conf, paths and ports substituted for the test's."""

    def __init__(self, workdir: Path, **env: str) -> None:
        super().__init__("supervisord-stdout", workdir)
        self.port = free_port()
        self.conf = workdir / "supervisord.conf"
        self.env = gateway_env(self.port, **env)
        self.gateway_log = workdir / "gateway.log"
        self.gateway_pids: set[int] = set()

    def start(self) -> Supervisord:
        text = substitute(
            (DEPLOY / "supervisord.conf").read_text(),
            {
                "%(here)s/../.venv/bin/python run.py": f"{sys.executable} run.py --demo",
                "%(here)s/../var/run": str(self.workdir),
                "%(here)s/../var/log": str(self.workdir),
                "directory=%(here)s/..": f"directory={ROOT}",
            },
        )
        self.conf.write_text(text)
        self.spawn([binary("supervisord"), "-n", "-c", str(self.conf)], env=self.env)
        wait_for(lambda: self.status() == "RUNNING", "supervisord to report the gateway RUNNING")
        self.gateway_pid()
        return self

    def ctl(self, *args: str, timeout: float = 15.0) -> str:
        done = subprocess.run([binary("supervisorctl"), "-c", str(self.conf), *args], capture_output=True, text=True, timeout=timeout)
        return done.stdout + done.stderr

    def status(self) -> str:
        words = self.ctl("status", "tornado-ai-stream").split()
        return words[1] if len(words) > 1 and words[0] == "tornado-ai-stream" else ""

    def gateway_pid(self) -> int:
        pid = int(self.ctl("pid", "tornado-ai-stream").strip())
        self.gateway_pids.add(pid)
        return pid

    def kill(self) -> None:
        """supervisord puts the gateway in a process group of its own: stop it first, then kill what is left."""
        if self.alive():
            self.signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.wait(15)
        for pid in self.gateway_pids:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        super().kill()


def substitute(text: str, replacements: dict[str, str]) -> str:
    """Replace each deploy-file default by the test's value; a default that vanished from the file fails loudly."""
    for old, new in replacements.items():
        assert old in text, f"{old!r} is no longer in the deploy file: update tests/services.py"
        text = text.replace(old, new)
    return text


# -- fixtures ----------------------------------------------------------------------------------------------


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path).start()
    yield server
    server.kill()


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """`spawn(GatewayProcess, name="a", WORKERS="2")`: start a service in tmp_path; all are killed at teardown."""
    started: list[Service] = []

    def start(kind: type[Service], *args: Any, **kwargs: Any) -> Any:
        service = kind(tmp_path, *args, **kwargs)
        started.append(service)
        return service.start()  # type: ignore[attr-defined]

    yield start
    for service in reversed(started):
        service.kill()
