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

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from chat_api.core.wire import room_lock_key

NOTIFY_CHANNEL = "chat_events"
# The NOTIFY is a doorbell: it carries no data, readers go to the log.
NOTIFY_SQL = f"pg_notify('{NOTIFY_CHANNEL}', '')"

_LOCK_ROOM = text("SELECT pg_advisory_xact_lock(:key)")
_BUMP_ROOM = text(
    "UPDATE rooms SET last_seq = last_seq + 1, activity_at = now() WHERE id = :room_id RETURNING last_seq"
)
_APPEND = text(
    f"""INSERT INTO events (room_id, seq, kind, subject, payload)
    VALUES (:room_id, :seq, :kind, :subject, CAST(:payload AS json))
    RETURNING {NOTIFY_SQL}"""
)


async def lock_room(conn: AsyncConnection, room_id: uuid.UUID) -> None:
    """Serialises the room's writers; must be the transaction's first statement."""
    await conn.execute(_LOCK_ROOM, {"key": room_lock_key(room_id)})


async def next_seq(conn: AsyncConnection, room_id: uuid.UUID) -> int:
    """Takes the room's next sequence number (under the room lock) and marks the room active."""
    return int((await conn.execute(_BUMP_ROOM, {"room_id": room_id})).scalar_one())


async def append(
    conn: AsyncConnection, room_id: uuid.UUID, seq: int, kind: str, payload: str, subject: str | None = None
) -> None:
    """Appends one event (payload: the SSE data object as JSON text) and rings the doorbell."""
    await conn.execute(
        _APPEND, {"room_id": room_id, "seq": seq, "kind": kind, "subject": subject, "payload": payload}
    )
