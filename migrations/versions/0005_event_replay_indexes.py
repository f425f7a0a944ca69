"""Indexes that make a stream's replay cost what it returns.

A replay from an old cursor walked the whole log after it in (xid, id) order, filtering by the
user's rooms row by row (security review finding 4: 100,010 rows examined for one user's events in
a 100k-event log). The replay now reads each of the user's rooms on its own, in (room_id, xid, id)
order, and the events about the user (its own member.removed) in (subject, xid, id) order.

Expand only: two new indexes, built CONCURRENTLY (no lock that blocks the running release's writes),
each outside a transaction.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.get_context().autocommit_block():
        # IF NOT EXISTS: a Job that died after building one index can run again.
        op.execute(
            "CREATE INDEX CONCURRENTLY IF NOT EXISTS ix_events_room_id_xid_id ON events (room_id, xid, id)"
        )
        op.execute(
            "CREATE INDEX CONCURRENTLY IF NOT EXISTS ix_events_subject_xid_id ON events (subject, xid, id) "
            "WHERE subject IS NOT NULL"
        )


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.execute("DROP INDEX CONCURRENTLY IF EXISTS ix_events_subject_xid_id")
        op.execute("DROP INDEX CONCURRENTLY IF EXISTS ix_events_room_id_xid_id")
