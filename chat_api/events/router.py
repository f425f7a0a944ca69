"""GET /v1/events: the caller's changes as server-sent events, resumable without loss."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Annotated

from fastapi import APIRouter, Header, Query, Response
from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from chat_api.auth.dependencies import CurrentUser, StreamUser
from chat_api.core.config import AppSettings
from chat_api.core.db import DatabaseDep, DatabaseUnavailable
from chat_api.core.directbody import DIRECT_BODY
from chat_api.core.errors import NotAMember, Problem, problem_responses
from chat_api.core.paths import RoomId, parse_room_id
from chat_api.core.ratelimit import Action, RateLimitsDep
from chat_api.events.contract import TYPING_CHANNEL
from chat_api.events.cursor import Cursor, MalformedCursor
from chat_api.events.hub import END, HubDep, ShuttingDown, Subscription, TooManyStreams
from chat_api.events.reader import check_cursor, replay, reset_frame
from chat_api.events.typing import notice

router = APIRouter(tags=["events"])
log = logging.getLogger("chat_api.events")

REPLAY_BATCH = 500
RETRY_ADVICE_MS = 2000
STREAM_HEADERS = {"X-Accel-Buffering": "no"}  # Cache-Control: no-store comes with every /v1 answer
# The attribute of the "event stream opened" record (in Loki: structured metadata chat_stream_opened).
STREAM_OPENED = "chat.stream.opened"
_IS_MEMBER = "SELECT 1 FROM members WHERE room_id = $1 AND user_id = $2"
_NOTIFY_IF_MEMBER = (
    f"SELECT 1, pg_notify('{TYPING_CHANNEL}', $3) FROM members WHERE room_id = $1 AND user_id = $2"
)

STREAM_DOC = """Server-sent events for every change you may see, in log order (per room in increasing
`seq`). Frames: `id: <cursor>`, `event: <type>`, `data: {"room_id", "seq", "message"|"member"|"room"}`.
Resume with `Last-Event-ID` (or `?cursor=`, e.g. `stream_cursor` of GET /v1/rooms): missed events are
replayed, then live. `event: reset` means the cursor is older than the retained log: reload, then
continue from its id. A comment line is sent as a heartbeat. The stream ends when the token expires
(or an operator revokes the user's streams) with `event: reauth` (no `id`): reconnect with a fresh
token and `Last-Event-ID`; nothing is lost."""


@router.get(
    "/v1/events",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"text/event-stream": {"schema": {"type": "string"}}}, "description": STREAM_DOC},
        **problem_responses(400, 401, 404, 422, 429, 431, 503),
    },
)
async def events(
    principal: StreamUser,
    db: DatabaseDep,
    hub: HubDep,
    settings: AppSettings,
    limits: RateLimitsDep,
    room_id: Annotated[str | None, Query(description="Only this room's events")] = None,
    cursor: Annotated[str | None, Query(max_length=64, description="Resume after this position")] = None,
    last_event_id: Annotated[str | None, Header(max_length=64, description="Wins over ?cursor=")] = None,
) -> StreamingResponse:
    """Stream your changes (SSE)."""
    user = principal.user
    limits.check(Action.OPEN_STREAM, user)
    raw = last_event_id or cursor
    try:
        start = Cursor.decode(raw) if raw else None
    except MalformedCursor:
        raise Problem(
            400, "cursor: not a stream cursor this service handed out.", kind="malformed-cursor"
        ) from None
    room = parse_room_id(room_id) if room_id is not None else None
    if room is not None:
        async with db.connection() as conn:
            if await conn.fetchval(_IS_MEMBER, room, user) is None:
                raise NotAMember
    reset_to = None
    if start is not None:
        # Before anything is sent: a database that is down makes this a 503 the client retries,
        # not a 200 whose body breaks off.
        async with db.connection() as conn:
            reset_to = await check_cursor(conn, start)
    try:
        subscription, head = await hub.subscribe(user, room, principal.expires_at)
    except TooManyStreams:
        raise Problem(
            429,
            f"At most {settings.stream_max_per_user} open streams per user.",
            kind="too-many-streams",
            headers={"Retry-After": "5"},
        ) from None
    except ShuttingDown:
        raise Problem(
            503,
            "This instance is shutting down; reconnect.",
            kind="shutting-down",
            headers={"Retry-After": "1"},
        ) from None
    # The access log's line for this request is written when the stream ends (its "closed"); this
    # one marks it accepted, for the Loki dashboard's opened/closed panel. Nothing the client sent
    # but the user id, which the access log carries too.
    log.info("event stream opened", extra={STREAM_OPENED: True, "user.id": user})
    return EventStreamResponse(
        _stream(db, subscription, user, room, start, reset_to, head),
        subscription,
        on_close=lambda: hub.unsubscribe(subscription),
    )


class EventStreamResponse(StreamingResponse):
    """An SSE response, leaner than StreamingResponse's (which runs a task group of two tasks per
    response): the request's own task writes the frames, and one small task waits for the client
    to leave, which ends the stream. The subscription is released however the response ends,
    including when the client is gone before the first byte. When the HTTP server offers a direct
    writer (core/directbody.py), the hub writes live frames with it while the task waits."""

    def __init__(
        self, body: AsyncIterator[bytes], subscription: Subscription, on_close: Callable[[], None]
    ) -> None:
        super().__init__(body, media_type="text/event-stream", headers=STREAM_HEADERS)
        self.subscription = subscription
        self.on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        watcher = asyncio.create_task(self._watch(receive))
        try:
            start = {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
            await send(start)
            self.subscription.write = scope.get("extensions", {}).get(DIRECT_BODY)
            async for chunk in self.body_iterator:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            self.subscription.write = None
            watcher.cancel()
            self.on_close()

    async def _watch(self, receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        self.subscription.offer(END)


async def _stream(
    db: DatabaseDep,
    subscription: Subscription,
    user: str,
    room: uuid.UUID | None,
    start: Cursor | None,
    reset_to: Cursor | None,
    head: Cursor,
) -> AsyncIterator[bytes]:
    yield f"retry: {RETRY_ADVICE_MS}\n\n".encode()
    position = head
    if start is not None:
        # Replay from the log up to where it holds no more; the hub queued everything after
        # `head` to us meanwhile, and frames at or before what we sent are skipped below.
        if reset_to is not None:
            yield reset_frame(reset_to)
        position = reset_to or start
        while not subscription.ended:  # the client left (or the server is closing): stop replaying
            try:
                async with db.connection() as conn:
                    batch = await replay(conn, user, position, room, REPLAY_BATCH)
            except DatabaseUnavailable:
                log.warning("database unavailable during a stream's replay; ending it (the client resumes)")
                return
            if batch:
                yield b"".join(event.frame() for event in batch)
                position = batch[-1].position
            if len(batch) < REPLAY_BATCH:
                break
    # Live: everything the hub queued since the last wake-up goes out as one write. While this waits
    # with nothing queued, the hub may write frames itself (Subscription.offer) and moves `sent`.
    subscription.sent = position
    while True:
        frames: list[bytes] = []
        for item in await subscription.take():
            if item is END:
                if frames:
                    yield b"".join(frames)
                return
            item_position, frame = item
            if item_position is None:  # a heartbeat
                frames.append(frame)
            elif item_position > subscription.sent:
                subscription.sent = item_position
                frames.append(frame)
        if frames:
            yield b"".join(frames)


@router.post(
    "/v1/rooms/{room_id}/typing", status_code=204, responses=problem_responses(401, 404, 422, 429, 431, 503)
)
async def typing(
    room_id: RoomId, user: CurrentUser, db: DatabaseDep, hub: HubDep, limits: RateLimitsDep
) -> Response:
    """Tell the room's other members you are typing: `event: typing` on their streams (no `id:`, never
    stored or replayed), at most once per 2 s per user and room; calls in between answer 204 too."""
    limits.check(Action.TYPING, user)
    key = (user, room_id)
    due = hub.typing_sent.due(key)
    async with db.connection() as conn:
        if due:
            # Membership and the NOTIFY in one statement: an outsider's notice is never sent.
            member = await conn.fetchval(_NOTIFY_IF_MEMBER, room_id, user, notice(room_id, user))
        else:
            member = await conn.fetchval(_IS_MEMBER, room_id, user)
    if member is None:
        raise NotAMember  # and nothing recorded: once a member, the first notice goes at once
    if due:
        hub.typing_sent.passed(key)
    return Response(status_code=204)
