"""Writing to the event log. Every change a client may see is appended in the same transaction.

Ordering rules that make the log safe to stream (see docs/events.md):
- a room's writers take the room's advisory lock first (`pg_advisory_xact_lock`, which assigns no
  transaction id), so the transaction ids of one room's changes are in the order of their `seq`;
- readers order by (xid, id) and read only below the oldest running transaction
  (`pg_snapshot_xmin(pg_current_snapshot())`), so no event can later appear behind what they read.
Keep write transactions short: an open one holds back every stream in the cluster.

No writer notifies inside its transaction (a NOTIFY there serialises the commits of the whole
cluster): the caller rings the doorbell after the commit, `Database.committed()` (events/doorbell.py).
"""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg

from chat_api.events.contract import EventKind, envelope, room_lock_key

# Serialises a room's writers; must be the transaction's first statement. $1: room_lock_key(room).
LOCK_ROOM = "SELECT pg_advisory_xact_lock($1)"
_BUMP_ROOM = "UPDATE rooms SET last_seq = last_seq + 1, activity_at = now() WHERE id = $1 RETURNING last_seq"
_APPEND = """INSERT INTO events (room_id, seq, kind, subject, payload)
    VALUES ($1, $2, $3, $4, $5::json)"""


async def lock_room(conn: asyncpg.Connection, room_id: uuid.UUID) -> None:
    await conn.execute(LOCK_ROOM, room_lock_key(room_id))


async def next_seq(conn: asyncpg.Connection, room_id: uuid.UUID) -> int:
    """Takes the room's next sequence number (under the room lock) and marks the room active."""
    return int(await conn.fetchval(_BUMP_ROOM, room_id))


async def append(
    conn: asyncpg.Connection,
    room_id: uuid.UUID,
    seq: int,
    kind: EventKind,
    obj: Any,
    subject: str | None = None,
) -> None:
    """Appends one event about `obj` (its JSON-ready form). The caller rings the doorbell once the
    transaction has committed (`Database.committed()`)."""
    await conn.execute(_APPEND, room_id, seq, kind, subject, envelope(kind, room_id, seq, obj))
