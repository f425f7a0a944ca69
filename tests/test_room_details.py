"""Room details (SPEC §8): PATCH /v1/rooms/{room_id} changes name and topic (owner only), answers the
room and emits room.updated with it; rooms carry a topic of at most 1,000 characters."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from tests.support.problems import assert_problem
from tests.support.servers import RunningServer, ServerFactory
from tests.support.sse import open_stream
from tests.support.users import User, UserFactory


async def patch(user: User, room_id: str, body: Any) -> httpx.Response:
    return await user.http.patch(f"/v1/rooms/{room_id}", json=body)


ROOM_KEYS = {
    "id", "name", "created_by", "created_at", "last_seq", "unread_count", "last_message",
    "kind", "topic", "mention_count",
}  # fmt: skip


async def test_rooms_carry_kind_topic_and_mention_count(alice: User, bob: User) -> None:
    room = await alice.create_room("shape", members=[bob])
    assert set(room) == ROOM_KEYS | {"members"}
    assert (room["kind"], room["topic"], room["mention_count"]) == ("group", None, 0)
    assert set((await bob.http.get(f"/v1/rooms/{room['id']}")).json()) == ROOM_KEYS | {"members"}
    [item] = (await bob.http.get("/v1/rooms")).json()["items"]
    assert set(item) == ROOM_KEYS
    assert (item["kind"], item["topic"], item["mention_count"]) == ("group", None, 0)


async def test_owner_sets_topic_and_name_and_gets_the_room(alice: User, bob: User) -> None:
    room = await alice.create_room("before", members=[bob])
    assert room["topic"] is None
    r = await patch(alice, room["id"], {"topic": "Plans for the weekend"})
    assert r.status_code == 200, r.text
    updated = r.json()
    assert updated["id"] == room["id"] and updated["name"] == "before"
    assert updated["topic"] == "Plans for the weekend" and updated["kind"] == "group"
    assert updated["members"] == room["members"], "the room with its members, as GET shows it"
    assert updated["last_seq"] == room["last_seq"] + 1, "a change takes the room's next seq"
    renamed = (await patch(alice, room["id"], {"name": "after"})).json()
    assert renamed["name"] == "after" and renamed["topic"] == "Plans for the weekend", "topic kept"
    both = (await patch(alice, room["id"], {"name": "both", "topic": "new topic"})).json()
    assert (both["name"], both["topic"]) == ("both", "new topic")
    shown = (await bob.http.get(f"/v1/rooms/{room['id']}")).json()
    assert (shown["name"], shown["topic"]) == ("both", "new topic")
    item = next(r for r in (await bob.http.get("/v1/rooms")).json()["items"] if r["id"] == room["id"])
    assert (item["name"], item["topic"]) == ("both", "new topic")


async def test_topic_null_clears_it(alice: User) -> None:
    room = await alice.create_room()
    await patch(alice, room["id"], {"topic": "temporary"})
    r = await patch(alice, room["id"], {"topic": None})
    assert r.status_code == 200 and r.json()["topic"] is None, r.text
    assert (await alice.http.get(f"/v1/rooms/{room['id']}")).json()["topic"] is None


async def test_topic_is_at_most_1000_characters(alice: User) -> None:
    room = await alice.create_room()
    longest = "é" * 1000  # characters, not bytes
    r = await patch(alice, room["id"], {"topic": longest})
    assert r.status_code == 200 and r.json()["topic"] == longest, r.text
    assert_problem(await patch(alice, room["id"], {"topic": "x" * 1001}), 422)
    assert (await alice.http.get(f"/v1/rooms/{room['id']}")).json()["topic"] == longest


async def test_bad_bodies_are_422_and_change_nothing(alice: User) -> None:
    room = await alice.create_room("steady")
    before = (await alice.http.get(f"/v1/rooms/{room['id']}")).json()
    bodies: list[Any] = [
        {},
        {"colour": "red"},
        {"topic": "ok", "colour": "red"},
        {"name": ""},
        {"name": "x" * 201},
        {"name": None},
        {"name": 5},
        {"topic": 5},
        {"topic": ["a"]},
        {"topic": "nul\x00"},
        {"name": "nul\x00"},
        [],
        "topic",
    ]
    for body in bodies:
        assert_problem(await patch(alice, room["id"], body), 422)
    r = await alice.http.patch(
        f"/v1/rooms/{room['id']}", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert_problem(r, 422)
    assert (await alice.http.get(f"/v1/rooms/{room['id']}")).json() == before


async def test_members_get_403_and_outsiders_404(alice: User, bob: User, make_user: UserFactory) -> None:
    room = await alice.create_room("owned", members=[bob])
    await alice.send(room["id"], "inside")
    assert_problem(await patch(bob, room["id"], {"topic": "mine now"}), 403)
    assert_problem(await patch(bob, room["id"], {"name": "mine now"}), 403)
    outsider = make_user("mallory")
    for room_id in (room["id"], "00000000-0000-0000-0000-000000000000", "not-a-room"):
        r = await patch(outsider, room_id, {"topic": "hello"})
        problem = assert_problem(r, 404)
        assert "inside" not in r.text and "owned" not in r.text and problem["detail"] == "No such room."
    assert (await alice.http.delete(f"/v1/rooms/{room['id']}/members/{bob.name}")).status_code == 204
    assert_problem(await patch(bob, room["id"], {"topic": "after removal"}), 404)
    shown = (await alice.http.get(f"/v1/rooms/{room['id']}")).json()
    assert (shown["name"], shown["topic"]) == ("owned", None)


async def test_room_updated_reaches_members_with_the_room(
    server: RunningServer, alice: User, bob: User, carol: User
) -> None:
    room = await alice.create_room("news", members=[bob])
    async with (
        open_stream(server.url, bob.token) as bob_stream,
        open_stream(server.url, bob.token, room_id=room["id"]) as bob_room_stream,
        open_stream(server.url, carol.token) as carol_stream,
    ):
        updated = (await patch(alice, room["id"], {"name": "headlines", "topic": "today"})).json()
        cleared = (await patch(alice, room["id"], {"topic": None})).json()
        for stream in (bob_stream, bob_room_stream):
            await stream.wait_for(2, "room.updated")
        await asyncio.sleep(0.2)
    for stream in (bob_stream, bob_room_stream):
        frames = stream.of("room.updated")
        assert [f.event for f in stream.after(room["last_seq"])] == ["room.updated", "room.updated"]
        assert all(f.id for f in frames), "room.updated is in the event log: resumable"
        first, second = (f.data for f in frames)
        assert first["room_id"] == room["id"] and first["seq"] == updated["last_seq"]
        assert second["seq"] == cleared["last_seq"] > first["seq"]
        for data, expected in ((first, updated), (second, cleared)):
            got = data["room"]
            for key in ("id", "name", "topic", "kind", "created_by", "created_at", "last_seq", "members"):
                assert got[key] == expected[key], key
    assert carol_stream.frames == []


async def test_room_updated_is_replayed_on_resume(server: RunningServer, alice: User, bob: User) -> None:
    room = await alice.create_room("replay", members=[bob])
    cursor = (await bob.http.get("/v1/rooms")).json()["stream_cursor"]
    await patch(alice, room["id"], {"topic": "while away"})
    async with open_stream(server.url, bob.token, last_event_id=cursor) as stream:
        [frame] = await stream.wait_for(1, "room.updated")
    assert frame.data["room"]["topic"] == "while away"


async def test_concurrent_updates_each_take_a_seq(alice: User) -> None:
    room = await alice.create_room()
    results = await asyncio.gather(*[patch(alice, room["id"], {"topic": f"t{i}"}) for i in range(10)])
    assert all(r.status_code == 200 for r in results), [r.text for r in results]
    seqs = sorted(r.json()["last_seq"] for r in results)
    assert seqs == list(range(room["last_seq"] + 1, room["last_seq"] + 11))
    final = (await alice.http.get(f"/v1/rooms/{room['id']}")).json()
    assert final["topic"] == next(r.json()["topic"] for r in results if r.json()["last_seq"] == seqs[-1])


async def test_room_updates_are_rate_limited_like_other_writes(
    start_server: ServerFactory, make_user: UserFactory
) -> None:
    running = await start_server(rate_limits=True)
    alice = make_user("alice", running.url)  # type: ignore[call-arg]
    room = await alice.create_room()
    statuses: list[int] = []
    for i in range(1000):
        r = await patch(alice, room["id"], {"topic": f"topic {i}"})
        statuses.append(r.status_code)
        if r.status_code == 429:
            break
    assert statuses[-1] == 429, "1000 room updates in a burst, none refused"
    assert len(statuses) > 5 and set(statuses[:-1]) == {200}, statuses
    assert_problem(r, 429)
    assert int(r.headers["retry-after"]) >= 1
    shown = (await alice.http.get(f"/v1/rooms/{room['id']}")).json()
    assert shown["topic"] == f"topic {len(statuses) - 2}", "the refused update changed nothing"
