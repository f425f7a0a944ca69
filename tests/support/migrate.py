"""`chat-api migrate` in a child process as the migration Job runs it: DATABASE_URL, no other CHAT_API_*."""

from __future__ import annotations

import os
import subprocess
import sys

COMMAND_TIMEOUT = 60


def cli_env(database_url: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DATABASE_URL", "DATABASE_URL_FILE") and not k.startswith("CHAT_API_")
    }
    env.update(DATABASE_URL=database_url, CHAT_API_LOG_FORMAT="console")
    return env


def run_migrate(url: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`chat-api migrate ARGS` as the migration Job runs it."""
    return subprocess.run(
        [sys.executable, "-m", "chat_api", "migrate", *args],
        env={**cli_env(url), **env},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,  # the log and the error line, in order
        text=True,
        timeout=COMMAND_TIMEOUT,
        check=False,
    )
