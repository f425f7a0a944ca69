"""Reading the event log: positions, replay for one user, reset detection, pruning, SSE frames."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

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


_FRESH = text(f"SELECT {HORIZON_SQL}::text AS horizon")

_CURSOR_STATE = text(
    f"""
SELECT {HORIZON_SQL}::text AS horizon, pg_snapshot_xmax(pg_current_snapshot())::text AS next_xid,
       s.pruned_xid::text AS pruned_xid, s.pruned_id
FROM event_log_state s
"""
)

_REPLAY = """
SELECT {columns} FROM events e
WHERE (e.xid, e.id) > (CAST(CAST(:xid AS text) AS xid8), :id) AND e.xid < {horizon}
  AND (e.room_id IN (SELECT room_id FROM members WHERE user_id = :user) OR e.subject = :user)
  {room_filter}
ORDER BY e.xid, e.id LIMIT :limit
"""
_REPLAY_ALL = text(_REPLAY.format(columns=EVENT_COLUMNS, horizon=HORIZON_SQL, room_filter=""))
_REPLAY_ROOM = text(
    _REPLAY.format(columns=EVENT_COLUMNS, horizon=HORIZON_SQL, room_filter="AND e.room_id = :room_id")
)


async def fresh_cursor(conn: AsyncConnection) -> Cursor:
    """The current position: whatever commits from now on lies after it."""
    return Cursor(int((await conn.execute(_FRESH)).scalar_one()), 0)


async def check_cursor(conn: AsyncConnection, cursor: Cursor) -> Cursor | None:
    """None when the log still holds everything after `cursor`; else a fresh cursor to reset to."""
    state = (await conn.execute(_CURSOR_STATE)).one()
    pruned = Cursor(int(state.pruned_xid), state.pruned_id)
    if cursor < pruned or cursor.xid > int(state.next_xid):
        return Cursor(int(state.horizon), 0)
    return None


async def replay(
    conn: AsyncConnection, user: str, after: Cursor, room_id: uuid.UUID | None, limit: int
) -> list[Event]:
    """Up to `limit` events after `after` that `user` may see (by current membership), in log order."""
    params: dict[str, Any] = {"xid": str(after.xid), "id": after.id, "user": user, "limit": limit}
    statement = _REPLAY_ALL
    if room_id is not None:
        statement, params["room_id"] = _REPLAY_ROOM, room_id
    return [Event.from_row(row._mapping) for row in (await conn.execute(statement, params)).all()]


PRUNE_BATCH = 10_000

_PRUNE = text(
    f"""
WITH edge AS (
    SELECT xid, id FROM (
        SELECT xid, id, created_at FROM events WHERE xid < {HORIZON_SQL} ORDER BY xid, id LIMIT {PRUNE_BATCH}
    ) AS oldest
    WHERE created_at < now() - make_interval(secs => :retention)
    ORDER BY xid DESC, id DESC LIMIT 1
), gone AS (
    DELETE FROM events e USING edge WHERE (e.xid, e.id) <= (edge.xid, edge.id) RETURNING 1
)
UPDATE event_log_state SET pruned_xid = edge.xid, pruned_id = edge.id FROM edge
RETURNING (SELECT count(*) FROM gone)
"""
)


async def prune(engine: AsyncEngine, retention_seconds: int) -> int:
    """Deletes events older than the retention, oldest first; returns how many. A cursor from before
    the new low-water mark gets `event: reset` instead of a partial replay."""
    total = 0
    while True:
        async with engine.begin() as conn:
            deleted = (await conn.execute(_PRUNE, {"retention": retention_seconds})).scalar_one_or_none()
        if not deleted:
            return total
        total += int(deleted)
