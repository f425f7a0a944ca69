"""`chat-api serve` with CHAT_API_WORKERS: N server processes on one listening socket.

With 1 (the default) there is no supervisor: the one process serves, as always. With N > 1 the
parent binds the socket once (uvicorn's `Config.bind_socket`, from the same `server_config`) and
forks N workers that serve on it; the kernel hands each new connection to one of them. Each worker
is the whole service: its own lifespan, hub, doorbell listener and pool of CHAT_API_DB_POOL_SIZE
(N pools in all), so a stream on one worker gets an event written through another as it gets one
from another replica. The parent serves nothing. It:
- forwards SIGTERM and SIGINT to the workers, which drain as one server does (readiness 503,
  streams end, requests finish within GRACEFUL_SHUTDOWN_SECONDS), waits for all of them, then
  exits by the signal as one server does (status 143), or 1 if a worker failed;
- restarts a worker that dies on its own (a single host has nothing else that would), after a
  pause that grows while they keep dying young; but a worker whose app failed to start (uvicorn's
  exit status 3) would fail again: then it stops the others and exits 1.
A worker whose parent is gone (SIGKILLed) drains and exits by itself: no orphan keeps the port.

Fork, not spawn: the parent has imported everything and built the app once (a bad setting stops
start-up before any worker exists), so a worker, and a restarted one, serves within milliseconds
instead of importing the stack again (about a second each, on the same cores). Fork is safe
because the parent holds nothing that fork breaks: no thread, event loop, connection or telemetry
exporter; the lifespan makes those in each worker. `_fork` checks the thread part.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import select
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field

import uvicorn
from fastapi import FastAPI
from uvicorn.config import STARTUP_FAILURE

from chat_api.core.config import Settings
from chat_api.server import GRACEFUL_SHUTDOWN_SECONDS, Server, run_server, server_config

log = logging.getLogger("chat_api.workers")

# After SIGTERM each worker bounds its own drain; this is the parent's backstop for a worker that
# hangs anyway (its lifespan's shutdown, telemetry's flush): then SIGKILL, and exit 1.
STOP_BACKSTOP_SECONDS = GRACEFUL_SHUTDOWN_SECONDS + 10
# A worker that dies sooner than this after its start waits longer before the next try
# (RESTART_PAUSE_SECONDS, doubling up to RESTART_PAUSE_MAX_SECONDS); one that lived longer is
# restarted at once.
YOUNG_SECONDS = 10.0
RESTART_PAUSE_SECONDS = 0.5
RESTART_PAUSE_MAX_SECONDS = 10.0
PARENT_CHECK_TICKS = 10  # uvicorn ticks every 0.1 s: look for the parent once a second


def serve(app: FastAPI, settings: Settings) -> int:
    """Serves `app` on CHAT_API_HOST:CHAT_API_PORT with CHAT_API_WORKERS processes."""
    if settings.workers == 1:
        run_server(app, settings, settings.host, settings.port)
        return 0
    return Supervisor(app, settings).run()


class WorkerServer(Server):
    """A worker's server: drains by itself once the parent that forked it is gone."""

    def __init__(self, config: uvicorn.Config, draining: asyncio.Event, parent: int) -> None:
        super().__init__(config, draining)
        self.parent = parent

    async def on_tick(self, counter: int) -> bool:
        if counter % PARENT_CHECK_TICKS == 0 and not self.should_exit and os.getppid() != self.parent:
            log.warning("the parent process %d is gone; draining", self.parent)
            self.handle_exit(signal.SIGTERM, None)
        return await super().on_tick(counter)


@dataclass
class Slot:
    """One of the N workers: its current process, when it started, how its predecessors died."""

    number: int
    pid: int | None = None
    started: float = 0.0
    pause: float = 0.0  # before the next start; grows while workers die young
    restart_at: float | None = None


