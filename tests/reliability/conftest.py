"""What the fault tests share: a throwaway PostgreSQL cluster of their own (they stop, freeze and
restart it), with database `chat` migrated by the real migrations."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.reliability.support.cluster import ChatDatabase, chat_database


@pytest.fixture
async def cluster_db() -> AsyncIterator[ChatDatabase]:
    async with chat_database() as database:
        yield database
