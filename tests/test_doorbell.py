"""The doorbell off the commit path (chat_api/events/doorbell.py): writes commit without notifying, the
process that wrote rings after the commit, coalesced; a write whose doorbell never rings still reaches
streams within the hubs' idle check."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator

import asyncpg
import orjson
import pytest

from chat_api.core.db import Database
from chat_api.events import hub as hub_module
from chat_api.events.contract import NOTIFY_CHANNEL, room_lock_key
from chat_api.events.doorbell import Doorbell
from chat_api.events.hub import Hub, Subscription
from chat_api.messages.service import SEND
from tests.support.servers import ServerFactory
from tests.support.settings import make_settings
from tests.support.sse import open_stream
from tests.support.users import UserFactory


class Listener:
    """A LISTEN connection counting the doorbell's NOTIFYs, with their arrival times."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn
        self.arrivals: list[float] = []
        self.changed = asyncio.Event()

    def heard(self, *args: object) -> None:
        self.arrivals.append(time.monotonic())
        self.changed.set()

    async def settle(self, quiet: float = 0.2) -> None:
        """Waits until no NOTIFY has come for `quiet` seconds (a round trip flushes what is in flight)."""
        while True:
            self.changed.clear()
            await self.conn.fetchval("SELECT 1")
            try:
                await asyncio.wait_for(self.changed.wait(), quiet)
            except TimeoutError:
                return


async def send_unrung(writer: asyncpg.Connection, room_id: uuid.UUID, sender: str, body: str) -> None:
    """A send committed the way the service writes it (chat_send()), with no doorbell rung."""
    await writer.fetchval(SEND, room_id, room_lock_key(room_id), sender, body, None, None, None)


@pytest.fixture
async def listener(database_url: str) -> AsyncIterator[Listener]:
    conn = await asyncpg.connect(database_url)
    listening = Listener(conn)
    await conn.add_listener(NOTIFY_CHANNEL, listening.heard)
    try:
        yield listening
    finally:
        await conn.close()


