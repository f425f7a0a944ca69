"""The stream hub: one per process. It LISTENs for the doorbell, reads the log once per wake-up,
and hands each event's frame to the local streams allowed to see it.

Idle streams cost no database work: they wait on their own queue. The hub is the only reader
of the live log, and it reads in log order, applying membership changes as it meets them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from collections import defaultdict
from typing import Annotated, Any

import asyncpg
import orjson
from fastapi import Depends, Request
from opentelemetry.instrumentation.utils import suppress_instrumentation
from opentelemetry.trace import NoOpTracer, Tracer

from chat_api.core.config import Settings
from chat_api.core.db import SERVER_SETTINGS, Database
from chat_api.core.directbody import DirectBody
from chat_api.events import typing
from chat_api.events.contract import (
    CONTROL_CHANNEL,
    NOTIFY_CHANNEL,
    TYPING_CHANNEL,
    EventKind,
    joined_by_room_created,
)
from chat_api.events.cursor import Cursor
from chat_api.events.reader import EVENT_COLUMNS, HORIZON_SQL, Event

log = logging.getLogger("chat_api.events")

READ_BATCH = 1000
# Events can be committed but not yet readable (an older transaction is still open). The hub then
# looks again after a short pause, doubling up to the maximum; a doorbell wakes it at once anyway.
RETRY_MIN_SECONDS = 0.005
RETRY_MAX_SECONDS = 1.0
# With no doorbell at all, look anyway this often: one query per process, not per stream (measured in
# docs/events.md, "The idle check"). It bounds how late an event is whose doorbell never rang: the
# writing process died between its commit and its ring (events/doorbell.py), or its ring failed.
IDLE_CHECK_SECONDS = 1.0
# A read starts no sooner than this after the previous one started: under write load the doorbells
# (one per writing process per 5 ms, events/doorbell.py) would have every hub read the log 200 times a
# second per writer, competing with PostgreSQL for CPU. A doorbell in the gap is never lost: the read
# it asks for starts at the gap's end, one read for all the doorbells of the gap. Measured in
# docs/events.md, "The gap between reads".
READ_GAP_SECONDS = 0.02
RECONNECT_MIN_SECONDS = 0.1
RECONNECT_MAX_SECONDS = 5.0

# The next events after a position, and whether any are committed or in flight beyond the
# horizon (then the hub looks again soon), in one round trip: a first row always comes back,
# with NULL event columns when there is nothing to read. "Anything beyond the horizon" is asked as
# "is the newest event beyond it": one step down the (xid, id) index from its end, whatever the
# table's statistics say (an EXISTS with a filter was planned as a scan of the whole log when the
# statistics were from an emptier table, on every read; tests/test_replay_cost.py).
_READ = f"""
SELECT beyond.blocked, page.* FROM
    (SELECT coalesce(
        (SELECT xid FROM events ORDER BY xid DESC, id DESC LIMIT 1) >= {HORIZON_SQL}, false
    ) AS blocked) AS beyond
