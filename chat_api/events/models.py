"""The event log: every change a client may see, written in the transaction that makes the change."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, CheckConstraint, Identity, Index, Text, func, text
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.types import JSON, UserDefinedType

from chat_api.core.schema import Base


class Xid8(UserDefinedType[int]):
    """PostgreSQL's 64-bit transaction id (pg_current_xact_id())."""

    cache_ok = True

    def get_col_spec(self, **kw: Any) -> str:
        return "xid8"


class Event(Base):
    __tablename__ = "events"
    __table_args__ = (
        Index(None, "xid", "id"),
        # A replay reads the user's rooms one by one, and the events about the user (migration 0005).
        Index(None, "room_id", "xid", "id"),
        Index(None, "subject", "xid", "id", postgresql_where=text("subject IS NOT NULL")),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    # The writing transaction's id: the log is read in (xid, id) order and only below the oldest
    # running transaction, so no event can ever appear behind a position a reader has passed.
    xid: Mapped[int] = mapped_column(Xid8, server_default=text("pg_current_xact_id()"))
    room_id: Mapped[uuid.UUID]
    seq: Mapped[int] = mapped_column(BigInteger)
    kind: Mapped[str] = mapped_column(Text)
    # For member.added / member.removed: whom the change is about (they see it even when removed).
    subject: Mapped[str | None] = mapped_column(Text)
    # The SSE `data:` object, as JSON text, ready to send.
    payload: Mapped[Any] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())


class EventLogState(Base):
    """One row: how far the log has been pruned. A cursor at or below it can no longer be replayed."""

    __tablename__ = "event_log_state"
    __table_args__ = (CheckConstraint("id", name="single_row"),)

    id: Mapped[bool] = mapped_column(primary_key=True, server_default=text("true"))
    pruned_xid: Mapped[int] = mapped_column(Xid8, server_default=text("'0'::xid8"))
    pruned_id: Mapped[int] = mapped_column(BigInteger, server_default="0")
