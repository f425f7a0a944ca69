"""Reading the event log: positions, replay for one user, reset detection, pruning, SSE frames."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import asyncpg

from chat_api.core.db import Database
from chat_api.events.cursor import Cursor

# Readers never read at or above this: every transaction below it has ended, so nothing can
# still appear there (see events/log.py).
HORIZON_SQL = "pg_snapshot_xmin(pg_current_snapshot())"
EVENT_COLUMNS = "e.xid::text AS xid, e.id, e.room_id, e.seq, e.kind, e.subject, e.payload::text AS payload"


@dataclass(frozen=True, slots=True)
class Event:
    position: Cursor
    room_id: uuid.UUID
    seq: int
    kind: str
    subject: str | None
    payload: str  # the SSE data object, JSON text

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> Event:
        """From a row of EVENT_COLUMNS (an asyncpg record or a SQLAlchemy row's _mapping)."""
        return cls(
            Cursor(int(row["xid"]), row["id"]),
            row["room_id"],
            row["seq"],
            row["kind"],
            row["subject"],
            row["payload"],
        )

    def frame(self) -> bytes:
        return f"id: {self.position.encode()}\nevent: {self.kind}\ndata: {self.payload}\n\n".encode()


def reset_frame(fresh: Cursor) -> bytes:
    return f'id: {fresh.encode()}\nevent: reset\ndata: {{"cursor": "{fresh.encode()}"}}\n\n'.encode()


_CURSOR_STATE = f"""
SELECT {HORIZON_SQL}::text AS horizon, pg_snapshot_xmax(pg_current_snapshot())::text AS next_xid,
       s.pruned_xid::text AS pruned_xid, s.pruned_id
FROM event_log_state s
"""

# The next events after a position that `user` may see: those of the rooms it is a member of now,
# each room read on its own by (room_id, xid, id), and those about the user in rooms it has left (its
# own member.removed) by (subject, xid, id). So a replay reads the user's events, never the rest of
# the log (migration 0005). $1 xid (text), $2 id, $3 user, $4 limit, $5 room (only with the filter).
_REPLAY = """
WITH mine AS (SELECT room_id FROM members WHERE user_id = $3 {member_filter})
SELECT {columns} FROM (
    SELECT e.* FROM mine CROSS JOIN LATERAL (
        SELECT * FROM events e
        WHERE e.room_id = mine.room_id AND (e.xid, e.id) > ($1::text::xid8, $2) AND e.xid < {horizon}
        ORDER BY e.xid, e.id LIMIT $4
    ) AS e
    UNION ALL
    (SELECT e.* FROM events e
     WHERE e.subject = $3 AND (e.xid, e.id) > ($1::text::xid8, $2) AND e.xid < {horizon}
       AND e.room_id NOT IN (SELECT room_id FROM mine) {event_filter}
     ORDER BY e.xid, e.id LIMIT $4)
) AS e
ORDER BY e.xid, e.id LIMIT $4
"""
_REPLAY_ALL = _REPLAY.format(columns=EVENT_COLUMNS, horizon=HORIZON_SQL, member_filter="", event_filter="")
_REPLAY_ROOM = _REPLAY.format(
    columns=EVENT_COLUMNS,
    horizon=HORIZON_SQL,
    member_filter="AND room_id = $5",
    event_filter="AND e.room_id = $5",
)


async def check_cursor(conn: asyncpg.Connection, cursor: Cursor) -> Cursor | None:
    """None when the log still holds everything after `cursor`; else a fresh cursor to reset to."""
    state = await conn.fetchrow(_CURSOR_STATE)
    pruned = Cursor(int(state["pruned_xid"]), state["pruned_id"])
    if cursor < pruned or cursor.xid > int(state["next_xid"]):
        return Cursor(int(state["horizon"]), 0)
    return None


async def replay(
    conn: asyncpg.Connection, user: str, after: Cursor, room_id: uuid.UUID | None, limit: int
) -> list[Event]:
    """Up to `limit` events after `after` that `user` may see (by current membership), in log order."""
    args: tuple[Any, ...] = (str(after.xid), after.id, user, limit)
    if room_id is None:
        rows = await conn.fetch(_REPLAY_ALL, *args)
    else:
        rows = await conn.fetch(_REPLAY_ROOM, *args, room_id)
    return [Event.from_row(row) for row in rows]


PRUNE_BATCH = 10_000
PRUNE_LOCK_KEY = 0x63686174_70727565  # "chat" "prue"

# One batch: the transaction-level lock keeps two replicas from deleting the same rows at once
# (it works through a transaction pooler, unlike a session lock); no lock, no row back.
_PRUNE = f"""
WITH locked AS (
    SELECT pg_try_advisory_xact_lock({PRUNE_LOCK_KEY}) AS ok
), edge AS (
    SELECT xid, id FROM (
        SELECT xid, id, created_at FROM events WHERE xid < {HORIZON_SQL} ORDER BY xid, id LIMIT {PRUNE_BATCH}
    ) AS oldest
    WHERE created_at < now() - make_interval(secs => $1) AND (SELECT ok FROM locked)
    ORDER BY xid DESC, id DESC LIMIT 1
), gone AS (
    DELETE FROM events e USING edge WHERE (e.xid, e.id) <= (edge.xid, edge.id) RETURNING 1
)
UPDATE event_log_state SET pruned_xid = edge.xid, pruned_id = edge.id FROM edge
RETURNING (SELECT count(*) FROM gone)
"""


async def prune(db: Database, retention_seconds: int) -> int:
    """Deletes events older than the retention, oldest first, in batches; returns how many. A cursor
    from before the new low-water mark gets `event: reset` instead of a partial replay. Replicas
    pruning at the same time take turns batch by batch (or find nothing left to do)."""
    total = 0
    while True:
        async with db.transaction() as conn:
            deleted = await conn.fetchval(_PRUNE, float(retention_seconds))
        if not deleted:
            return total
        total += int(deleted)
