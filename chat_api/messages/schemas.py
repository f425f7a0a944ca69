"""Wire shapes of messages (documentation of what messages/service.py builds in SQL)."""

from __future__ import annotations

import uuid

from pydantic import BaseModel, ConfigDict, Field

from chat_api.core.wire import StorableText, Timestamp

MAX_SEQ = 2**63 - 1


class Message(BaseModel):
    id: uuid.UUID
    room_id: uuid.UUID
    seq: int = Field(description="Position in the room; strictly increasing in commit order.")
    sender: str
    body: str | None = Field(description="null once deleted")
    reply_to: int | None
    created_at: Timestamp
    edited_at: Timestamp | None
    deleted: bool


class MessagePage(BaseModel):
    items: list[Message] = Field(description="Always in ascending seq.")
    has_more: bool = Field(description="More messages exist beyond this page in the direction of travel.")


class NewMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    body: StorableText = Field(min_length=1)
    reply_to: int | None = Field(None, ge=1, le=MAX_SEQ, description="seq of a message in the same room")


class MessageEdit(BaseModel):
    model_config = ConfigDict(extra="forbid")

    body: StorableText = Field(min_length=1)


class ReadMarker(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seq: int = Field(ge=0, le=MAX_SEQ, description="Moves forward only; clamped to the room's last_seq.")
