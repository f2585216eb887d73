"""WORKERS=2: `python run.py` pre-forks two workers on one socket; both serve, metrics add up across them,
SIGTERM drains both and exits 0, a worker killed with -9 is replaced, and a parent killed with -9 takes its
workers along, so supervisord's restart gets the port back."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from app.workers import worker_count
from server.config import ConfigError, load_settings
from tests.services import EventStream, GatewayProcess, Supervisord, health, metric, wait_for

HEALTH_OK = 'http_requests_total{method="GET",route="/health",status="200"}'


def worker_pids(gateway: GatewayProcess | Supervisord, want: int = 2) -> tuple[set[int], int]:
    """Ask /health on fresh connections until `want` distinct workers answered; also how many asks it took."""
    pids: set[int] = set()
    asked = 0

    def probe() -> bool:
        nonlocal asked
        answers = [health(gateway.port) for _ in range(4)]
        asked += len(answers)
        pids.update(a.json()["pid"] for a in answers if a is not None)
        return len(pids) >= want

    wait_for(probe, f"{want} distinct workers to answer /health")
    return pids, asked


def settled_health_count(port: int) -> float:
    """The /health count once it has stopped moving: a worker counts a request just after answering it, so
    under load the readiness probes' last count can land after the client already has its answer."""

    def probe() -> tuple[float] | None:
        first = metric(port, HEALTH_OK)
        time.sleep(0.1)
        return (first,) if metric(port, HEALTH_OK) == first else None

    return wait_for(probe, "the /health count to settle")[0]


def test_two_workers_serve_and_metrics_add_up(spawn: Callable[..., Any]) -> None:
    gateway = spawn(GatewayProcess, WORKERS="2")
    before = settled_health_count(gateway.port)  # includes the readiness probes; read before our own asks
    pids, asked = worker_pids(gateway)
    assert len(pids) == 2 and gateway.pid not in pids
    # Summed over both workers, whichever answers. A worker counts a request just after sending its answer,
    # so the last count may land a moment after the client has it: poll for the exact total.
    wait_for(lambda: metric(gateway.port, HEALTH_OK) == before + asked, f"/metrics to count {before + asked} /health answers")
    assert len(gateway.logged("listening on")) == 2


def test_sigterm_drains_both_workers_and_exits_0(spawn: Callable[..., Any]) -> None:
    gateway = spawn(GatewayProcess, WORKERS="2", DEMO_DELAY_MS="25")
    worker_pids(gateway)
    streams = [EventStream(gateway.port) for _ in range(4)]
    for stream in streams:
        assert stream.status == 200
        assert stream.next_event() is not None  # connected: the stream is open in a worker
    gateway.signal(signal.SIGTERM)
    results: list[list[dict[str, Any]]] = [[] for _ in streams]
    readers = [threading.Thread(target=lambda i=i: results[i].extend(streams[i].rest())) for i in range(len(streams))]
    for reader in readers:
        reader.start()
    assert gateway.wait(15) == 0
    for reader in readers:
        reader.join(5)
    assert [events[-1]["type"] for events in results] == ["done"] * 4  # every stream finished during the drain
    assert len(gateway.logged("received SIGTERM: draining workers")) == 1
    assert len(gateway.logged("stopped (exit code 0)")) == 2
    assert len(gateway.logged("shutdown complete")) == 2
    assert health(gateway.port) is None  # the socket is closed


def test_a_killed_worker_is_replaced(spawn: Callable[..., Any]) -> None:
    gateway = spawn(GatewayProcess, WORKERS="2")
    pids, _ = worker_pids(gateway)
    victim = min(pids)
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: gateway.logged(f"worker {victim} died (SIGKILL): starting a new one", "ERROR"), "the supervisor to notice")
    survivors, _ = worker_pids(gateway)  # two workers answer again, the replacement among them
    assert victim not in survivors and len(survivors & pids) == 1
    gateway.signal(signal.SIGTERM)
    assert gateway.wait(10) == 0


def running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's reaper may be slow)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


@pytest.mark.supervisord
def test_a_killed_parent_takes_its_workers_along_and_supervisord_brings_it_back(spawn: Callable[..., Any], tmp_path: Path) -> None:
    supervisor = spawn(Supervisord, WORKERS="2", TMPDIR=str(tmp_path))
    parent = supervisor.gateway_pid()
    workers, _ = worker_pids(supervisor)
    [metrics_dir] = tmp_path.glob("tornado-ai-stream-metrics-*")

    os.kill(parent, signal.SIGKILL)
    killed_at = time.monotonic()
    wait_for(lambda: not any(running(pid) for pid in workers), "the orphaned workers to exit", timeout=10)
    assert time.monotonic() - killed_at < 2.0 + 1.0  # within 2 s, plus a margin for a loaded machine

    wait_for(lambda: supervisor.status() == "RUNNING" and supervisor.gateway_pid() != parent, "supervisord to restart the gateway", 20)
    new_workers, _ = worker_pids(supervisor)
    assert not new_workers & workers
    assert supervisor.status() == "RUNNING"  # not BACKOFF: the port was free
    assert not metrics_dir.exists()  # the killed parent's metrics directory is gone
    assert len(list(tmp_path.glob("tornado-ai-stream-metrics-*"))) == 1


def test_workers_setting() -> None:
    assert worker_count(load_settings({"OPENROUTER_API_KEY": "k"})) == 1
    assert worker_count(load_settings({"OPENROUTER_API_KEY": "k", "WORKERS": "3"})) == 3
    assert worker_count(load_settings({"OPENROUTER_API_KEY": "k", "WORKERS": "0"})) == os.cpu_count()
    with pytest.raises(ConfigError, match=r"WORKERS must be a whole number of processes >= 0 \(0 = one per core\) \(got '-1'\)"):
        load_settings({"OPENROUTER_API_KEY": "k", "WORKERS": "-1"})
