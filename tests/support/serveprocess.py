"""`chat-api serve` as a real child process on a free port, seen from outside: its environment, its
output in files (no pipe to fill up), its JSON log lines. The fault harness
(tests/reliability/support/servers.py) and the workers' tests (tests/support/workers.py) build on it."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.support.ports import free_port
from tests.support.processes import stop_process
from tests.support.settings import TEST_SECRET

CLI = [sys.executable, "-m", "chat_api"]


def serve_env(database_url: str, port: int, **extra: str) -> dict[str, str]:
    """This process's environment without anything that configures chat-api, plus a server's
    settings; `extra` over them."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("DATABASE_URL", "DATABASE_URL_FILE", "PGSSLMODE", "PGSSLROOTCERT")
        and not key.startswith(("CHAT_API_", "OTEL_"))
    }
    env.update(
        DATABASE_URL=database_url,
        CHAT_API_JWT_SECRET=TEST_SECRET,
        CHAT_API_HOST="127.0.0.1",
        CHAT_API_PORT=str(port),
        CHAT_API_EVENT_PRUNE_INTERVAL_SECONDS="0",
    )
    env.update(extra)
    return env


class ServeProcess:
    """`python -m chat_api serve`; stdout and stderr go to DIRECTORY/NAME.stdout and .stderr. On a
    free port unless given one (a restart takes the same origin again)."""

    def __init__(
        self,
        database_url: str,
        directory: Path,
        name: str = "serve",
        port: int | None = None,
        **extra_env: str,
    ) -> None:
        self.name = name
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.stdout_path = directory / f"{name}.stdout"
        self.stderr_path = directory / f"{name}.stderr"
        env = serve_env(database_url, self.port, **extra_env)
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.proc = subprocess.Popen(
                [*CLI, "serve"], env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        return self.stdout_path.read_text(errors="replace") + self.stderr_path.read_text(errors="replace")

    def log_records(self) -> list[dict[str, Any]]:
        records = []
        for line in self.stdout_path.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                records.append(json.loads(line))
        return records

    def stop(self) -> None:
        stop_process(self.proc)