LEFT JOIN LATERAL (
    SELECT {EVENT_COLUMNS} FROM events e
    WHERE (e.xid, e.id) > ($1::text::xid8, $2) AND e.xid < {HORIZON_SQL}
    ORDER BY e.xid, e.id LIMIT {READ_BATCH}
) AS page ON true
"""
_HORIZON = f"SELECT {HORIZON_SQL}::text"
# The hub's connection plans its read afresh each time (~0.1 ms of the database's CPU): a prepared
# statement's generic plan, made while the log was small, kept scanning the whole log once it had
# grown (bench: delivery at 10 messages/s 6 → 30 ms p50 after 75,000 events written by pgbench, until
# the process restarted; 6 ms with this setting).
LISTEN_SETTINGS = {**SERVER_SETTINGS, "plan_cache_mode": "force_custom_plan"}
_ROOMS_OF = "SELECT room_id FROM members WHERE user_id = $1"

END = None  # queued to a subscription: the stream must end (shutdown, too slow, removed, client gone)
HEARTBEAT = b": keepalive\n\n"


def reauth_frame(reason: str) -> bytes:
    """The last frame of a stream whose credential ran out or was revoked: no `id:` (the client keeps
    its last cursor), `event: reauth`; the client reconnects with a fresh credential and loses nothing."""
    return b"event: reauth\ndata: " + orjson.dumps({"reason": reason}) + b"\n\n"


EXPIRED = (None, reauth_frame("token expired"))
REVOKED = (None, reauth_frame("revoked"))

# What a subscription holds: (position, frame) of an event, (None, HEARTBEAT), or END.
Item = tuple[Cursor | None, bytes] | None


class Subscription:
    """One open stream's inbox. The hub appends to it without waiting; the stream takes everything
    queued at once and writes it in one piece. Past `buffer` items the stream is too slow: what
    is queued is dropped and the stream ends (the client resumes from the last id it received,
    so nothing is lost, and memory stays bounded).

    A live stream may also give it a direct writer (core/directbody.py): while the stream's task
    waits with nothing queued, a frame is then written at once, by the hub, instead of being queued
    and waking the task; `sent` is the position of the last event written either way. Whenever the
    writer cannot write (the client is not reading), the frame is queued as before, and so is
    everything after it until the task has written the queue."""

    __slots__ = (
        "_waiter",
        "buffer",
        "ended",
        "expires_at",
        "items",
        "overflowed",
        "room_id",
        "sent",
        "user",
        "write",
    )

    def __init__(
        self, user: str, room_id: uuid.UUID | None, buffer: int, expires_at: float = math.inf
    ) -> None:
        self.user = user
        self.room_id = room_id
        self.buffer = buffer
        self.expires_at = expires_at  # the credential's exp: the hub ends the stream then
        self.items: list[Item] = []
        self.overflowed = False
        self.ended = False  # END was offered: whatever the stream is doing, it should stop
        self.sent = Cursor(0, 0)  # the last event's position written to the client
        self.write: DirectBody | None = None
        self._waiter: asyncio.Future[None] | None = None

    def offer(self, item: Item) -> None:
        if self.overflowed:
            return
        waiter = self._waiter
        if item is END:
            self.ended = True
        elif self.write is not None and not self.items and waiter is not None and not waiter.done():
            # The task waits with nothing queued, so everything before this has been written.
            position, frame = item
            if position is not None and position <= self.sent:
                return  # the replay has sent it
            if self.write(frame):
                if position is not None:
                    self.sent = position
                return
        if len(self.items) < self.buffer or item is END:
            self.items.append(item)
        else:
            self.overflowed = self.ended = True
            self.items = [END]
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def hold(self, item: tuple[Cursor, bytes]) -> bool:
        """Offers an event of a burst the hub is fanning out. A stream that would write it directly
        keeps it until `release()`, so that the whole burst is one write; True when the hub must
        call `release()` after the burst (the first event held)."""
        waiter = self._waiter
        if self.write is None or waiter is None or waiter.done() or len(self.items) >= self.buffer:
            self.offer(item)
            return False
        if item[0] <= self.sent:
            return False  # the replay has sent it
        self.items.append(item)
        return len(self.items) == 1

    def release(self) -> None:
        """Writes what `hold()` kept, in one piece; if it cannot, wakes the task, which writes it."""
        waiter = self._waiter
        items = self.items
        if not items or waiter is None or waiter.done():
            return
        # Only events are held: (position, frame) pairs. One frame is written as it is: the same
        # bytes for every stream, whose chunk the writer then builds once.
        last = items[-1]
        if len(items) == 1 and last is not None:
            frames = last[1]
        else:
            frames = b"".join([item[1] for item in items if item is not None])
        if self.write is not None and self.write(frames):
            if last is not None and last[0] is not None:
                self.sent = last[0]
            self.items = []
        else:
            waiter.set_result(None)

    def end_with(self, reauth: Item) -> None:
        """Ends the stream after a last `event: reauth` frame (once)."""
        if not self.ended:
            self.offer(reauth)
            self.offer(END)

    async def take(self) -> list[Item]:
        """Everything queued, waiting for at least one item."""
        if not self.items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        items, self.items = self.items, []
        return items


class TooManyStreams(Exception):
    pass


class ShuttingDown(Exception):
    pass


class Hub:
    def __init__(self, settings: Settings, db: Database, tracer: Tracer | None = None) -> None:
        self.settings = settings
        self.db = db
        self.tracer = tracer or NoOpTracer()
        self.head = Cursor(0, 0)  # the last position read from the log
        self.ready = asyncio.Event()  # head is set: subscriptions may start
        self.by_user: dict[str, set[Subscription]] = defaultdict(set)
        self.rooms_of: dict[str, set[uuid.UUID]] = {}  # rooms of each user with an open stream
        self.users_in: dict[uuid.UUID, set[str]] = defaultdict(set)  # the reverse index
        self.delivered = 0
        self.reads = 0  # wake-ups that read the log
        self._held: list[Subscription] = []  # streams holding frames of the burst being fanned out
        # Typing notices (events/typing.py): this process's NOTIFYs, and the notices forwarded here.
        self.typing_sent = typing.Throttle()
        self.typing_forwarded = typing.Throttle()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self._conn: asyncpg.Connection | None = None
        self._closing = False

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="chat-api event hub")
        self._heartbeat = asyncio.create_task(self._beat(), name="chat-api stream heartbeat")

    def end_streams(self) -> None:
        """Ends every open stream now and refuses new ones (shutdown: clients resume elsewhere)."""
        self._closing = True
        for subscriptions in self.by_user.values():
            for subscription in subscriptions:
                subscription.offer(END)

    async def close(self) -> None:
        self.end_streams()
        for task in (self._task, self._heartbeat):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self._disconnect()

    async def _beat(self) -> None:
        """A comment on every open stream each heartbeat interval: proxies and clients see the
        connection alive. One timer for all streams, rather than one per stream and event. The same
        pass ends the streams whose credential has expired (so a stream outlives its token by at
        most one interval), at the cost of one comparison per stream and beat, none per event."""
        item = (None, HEARTBEAT)
        while True:
            await asyncio.sleep(self.settings.stream_heartbeat_seconds)
            now = time.time()
            for subscriptions in self.by_user.values():
                for subscription in subscriptions:
                    if subscription.expires_at <= now:
                        subscription.end_with(EXPIRED)
                    else:
                        subscription.offer(item)

    def revoke(self, user: str) -> int:
        """Ends the user's open streams in this process (each with `event: reauth`); how many."""
        subscriptions = list(self.by_user.get(user, ()))
        for subscription in subscriptions:
            subscription.end_with(REVOKED)
        return len(subscriptions)

    @property
    def open_streams(self) -> int:
        return sum(len(s) for s in self.by_user.values())

    # -- subscriptions ---------------------------------------------------------------------------

    async def subscribe(
        self, user: str, room_id: uuid.UUID | None, expires_at: float = math.inf
    ) -> tuple[Subscription, Cursor]:
        """Registers a stream that ends at `expires_at` (seconds since the epoch); returns it and the
        hub's position: every event after that position will be queued to it. Raises TooManyStreams
        past the per-user limit."""
        if self._closing:
            raise ShuttingDown
        if len(self.by_user.get(user, ())) >= self.settings.stream_max_per_user:
            raise TooManyStreams
        await self.ready.wait()
        while user not in self.rooms_of:
            before = self.head
            async with self.db.connection() as conn:
                rooms = {row["room_id"] for row in await conn.fetch(_ROOMS_OF, user)}
            # Membership changes the hub applied while we read would be lost: read again then.
            # Changes not yet applied are applied to this set when the hub reaches them.
            if self.head == before and user not in self.rooms_of:
                self.rooms_of[user] = rooms
                for room in rooms:
                    self.users_in[room].add(user)
        if len(self.by_user.get(user, ())) >= self.settings.stream_max_per_user:
            raise TooManyStreams
        subscription = Subscription(user, room_id, self.settings.stream_buffer_events, expires_at)
        self.by_user[user].add(subscription)
        return subscription, self.head

    def unsubscribe(self, subscription: Subscription) -> None:
        user = subscription.user
        subscriptions = self.by_user.get(user)
        if subscriptions is None:
            return
        subscriptions.discard(subscription)
        if not subscriptions:
            del self.by_user[user]
            for room in self.rooms_of.pop(user, ()):
                self._drop_from_index(user, room)

    # -- fan-out ---------------------------------------------------------------------------------

    def _join(self, user: str, room: uuid.UUID) -> None:
        rooms = self.rooms_of.get(user)
        if rooms is not None:
            rooms.add(room)
            self.users_in[room].add(user)

    def _drop_from_index(self, user: str, room: uuid.UUID) -> None:
        members = self.users_in.get(room)
        if members is not None:
            members.discard(user)
            if not members:
                del self.users_in[room]

    def _leave(self, user: str, room: uuid.UUID) -> None:
        rooms = self.rooms_of.get(user)
        if rooms is not None:
            rooms.discard(room)
            self._drop_from_index(user, room)
            for subscription in self.by_user.get(user, ()):
                if subscription.room_id == room:
                    subscription.offer(END)  # a stream of only this room has nothing left to show

    def dispatch(self, event: Event) -> None:
        """Applies one event, in log order: membership first for joins, last for leaves. The frame
        is built once, for all streams; `release()` must follow the burst."""
        room = event.room_id
        if event.kind == EventKind.MEMBER_ADDED and event.subject is not None:
            self._join(event.subject, room)
        elif event.kind == EventKind.ROOM_CREATED:
            for member in joined_by_room_created(event.payload):
                self._join(member, room)
        item = (event.position, event.frame())
        held = self._held
        for user in self.users_in.get(room, ()):
            for subscription in self.by_user.get(user, ()):
                if subscription.room_id is None or subscription.room_id == room:
                    if subscription.hold(item):
                        held.append(subscription)
                    self.delivered += 1
        if event.kind == EventKind.MEMBER_REMOVED and event.subject is not None:
            self._leave(event.subject, room)

    def release(self) -> None:
        """The end of a burst: each stream writes what it held of it in one piece."""
        held, self._held = self._held, []
        for subscription in held:
            subscription.release()

    # -- reading the log -------------------------------------------------------------------------

    async def _run(self) -> None:
        delay = RECONNECT_MIN_SECONDS
        while not self._closing:
            try:
                conn = await self._connect()
                if not self.ready.is_set():
                    with suppress_instrumentation():
                        self.head = Cursor(int(await conn.fetchval(_HORIZON)), 0)
                    self.ready.set()
                delay = RECONNECT_MIN_SECONDS
                # After a reconnect this first catches up from head: the log is the truth, so
                # nothing committed while the connection was down is missed.
                await self._follow(conn)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("event hub lost its database connection (%s); reconnecting", type(exc).__name__)
                await self._disconnect()
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECONNECT_MAX_SECONDS)

    async def _follow(self, conn: asyncpg.Connection) -> None:
        loop = asyncio.get_running_loop()
        retry = RETRY_MIN_SECONDS
        while True:
            self._wake.clear()  # a doorbell from now on asks for another read
            started = loop.time()
            self.reads += 1
            blocked = await self._catch_up(conn)
            if blocked:
                timeout, retry = retry, min(retry * 2, RETRY_MAX_SECONDS)
            else:
                timeout, retry = IDLE_CHECK_SECONDS, RETRY_MIN_SECONDS
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for returns a wait that was woken in
            # the same turn as a cancel and drops the cancel, and close() then waited for ever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            gap = started + READ_GAP_SECONDS - loop.time()
            if gap > 0:
                await asyncio.sleep(gap)

    async def _catch_up(self, conn: asyncpg.Connection) -> bool:
        """Reads and dispatches everything readable after head; True if more is committed or in
        flight beyond the horizon (so look again soon)."""
        while True:
            # The hub's own reads make no spans (an idle hub would trace every few seconds); a
            # wake-up that found events gets one span around reading and fanning them out.
            started = time.perf_counter()
            with suppress_instrumentation():
                rows = await conn.fetch(_READ, str(self.head.xid), self.head.id)
            events = [row for row in rows if row["xid"] is not None]
            if events:
                with self.tracer.start_as_current_span("chat.events.fan_out") as span:
                    before = self.delivered
                    try:
                        for row in events:
                            event = Event.from_row(row)
                            self.dispatch(event)
                            self.head = event.position
                    finally:
                        self.release()
                    span.set_attributes(
                        {
                            "chat.events": len(events),
                            "chat.deliveries": self.delivered - before,
                            "chat.streams.open": self.open_streams,
                            "chat.read_ms": round((time.perf_counter() - started) * 1000, 3),
                        }
                    )
            if len(events) < READ_BATCH:
                return bool(rows[0]["blocked"])

    async def _connect(self) -> asyncpg.Connection:
        if self._conn is not None and not self._conn.is_closed():
            return self._conn
        target = self.settings.listen_target()
        with suppress_instrumentation():
            conn = await asyncpg.connect(**target.connect_kwargs(), server_settings=dict(LISTEN_SETTINGS))
            await conn.add_listener(NOTIFY_CHANNEL, self._ring)
            await conn.add_listener(CONTROL_CHANNEL, self._control)
            await conn.add_listener(TYPING_CHANNEL, self._typing)
        conn.add_termination_listener(self._on_terminated)
        self._conn = conn
        return conn

    def _ring(self, *args: Any) -> None:
        self._wake.set()

    def wake(self) -> None:
        """Read the log now: this process has just committed a write (events/doorbell.py)."""
        self._wake.set()

    def _control(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        ended = self.revoke(payload)
        log.info("revoke-streams: ended %d open stream(s) of one user in this process", ended)

    def _typing(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        try:
            notice = orjson.loads(payload)
            user, room, until = (
                str(notice["user_id"]),
                uuid.UUID(notice["room_id"]),
                str(notice["expires_at"]),
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            log.warning("typing notice ignored: not one this service sends")
            return
        # Written out again rather than passed through: whatever else a NOTIFY on the channel carried
        # (a line break between JSON tokens would end the SSE frame) never reaches a stream.
        data = orjson.dumps({"room_id": str(room), "user_id": user, "expires_at": until}).decode()
        self.forward_typing(user, room, data)

    def forward_typing(self, user: str, room: uuid.UUID, data: str) -> None:
        """Offers a typing frame (no position) to the room's other members' streams, unless this
        user's typing in this room was forwarded less than TYPING_EVERY_SECONDS ago."""
        members = self.users_in.get(room)
        if not members or not self.typing_forwarded.passes((user, room)):
            return
        item = (None, typing.frame(data))
        for member in members:
            if member == user:
                continue
            for subscription in self.by_user.get(member, ()):
                if subscription.room_id is None or subscription.room_id == room:
                    subscription.offer(item)

    def _on_terminated(self, *args: Any) -> None:
        self._wake.set()  # the next read fails and _run reconnects

    async def _disconnect(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 2)


# async, though it awaits nothing: FastAPI runs plain `def` dependencies in a thread pool.
async def _hub(request: Request) -> Hub:
    hub: Hub = request.state.hub
    return hub


HubDep = Annotated[Hub, Depends(_hub)]
