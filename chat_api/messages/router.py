"""HTTP routes for messages: parse, call messages.service, hand its JSON through."""

from __future__ import annotations

import re
from typing import Annotated

import emoji as emoji_data
from fastapi import APIRouter, Header, Path, Query, Response

from chat_api.auth.dependencies import CurrentUser
from chat_api.core.config import AppSettings, Settings
from chat_api.core.db import DatabaseDep
from chat_api.core.errors import Problem, problem_responses
from chat_api.core.paths import RoomId
from chat_api.core.ratelimit import Action, RateLimitsDep
from chat_api.core.resources import ProcessDep
from chat_api.messages import service
from chat_api.messages.schemas import MAX_SEQ, Message, MessageEdit, MessagePage, NewMessage, ReadMarker

router = APIRouter(
    prefix="/v1/rooms/{room_id}", tags=["messages"], responses=problem_responses(401, 404, 422, 431, 503)
)

Seq = Annotated[int, Path(ge=1, le=MAX_SEQ)]
JSON = "application/json"
SHORTCODE = re.compile(r"[a-z0-9_+-]{1,32}")


def _check_length(body: str, settings: Settings) -> None:
    if len(body) > settings.max_message_chars:
        raise Problem(
            422, f"body: at most {settings.max_message_chars} characters are allowed.", kind="validation"
        )


@router.post(
    "/messages",
    status_code=201,
    response_model=Message,
    responses={
        200: {"model": Message, "description": "Replay of an earlier request with the same key"},
        **problem_responses(400, 413, 429),
    },
)
async def send_message(
    room_id: RoomId,
    new: NewMessage,
    user: CurrentUser,
    process: ProcessDep,
    idempotency_key: Annotated[
        str | None,
        Header(
            min_length=1, max_length=200, description="Retry-safe: the same key returns the same message."
        ),
    ] = None,
) -> Response:
    """Send a message (body up to CHAT_API_MAX_MESSAGE_CHARS characters)."""
    _check_length(new.body, process.settings)
    process.limits.check(Action.SEND, user)
    sent = await service.send(process.database, room_id, user, new.body, new.reply_to, idempotency_key)
    if sent.replayed:
        return Response(sent.json, status_code=200, media_type=JSON, headers={"Idempotent-Replayed": "true"})
    process.metrics.messages_sent.add(1)
    return Response(sent.json, status_code=201, media_type=JSON)


@router.get("/messages", response_model=MessagePage)
async def history(
    room_id: RoomId,
    user: CurrentUser,
    db: DatabaseDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 50,
    before: Annotated[
        int | None, Query(ge=0, le=MAX_SEQ, description="Newest messages with seq < before")
    ] = None,
    after: Annotated[
        int | None, Query(ge=0, le=MAX_SEQ, description="Oldest messages with seq > after")
    ] = None,
    thread: Annotated[
        int | None, Query(ge=1, le=MAX_SEQ, description="Only the replies of the thread with this root seq")
    ] = None,
) -> Response:
    """A page of history in ascending seq: the newest, or before / after a seq; of one thread's
    replies with `thread`."""
    if before is not None and after is not None:
        raise Problem(422, "Give before or after, not both.", kind="validation")
    page = await service.history(db, room_id, user, limit, before, after, thread)
    return Response(page.json(), media_type=JSON)


@router.get("/messages/{seq}", response_model=Message)
async def get_message(room_id: RoomId, seq: Seq, user: CurrentUser, db: DatabaseDep) -> Response:
    """One message (a tombstone if deleted)."""
    return Response(await service.get_one(db, room_id, user, seq), media_type=JSON)


@router.patch("/messages/{seq}", response_model=Message, responses=problem_responses(400, 403, 409, 413, 429))
async def edit_message(
    room_id: RoomId,
    seq: Seq,
    edit: MessageEdit,
    user: CurrentUser,
    db: DatabaseDep,
    settings: AppSettings,
    limits: RateLimitsDep,
) -> Response:
    """Edit your own message."""
    _check_length(edit.body, settings)
    limits.check(Action.EDIT, user)
    return Response(await service.edit(db, room_id, user, seq, edit.body), media_type=JSON)


@router.delete("/messages/{seq}", status_code=204, responses=problem_responses(403, 429))
async def delete_message(
    room_id: RoomId, seq: Seq, user: CurrentUser, db: DatabaseDep, limits: RateLimitsDep
) -> Response:
    """Delete a message (its sender or the room's owner); it stays in history as a tombstone."""
    limits.check(Action.DELETE, user)
    await service.delete(db, room_id, user, seq)
    return Response(status_code=204)


@router.post("/read", status_code=204, responses=problem_responses(400, 413, 429))
async def mark_read(
    room_id: RoomId, marker: ReadMarker, user: CurrentUser, db: DatabaseDep, limits: RateLimitsDep
) -> Response:
    """Move your read marker forward (never back; clamped to the room's last_seq)."""
    limits.check(Action.MARK_READ, user)
    await service.mark_read(db, room_id, user, marker.seq)
    return Response(status_code=204)


def _reaction(raw: str) -> str:
    """The `{emoji}` of a reaction's path: one emoji (a whole grapheme cluster: a ZWJ sequence, a skin
    tone, a flag) by Unicode's list, or a shortcode."""
    if SHORTCODE.fullmatch(raw) or emoji_data.is_emoji(raw):
        return raw
    raise Problem(422, "emoji: one emoji, or a shortcode of 1-32 of a-z 0-9 _ + -.", kind="validation")


Emoji = Annotated[str, Path(max_length=64, description="One emoji (percent-encoded) or a shortcode")]


@router.put(
    "/messages/{seq}/reactions/{emoji}",
    status_code=201,
    response_model=Message,
    responses={
        200: {"model": Message, "description": "You had already reacted so"},
        **problem_responses(409, 429),
    },
)
async def add_reaction(
    room_id: RoomId, seq: Seq, emoji: Emoji, user: CurrentUser, db: DatabaseDep, limits: RateLimitsDep
) -> Response:
    """React to a message: 201 with the message when added, 200 when you had already reacted so."""
    reaction = _reaction(emoji)
    limits.check(Action.REACT, user)
    reacted = await service.add_reaction(db, room_id, user, seq, reaction)
    return Response(reacted.json, status_code=201 if reacted.added else 200, media_type=JSON)


@router.delete("/messages/{seq}/reactions/{emoji}", status_code=204, responses=problem_responses(409, 429))
async def remove_reaction(
    room_id: RoomId, seq: Seq, emoji: Emoji, user: CurrentUser, db: DatabaseDep, limits: RateLimitsDep
) -> Response:
    """Take your reaction back (204 also when there was none)."""
    reaction = _reaction(emoji)
    limits.check(Action.REACT, user)
    await service.remove_reaction(db, room_id, user, seq, reaction)
    return Response(status_code=204)
