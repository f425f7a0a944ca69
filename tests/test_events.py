"""The event stream: every change, in order, across replicas, resumable without loss or duplicates."""

from __future__ import annotations

import asyncio
import os
import random
import sys
import time
import uuid
from collections import defaultdict

import asyncpg
import httpx
import pytest

from chat_api import cli
from chat_api.auth.tokens import mint_token
from chat_api.core.config import Settings
from chat_api.core.db import Database
from chat_api.events.cursor import Cursor
from chat_api.events.hub import END, Subscription
from chat_api.events.reader import prune
from tests.support.eventlog import age_and_prune
from tests.support.problems import assert_problem
from tests.support.servers import RunningServer, ServerFactory
from tests.support.settings import TEST_SECRET
from tests.support.sse import open_stream
from tests.support.users import User, UserFactory


async def test_every_change_arrives_with_the_full_object(
    server: RunningServer, alice: User, bob: User
) -> None:
    async with open_stream(server.url, bob.token) as stream:
        assert stream.status == 200 and stream.retry and stream.retry > 0
        room = await alice.create_room("live", members=[bob])
        rid = room["id"]
        sent = (await alice.send(rid, "hello")).json()
        edited = (
            await alice.http.patch(f"/v1/rooms/{rid}/messages/{sent['seq']}", json={"body": "hello!"})
        ).json()
        await alice.http.delete(f"/v1/rooms/{rid}/messages/{sent['seq']}")
        await alice.http.put(f"/v1/rooms/{rid}/members/carol-{uuid.uuid4().hex[:6]}")
        frames = await stream.wait_for(5)
    kinds = [f.event for f in frames]
    assert kinds == ["room.created", "message.created", "message.updated", "message.deleted", "member.added"]
    data = [f.data for f in frames]
    assert all(d["room_id"] == rid for d in data)
    assert data[0]["room"]["name"] == "live" and {m["user_id"] for m in data[0]["room"]["members"]} == {
        alice.name,
        bob.name,
    }
    assert data[1]["message"] == sent and data[1]["seq"] == sent["seq"]
    assert data[2]["message"] == edited
    assert data[3]["message"]["deleted"] is True and data[3]["message"]["body"] is None
    assert data[4]["member"]["role"] == "member"
    seqs = [d["seq"] for d in data]
    assert seqs == sorted(seqs) and len(set(seqs)) == 5, "within a room, seq increases with every event"
    assert all(f.id and f.id.startswith("v1.") for f in frames)


async def test_a_message_sent_through_one_replica_reaches_a_stream_on_another(
    start_server: ServerFactory, make_user: UserFactory
) -> None:
    a, b = await start_server(), await start_server()
    alice, bob = make_user("alice", a.url), make_user("bob", b.url)
    room = await alice.create_room(members=[bob])
    async with open_stream(b.url, bob.token, room_id=room["id"]) as stream:
        sent = (await alice.send(room["id"], "across")).json()
        frame = (await stream.wait_for(1, "message.created"))[0]
    assert frame.data["message"] == sent


async def test_resume_replays_missed_events_then_goes_live(
    server: RunningServer, alice: User, bob: User
) -> None:
    room = await alice.create_room(members=[bob])
    rid = room["id"]
    async with open_stream(server.url, bob.token, room_id=rid) as stream:
        first = (await alice.send(rid, "seen")).json()
        seen = (await stream.wait_for(1, "message.created"))[0]
    missed = [(await alice.send(rid, f"missed {i}")).json()["seq"] for i in range(3)]
    async with open_stream(server.url, bob.token, room_id=rid, last_event_id=seen.id) as stream:
        replayed = await stream.wait_for(3, "message.created")
        live = (await alice.send(rid, "live")).json()
        frames = await stream.wait_for(4, "message.created")
    assert [f.data["seq"] for f in replayed[:3]] == missed
    assert [f.data["seq"] for f in frames] == [*missed, live["seq"]]
    assert first["seq"] not in [f.data["seq"] for f in frames]


