"""The doorbell off the commit path (chat_api/events/doorbell.py): writes commit without notifying, the
process that wrote rings after the commit, coalesced; a write whose doorbell never rings still reaches
streams within the hubs' idle check."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from chat_api.core.db import Database
from chat_api.events import hub as hub_module
from chat_api.events.contract import NOTIFY_CHANNEL, room_lock_key
from chat_api.events.doorbell import Doorbell
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
            await writer.fetchval(
                SEND, room_id, room_lock_key(room_id), alice.name, "silent", None, None, None
            )
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
