"""Fast unit tests (no database, no server) of the stream's pure parts: a subscription's inbox and the
hub's dispatch of events to the streams allowed to see them."""

from __future__ import annotations

import asyncio
import uuid

from chat_api.core.db import Database
from chat_api.events.contract import EventKind, envelope
from chat_api.events.cursor import Cursor
from chat_api.events.hub import END, HEARTBEAT, Hub, Subscription
from chat_api.events.reader import Event
from tests.support.settings import make_settings

ROOM, OTHER = uuid.uuid4(), uuid.uuid4()


# ---- the inbox ------------------------------------------------------------------------------------


async def test_take_returns_everything_queued_at_once_and_waits_when_empty() -> None:
    inbox = Subscription("ann", None, buffer=10)
    inbox.offer((Cursor(1, 1), b"a"))
    inbox.offer((Cursor(1, 2), b"b"))
    assert await inbox.take() == [(Cursor(1, 1), b"a"), (Cursor(1, 2), b"b")]
    waiting = asyncio.create_task(inbox.take())
    await asyncio.sleep(0)
    assert not waiting.done()
    inbox.offer((None, HEARTBEAT))
    assert await asyncio.wait_for(waiting, 1) == [(None, HEARTBEAT)]


def test_a_full_inbox_drops_what_is_queued_and_ends_the_stream() -> None:
    inbox = Subscription("ann", None, buffer=3)
    for i in range(3):
        inbox.offer((Cursor(1, i), b"x"))
    assert not inbox.ended
    inbox.offer((Cursor(1, 3), b"one too many"))
    assert inbox.overflowed and inbox.ended and inbox.items == [END]
    inbox.offer((Cursor(1, 4), b"later"))  # ignored: the client resumes from its cursor
    assert inbox.items == [END]


def test_end_is_queued_even_past_the_buffer_and_marks_the_inbox_ended() -> None:
    inbox = Subscription("ann", None, buffer=1)
    inbox.offer((Cursor(1, 1), b"x"))
    inbox.offer(END)
    assert inbox.items == [(Cursor(1, 1), b"x"), END] and inbox.ended and not inbox.overflowed


# ---- dispatch -------------------------------------------------------------------------------------


def hub_with(*streams: tuple[str, uuid.UUID | None, set[uuid.UUID]]) -> tuple[Hub, list[Subscription]]:
    """A hub (never started) with streams registered as subscribe() leaves them."""
    settings = make_settings("postgresql://nobody@127.0.0.1:1/none")
    hub = Hub(settings, Database(settings))
    subscriptions = []
    for user, room_filter, rooms in streams:
        subscription = Subscription(user, room_filter, buffer=100)
        hub.by_user[user].add(subscription)
        hub.rooms_of[user] = set(rooms)
        for room in rooms:
            hub.users_in[room].add(user)
        subscriptions.append(subscription)
    return hub, subscriptions


def event(n: int, kind: EventKind, room: uuid.UUID, obj: object, subject: str | None = None) -> Event:
    return Event(Cursor(7, n), room, n, kind, subject, envelope(kind, room, n, obj))


def kinds(subscription: Subscription) -> list[str]:
    """The `event:` line of each frame queued."""
    return [item[1].split(b"\n")[1].decode() for item in subscription.items if item is not END]


def test_events_reach_the_members_streams_and_the_room_filter_holds() -> None:
    hub, (ann_all, ann_room, bob_other) = hub_with(
        ("ann", None, {ROOM, OTHER}), ("ann", ROOM, {ROOM, OTHER}), ("bob", None, {OTHER})
    )
    hub.dispatch(event(1, EventKind.MESSAGE_CREATED, ROOM, {"body": "in room"}))
    hub.dispatch(event(2, EventKind.MESSAGE_CREATED, OTHER, {"body": "in other"}))
    assert len(ann_all.items) == 2 and len(ann_room.items) == 1 and len(bob_other.items) == 1
    assert ann_room.items[0] is not None and ann_room.items[0][0] == Cursor(7, 1)
    assert hub.delivered == 4


def test_a_member_added_sees_its_own_addition_and_what_follows() -> None:
    hub, (bob,) = hub_with(("bob", None, set()))
    hub.dispatch(event(1, EventKind.MESSAGE_CREATED, ROOM, {"body": "before"}))
    hub.dispatch(event(2, EventKind.MEMBER_ADDED, ROOM, {"user_id": "bob"}, subject="bob"))
    hub.dispatch(event(3, EventKind.MESSAGE_CREATED, ROOM, {"body": "after"}))
    assert kinds(bob) == ["event: member.added", "event: message.created"]


def test_a_room_created_brings_in_its_members() -> None:
    hub, (bob,) = hub_with(("bob", None, set()))
    room = {"id": str(ROOM), "members": [{"user_id": "ann"}, {"user_id": "bob"}]}
    hub.dispatch(event(1, EventKind.ROOM_CREATED, ROOM, room))
    assert kinds(bob) == ["event: room.created"] and ROOM in hub.rooms_of["bob"]


def test_a_removed_member_gets_its_own_removal_then_nothing_and_a_room_stream_ends() -> None:
    hub, (bob_all, bob_room) = hub_with(("bob", None, {ROOM}), ("bob", ROOM, {ROOM}))
    hub.dispatch(event(1, EventKind.MEMBER_REMOVED, ROOM, {"user_id": "bob"}, subject="bob"))
    hub.dispatch(event(2, EventKind.MESSAGE_CREATED, ROOM, {"body": "not for bob"}))
    assert kinds(bob_all) == ["event: member.removed"]
    assert bob_room.items[-1] is END and bob_room.ended
    assert "bob" not in hub.users_in.get(ROOM, set())


# ---- shutdown -------------------------------------------------------------------------------------


async def test_the_hub_stops_when_cancelled_just_as_it_is_woken() -> None:
    """A wake-up (a local commit, a NOTIFY) in the same turn as close()'s cancel: the hub's loop still
    ends. (Python 3.11's asyncio.wait_for returned the woken wait and dropped the cancel, so the hub
    looped on and the process's shutdown hung.)"""
    hub, _ = hub_with()
    caught_up = asyncio.Event()

    async def catch_up(conn: object) -> bool:
        caught_up.set()
        return False

    hub._catch_up = catch_up  # type: ignore[method-assign]
    follow = asyncio.create_task(hub._follow(None))  # type: ignore[arg-type]
    await caught_up.wait()
    await asyncio.sleep(0)  # the loop is now waiting to be woken
    hub.wake()
    await asyncio.sleep(0)  # the wait is done; the loop has not run on yet
    follow.cancel()
    done, _ = await asyncio.wait({follow}, timeout=5)
    assert done and follow.cancelled()
