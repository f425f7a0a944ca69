"""Writing to the event log. Every change a client may see is appended in the same transaction.

Ordering rules that make the log safe to stream (see docs/events.md):
- a room's writers take the room's advisory lock first (`pg_advisory_xact_lock`, which assigns no
  transaction id), so the transaction ids of one room's changes are in the order of their `seq`;
- readers order by (xid, id) and read only below the oldest running transaction
  (`pg_snapshot_xmin(pg_current_snapshot())`), so no event can later appear behind what they read.
Keep write transactions short: an open one holds back every stream in the cluster.
"""

from __future__ import annotations

import uuid

import asyncpg

from chat_api.core.wire import room_lock_key

NOTIFY_CHANNEL = "chat_events"
# Operators' orders to every replica's hub (`chat-api revoke-streams`); the payload is a user id.
CONTROL_CHANNEL = "chat_control"
# The NOTIFY is a doorbell: it carries no data, readers go to the log.
NOTIFY_SQL = f"pg_notify('{NOTIFY_CHANNEL}', '')"

# Serialises a room's writers; must be the transaction's first statement. $1: room_lock_key(room).
LOCK_ROOM = "SELECT pg_advisory_xact_lock($1)"
_BUMP_ROOM = "UPDATE rooms SET last_seq = last_seq + 1, activity_at = now() WHERE id = $1 RETURNING last_seq"
_APPEND = f"""INSERT INTO events (room_id, seq, kind, subject, payload)
    VALUES ($1, $2, $3, $4, $5::json) RETURNING {NOTIFY_SQL}"""


async def lock_room(conn: asyncpg.Connection, room_id: uuid.UUID) -> None:
    await conn.execute(LOCK_ROOM, room_lock_key(room_id))


async def next_seq(conn: asyncpg.Connection, room_id: uuid.UUID) -> int:
    """Takes the room's next sequence number (under the room lock) and marks the room active."""
    return int(await conn.fetchval(_BUMP_ROOM, room_id))


async def append(
    conn: asyncpg.Connection,
    room_id: uuid.UUID,
    seq: int,
    kind: str,
    payload: str,
    subject: str | None = None,
) -> None:
    """Appends one event (payload: the SSE data object as JSON text) and rings the doorbell."""
    await conn.execute(_APPEND, room_id, seq, kind, subject, payload)