async def test_stream_cursor_from_room_listing_misses_nothing(
    server: RunningServer, alice: User, bob: User
) -> None:
    room = await alice.create_room(members=[bob])
    cursor = (await bob.http.get("/v1/rooms")).json()["stream_cursor"]
    sent = [(await alice.send(room["id"], f"after listing {i}")).json()["seq"] for i in range(3)]
    async with open_stream(server.url, bob.token, cursor=cursor) as stream:
        frames = await stream.wait_for(3, "message.created")
    assert [f.data["seq"] for f in frames] == sent


async def test_last_event_id_wins_over_cursor_parameter(server: RunningServer, alice: User) -> None:
    room = await alice.create_room()
    cursor = (await alice.http.get("/v1/rooms")).json()["stream_cursor"]
    await alice.send(room["id"], "one")
    async with open_stream(server.url, alice.token, room_id=room["id"], cursor=cursor) as stream:
        first = (await stream.wait_for(1, "message.created"))[0]
    await alice.send(room["id"], "two")
    async with open_stream(
        server.url, alice.token, room_id=room["id"], cursor=cursor, last_event_id=first.id
    ) as stream:
        frames = await stream.wait_for(1, "message.created")
        await asyncio.sleep(0.3)
    assert [f.data["message"]["body"] for f in stream.of("message.created")] == ["two"]
    del frames


async def test_malformed_cursor_is_400(alice: User) -> None:
    for bad in ("not-a-cursor", "v1.", "v1.!!!!!!!!!!!!!!!!!!!!!!", "v2.AAAAAAAAAAAAAAAAAAAAAA"):
        assert_problem(await alice.http.get("/v1/events", params={"cursor": bad}), 400)
        assert_problem(await alice.http.get("/v1/events", headers={"Last-Event-ID": bad}), 400)


async def test_room_filter_needs_membership(alice: User, bob: User) -> None:
    room = await alice.create_room()
    assert_problem(await bob.http.get("/v1/events", params={"room_id": room["id"]}), 404)
    assert_problem(await bob.http.get("/v1/events", params={"room_id": "garbage"}), 404)


async def test_room_filter_shows_only_that_room(server: RunningServer, alice: User) -> None:
    one, two = await alice.create_room("one"), await alice.create_room("two")
    async with open_stream(server.url, alice.token, room_id=one["id"]) as stream:
        await alice.send(two["id"], "elsewhere")
        await alice.send(one["id"], "here")
        frames = await stream.wait_for(1, "message.created")
        await asyncio.sleep(0.2)
    assert [f.data["room_id"] for f in stream.frames] == [one["id"]]
    del frames


async def test_removed_member_gets_its_removal_then_nothing(
    server: RunningServer, alice: User, bob: User
) -> None:
    room = await alice.create_room(members=[bob])
    other = await alice.create_room(members=[bob])
    async with open_stream(server.url, bob.token) as stream:
        await alice.send(room["id"], "before")
        await alice.http.delete(f"/v1/rooms/{room['id']}/members/{bob.name}")
        await alice.send(room["id"], "after removal")
        await alice.send(other["id"], "still here")
        await stream.wait_for(1, "message.created")
        await stream.wait_for(2, "message.created")
        await asyncio.sleep(0.2)
    in_room = [
        (f.event, f.data.get("message", {}).get("body"))
        for f in stream.frames
        if f.data["room_id"] == room["id"]
    ]
    assert in_room == [("message.created", "before"), ("member.removed", None)]
    removal = stream.of("member.removed")[0]
    assert removal.data["member"]["user_id"] == bob.name
    assert [f.data["message"]["body"] for f in stream.of("message.created")] == ["before", "still here"]


async def test_added_member_starts_receiving(server: RunningServer, alice: User, bob: User) -> None:
    room = await alice.create_room()
    async with open_stream(server.url, bob.token) as stream:
        await alice.send(room["id"], "before bob")
        await alice.http.put(f"/v1/rooms/{room['id']}/members/{bob.name}")
        await alice.send(room["id"], "for bob")
        frames = await stream.wait_for(2)
    assert [f.event for f in frames] == ["member.added", "message.created"]
    assert frames[1].data["message"]["body"] == "for bob"


