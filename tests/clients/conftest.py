"""The client libraries' tests: a database of their own (they prune its event log and restart servers
on it) and a live `chat-api serve` on it with a short heartbeat (streams notice a cut within 0.5 s,
tokens expire into `reauth` quickly)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

from chat_api.core.migrations import migrate
from tests.support.databases import throwaway_database
from tests.support.settings import RUNTIME_PASSWORD, make_settings, with_user
from tests.support.workers import ServeProcess, serve_process

# Streams notice a dead connection and an expired token within half a second.
FAST = {"CHAT_API_STREAM_HEARTBEAT_SECONDS": "0.5"}


@pytest.fixture(scope="session")
async def clients_db(admin_url: str, runtime_role: str) -> AsyncIterator[tuple[str, str]]:
    """(owner URL, runtime URL) of a migrated database for the client tests alone."""
    async with throwaway_database(admin_url, "chat_clients") as url:
        await migrate(make_settings(url, db_runtime_role=runtime_role))
        yield url, with_user(url, runtime_role, RUNTIME_PASSWORD)


@pytest.fixture(scope="session")
def live(clients_db: tuple[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    with serve_process(clients_db[1], tmp_path_factory.mktemp("live"), "live", **FAST) as server:
        server.wait_ready(1)
        yield server


@pytest.fixture
def tag() -> str:
    return uuid.uuid4().hex[:8]
