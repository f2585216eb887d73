"""Pre-fork workers: `WORKERS` processes serving one listening socket, under a parent that supervises them.

The parent binds the socket, points prometheus_client at a fresh multiprocess directory and forks; it
never creates an event loop, so each worker builds its own IOLoop, app, upstream pool and limiter
connection after the fork. A worker that dies is replaced. SIGTERM or SIGINT to the parent becomes one
SIGTERM per worker and each drains exactly as a single process does; a second signal makes them exit
at once. The parent exits 0 once every worker has drained and exited 0, and removes the metrics directory.

A parent killed with -9 cannot forward anything, so each worker asks the kernel to SIGKILL it when its
parent dies (PR_SET_PDEATHSIG): orphans would keep the port bound and a restarted parent would fail with
EADDRINUSE forever. The metrics directory a killed parent leaves behind is removed by the next start.

Tornado's `fork_processes` also restarts children, but it neither forwards signals nor reports a drain,
so this is a small fork loop of its own, driven by `sigwaitinfo` (no handlers, no races).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import NoReturn

from prometheus_client import multiprocess, values
from tornado.netutil import bind_sockets

from app.lifecycle import run, serve
from server.config import Settings
from server.metrics import MULTIPROC_ENV

log = logging.getLogger("gateway.workers")

_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGCHLD}
_CRASH_LOOP_SECS = 1.0  # a worker that dies sooner than this after its start is replaced after this pause
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_METRICS_PREFIX = "tornado-ai-stream-metrics-"


def worker_count(settings: Settings) -> int:
    """WORKERS=0 means one per core."""
    return settings.workers or os.cpu_count() or 1


class Supervisor:
    """Forks the workers, replaces the ones that die, forwards shutdown signals, reports the outcome."""

    def __init__(self, settings: Settings, sockets: list[socket.socket]) -> None:
        self.settings = settings
        self.sockets = sockets
        self.workers: dict[int, float] = {}  # pid -> monotonic start time
        self.stopping = False
        self.failed = False
        self._child_mask: set[signal.Signals] = set()

    def run(self, count: int) -> int:
        self._child_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
        for _ in range(count):
            self.spawn()
        while self.workers:
            info = signal.sigwaitinfo(_SIGNALS)
            if info.si_signo == signal.SIGCHLD:
                self.reap()
            else:
                self.forward(signal.Signals(info.si_signo))
        log.info("all workers stopped")
        return 1 if self.failed else 0

    def spawn(self) -> None:
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:
            self._work(parent)
        self.workers[pid] = time.monotonic()

    def _work(self, parent: int) -> NoReturn:
        """The child: serve until drained, then leave without running the parent's cleanup."""
        code = 1
        try:
            die_with_parent(parent)
            signal.pthread_sigmask(signal.SIG_SETMASK, self._child_mask)
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent turns SIGINT into SIGTERM
            run(serve(self.settings, self.sockets, worker=True))
            code = 0
        except BaseException:
            log.exception("worker failed")
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)

    def forward(self, signum: signal.Signals) -> None:
        action = "workers exit now" if self.stopping else "draining workers"
        log.warning("received %s: %s (%d)", signum.name, action, len(self.workers))
        self.stopping = True
        for pid in self.workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    def reap(self) -> None:
        """Collect every worker that exited (one SIGCHLD may stand for several) and replace it unless stopping."""
        while self.workers:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                return
            started = self.workers.pop(pid, None)
            if started is None:
                continue
            multiprocess.mark_process_dead(pid)
            code = os.waitstatus_to_exitcode(status)
            how = f"exit code {code}" if code >= 0 else signal.Signals(-code).name
            if self.stopping:
                self.failed = self.failed or code != 0
                log.log(logging.INFO if code == 0 else logging.ERROR, "worker %d stopped (%s)", pid, how)
                continue
            log.error("worker %d died (%s): starting a new one", pid, how)
            if time.monotonic() - started < _CRASH_LOOP_SECS:
                time.sleep(_CRASH_LOOP_SECS)
            self.spawn()


def die_with_parent(parent: int) -> None:
    """In a new worker: have the kernel SIGKILL this process the moment `parent` dies (Linux prctl)."""
    try:
        watched = ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
    except (OSError, AttributeError):
        watched = False
    if not watched:
        log.warning("prctl(PR_SET_PDEATHSIG) is unavailable: a worker outlives a parent killed with -9")
    if os.getppid() != parent:  # the parent died between fork and prctl: no signal will come
        os._exit(1)


def _remove_orphaned_metrics_dirs() -> None:
    """Metrics directories whose parent (its pid is in the name) is gone: left by a parent killed with -9."""
    for path in Path(tempfile.gettempdir()).glob(f"{_METRICS_PREFIX}*-*"):
        pid = path.name.removeprefix(_METRICS_PREFIX).split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        pass
    return True


def _use_multiprocess_metrics() -> str:
    """Every worker writes its metrics to files in one directory; /metrics sums them."""
    _remove_orphaned_metrics_dirs()
    path = tempfile.mkdtemp(prefix=f"{_METRICS_PREFIX}{os.getpid()}-")
    os.environ[MULTIPROC_ENV] = path
    values.ValueClass = values.get_value_class()  # chosen at import time; the workers create their metrics after this
    return path


def run_workers(settings: Settings) -> int:
    """`python run.py` with WORKERS != 1: bind, fork, supervise; the exit code of the whole group."""
    count = worker_count(settings)
    sockets = bind_sockets(settings.port, settings.host)
    metrics_dir = _use_multiprocess_metrics()
    port = sockets[0].getsockname()[1]
    log.info("starting %d workers on http://%s:%d (supervisor pid %d)", count, settings.host, port, os.getpid())
    try:
        return Supervisor(settings, sockets).run(count)
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
