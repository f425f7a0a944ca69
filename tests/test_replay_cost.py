"""A stream's replay costs what it returns (security review finding 4): from the oldest cursor, a user in
3 rooms of a 1,000,000-event log reads its own events, not the log; and a replay stops as soon as the
client is gone. The large-log test is slow (~1 min to build the log); .ci/run runs it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from chat_api.core.db import Database
from chat_api.core.migrations import migrate
from chat_api.events import hub
from chat_api.events.cursor import Cursor
from chat_api.events.hub import END, Subscription
from chat_api.events.reader import _REPLAY_ALL, EVENT_COLUMNS, HORIZON_SQL
from chat_api.events.router import REPLAY_BATCH, _stream
from tests.support.databases import throwaway_database
from tests.support.settings import make_settings

USER = "replayer"
ROOMS = 3
EVENTS_PER_ROOM = 40
LOG_EVENTS = 1_000_000

# What a replay ran before migration 0005: the log in (xid, id) order from the cursor, each row
# filtered by the user's rooms. Kept here to show the finding in the same run.
BEFORE = f"""
SELECT {EVENT_COLUMNS} FROM events e
WHERE (e.xid, e.id) > ($1::text::xid8, $2) AND e.xid < {HORIZON_SQL}
  AND (e.room_id IN (SELECT room_id FROM members WHERE user_id = $3) OR e.subject = $3)
