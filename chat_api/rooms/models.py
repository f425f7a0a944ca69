"""Tables of rooms and their members."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, Index, Text, func
from sqlalchemy.orm import Mapped, mapped_column

from chat_api.core.schema import Base


class Room(Base):
    __tablename__ = "rooms"
    __table_args__ = (
        CheckConstraint("kind IN ('group', 'direct')", name="kind"),
        # A direct room's two users, in order: one room per pair, whoever asks first (migration 0008).
        Index(None, "dm_low", "dm_high", unique=True),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(Text)
    created_by: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    # The room's sequence: bumped by every change in the room (message, edit, delete, membership),
    # under the room's advisory lock, in the same transaction as the change.
    last_seq: Mapped[int] = mapped_column(BigInteger, server_default="0")
    # Newest message or membership change: the order of GET /v1/rooms.
    activity_at: Mapped[datetime] = mapped_column(server_default=func.now())
    kind: Mapped[str] = mapped_column(Text, server_default="group")
    topic: Mapped[str | None] = mapped_column(Text)
    dm_low: Mapped[str | None] = mapped_column(Text)
    dm_high: Mapped[str | None] = mapped_column(Text)


class Member(Base):
    __tablename__ = "members"
    __table_args__ = (
        CheckConstraint("role IN ('owner', 'member')", name="role"),
        Index(None, "user_id"),
    )

    room_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("rooms.id", ondelete="CASCADE"), primary_key=True)
    user_id: Mapped[str] = mapped_column(Text, primary_key=True)
    role: Mapped[str] = mapped_column(Text)
    last_read_seq: Mapped[int] = mapped_column(BigInteger, server_default="0")
    joined_at: Mapped[datetime] = mapped_column(server_default=func.now())


class RoomRefusal(Base):
    """A user who left a room and asked not to be added to it again (migration 0006)."""

    __tablename__ = "room_refusals"

    room_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("rooms.id", ondelete="CASCADE"), primary_key=True)
    user_id: Mapped[str] = mapped_column(Text, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
