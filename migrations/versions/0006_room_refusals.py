"""Users who left a room and asked not to be added to it again.

`DELETE /v1/rooms/{room_id}/members/{me}?stay_out=true` leaves the room and records a refusal; the
owner's later `PUT .../members/{me}` is then a 403 (security review finding 6: anyone could add
anyone to a room, again right after they left).

Expand only: a new table.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "room_refusals",
        sa.Column("room_id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.ForeignKeyConstraint(
            ["room_id"], ["rooms.id"], name=op.f("fk_room_refusals_room_id_rooms"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("room_id", "user_id", name=op.f("pk_room_refusals")),
    )


def downgrade() -> None:
    op.drop_table("room_refusals")
