"""Wire shapes of messages (documentation of what messages/service.py builds in SQL)."""

from __future__ import annotations

import uuid

from pydantic import BaseModel, ConfigDict, Field

from chat_api.core.wire import StorableText, Timestamp

MAX_SEQ = 2**63 - 1


class Reaction(BaseModel):
    emoji: str = Field(description="One emoji, or a shortcode [a-z0-9_+-]{1,32}.")
    count: int = Field(description="How many users reacted so (exact).")
    users: list[str] = Field(description="Who, in order of reacting: the first 50.")


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
    thread_root: int | None = Field(description="The seq of the thread's first message, for a reply.")
    reply_count: int = Field(description="On a thread's first message: its replies (0 without).")
    last_reply_seq: int | None = Field(description="On a thread's first message: its newest reply.")
    mentions: list[str] = Field(description="Members mentioned as @user_id in the body, each once.")
    reactions: list[Reaction] = Field(description="In order of each emoji's first use; [] when none.")


class MessagePage(BaseModel):
    items: list[Message] = Field(description="Always in ascending seq.")
    has_more: bool = Field(description="More messages exist beyond this page in the direction of travel.")


class SearchPage(BaseModel):
    items: list[Message] = Field(description="Newest first.")
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null at the end.")


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
