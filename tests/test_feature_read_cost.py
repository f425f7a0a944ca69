"""The reads of SPEC §8 cost what they return, not what the rooms hold: a search page for a common
word and for a rare one, first or deep, reads a small part of the user's rooms; a thread's page goes
through its index. Counted by PostgreSQL itself (the transaction's buffer requests on the messages
table and its indexes), in a database of 200,000 messages."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import datetime

import asyncpg
import pytest

from chat_api.core.migrations import migrate
from chat_api.messages.search import decode_cursor, encode_cursor
from chat_api.messages.service import _THREAD_PAGES
from tests.support.databases import throwaway_database
from tests.support.settings import make_settings

USER = "searcher"
ROOMS = 5  # the user is in the first 3
PER_ROOM = 40_000
PAGE = 21  # what the service asks for: a page of 20 and one more
SEARCH = "SELECT doc, created_at, room_id, seq FROM chat_search($1, NULL, $2, $3, $4, $5, $6)"
# Buffer requests (hits and reads) of this transaction on messages and its indexes.
BLOCKS = """
SELECT sum(pg_stat_get_xact_blocks_fetched(c.oid))::bigint FROM pg_class c
WHERE c.oid = 'messages'::regclass
   OR c.oid IN (SELECT indexrelid FROM pg_index WHERE indrelid = 'messages'::regclass)
"""


@pytest.fixture(scope="module")
async def loaded(admin_url: str) -> AsyncIterator[tuple[str, list[uuid.UUID]]]:
    async with throwaway_database(admin_url, "chat_read_cost") as url:
        await migrate(make_settings(url))
        db = await asyncpg.connect(url)
        try:
            rooms = [uuid.uuid4() for _ in range(ROOMS)]
            for n, room in enumerate(rooms):
                await db.execute("INSERT INTO rooms (id, name, created_by) VALUES ($1, 'r', 'owner')", room)
                if n < 3:
                    await db.execute(
                        "INSERT INTO members (room_id, user_id, role) VALUES ($1, $2, 'member')", room, USER
                    )
                # 'deploy' in every other message, 'quokka' in 3 per room; every 10th a reply to 1.
                await db.execute(
                    """INSERT INTO messages (room_id, seq, sender, body, reply_to, created_at)
                    SELECT $1, i, 'owner',
                           CASE WHEN i % 2 = 0 THEN 'we deploy at ' ELSE 'lunch at ' END || i
                           || CASE WHEN i % 7001 = 0 THEN ' quokka' ELSE '' END,
                           CASE WHEN i % 10 = 0 THEN 1 END,
                           '2026-01-01'::timestamptz + i * interval '1 second' + $2 * interval '1 ms'
                    FROM generate_series(1, $3) AS i""",
                    room,
                    n,
                    PER_ROOM,
                )
            # What autovacuum does after a load: statistics, and the GIN index's pending list merged (a
            # search scans that list whole, up to gin_pending_list_limit, 4 MB, until it is).
            await db.execute("VACUUM ANALYZE messages")
        finally:
            await db.close()
        yield url, rooms


async def blocks_read(url: str, statement: str, *args: object) -> tuple[int, list[asyncpg.Record]]:
    """The rows `statement` returns and the buffer requests it made, in a transaction of its own."""
    db = await asyncpg.connect(url)
    try:
        async with db.transaction():
            before = await db.fetchval(BLOCKS)
            rows = await db.fetch(statement, *args)
            return int(await db.fetchval(BLOCKS)) - int(before), rows
    finally:
        await db.close()


async def whole_room_blocks(url: str, room: uuid.UUID) -> int:
    read, _ = await blocks_read(url, "SELECT count(body) FROM messages WHERE room_id = $1", room)
    return read


Position = tuple[datetime | None, uuid.UUID | None, int | None]


async def search_page(url: str, words: str, after: Position) -> tuple[int, list[asyncpg.Record]]:
    return await blocks_read(url, SEARCH, USER, words, *after, PAGE)


async def test_a_search_page_reads_a_small_part_of_the_rooms_first_or_deep_common_or_rare(
    loaded: tuple[str, list[uuid.UUID]],
) -> None:
    url, rooms = loaded
    room_blocks = await whole_room_blocks(url, rooms[0])
    first, rows = await search_page(url, "deploy", (None, None, None))
    assert len(rows) == PAGE and all(row["room_id"] in rooms[:3] for row in rows)
    # 50 pages deep (1,000 results, 2,000 messages of each room back).
    position: Position = (None, None, None)
    for _ in range(50):
        _, rows = await search_page(url, "deploy", position)
        last = rows[PAGE - 2]
        position = (last["created_at"], last["room_id"], last["seq"])
    deep, rows = await search_page(url, "deploy", position)
    assert len(rows) == PAGE and rows[0]["created_at"] < last["created_at"]
    rare, found = await search_page(url, "quokka", (None, None, None))
    assert len(found) == 3 * (PER_ROOM // 7001), found  # every one in the user's rooms, and only those
    assert {row["room_id"] for row in found} == set(rooms[:3])
    # Reading one of the user's rooms whole is the cost that must not be paid.
    assert first < room_blocks / 10, (first, room_blocks)
    assert deep < 2 * first + 50, (deep, first)
    assert rare < room_blocks / 10, (rare, room_blocks)


async def test_the_cursor_the_service_hands_out_is_the_last_items_position() -> None:
    created = datetime.fromisoformat("2026-12-05T10:00:00.123456+00:00")
    room = uuid.uuid4()
    assert decode_cursor(encode_cursor(created, room, 42)) == (created, room, 42)


async def test_a_threads_page_goes_through_its_index(loaded: tuple[str, list[uuid.UUID]]) -> None:
    url, rooms = loaded
    db = await asyncpg.connect(url)
    try:
        await db.execute(
            "INSERT INTO members (room_id, user_id, role) VALUES ($1, 'reader', 'member')", rooms[3]
        )
        plan = await db.fetchval(
            "EXPLAIN (FORMAT JSON) " + _THREAD_PAGES["after"], rooms[3], "reader", 51, 0, 1
        )
    finally:
        await db.close()
    assert "ix_messages_room_id_thread_root_seq" in plan, plan
    read, rows = await blocks_read(url, _THREAD_PAGES["after"], rooms[3], "reader", 51, 0, 1)
    assert len(rows) == 51 and read < await whole_room_blocks(url, rooms[3]) / 10, read