async def test_replay_of_a_removed_member_holds_only_its_removal(
    server: RunningServer, alice: User, bob: User
) -> None:
    room = await alice.create_room(members=[bob])
    cursor = (await bob.http.get("/v1/rooms")).json()["stream_cursor"]
    await alice.send(room["id"], "secret after cursor")
    await alice.http.delete(f"/v1/rooms/{room['id']}/members/{bob.name}")
    async with open_stream(server.url, bob.token, cursor=cursor) as stream:
        frames = await stream.wait_for(1, "member.removed")
        await asyncio.sleep(0.2)
    assert [f.event for f in stream.frames] == ["member.removed"]
    del frames


async def test_writers_in_many_rooms_and_a_reconnecting_reader_see_every_event_once_in_order(
    server: RunningServer, make_user: UserFactory
) -> None:
    writers = [make_user(f"writer{i}") for i in range(4)]
    reader = make_user("reader")
    rooms = [await writers[i].create_room(f"busy{i}", members=[reader]) for i in range(4)]
    per_room = 25
    expected: dict[str, list[int]] = defaultdict(list)

    async def write(i: int) -> None:
        for n in range(per_room):
            r = await writers[i].send(rooms[i]["id"], f"w{i}-{n}")
            assert r.status_code == 201
            expected[rooms[i]["id"]].append(r.json()["seq"])
            await asyncio.sleep(random.uniform(0.005, 0.02))  # writing outlasts several reconnects

    got: list[tuple[str, int]] = []
    cursor = (await reader.http.get("/v1/rooms")).json()["stream_cursor"]
    writing = asyncio.gather(*[write(i) for i in range(4)])
    reconnects = 0
    while True:
        async with open_stream(server.url, reader.token, last_event_id=cursor) as stream:
            await asyncio.sleep(random.uniform(0.01, 0.08))  # read a while, then drop the connection
        for frame in stream.of("message.created"):
            got.append((frame.data["room_id"], frame.data["seq"]))
        cursor = stream.last_id or cursor
        reconnects += 1
        if writing.done() and len(got) >= 4 * per_room:
            break
        assert reconnects < 500
    await writing
    assert len(got) == len(set(got)) == 4 * per_room, "every event exactly once"
    for room_id, seqs in expected.items():
        assert [s for r, s in got if r == room_id] == sorted(seqs), "per room in seq order"
    assert reconnects > 3


async def test_an_open_writer_transaction_holds_back_later_events_until_it_ends(
    server: RunningServer, database_url: str, alice: User
) -> None:
    room = await alice.create_room()
    blocker = await asyncpg.connect(database_url)
    try:
        async with open_stream(server.url, alice.token, room_id=room["id"]) as stream:
            tx = blocker.transaction()
            await tx.start()
            await blocker.execute("SELECT pg_current_xact_id()")  # takes an xid, like a writer mid-flight
            await alice.send(room["id"], "committed behind an older open transaction")
            await asyncio.sleep(0.5)
            assert stream.of("message.created") == [], "not readable below the horizon yet"
            await tx.rollback()
            frames = await stream.wait_for(1, "message.created", timeout=5)
        assert frames[0].data["message"]["body"].startswith("committed behind")
    finally:
        await blocker.close()


async def test_hub_reconnects_after_losing_its_listen_connection(
    start_server: ServerFactory, make_user: UserFactory, database_url: str
) -> None:
    running = await start_server()
    alice, bob = make_user("alice", running.url), make_user("bob", running.url)
    room = await alice.create_room(members=[bob])
    hub = running.server.config.app.state.resources.hub
    async with open_stream(running.url, bob.token, room_id=room["id"]) as stream:
        await alice.send(room["id"], "before")
        await stream.wait_for(1, "message.created")
        admin = await asyncpg.connect(database_url)
        try:
            pid = hub._conn.get_server_pid()
            assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
        finally:
            await admin.close()
        sent = [(await alice.send(room["id"], f"while down {i}")).json()["seq"] for i in range(3)]
        frames = await stream.wait_for(4, "message.created", timeout=15)
    assert [f.data["seq"] for f in frames[1:]] == sent
    assert hub._conn.get_server_pid() != pid