ORDER BY e.xid, e.id LIMIT $4
"""


@contextlib.asynccontextmanager
async def scratch(admin_url: str) -> AsyncIterator[str]:
    async with throwaway_database(admin_url, "chat_replay") as url:
        await migrate(make_settings(url))
        yield url


async def users_rooms(db: asyncpg.Connection) -> list[uuid.UUID]:
    rooms = [uuid.uuid4() for _ in range(ROOMS)]
    for room in rooms:
        await db.execute("INSERT INTO rooms (id, name, created_by) VALUES ($1, 'r', $2)", room, USER)
        await db.execute("INSERT INTO members (room_id, user_id, role) VALUES ($1, $2, 'owner')", room, USER)
    return rooms


async def their_events(db: asyncpg.Connection, rooms: list[uuid.UUID], first_seq: int) -> None:
    for room in rooms:
        await db.execute(
            """INSERT INTO events (room_id, seq, kind, payload)
               SELECT $1, g, 'message.created', '{}' FROM generate_series($2::bigint, $3::bigint) g""",
            room,
            first_seq,
            first_seq + EVENTS_PER_ROOM // 2 - 1,
        )


async def others_events(db: asyncpg.Connection, count: int) -> None:
    # Other users' rooms, 1,000 events each.
    await db.execute(
        """INSERT INTO events (room_id, seq, kind, payload)
           SELECT md5('other room ' || (g / 1000))::uuid, g % 1000 + 1, 'message.created', '{}'
           FROM generate_series(1, $1) g""",
        count,
    )


async def all_readable(db: asyncpg.Connection) -> None:
    """Waits until every event is below the horizon: readers never look above the oldest running
    transaction of the whole cluster, which another session may hold back for a moment."""
    readable = f"SELECT max(xid) < {HORIZON_SQL} FROM events"
    for _ in range(600):  # 30 s at most
        if await db.fetchval(readable):
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the events never fell below the horizon")


def buffers(plan: dict[str, Any]) -> int:
    return int(plan["Shared Hit Blocks"]) + int(plan["Shared Read Blocks"])


# Nodes that read a table's rows (a bitmap index scan's rows are read again by its heap scan).
TABLE_SCANS = {"Seq Scan", "Index Scan", "Index Only Scan", "Bitmap Heap Scan"}


def rows_read(plan: dict[str, Any]) -> int:
    """Table rows the plan read, kept or thrown away, over all loops."""
    own = 0
    if plan["Node Type"] in TABLE_SCANS:
        own = (int(plan["Actual Rows"]) + int(plan.get("Rows Removed by Filter", 0))) * int(
            plan["Actual Loops"]
        )
    return own + sum(rows_read(child) for child in plan.get("Plans", []))


async def explain(db: asyncpg.Connection, sql: str) -> dict[str, Any]:
    raw = await db.fetchval(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {sql}", "0", 0, USER, REPLAY_BATCH)
    plan: dict[str, Any] = json.loads(raw)[0]["Plan"]
    return plan


@pytest.mark.slow
async def test_a_replay_from_the_oldest_cursor_reads_the_users_events_not_the_log(admin_url: str) -> None:
    async with scratch(admin_url) as url:
        db = await asyncpg.connect(url)
        try:
            rooms = await users_rooms(db)
            # Their events sit in the middle of the log, half early, half late.
            await others_events(db, LOG_EVENTS // 2)
            await their_events(db, rooms, 1)
            await others_events(db, LOG_EVENTS // 2)
            await their_events(db, rooms, EVENTS_PER_ROOM // 2 + 1)
            await db.execute("VACUUM ANALYZE events")
            await all_readable(db)
            assert await db.fetchval("SELECT count(*) FROM events") == LOG_EVENTS + ROOMS * EVENTS_PER_ROOM

            now = await explain(db, _REPLAY_ALL)
            before = await explain(db, BEFORE)
        finally:
            await db.close()
    mine = ROOMS * EVENTS_PER_ROOM
    assert now["Actual Rows"] == before["Actual Rows"] == mine  # the same answer
    # Now: the user's events (each room's read once, plus the handful of members rows), in a few
    # hundred buffers. Before: the whole log after the cursor.
    assert rows_read(now) <= mine + 10, (rows_read(now), now)  # + the user's members rows
    assert buffers(now) < 500, buffers(now)
    assert rows_read(before) > LOG_EVENTS // 2, rows_read(before)
    assert buffers(before) > 20 * buffers(now), (buffers(before), buffers(now))
    print(
        f"replay from the oldest cursor, {mine} events of {LOG_EVENTS:,}: now {rows_read(now)} rows "
        f"/ {buffers(now)} buffers, before {rows_read(before)} rows / {buffers(before)} buffers"
    )


async def test_a_replay_stops_when_the_client_is_gone(admin_url: str) -> None:
    """The stream's replay checks, before each batch, whether its client left (the response's
    disconnect watcher offers END): a client that goes away costs at most the batch in flight."""
    async with scratch(admin_url) as url:
        db = await asyncpg.connect(url)
        try:
            (room,) = (uuid.uuid4(),)
            await db.execute("INSERT INTO rooms (id, name, created_by) VALUES ($1, 'r', $2)", room, USER)
            await db.execute(
                "INSERT INTO members (room_id, user_id, role) VALUES ($1, $2, 'owner')", room, USER
            )
            await db.execute(
                """INSERT INTO events (room_id, seq, kind, payload)
                   SELECT $1, g, 'message.created', '{}' FROM generate_series(1, $2) g""",
                room,
                3 * REPLAY_BATCH,
            )
            # The log is read below the oldest running transaction of the whole cluster: wait until
            # every event is readable, so the replay alone delivers them all (no hub feeds this test).
            await all_readable(db)
        finally:
            await db.close()
        db = Database(make_settings(url))
        await db.open()
        try:

            async def frames(leave_after_first_batch: bool) -> int:
                subscription = Subscription(USER, None, 10)
                stream = _stream(db, subscription, USER, None, Cursor(0, 0), None, Cursor(0, 0))
                count = 0
                async for chunk in stream:
                    count += chunk.count(b"\nevent: ")
                    if leave_after_first_batch and count:
                        subscription.offer(END)  # what the disconnect watcher does
                    if count == 3 * REPLAY_BATCH:
                        subscription.offer(END)  # the whole replay, then the live part ends
                return count

            async with asyncio.timeout(30):
                assert await frames(leave_after_first_batch=False) == 3 * REPLAY_BATCH
                assert await frames(leave_after_first_batch=True) == REPLAY_BATCH
        finally:
            await db.close()


async def test_the_hubs_read_at_the_head_of_the_log_reads_no_rows_whatever_the_statistics(
    admin_url: str,
) -> None:
    """Every hub reads the log on every doorbell, from its position near the head. That read must not
    grow with the log, even when the table's statistics are from when it was empty (a new deployment,
    or a burst of writes before autovacuum analyses): it once scanned the whole log to find out
    whether anything lay beyond the horizon (9 ms per read at 75,000 events, all of them, on every
    doorbell)."""
    async with scratch(admin_url) as url:
        db = await asyncpg.connect(url)
        try:
            await db.execute("VACUUM ANALYZE events")  # statistics of an empty log
            await others_events(db, 50_000)
            await all_readable(db)
            head = await db.fetchrow(
                "SELECT xid::text AS xid, id FROM events ORDER BY xid DESC, id DESC LIMIT 1"
            )
            raw = await db.fetchval(
                f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {hub._READ}", head["xid"], head["id"]
            )
        finally:
            await db.close()
    plan: dict[str, Any] = json.loads(raw)[0]["Plan"]
    assert plan["Actual Rows"] == 1  # the one row that says "nothing to read, nothing blocked"
    assert rows_read(plan) <= 2, (rows_read(plan), plan)
    assert buffers(plan) < 20, (buffers(plan), plan)
