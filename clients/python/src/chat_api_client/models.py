"""The service's objects as typed dicts, field for field as in its OpenAPI document (`chat-api openapi`);
tests/clients/test_python_client.py checks them against it so they cannot drift."""

from typing import Any, NotRequired, TypedDict


class Reaction(TypedDict):
    emoji: str
    count: int
    users: list[str]


class Message(TypedDict):
    id: str
    room_id: str
    seq: int
    sender: str
    body: str | None  # None once deleted
    reply_to: int | None
    created_at: str
    edited_at: str | None
    deleted: bool
    thread_root: int | None
    reply_count: int
    last_reply_seq: int | None
    mentions: list[str]
    reactions: list[Reaction]


class MessagePage(TypedDict):
    items: list[Message]  # ascending seq
    has_more: bool


class Member(TypedDict):
    user_id: str
    role: str
    last_read_seq: int


class Room(TypedDict):
    id: str
    kind: str  # "group" or "direct"
    name: str
    topic: str | None
    created_by: str
    created_at: str
    last_seq: int
    unread_count: int
    mention_count: int
    last_message: Message | None


class RoomDetail(Room):
    members: list[Member]


class RoomPage(TypedDict):
    items: list[Room]
    next_cursor: str | None
    stream_cursor: str  # open the stream from here to miss nothing after this listing


class SearchPage(TypedDict):
    items: list[Message]  # newest first
    next_cursor: str | None


class ProblemDetails(TypedDict):
    type: str
    title: str
    status: int
    detail: str
    errors: NotRequired[list[dict[str, Any]] | None]


# The schemas above by their OpenAPI names (what the drift test walks).
SCHEMAS: dict[str, type] = {
    "Reaction": Reaction,
    "Message": Message,
    "MessagePage": MessagePage,
    "Member": Member,
    "Room": Room,
    "RoomDetail": RoomDetail,
    "RoomPage": RoomPage,
    "SearchPage": SearchPage,
    "ProblemDetails": ProblemDetails,
}