async def test_cursor_older_than_the_retained_log_gets_reset(
    server: RunningServer, settings: Settings, database_url: str, alice: User
) -> None:
    room = await alice.create_room()
    old_cursor = (await alice.http.get("/v1/rooms")).json()["stream_cursor"]
    await alice.send(room["id"], "soon pruned")
    assert await age_and_prune(database_url, room["id"], settings)
    async with open_stream(server.url, alice.token, last_event_id=old_cursor) as stream:
        reset = (await stream.wait_for(1, "reset"))[0]
        after = (await alice.send(room["id"], "after reset")).json()
        frame = (await stream.wait_for(1, "message.created"))[0]
    assert stream.frames[0].event == "reset" and reset.id == reset.data["cursor"]
    assert Cursor.decode(reset.id) > Cursor.decode(old_cursor)
    assert frame.data["message"] == after
    assert "soon pruned" not in str(stream.frames)


async def test_pruning_keeps_recent_events(settings: Settings, alice: User, server: RunningServer) -> None:
    room = await alice.create_room()
    cursor = (await alice.http.get("/v1/rooms")).json()["stream_cursor"]
    await alice.send(room["id"], "recent")
    db = Database(settings)
    await db.open()
    try:
        await prune(db, settings.event_retention_seconds)
    finally:
        await db.close()
    async with open_stream(server.url, alice.token, last_event_id=cursor) as stream:
        frame = (await stream.wait_for(1, "message.created"))[0]
    assert frame.data["message"]["body"] == "recent" and not stream.of("reset")


async def test_per_user_stream_limit(start_server: ServerFactory, make_user: UserFactory) -> None:
    running = await start_server(stream_max_per_user=2)
    alice = make_user("alice", running.url)
    async with open_stream(running.url, alice.token), open_stream(running.url, alice.token):
        r = await alice.http.get("/v1/events")
        problem = assert_problem(r, 429)
        assert r.headers["retry-after"] and "2" in problem["detail"]
    async with open_stream(running.url, alice.token) as again:
        assert again.status == 200, "closed streams free their slots"


async def test_heartbeat_comments_keep_idle_streams_alive(
    start_server: ServerFactory, make_user: UserFactory
) -> None:
    running = await start_server(stream_heartbeat_seconds=0.1)
    alice = make_user("alice", running.url)
    async with open_stream(running.url, alice.token) as stream:
        await asyncio.sleep(0.5)
    assert len(stream.comments) >= 2 and stream.frames == []


async def test_shutdown_ends_open_streams_quickly(
    start_server: ServerFactory, make_user: UserFactory
) -> None:
    running = await start_server()
    alice = make_user("alice", running.url)
    async with open_stream(running.url, alice.token) as stream:
        started = asyncio.get_running_loop().time()
        await running.stop()
        async with asyncio.timeout(3):
            await stream.ended.wait()
        assert asyncio.get_running_loop().time() - started < 3
    with pytest.raises(httpx.ConnectError):
        await alice.http.get("/v1/rooms")


async def test_a_slow_stream_is_ended_instead_of_buffering_without_bound() -> None:
    subscription = Subscription("slow", None, buffer=3)
    for i in range(3):
        subscription.offer((Cursor(1, i), b"frame"))
    subscription.offer((Cursor(1, 99), b"one too many"))
    assert subscription.overflowed
    assert await subscription.take() == [END]
    subscription.offer((Cursor(2, 0), b"ignored after overflow"))
    assert subscription.items == []


