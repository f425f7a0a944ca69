"""`chat-api serve` with CHAT_API_WORKERS as a real process tree, seen from outside: its worker
processes and which of them holds a connection (from /proc), its JSON log, and plain HTTP/1.1
connections whose local port says which worker serves them."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from tests.support import serveprocess
from tests.support.serveprocess import CLI

__all__ = ["CLI"]  # the workers' tests run `chat-api serve` themselves too

STARTUP_SECONDS = 30  # a deadline for waiting, never a measurement
# The workers' test servers: rate limits off (the tests send in bursts).
SETTINGS = {"CHAT_API_RATE_LIMITS": "false"}


def serve_env(database_url: str, port: int, **extra: str) -> dict[str, str]:
    return serveprocess.serve_env(database_url, port, **{**SETTINGS, **extra})


class ServeProcess(serveprocess.ServeProcess):
    """`chat-api serve` whose worker processes and startup are seen from /proc and its log."""

    def __init__(
        self,
        database_url: str,
        directory: Path,
        name: str = "serve",
        port: int | None = None,
        **extra_env: str,
    ) -> None:
        super().__init__(database_url, directory, name, port, **{**SETTINGS, **extra_env})

    def workers(self) -> set[int]:
        return children(self.pid)

    def wait_until(self, what: str, condition: Any, timeout: float = STARTUP_SECONDS) -> Any:
        """Polls `condition()` until it is truthy; fails early when the server exits."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if found := condition():
                return found
            if self.proc.poll() is not None:
                raise AssertionError(f"exited with {self.proc.returncode} before {what}:\n{self.output()}")
            time.sleep(0.05)
        raise AssertionError(f"not within {timeout} s: {what}\n{self.output()}")

    def wait_ready(self, workers: int) -> set[int]:
        """Waits until `workers` processes (the workers; with one, the server itself) have started
        their app and /readyz answers; returns their pids."""

        def started() -> set[int] | None:
            pids = {
                r["process.pid"]
                for r in self.log_records()
                if r.get("message") == "Application startup complete."
            } & (self.workers() | {self.pid})
            return pids if len(pids) >= workers else None

        pids: set[int] = self.wait_until(f"{workers} workers started", started)

        def ready() -> bool:
            with contextlib.suppress(httpx.HTTPError):
                return httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200
            return False

        self.wait_until("/readyz 200", ready)
        return pids


@contextlib.contextmanager
def serve_process(
    database_url: str, directory: Path, name: str = "serve", port: int | None = None, **extra_env: str
) -> Iterator[ServeProcess]:
    server = ServeProcess(database_url, directory, name, port, **extra_env)
    try:
        yield server
    finally:
        server.stop()


# -- the process tree, from /proc -----------------------------------------------------------------


def children(pid: int) -> set[int]:
    """The live (not zombie) child processes of `pid`."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid and fields[0] != "Z":
                found.add(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    with contextlib.suppress(OSError, IndexError):
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    return False


def _socket_inode(server_port: int, client_port: int) -> int | None:
    """The inode of the server's end of the TCP connection from `client_port` (/proc/net/tcp)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                local, remote, inode = fields[1], fields[2], int(fields[9])
                ports = int(local.rsplit(":", 1)[1], 16), int(remote.rsplit(":", 1)[1], 16)
                if ports == (server_port, client_port) and inode:
                    return inode
    return None


def holder(server_port: int, client_port: int, pids: set[int]) -> int | None:
    """Which of `pids` holds (has accepted) the connection from `client_port`."""
    inode = _socket_inode(server_port, client_port)
    if inode is None:
        return None
    target = f"socket:[{inode}]"
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) == target:
                        return pid
    return None


# -- connections that know their worker -----------------------------------------------------------


class Connection:
    """One keep-alive HTTP/1.1 connection to the server and the worker that accepted it."""

    def __init__(self, server: ServeProcess, token: str) -> None:
        self.server = server
        self.token = token
        self.http = http.client.HTTPConnection("127.0.0.1", server.port, timeout=20)
        self.http.connect()
        assert self.http.sock is not None
        self.client_port: int = self.http.sock.getsockname()[1]
        # A worker holds the connection once it has accepted it: it has once it answered.
        status, _ = self.request("GET", "/healthz")
        assert status == 200, status
        self.worker = holder(server.port, self.client_port, server.workers() or {server.pid})

    def headers(self, **extra: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}", **extra}

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        payload = json.dumps(body).encode() if body is not None else None
        headers = self.headers(**({"Content-Type": "application/json"} if payload else {}))
        self.http.request(method, path, body=payload, headers=headers)
        response = self.http.getresponse()
        data = response.read()
        return response.status, json.loads(data) if data else None

    def close(self) -> None:
        self.http.close()


def connection_on(server: ServeProcess, token: str, want: Any, attempts: int = 200) -> Connection:
    """A new connection whose worker satisfies `want(pid)`; new connections until one does."""
    for _ in range(attempts):
        conn = Connection(server, token)
        if conn.worker is not None and want(conn.worker):
            return conn
        conn.close()
    raise AssertionError(f"no connection of {attempts} reached a wanted worker")
