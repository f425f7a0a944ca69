"""GET /v1/search: full-text search over the messages of the caller's rooms, newest first.

PostgreSQL does the work (migration 0008): each message's words are a tsvector ('simple'
configuration: lower-cased whole words, no stemming, any language) under a GIN index; the query is
read with `websearch_to_tsquery` (words, "quoted phrases", `or`, `-excluded`); the function
chat_search() reads each of the caller's rooms newest first and merges them, keyset-paged on
(created_at, room_id, seq), so a page costs the same however many results come before it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query, Response

from chat_api.auth.dependencies import CurrentUser
from chat_api.core import keyset
from chat_api.core.db import Database, DatabaseDep
from chat_api.core.errors import DomainError, NotAMember, Problem, problem_responses
from chat_api.core.paths import parse_room_id
from chat_api.core.wire import StorableText
from chat_api.messages.schemas import SearchPage

router = APIRouter(tags=["messages"], responses=problem_responses(401, 422, 431, 503))

_SEARCH = "SELECT doc, created_at, room_id, seq FROM chat_search($1, $2, $3, $4, $5, $6, $7)"
# In one room: nothing at all when the caller is not a member (then 404), else one row per result
# and one with NULLs when there is none.
_SEARCH_ROOM = """
SELECT found.* FROM (SELECT 1 FROM members WHERE room_id = $2 AND user_id = $1) AS member
LEFT JOIN LATERAL chat_search($1, $2, $3, $4, $5, $6, $7) AS found ON true
"""


class MalformedSearchCursor(DomainError):
    status = 400
    kind = "malformed-cursor"

    def __init__(self) -> None:
        super().__init__("cursor: not a search cursor this service handed out.")


Position = tuple[datetime, uuid.UUID, int]


@dataclass(frozen=True)
class Found:
    items: list[str]  # message JSON texts, newest first
    next_cursor: str | None

    def json(self) -> bytes:
        after = b"null" if self.next_cursor is None else b'"' + self.next_cursor.encode() + b'"'
        return b'{"items":[' + ",".join(self.items).encode() + b'],"next_cursor":' + after + b"}"


def encode_cursor(created_at: datetime, room_id: uuid.UUID, seq: int) -> str:
    return keyset.encode(created_at, room_id, seq)


def decode_cursor(raw: str) -> Position:
    try:
        created_at, room_id, (seq,) = keyset.decode(raw, 1)
    except ValueError:
        raise MalformedSearchCursor from None
    return created_at, room_id, seq


async def search(
    db: Database, user: str, query: str, room_id: uuid.UUID | None, limit: int, after: Position | None
) -> Found:
    """A page of the caller's messages matching `query`, newest first, after the position `after`."""
    at, at_room, at_seq = after if after is not None else (None, None, None)
    args = (user, room_id, query, at, at_room, at_seq, limit + 1)
    async with db.connection() as conn:
        rows = await conn.fetch(_SEARCH if room_id is None else _SEARCH_ROOM, *args)
    if room_id is not None and not rows:
        raise NotAMember
    rows = [row for row in rows if row["doc"] is not None]
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        last = rows[-1]
        next_cursor = encode_cursor(last["created_at"], last["room_id"], last["seq"])
    return Found(items=[row["doc"] for row in rows], next_cursor=next_cursor)


@router.get("/v1/search", response_model=SearchPage, responses=problem_responses(400, 404))
async def search_messages(
    user: CurrentUser,
    db: DatabaseDep,
    q: Annotated[
        StorableText,
        Query(
            max_length=500,
            description='Web-search syntax: words, "quoted phrases", `or`, `-excluded`; whole words, '
            "any case.",
        ),
    ],
    room_id: Annotated[str | None, Query(description="Only this room (404 unless you are a member)")] = None,
    limit: Annotated[int, Query(ge=1, le=50)] = 20,
    cursor: Annotated[
        str | None, Query(max_length=100, description="next_cursor of the previous page")
    ] = None,
) -> Response:
    """Search the messages of your rooms (or of one), newest first; deleted messages never match,
    edited ones by their current text."""
    if not q.strip():
        raise Problem(422, "q: give at least one word to search for.", kind="validation")
    room = parse_room_id(room_id) if room_id is not None else None
    after = decode_cursor(cursor) if cursor is not None else None
    found = await search(db, user, q, room, limit, after)
    return Response(found.json(), media_type="application/json")
