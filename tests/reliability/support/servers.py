"""Real `chat-api serve` processes a fault test starts, SIGTERMs or kills, and whose logs it reads."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from tests.support.serveprocess import ServeProcess

DB_TIMEOUT = 3.0  # CHAT_API_DB_TIMEOUT of every server the harness starts
# A request during a fault must be answered within the database timeout plus this much.
ANSWER_MARGIN = 2.0
STARTUP_SECONDS = 30


# Every server the harness starts: no send limit (the faults come in bursts), the database timeout
# the answers are bounded by, a heartbeat that shows a dead connection within a second.
SETTINGS = {
    "CHAT_API_SEND_RATE_PER_SECOND": "0",
    "CHAT_API_DB_TIMEOUT": str(DB_TIMEOUT),
    "CHAT_API_STREAM_HEARTBEAT_SECONDS": "1",
}


class ServerProcess(ServeProcess):
    """`python -m chat_api serve` on a free port that a fault test starts, SIGTERMs or kills."""

    def __init__(self, name: str, database_url: str, directory: Path, **extra_env: str) -> None:
        super().__init__(database_url, directory, name, **{**SETTINGS, **extra_env})

    def errors_logged(self) -> list[dict[str, Any]]:
        return [r for r in self.log_records() if r.get("level") in ("ERROR", "CRITICAL")]

    async def ready(self, timeout: float = STARTUP_SECONDS) -> float:  # noqa: ASYNC109
        """Waits for /readyz 200; returns how long that took."""
        started = time.monotonic()
        last: object = None
        async with httpx.AsyncClient(timeout=2) as client:
            while time.monotonic() - started < timeout:
                if self.proc.poll() is not None:
                    raise AssertionError(f"{self.name} exited with {self.proc.returncode}:\n{self.output()}")
                try:
                    last = r = await client.get(f"{self.url}/readyz")
                    if r.status_code == 200:
                        return time.monotonic() - started
                except httpx.TransportError as exc:
                    last = exc
                await asyncio.sleep(0.1)
        raise AssertionError(f"{self.name}: /readyz not 200 within {timeout} s ({last!r}):\n{self.output()}")

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def sigterm(self) -> None:
        self.proc.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.proc.kill()  # SIGKILL: no drain, no lifespan shutdown, sockets reset by the kernel

    async def exited(self, timeout: float) -> int | None:  # noqa: ASYNC109
        """The exit status once the process ends within `timeout` seconds, else None."""
        deadline = time.monotonic() + timeout
        while True:
            code = self.proc.poll()
            if code is not None or time.monotonic() > deadline:
                return code
            await asyncio.sleep(0.02)


class Servers:
    """The servers a test starts (see server_processes)."""

    def __init__(self) -> None:
        self.started: list[ServerProcess] = []

    async def start(self, name: str, database_url: str, directory: Path, **extra_env: str) -> ServerProcess:
        """`chat-api serve`, once it is ready."""
        server = ServerProcess(name, database_url, directory, **extra_env)
        self.started.append(server)
        await server.ready()
        return server


@contextlib.contextmanager
def server_processes() -> Iterator[Servers]:
    """Starts servers for a test and stops whatever is still running at the end."""
    servers = Servers()
    try:
        yield servers
    finally:
        for server in servers.started:
            server.stop()