async def test_a_write_reaches_a_stream_on_another_replica_by_the_writers_doorbell_after_commit(
    start_server: ServerFactory, make_user: UserFactory, listener: Listener, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No idle check to fall back on: the frame can only come by the writer's doorbell.
    monkeypatch.setattr(hub_module, "IDLE_CHECK_SECONDS", 60.0)
    a, b = await start_server(), await start_server()
    alice, bob = make_user("alice", a.url), make_user("bob", b.url)
    room = await alice.create_room(members=[bob])
    async with open_stream(b.url, bob.token, room_id=room["id"]) as stream:
        await listener.settle()
        before = len(listener.arrivals)
        response = await alice.send(room["id"], "rung after commit")
        frame = (await stream.wait_for(1, "message.created", timeout=5))[0]
    assert frame.data["message"] == response.json()
    await listener.settle()
    rung = listener.arrivals[before:]
    # chat_send() itself no longer notifies (tests/test_event_contract.py): this is the writer's
    # doorbell, once for the one write.
    assert len(rung) == 1, rung


async def test_a_writer_that_commits_and_never_rings_still_reaches_streams_within_the_idle_check(
    start_server: ServerFactory, make_user: UserFactory, listener: Listener, database_url: str
) -> None:
    assert hub_module.IDLE_CHECK_SECONDS <= 1.0
    a = await start_server()
    alice, bob = make_user("alice", a.url), make_user("bob", a.url)
    room = await alice.create_room(members=[bob])
    room_id = uuid.UUID(room["id"])
    async with open_stream(a.url, bob.token, room_id=room["id"]) as stream:
        await stream.wait_for(0)
        await listener.settle()
        before = len(listener.arrivals)
        # A writer that died between its commit and its doorbell: chat_send() through SQL, no NOTIFY.
        writer = await asyncpg.connect(database_url)
        try:
            await send_unrung(writer, room_id, alice.name, "silent")
            committed = time.monotonic()
        finally:
            await writer.close()
        frame = (await stream.wait_for(1, "message.created", timeout=10))[0]
        late = time.monotonic() - committed
    assert frame.data["message"]["body"] == "silent"
    assert listener.arrivals[before:] == [], "chat_send() rang a doorbell"
    # Within one idle interval, plus slack for a loaded CI machine.
    assert late < hub_module.IDLE_CHECK_SECONDS + 1.5, late


async def test_rings_are_coalesced(runtime_url: str, listener: Listener) -> None:
    db = Database(make_settings(runtime_url))
    await db.open()
    woken = 0

    def wake() -> None:
        nonlocal woken
        woken += 1

    doorbell = Doorbell(db, wake_local=wake, interval=0.003)
    try:
        await listener.settle()
        before = len(listener.arrivals)
        started = time.monotonic()
        for _ in range(40):  # 1,000 commits in bursts, over at least 40 ms
            for _ in range(25):
                doorbell.ring()
            await asyncio.sleep(0.001)
        last_ring = time.monotonic()
        await listener.settle()
        elapsed = last_ring - started
    finally:
        await doorbell.close()
        await db.close()
    heard = listener.arrivals[before:]
    assert woken == 1000, "every ring wakes the local hub at once"
    assert len(heard) == doorbell.sent
    # At most one NOTIFY per interval while the rings keep coming, plus the first one.
    assert 2 <= len(heard) <= elapsed / 0.003 + 2, (len(heard), elapsed)
    assert len(heard) < 100, len(heard)
    # The last ring is covered by a NOTIFY sent after it.
    assert heard[-1] >= last_ring, (heard[-1], last_ring)


async def test_a_failed_ring_never_raises(runtime_url: str) -> None:
    db = Database(make_settings(runtime_url))  # never opened: every ring fails
    doorbell = Doorbell(db, interval=0.001)
    for _ in range(10):
        doorbell.ring()
        await asyncio.sleep(0.002)
    await asyncio.sleep(0.01)
    assert doorbell.sent == 0
    await doorbell.close()
    doorbell.ring()  # closed: still never raises


# ---- the gap between a hub's reads (events/hub.py READ_GAP_SECONDS) ------------------------------


@contextlib.asynccontextmanager
async def running_hub(runtime_url: str) -> AsyncIterator[Hub]:
    """A hub of its own (as a replica's), on the real database."""
    settings = make_settings(runtime_url)
    db = Database(settings)
    await db.open()
    hub = Hub(settings, db)
    hub.start()
    try:
        yield hub
    finally:
        await hub.close()
        await db.close()


async def bodies(subscription: Subscription, count: int) -> list[str]:
    """The message bodies of the next `count` events queued to the subscription."""
    got: list[str] = []
    while len(got) < count:
        for item in await asyncio.wait_for(subscription.take(), 30):
            assert item is not None and item[0] is not None, item
            got.append(orjson.loads(item[1].split(b"data: ", 1)[1])["message"]["body"])
    return got


async def test_a_burst_of_doorbells_costs_a_bounded_number_of_reads_and_every_event_once_in_order(
    make_user: UserFactory, runtime_url: str, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    gap = 0.2
    monkeypatch.setattr(hub_module, "READ_GAP_SECONDS", gap)
    alice, bob = make_user("alice"), make_user("bob")
    room_id = uuid.UUID((await alice.create_room(members=[bob]))["id"])
    writer = await asyncpg.connect(database_url)
    try:
        async with running_hub(runtime_url) as hub:
            subscription, _ = await hub.subscribe(bob.name, room_id)
            reads, started = hub.reads, time.monotonic()
            for n in range(40):  # 40 commits, each with its doorbell
                await send_unrung(writer, room_id, alice.name, f"burst {n}")
                hub.wake()
            got = await bodies(subscription, 40)
            elapsed, reads = time.monotonic() - started, hub.reads - reads
            await asyncio.sleep(gap * 2)  # nothing more comes
            assert subscription.items == []
    finally:
        await writer.close()
    assert got == [f"burst {n}" for n in range(40)]
    # Reads start at least `gap` apart: at most one per gap over the burst, plus the one under way.
    assert reads <= elapsed / gap + 2, (reads, elapsed)
    assert reads < 40, reads


async def test_a_doorbell_during_the_gap_is_not_lost(
    make_user: UserFactory, runtime_url: str, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No idle check to fall back on, and a long gap: the second doorbell rings inside it, and only
    # the read it schedules for the gap's end can bring the second event.
    monkeypatch.setattr(hub_module, "IDLE_CHECK_SECONDS", 120.0)
    monkeypatch.setattr(hub_module, "READ_GAP_SECONDS", 2.0)
    alice, bob = make_user("alice"), make_user("bob")
    room_id = uuid.UUID((await alice.create_room(members=[bob]))["id"])
    writer = await asyncpg.connect(database_url)
    try:
        async with running_hub(runtime_url) as hub:
            subscription, _ = await hub.subscribe(bob.name, room_id)
            for body in ("first", "in the gap"):
                await send_unrung(writer, room_id, alice.name, body)
                hub.wake()
                assert await bodies(subscription, 1) == [body]
    finally:
        await writer.close()
