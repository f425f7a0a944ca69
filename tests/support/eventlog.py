"""Makes stream cursors stale on purpose: ages one room's events past the retention and prunes the
log (tests/test_events.py, the client libraries' reset tests). Also a command, for tests in another language:

    python -m tests.support.eventlog DATABASE_URL ROOM_ID
"""

from __future__ import annotations

import asyncio
import sys
import uuid

import asyncpg

from chat_api.core.config import Settings
from chat_api.events.pruner import prune_once
from tests.support.settings import make_settings


async def age_and_prune(database_url: str, room_id: str, settings: Settings | None = None) -> int:
    """Dates the room's events 30 days back (as `database_url`'s user), then prunes the log with
    `settings` (default: the same database); answers how many were deleted."""
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            "UPDATE events SET created_at = now() - interval '30 days' WHERE room_id = $1", uuid.UUID(room_id)
        )
    finally:
        await conn.close()
    return await prune_once(settings or make_settings(database_url))


def main(argv: list[str]) -> int:
    database_url, room_id = argv
    deleted = asyncio.run(age_and_prune(database_url, room_id))
    print(f"pruned {deleted} events")
    return 0 if deleted else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
