"""`python run.py --demo` as a subprocess on a free port, the way a person starts it, with its JSON log lines readable.

Used by the browser and terminal-client tests, which drive the real process from outside.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.conftest import ROOT, free_port

START_TIMEOUT = 20.0


class DemoServer:
    """One gateway process; `logs` collects its parsed JSON log lines as they are written."""

    def __init__(self, cwd: Path, **env: str) -> None:
        self.port = free_port()
        environ = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "PORT": str(self.port),
            "DEMO_DELAY_MS": "40",
            "LOG_FORMAT": "json",
            "CLIENT_API_KEYS": "",
            "SHUTDOWN_TIMEOUT_SECS": "1",
            **env,
        }
        # cwd without a .env, so a developer's .env cannot change what the tests see
        self.process = subprocess.Popen(
            [sys.executable, str(ROOT / "run.py"), "--demo"],
            cwd=cwd,
            env=environ,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.logs: list[dict[str, Any]] = []
        self._lines: queue.Queue[dict[str, Any] | None] = queue.Queue()
        threading.Thread(target=self._read_logs, daemon=True).start()
        self.wait_for_log(lambda line: line["msg"].startswith("listening on"), START_TIMEOUT)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _read_logs(self) -> None:
        assert self.process.stderr is not None
        for raw in self.process.stderr:
            try:
                line = json.loads(raw)
            except ValueError:
                line = {"msg": raw.rstrip("\n"), "level": "RAW"}
            self._lines.put(line)
        self._lines.put(None)

    def wait_for_log(self, match: Callable[[dict[str, Any]], bool], timeout: float = 10.0) -> dict[str, Any]:
        """The first log line (already seen or still to come) for which `match` is true."""
        for line in self.logs:
            if match(line):
                return line
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._lines.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                raise AssertionError(f"the server exited ({self.process.wait()}) before the expected log line; log: {self.logs}")
            self.logs.append(line)
            if match(line):
                return line
        raise AssertionError(f"no matching log line within {timeout}s; log: {self.logs}")

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
