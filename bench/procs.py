"""The processes under test: start them, pin them, read their CPU time and memory from /proc, stop them."""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

ROOT = Path(__file__).resolve().parent.parent
_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def raise_fd_limit() -> int:
    """Soft NOFILE limit up to the hard limit, for this process and the children it starts; returns it."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """user + system CPU seconds of `pid` (fields 14 and 15 of /proc/<pid>/stat)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # the command name may contain spaces
    return (int(fields[11]) + int(fields[12])) / _TICKS


def rss_bytes(pid: int) -> int:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * _PAGE


def pin(pid: int, cpus: set[int] | None) -> None:
    """Bind `pid` to `cpus` (None: leave it to the scheduler); ignored where affinity is not allowed."""
    if cpus:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(pid, cpus)


def set_niceness(value: int) -> bool:
    """Set this process's nice value; False when not allowed (raising priority needs root)."""
    try:
        os.setpriority(os.PRIO_PROCESS, 0, value)
    except OSError:
        return False
    return True


@dataclass
class Service:
    name: str
    process: subprocess.Popen[bytes]
    port: int
    errors: IO[bytes]  # its stderr: a file, not a pipe, so a chatty child never blocks on a full pipe

    @property
    def pid(self) -> int:
        return self.process.pid

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    def rss(self) -> int:
        return rss_bytes(self.pid)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.errors.close()

    def stderr(self) -> str:
        self.errors.seek(0)
        return self.errors.read().decode(errors="replace").strip()


def start(
    name: str, args: list[str], port: int, env: dict[str, str] | None = None, cpus: set[int] | None = None, startup_timeout: float = 20.0
) -> Service:
    """Start `args` from the repository root and wait until it accepts connections on `port`."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("OPENROUTER_", "CLIENT_API_KEYS"))}
    environ.update(env or {})
    environ["PYTHONPATH"] = str(ROOT)
    errors = tempfile.TemporaryFile()  # noqa: SIM115 (closed by Service.stop)
    process = subprocess.Popen([*args], cwd=ROOT, env=environ, stdout=subprocess.DEVNULL, stderr=errors)
    service = Service(name, process, port, errors)
    pin(process.pid, cpus)
    deadline = time.monotonic() + startup_timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            text = service.stderr()
            service.stop()
            raise RuntimeError(f"{name} exited with {process.returncode}: {text[-500:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return service
        time.sleep(0.05)
    service.stop()
    raise RuntimeError(f"{name} did not listen on port {port} within {startup_timeout:g} s")


@dataclass(frozen=True)
class SelfSigned:
    """A throwaway certificate for 127.0.0.1 (the TLS upstream); a client trusts it through SSL_CERT_FILE."""

    cert: str
    key: str

    @classmethod
    def make(cls, directory: str) -> SelfSigned:
        cert, key = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
        command = ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"]
        command += ["-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", key, "-out", cert]
        subprocess.run(command, check=True, capture_output=True)
        return cls(cert, key)


def start_upstream(
    delay_ms: float, answer_words: int, words_per_chunk: int = 1, cpus: set[int] | None = None, tls: SelfSigned | None = None
) -> Service:
    port = free_port()
    args = [sys.executable, "-m", "server.demo_upstream", "--port", str(port), "--delay-ms", str(delay_ms)]
    args += ["--answer-words", str(answer_words), "--words-per-chunk", str(words_per_chunk)]
    if tls is not None:
        args += ["--tls-cert", tls.cert, "--tls-key", tls.key]
    return start("upstream", args, port, cpus=cpus)


def start_gateway(upstream: Service, cpus: set[int] | None = None, python: str = sys.executable) -> Service:
    port = free_port()
    env = {
        "OPENROUTER_BASE_URL": f"http://127.0.0.1:{upstream.port}/api/v1",
        "OPENROUTER_API_KEY": "bench",
        "PORT": str(port),
        "HOST": "127.0.0.1",
        "RATE_LIMIT": "1000000",
        "MAX_STREAMS_PER_CLIENT": "100000",
        "MAX_CONCURRENT_STREAMS": "100000",
        "LOG_LEVEL": "WARNING",
        "CLIENT_API_KEYS": "",  # a developer's .env must not turn the bench into a wall of 401s
        "CLIENT_API_KEYS_FILE": "",
        "METRICS_ENABLED": "true",
        "METRICS_TOKEN": "",
    }
    return start("gateway", [python, "run.py"], port, env, cpus)


def start_relay(upstream: Service, client: str, cpus: set[int] | None = None, tls: SelfSigned | None = None) -> Service:
    """The bare relay in front of `upstream`; over HTTPS, trusting only `tls`'s certificate, when it is given."""
    port = free_port()
    base = f"{'https' if tls else 'http'}://127.0.0.1:{upstream.port}/api/v1"
    args = [sys.executable, "-m", "bench.relay", "--port", str(port), "--upstream", base]
    env = {"SSL_CERT_FILE": tls.cert} if tls else None
    return start(f"relay-{client}", [*args, "--client", client], port, env, cpus=cpus)
