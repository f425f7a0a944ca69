"""Wire shapes of rooms and members."""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from chat_api.core.wire import StorableText, Timestamp
from chat_api.messages.schemas import Message

UserId = Annotated[StorableText, Field(min_length=1, max_length=255)]
MAX_INITIAL_MEMBERS = 1000


class NewRoom(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: StorableText = Field(min_length=1, max_length=200)
    members: list[UserId] = Field(default_factory=list, max_length=MAX_INITIAL_MEMBERS)


class RoomChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: StorableText | None = Field(None, min_length=1, max_length=200)
    topic: StorableText | None = Field(None, max_length=1000, description="null clears it")


class Member(BaseModel):
    user_id: str
    role: Literal["owner", "member"]
    last_read_seq: int


class Room(BaseModel):
    id: uuid.UUID
    kind: Literal["group", "direct"] = Field(description="direct: the one room of two users (PUT /v1/dms)")
    name: str
    topic: str | None
    created_by: str
    created_at: Timestamp
    last_seq: int = Field(description="The room's newest seq (messages, edits, deletes, membership changes).")
    unread_count: int = Field(description="Messages of others after your read marker, not deleted (capped).")
    mention_count: int = Field(description="Of those, the ones that mention you (capped the same way).")
    last_message: Message | None


class RoomDetail(Room):
    members: list[Member]


class RoomPage(BaseModel):
    items: list[Room] = Field(description="Most recent activity first.")
    next_cursor: str | None
    stream_cursor: str = Field(description="Open /v1/events from here to miss nothing after this listing.")
