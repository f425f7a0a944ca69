"""The messages table: one row per message, deleted ones kept as tombstones."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ARRAY,
    JSON,
    BigInteger,
    ForeignKey,
    Identity,
    Index,
    Integer,
    LargeBinary,
    PrimaryKeyConstraint,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import TSVECTOR
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
        # Search (migration 0008): the words of the body, and each room newest first for common words.
        Index(None, "search", postgresql_using="gin"),
        Index(None, "room_id", "created_at", "seq"),
        # A thread's replies in order (GET .../messages?thread=SEQ).
        Index(None, "room_id", "thread_root", "seq", postgresql_where=text("thread_root IS NOT NULL")),
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
    # Written by the database (migration 0008's triggers), never by the service: the thread a reply
    # belongs to, a root's replies, the members the body mentions, and the body's words for search.
    thread_root: Mapped[int | None] = mapped_column(BigInteger)
    reply_count: Mapped[int] = mapped_column(Integer, server_default="0")
    last_reply_seq: Mapped[int | None] = mapped_column(BigInteger)
    mentions: Mapped[list[str]] = mapped_column(ARRAY(Text), server_default=text("'{}'::text[]"))
    search: Mapped[Any | None] = mapped_column(TSVECTOR)
    # The reactions table summed up as clients get it (messages/service.py keeps it).
    reactions: Mapped[Any] = mapped_column(JSON, server_default=text("'[]'::json"))


class Reaction(Base):
    """One user's reaction to one message with one emoji (or shortcode)."""

    __tablename__ = "reactions"
    __table_args__ = (PrimaryKeyConstraint("room_id", "seq", "emoji", "user_id"),)

    room_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("rooms.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(BigInteger)
    emoji: Mapped[str] = mapped_column(Text)
    user_id: Mapped[str] = mapped_column(Text)
    # Order of first use of each emoji, and of each emoji's users.
    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True))
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())


class MessageMention(Base):
    """A member mentioned by someone else's message (what mention_count counts); kept by migration
    0008's trigger from messages.mentions."""

    __tablename__ = "message_mentions"

    user_id: Mapped[str] = mapped_column(Text, primary_key=True)
    room_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("rooms.id", ondelete="CASCADE"), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True)