async def test_a_stream_takes_everything_queued_at_once_in_order() -> None:
    subscription = Subscription("reader", None, buffer=10)
    waiting = asyncio.create_task(subscription.take())
    await asyncio.sleep(0)
    assert not waiting.done()
    subscription.offer((Cursor(1, 1), b"first"))
    subscription.offer((Cursor(1, 2), b"second"))
    assert await waiting == [(Cursor(1, 1), b"first"), (Cursor(1, 2), b"second")]
    subscription.offer(END)
    assert await subscription.take() == [END]


async def test_prune_command_deletes_only_expired_events(
    database_url: str, alice: User, server: RunningServer
) -> None:
    room = await alice.create_room()
    await alice.send(room["id"], "old")
    await alice.send(room["id"], "new")
    db = await asyncpg.connect(database_url)
    try:
        await db.execute(
            "UPDATE events SET created_at = now() - interval '8 days' WHERE room_id = $1 AND seq <= 2",
            uuid.UUID(room["id"]),
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CHAT_API_", "DATABASE_URL"))}
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "chat_api",
            "prune",
            env={**env, "DATABASE_URL": database_url},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        output, _ = await asyncio.wait_for(process.communicate(), 60)
        assert process.returncode == 0, output
        assert b"pruned" in output
        kinds = await db.fetch(
            "SELECT kind FROM events WHERE room_id = $1 ORDER BY seq", uuid.UUID(room["id"])
        )
    finally:
        await db.close()
    assert [k["kind"] for k in kinds] == ["message.created"], "the room's two oldest events are gone"


# --- streams end with their credentials (security review finding 1) ----------------------------------


async def test_a_stream_ends_with_a_reauth_frame_when_its_token_expires_and_resumes_losslessly(
    start_server: ServerFactory, make_user: UserFactory
) -> None:
    """A stream outlived its token: the token was checked only when the stream connected, and the
    heartbeat kept the stream open for hours after `exp`."""
    running = await start_server(stream_heartbeat_seconds=0.2)
    alice, bob = make_user("alice", running.url), make_user("bob", running.url)
    room = await alice.create_room(members=[bob])
    short = mint_token(TEST_SECRET, bob.name, 2)
    started = time.monotonic()
    async with open_stream(running.url, short, room_id=room["id"]) as stream:
        sent = (await alice.send(room["id"], "before the end")).json()
        await stream.wait_for(1, "message.created")
        async with asyncio.timeout(10):
            await stream.ended.wait()
    assert time.monotonic() - started < 2 + 0.2 + 3  # exp, one heartbeat, slack
    last = stream.frames[-1]
    assert (last.event, last.id, last.data) == ("reauth", None, {"reason": "token expired"})
    assert stream.of("message.created")[0].data["message"] == sent
    missed = (await alice.send(room["id"], "while reconnecting")).json()
    async with open_stream(running.url, bob.token, room_id=room["id"], last_event_id=stream.last_id) as again:
        frames = await again.wait_for(1, "message.created")
    assert [f.data["message"] for f in frames] == [missed]


async def test_revoke_streams_ends_the_users_streams_on_every_replica(
    start_server: ServerFactory, make_user: UserFactory, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = await start_server(), await start_server()
    alice, bob = make_user("alice", a.url), make_user("bob", b.url)
    room = await alice.create_room(members=[bob])
    for name in [n for n in os.environ if n.startswith("CHAT_API_") or n.startswith("DATABASE_URL")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("DATABASE_URL", database_url)
    async with (
        open_stream(a.url, bob.token) as bob_on_a,
        open_stream(b.url, bob.token) as bob_on_b,
        open_stream(a.url, alice.token) as alice_on_a,
    ):
        assert await asyncio.to_thread(cli.main, ["revoke-streams", bob.name]) == 0
        async with asyncio.timeout(10):
            await bob_on_a.ended.wait()
            await bob_on_b.ended.wait()
        for stream in (bob_on_a, bob_on_b):
            assert (stream.frames[-1].event, stream.frames[-1].data) == ("reauth", {"reason": "revoked"})
        sent = (await alice.send(room["id"], "alice is still here")).json()
        frame = (await alice_on_a.wait_for(1, "message.created"))[0]
        assert frame.data["message"] == sent and not alice_on_a.ended.is_set()