@dataclass
class Supervisor:
    """The parent: binds the socket, forks the workers, forwards signals, replaces the dead."""

    app: FastAPI
    settings: Settings
    slots: list[Slot] = field(default_factory=list)
    signals: list[int] = field(default_factory=list)
    stopping: int | None = None  # the signal that started the drain
    stop_deadline: float = 0.0
    failed: bool = False

    def run(self) -> int:
        config = server_config(self.app, self.settings, self.settings.host, self.settings.port)
        sock = config.bind_socket()  # logs "Uvicorn running on ..."; exits 3 if the port is taken
        wake_read, wake_write = os.pipe()
        os.set_blocking(wake_read, False)
        os.set_blocking(wake_write, False)
        # Signals only note themselves; the C handler writes a byte that wakes select() below.
        signal.set_wakeup_fd(wake_write)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
            signal.signal(sig, self._note_signal)
        log.info("supervising %d workers (parent pid %d)", self.settings.workers, os.getpid())
        self.slots = [Slot(number) for number in range(1, self.settings.workers + 1)]
        for slot in self.slots:
            self._start(slot, sock, wake_read, wake_write)
        while not self._done():
            select.select([wake_read], [], [], self._timeout())
            while True:
                try:
                    if not os.read(wake_read, 512):
                        break
                except BlockingIOError:
                    break
            self._handle_signals()
            self._reap()
            self._restart_due(sock, wake_read, wake_write)
            self._enforce_backstop()
        sock.close()
        signal.set_wakeup_fd(-1)
        log.info("all workers have stopped%s", " (one or more failed)" if self.failed else "")
        if self.failed:
            return 1
        if self.stopping is not None:
            # As one server does: exit by the signal (143 for SIGTERM). Ignored as PID 1 in a
            # container, where the return below makes it 0, also as for one server.
            signal.signal(self.stopping, signal.SIG_DFL)
            signal.raise_signal(self.stopping)
        return 0

    # -- the loop's parts ---------------------------------------------------------------------------

    def _note_signal(self, sig: int, frame: object) -> None:
        if sig != signal.SIGCHLD:
            self.signals.append(sig)

    def _handle_signals(self) -> None:
        signals, self.signals = self.signals, []  # one that arrives meanwhile waits for the next turn
        for sig in signals:
            if self.stopping is None:
                log.info("received %s: draining %d workers", signal.Signals(sig).name, len(self.running()))
                self.stopping = sig
                self.stop_deadline = time.monotonic() + STOP_BACKSTOP_SECONDS
                for slot in self.slots:
                    slot.restart_at = None
            # Every signal goes on, as it came: a second SIGINT makes uvicorn stop waiting.
            for slot in self.running():
                self._kill(slot, sig)

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            slot = next((s for s in self.slots if s.pid == pid), None)
            if slot is not None:
                slot.pid = None
                self._worker_exited(slot, pid, status)

    def _worker_exited(self, slot: Slot, pid: int, status: int) -> None:
        how = _describe(status)
        if self.stopping is not None:
            clean = os.waitstatus_to_exitcode(status) in (0, -signal.SIGTERM, -signal.SIGINT)
            if clean:
                log.info("worker %d (pid %d) stopped", slot.number, pid)
            else:
                log.error("worker %d (pid %d) %s while stopping", slot.number, pid, how)
            self.failed |= not clean
            return
        if os.WIFEXITED(status) and os.WEXITSTATUS(status) == STARTUP_FAILURE:
            log.error("worker %d (pid %d) failed to start (%s); stopping the others", slot.number, pid, how)
            self.failed = True
            self.signals.append(signal.SIGTERM)
            self._handle_signals()
            return
        lived = time.monotonic() - slot.started
        slot.pause = (
            0.0
            if lived >= YOUNG_SECONDS
            else min(RESTART_PAUSE_MAX_SECONDS, max(RESTART_PAUSE_SECONDS, slot.pause * 2))
        )
        slot.restart_at = time.monotonic() + slot.pause
        log.error(
            "worker %d (pid %d) %s after %.1f s; starting another in %.1f s",
            slot.number,
            pid,
            how,
            lived,
            slot.pause,
        )

    def _restart_due(self, sock: socket.socket, *pipe: int) -> None:
        now = time.monotonic()
        for slot in self.slots:
            if (
                self.stopping is None
                and slot.pid is None
                and slot.restart_at is not None
                and slot.restart_at <= now
            ):
                slot.restart_at = None
                self._start(slot, sock, *pipe)

    def _enforce_backstop(self) -> None:
        if self.stopping is None or time.monotonic() < self.stop_deadline:
            return
        for slot in self.running():
            log.error(
                "worker %d (pid %d) did not stop in %d s; killing it",
                slot.number,
                slot.pid,
                STOP_BACKSTOP_SECONDS,
            )
            self._kill(slot, signal.SIGKILL)
        self.failed = True
        self.stop_deadline = float("inf")

    def _timeout(self) -> float | None:
        """How long select() may sleep: until the next restart or the backstop; else until a signal."""
        moments = [slot.restart_at for slot in self.slots if slot.restart_at is not None and slot.pid is None]
        if self.stopping is not None and self.stop_deadline != float("inf"):
            moments.append(self.stop_deadline)
        return max(0.0, min(moments) - time.monotonic()) if moments else None

    def _done(self) -> bool:
        return self.stopping is not None and not self.running()

    def running(self) -> list[Slot]:
        return [slot for slot in self.slots if slot.pid is not None]

    def _kill(self, slot: Slot, sig: int) -> None:
        if slot.pid is not None:
            with contextlib.suppress(ProcessLookupError):  # exited; reaped on the next turn
                os.kill(slot.pid, sig)

    # -- a worker ---------------------------------------------------------------------------------

    def _start(self, slot: Slot, sock: socket.socket, *pipe: int) -> None:
        slot.started = time.monotonic()
        slot.pid = _fork(self.app, self.settings, sock, pipe)
        log.info("worker %d started (pid %d)", slot.number, slot.pid)


def _fork(app: FastAPI, settings: Settings, sock: socket.socket, pipe: tuple[int, ...]) -> int:
    """Starts a worker serving `app` on `sock`; returns its pid (in the parent only)."""
    if threading.active_count() != 1:
        raise RuntimeError("a thread is running in the supervisor: forking now is unsafe")
    sys.stdout.flush()
    sys.stderr.flush()
    parent = os.getpid()
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        # The parent's signal set-up is not the worker's: uvicorn installs its own handlers.
        signal.set_wakeup_fd(-1)
        for fd in pipe:
            os.close(fd)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        # Out of the terminal's process group: Ctrl-C reaches the parent, which forwards it once.
        os.setpgid(0, 0)
        config = server_config(app, settings, settings.host, settings.port)
        WorkerServer(config, app.state.draining, parent).run(sockets=[sock])
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        log.exception("worker failed")
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _describe(status: int) -> str:
    code = os.waitstatus_to_exitcode(status)
    return f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with status {code}"
