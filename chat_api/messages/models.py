"""The messages table: one row per message, deleted ones kept as tombstones."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Index, LargeBinary, PrimaryKeyConstraint, Text, func, text
from sqlalchemy.orm import Mapped, mapped_column

from chat_api.core.schema import Base


class Message(Base):
    __tablename__ = "messages"
    __table_args__ = (
        # History pages and unread counts are index scans of (room_id, seq); sender and deleted ride
        # along so that counting unread messages needs no heap visit.
        PrimaryKeyConstraint("room_id", "seq", postgresql_include=["sender", "deleted"]),
        # An idempotency key lives as long as its message: a unique constraint, not a cache.
        Index(
            None,
            "sender",
            "idempotency_key",
            unique=True,
            postgresql_where=text("idempotency_key IS NOT NULL"),
        ),
    )

    room_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("rooms.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(BigInteger)
    id: Mapped[uuid.UUID] = mapped_column(unique=True, server_default=func.gen_random_uuid())
    sender: Mapped[str] = mapped_column(Text)
    body: Mapped[str | None] = mapped_column(Text)
    reply_to: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    edited_at: Mapped[datetime | None]
    deleted: Mapped[bool] = mapped_column(server_default=text("false"))
    idempotency_key: Mapped[str | None] = mapped_column(Text)
    # Hash of what the keyed request asked for (room, body, reply_to): a replay must match it.
    request_hash: Mapped[bytes | None] = mapped_column(LargeBinary)
    # The message's JSON as clients get it (schemas.Message), written from the columns above by a
    # trigger on every insert and update (migration 0004): reads hand it through.
    doc: Mapped[str] = mapped_column(Text)
