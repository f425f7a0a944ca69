"""Makes stream cursors stale on purpose: ages one room's events past the retention and prunes the
log, as tests/test_events.py does in-process. A command for tests that run in another language:

    python -m tests.support.eventlog DATABASE_URL ROOM_ID
"""

from __future__ import annotations

import asyncio
import sys
import uuid

import asyncpg

from chat_api.core.db import Database
from chat_api.events.reader import prune
from tests.support.settings import make_settings


async def age_and_prune(database_url: str, room_id: str) -> int:
    """Dates the room's events 30 days back, then prunes the log; answers how many were deleted."""
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            "UPDATE events SET created_at = now() - interval '30 days' WHERE room_id = $1", uuid.UUID(room_id)
        )
    finally:
        await conn.close()
    settings = make_settings(database_url)
    db = Database(settings)
    await db.open()
    try:
        return await prune(db, settings.event_retention_seconds)
    finally:
        await db.close()


def main(argv: list[str]) -> int:
    database_url, room_id = argv
    deleted = asyncio.run(age_and_prune(database_url, room_id))
    print(f"pruned {deleted} events")
    return 0 if deleted else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
