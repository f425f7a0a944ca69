"""Typing (SPEC §8): POST /v1/rooms/{room_id}/typing → 204; the other members' streams, on any replica,
get an `event: typing` frame with no `id:` line, never the typer's own; ephemeral (no seq, no log, no
replay); forwarded at most once per 2 s per user and room; rate-limited like other writes."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import httpx

from tests.support.problems import assert_problem
from tests.support.servers import RunningServer, ServerFactory
from tests.support.sse import Frame, Stream, open_stream
from tests.support.users import User, UserFactory
from tests.support.workers import serve_process

WINDOW = 2.0  # seconds: the same user and room is forwarded at most once per window
QUIET = 0.5  # how long a stream is watched for a frame that must not come


async def typing(user: User, room_id: str) -> httpx.Response:
    return await user.http.post(f"/v1/rooms/{room_id}/typing")


async def settle(stream: Stream, user: User, room_id: str) -> None:
    """Lets in-flight frames arrive: a message sent now reaches `stream`, then a short quiet time."""
    marker = (await user.send(room_id, "marker")).json()
    async with asyncio.timeout(10):
        while not any(
            f.data.get("message", {}).get("id") == marker["id"] for f in stream.of("message.created")
        ):
            await stream.wait_for(len(stream.frames) + 1)
    await asyncio.sleep(QUIET)


def assert_typing_frame(frame: Frame, room_id: str, user_id: str, sent_at: datetime) -> None:
    assert frame.event == "typing" and frame.id is None, "ephemeral: no id line"
    assert set(frame.data) == {"room_id", "user_id", "expires_at"}, frame.data
    assert frame.data["room_id"] == room_id and frame.data["user_id"] == user_id
    assert frame.data["expires_at"].endswith("Z"), frame.data
    expires = datetime.fromisoformat(frame.data["expires_at"])
    assert timedelta(seconds=4) <= expires - sent_at <= timedelta(seconds=6.5), (expires, sent_at)


async def test_other_members_streams_get_typing_without_id_and_the_typer_does_not(
    server: RunningServer, alice: User, bob: User, carol: User
) -> None:
    room = await alice.create_room(members=[bob, carol])
    rid = room["id"]
    async with (
        open_stream(server.url, bob.token) as bob_stream,
        open_stream(server.url, carol.token, room_id=rid) as carol_stream,
        open_stream(server.url, alice.token) as alice_stream,
        open_stream(server.url, alice.token, room_id=rid) as alice_room_stream,
    ):
        sent_at = datetime.now(UTC)
        r = await typing(alice, rid)
        assert r.status_code == 204 and r.content == b"", r.text
        for stream in (bob_stream, carol_stream):
            [frame] = await stream.wait_for(1, "typing")
            assert_typing_frame(frame, rid, alice.name, sent_at)
        for stream in (alice_stream, alice_room_stream):
            await settle(stream, bob, rid)
            assert stream.of("typing") == [], "never the typer's own streams"


async def test_typing_takes_no_seq_and_is_never_replayed(
    server: RunningServer, alice: User, bob: User
) -> None:
    room = await alice.create_room(members=[bob])
    rid = room["id"]
    cursor = (await bob.http.get("/v1/rooms")).json()["stream_cursor"]
    async with open_stream(server.url, bob.token, last_event_id=cursor) as live:
        assert (await typing(alice, rid)).status_code == 204
        await live.wait_for(1, "typing")
        sent = (await alice.send(rid, "after typing")).json()
        await live.wait_for(1, "message.created")
    assert sent["seq"] == room["last_seq"] + 1, "typing took no seq"
    assert [f.event for f in live.after(room["last_seq"])] == ["typing", "message.created"]
    # Resume from before the typing: the logged events come back, the typing does not.
    async with open_stream(server.url, bob.token, last_event_id=cursor) as again:
        [frame] = await again.wait_for(1, "message.created")
        assert frame.data["message"] == sent and frame.id == live.last_id
        await asyncio.sleep(QUIET)
    assert [f.event for f in again.after(room["last_seq"])] == ["message.created"]


async def test_repeats_within_two_seconds_are_answered_but_not_forwarded(
    server: RunningServer, alice: User, bob: User, carol: User
) -> None:
    room = await alice.create_room(members=[bob, carol])
    other = await alice.create_room(members=[carol])
    async with open_stream(server.url, carol.token) as stream:
        first_at = time.monotonic()
        assert (await typing(alice, room["id"])).status_code == 204
        await stream.wait_for(1, "typing")
        for _ in range(3):
            assert (await typing(alice, room["id"])).status_code == 204, "still 204 inside the window"
        # Per user and per room: bob in the same room, alice in another room, both forwarded.
        assert (await typing(bob, room["id"])).status_code == 204
        assert (await typing(alice, other["id"])).status_code == 204
        await stream.wait_for(3, "typing")
        assert time.monotonic() - first_at < WINDOW - QUIET - 0.3, "the test itself was too slow"
        await settle(stream, bob, room["id"])
        assert [(f.data["room_id"], f.data["user_id"]) for f in stream.of("typing")] == [
            (room["id"], alice.name),
            (room["id"], bob.name),
            (other["id"], alice.name),
        ]
        # After the window the same user and room is forwarded again.
        await asyncio.sleep(max(0.0, first_at + WINDOW + 0.2 - time.monotonic()))
        sent_at = datetime.now(UTC)
        assert (await typing(alice, room["id"])).status_code == 204
        frames = await stream.wait_for(4, "typing")
    assert_typing_frame(frames[3], room["id"], alice.name, sent_at)


async def test_outsiders_and_removed_members_get_404_and_no_typing(
    server: RunningServer, alice: User, bob: User, carol: User, make_user: UserFactory
) -> None:
    room = await alice.create_room(members=[bob, carol])
    rid = room["id"]
    outsider = make_user("mallory")
    async with (
        open_stream(server.url, carol.token) as carol_stream,
        open_stream(server.url, outsider.token) as outsider_stream,
    ):
        assert (await alice.http.delete(f"/v1/rooms/{rid}/members/{carol.name}")).status_code == 204
        await carol_stream.wait_for(1, "member.removed")
        for user in (carol, outsider):
            problem = assert_problem(await typing(user, rid), 404)
            assert problem["detail"] == "No such room."
        for room_id in ("00000000-0000-0000-0000-000000000000", "not-a-room"):
            assert_problem(await typing(alice, room_id), 404)
        assert (await typing(alice, rid)).status_code == 204
        await asyncio.sleep(QUIET)
    assert carol_stream.of("typing") == [] and outsider_stream.frames == [], "members only"
    async with httpx.AsyncClient(base_url=server.url) as anonymous:
        assert_problem(await anonymous.post(f"/v1/rooms/{rid}/typing"), 401)


async def test_a_refused_call_does_not_hold_back_the_first_notice_once_a_member(
    server: RunningServer, alice: User, bob: User, carol: User
) -> None:
    """An outsider's typing is refused (404) and remembered nowhere: added to the room a moment later,
    its first notice is forwarded at once, not 2 s later."""
    room = await alice.create_room(members=[bob])
    rid = room["id"]
    async with open_stream(server.url, bob.token, room_id=rid) as bob_stream:
        assert_problem(await typing(carol, rid), 404)
        assert (await alice.http.put(f"/v1/rooms/{rid}/members/{carol.name}")).status_code == 201
        sent_at = datetime.now(UTC)
        assert (await typing(carol, rid)).status_code == 204
        [frame] = await bob_stream.wait_for(1, "typing")
    assert_typing_frame(frame, rid, carol.name, sent_at)


async def test_a_notice_on_the_channel_reaches_streams_only_as_the_three_fields(
    server: RunningServer, database_url: str, alice: User, bob: User
) -> None:
    """Whoever else NOTIFYs on chat_typing (anyone with database access can) cannot shape a frame: a
    line break between JSON tokens or an extra key never reaches a stream, and a payload that is not
    a notice is dropped."""
    room = await alice.create_room(members=[bob])
    rid = room["id"]
    crafted = '{"room_id": "%s",\n"user_id": "%s", "expires_at": "2030-01-01T00:00:00Z", "id": "v1.x"}'
    async with open_stream(server.url, bob.token, room_id=rid) as bob_stream:
        db = await asyncpg.connect(database_url)
        try:
            for payload in ("not json", '{"room_id": "x"}', crafted % (rid, alice.name)):
                await db.execute("SELECT pg_notify('chat_typing', $1)", payload)
        finally:
            await db.close()
        [frame] = await bob_stream.wait_for(1, "typing")
        await settle(bob_stream, alice, rid)
    assert frame.id is None and frame.data == {
        "room_id": rid,
        "user_id": alice.name,
        "expires_at": "2030-01-01T00:00:00Z",
    }
    assert len(bob_stream.of("typing")) == 1


async def test_a_stream_of_another_room_gets_no_typing(server: RunningServer, alice: User, bob: User) -> None:
    here = await alice.create_room(members=[bob])
    there = await alice.create_room(members=[bob])
    async with open_stream(server.url, bob.token, room_id=there["id"]) as stream:
        assert (await typing(alice, here["id"])).status_code == 204
        assert (await typing(alice, there["id"])).status_code == 204
        await stream.wait_for(1, "typing")
        await settle(stream, alice, there["id"])
    assert [f.data["room_id"] for f in stream.of("typing")] == [there["id"]]


async def test_typing_reaches_a_stream_on_another_server_process(
    runtime_url: str, tmp_path: Path, make_user: UserFactory
) -> None:
    """Typer on process A, listener on process B: two `chat-api serve` processes on one database."""
    with serve_process(runtime_url, tmp_path, "a") as a, serve_process(runtime_url, tmp_path, "b") as b:
        await asyncio.gather(asyncio.to_thread(a.wait_ready, 1), asyncio.to_thread(b.wait_ready, 1))
        alice, bob = make_user("alice", a.url), make_user("bob", b.url)  # type: ignore[call-arg]
        room = await alice.create_room(members=[bob])
        rid = room["id"]
        async with (
            open_stream(b.url, bob.token, room_id=rid) as bob_on_b,
            open_stream(b.url, alice.token, room_id=rid) as alice_on_b,
        ):
            sent_at, first_at = datetime.now(UTC), time.monotonic()
            assert (await typing(alice, rid)).status_code == 204
            [frame] = await bob_on_b.wait_for(1, "typing")
            assert_typing_frame(frame, rid, alice.name, sent_at)
            # And back: bob types on B, a stream of alice's on A gets it.
            async with open_stream(a.url, alice.token, room_id=rid) as alice_on_a:
                assert (await typing(bob, rid)).status_code == 204
                [back] = await alice_on_a.wait_for(1, "typing")
                assert back.data["user_id"] == bob.name and back.id is None
            # Alice's next call inside the window reaches the other process: still not forwarded again.
            alice_via_b = User(alice.name, b.url)
            try:
                assert (await typing(alice_via_b, rid)).status_code == 204
            finally:
                await alice_via_b.http.aclose()
            assert time.monotonic() - first_at < WINDOW - 0.2, "the test itself was too slow"
            await settle(alice_on_b, bob, rid)
        assert [f.data["user_id"] for f in alice_on_b.of("typing")] == [bob.name]
        assert [f.data["user_id"] for f in bob_on_b.of("typing")] == [alice.name], "once per 2 s, not own"


async def test_typing_is_rate_limited_like_other_writes(
    start_server: ServerFactory, make_user: UserFactory
) -> None:
    running = await start_server(rate_limits=True)
    alice, bob = make_user("alice", running.url), make_user("bob", running.url)  # type: ignore[call-arg]
    room = await alice.create_room(members=[bob])
    statuses: list[int] = []
    refused: httpx.Response | None = None
    for _ in range(1000):
        r = await typing(alice, room["id"])
        statuses.append(r.status_code)
        if r.status_code != 204:
            refused = r
            break
    assert refused is not None, "1000 typing calls in a burst, none refused"
    assert len(statuses) > 5 and set(statuses[:-1]) == {204}, statuses
    problem = assert_problem(refused, 429)
    assert int(refused.headers["retry-after"]) >= 1 and "slow down" in problem["detail"].lower()
    assert (await typing(bob, room["id"])).status_code == 204, "another user's budget is their own"
