"""Direct messages (SPEC §8): PUT /v1/dms/{user_id} gives the one direct room of a pair, 201 when it
creates it and 200 after, from either side, also when both sides race; a direct room has two members,
no owner, no member changes and no renaming."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from tests.support.problems import assert_problem
from tests.support.servers import RunningServer, ServerFactory
from tests.support.sse import open_stream
from tests.support.users import User, UserFactory


async def dm(user: User, other: str) -> httpx.Response:
    return await user.http.put(f"/v1/dms/{other}")


async def listed(user: User, room_id: str) -> dict[str, Any]:
    items = {r["id"]: r for r in (await user.http.get("/v1/rooms")).json()["items"]}
    return dict(items[room_id])


async def test_201_then_200_with_the_same_room_from_either_side(alice: User, bob: User) -> None:
    first = await dm(alice, bob.name)
    assert first.status_code == 201, first.text
    room = first.json()
    assert room["kind"] == "direct" and room["topic"] is None
    assert sorted((m["user_id"], m["role"]) for m in room["members"]) == sorted(
        [(alice.name, "member"), (bob.name, "member")]
    ), "two members, no owner"
    assert room["name"] == ", ".join(sorted([alice.name, bob.name]))
    again = await dm(alice, bob.name)
    assert again.status_code == 200, again.text
    other_side = await dm(bob, alice.name)
    assert other_side.status_code == 200, other_side.text
    assert again.json()["id"] == other_side.json()["id"] == room["id"]
    assert again.json()["members"] == room["members"]
    assert (await bob.http.get(f"/v1/rooms/{room['id']}")).json()["kind"] == "direct"


async def test_a_dm_is_a_room_both_can_use(alice: User, bob: User) -> None:
    room = (await dm(alice, bob.name)).json()
    rid = room["id"]
    sent = (await bob.send(rid, "psst")).json()
    assert (await alice.send(rid, "hi back", reply_to=sent["seq"])).status_code == 201
    history = (await alice.http.get(f"/v1/rooms/{rid}/messages")).json()["items"]
    assert [m["body"] for m in history] == ["psst", "hi back"]
    for user, other in ((alice, bob), (bob, alice)):
        item = await listed(user, rid)
        assert item["kind"] == "direct" and item["last_message"]["body"] == "hi back"
        assert item["unread_count"] == 1, f"{user.name} has one message of {other.name} unread"
    # No owner: neither may delete the other's message.
    assert_problem(await alice.http.delete(f"/v1/rooms/{rid}/messages/{sent['seq']}"), 403)
    assert (await bob.http.delete(f"/v1/rooms/{rid}/messages/{sent['seq']}")).status_code == 204


async def test_group_rooms_say_so(alice: User, bob: User) -> None:
    room = await alice.create_room("group", members=[bob])
    assert room["kind"] == "group" and room["topic"] is None
    assert (await listed(bob, room["id"]))["kind"] == "group"


async def test_a_dm_with_someone_who_never_signed_in_is_fine(alice: User) -> None:
    r = await dm(alice, "newcomer-who-never-called")
    assert r.status_code == 201, r.text
    assert {m["user_id"] for m in r.json()["members"]} == {alice.name, "newcomer-who-never-called"}


async def test_a_dm_with_yourself_is_422(alice: User) -> None:
    assert_problem(await dm(alice, alice.name), 422)
    assert (await alice.http.get("/v1/rooms")).json()["items"] == []


async def test_pairs_are_distinct(alice: User, bob: User, carol: User) -> None:
    ab = (await dm(alice, bob.name)).json()["id"]
    ac = (await dm(alice, carol.name)).json()["id"]
    bc = (await dm(bob, carol.name)).json()["id"]
    assert len({ab, ac, bc}) == 3
    assert_problem(await carol.http.get(f"/v1/rooms/{ab}"), 404)  # outsiders of a DM see 404
    assert {r["id"] for r in (await alice.http.get("/v1/rooms")).json()["items"]} == {ab, ac}


async def test_concurrent_creation_from_both_sides_makes_one_room(make_user: UserFactory) -> None:
    for attempt in range(5):
        a, b = make_user(f"left{attempt}"), make_user(f"right{attempt}")
        calls = [dm(a, b.name) if i % 2 else dm(b, a.name) for i in range(12)]
        results = await asyncio.gather(*calls)
        assert sorted(r.status_code for r in results) == [200] * 11 + [201], [r.text for r in results]
        assert len({r.json()["id"] for r in results}) == 1
        for user in (a, b):
            rooms = (await user.http.get("/v1/rooms")).json()["items"]
            assert [r["kind"] for r in rooms] == ["direct"], "exactly one room for the pair"


async def test_members_cannot_be_added_or_removed(alice: User, bob: User, carol: User) -> None:
    room = (await dm(alice, bob.name)).json()
    rid = room["id"]
    for r in (
        await alice.http.put(f"/v1/rooms/{rid}/members/{carol.name}"),
        await bob.http.put(f"/v1/rooms/{rid}/members/{carol.name}"),
        await alice.http.delete(f"/v1/rooms/{rid}/members/{bob.name}"),
        await bob.http.delete(f"/v1/rooms/{rid}/members/{alice.name}"),
        await alice.http.delete(f"/v1/rooms/{rid}/members/{alice.name}"),  # leaving
    ):
        assert_problem(r, 409)
    after = (await alice.http.get(f"/v1/rooms/{rid}")).json()
    assert after["members"] == room["members"] and after["last_seq"] == room["last_seq"]
    assert_problem(await carol.http.get(f"/v1/rooms/{rid}"), 404)


async def test_a_dm_cannot_be_renamed(alice: User, bob: User) -> None:
    room = (await dm(alice, bob.name)).json()
    for user in (alice, bob):
        assert_problem(await user.http.patch(f"/v1/rooms/{room['id']}", json={"name": "ours"}), 409)
    assert (await alice.http.get(f"/v1/rooms/{room['id']}")).json()["name"] == room["name"]


async def test_outsiders_get_404(alice: User, bob: User, carol: User) -> None:
    room = (await dm(alice, bob.name)).json()
    rid = room["id"]
    await alice.send(rid, "just us")
    for r in (
        await carol.http.get(f"/v1/rooms/{rid}"),
        await carol.http.get(f"/v1/rooms/{rid}/messages"),
        await carol.send(rid, "let me in"),
        await carol.http.put(f"/v1/rooms/{rid}/members/{carol.name}"),
        await carol.http.patch(f"/v1/rooms/{rid}", json={"name": "mine"}),
    ):
        assert_problem(r, 404)
        assert "just us" not in r.text


async def test_room_created_reaches_both_streams_once(
    server: RunningServer, alice: User, bob: User, carol: User
) -> None:
    async with (
        open_stream(server.url, alice.token) as alice_stream,
        open_stream(server.url, bob.token) as bob_stream,
        open_stream(server.url, carol.token) as carol_stream,
    ):
        room = (await dm(alice, bob.name)).json()
        assert (await dm(bob, alice.name)).status_code == 200
        marker = (await alice.send(room["id"], "marker")).json()
        for stream in (alice_stream, bob_stream):
            await stream.wait_for(1, "message.created")
        await asyncio.sleep(0.2)
    for stream in (alice_stream, bob_stream):
        assert [f.event for f in stream.frames] == ["room.created", "message.created"]
        created = stream.frames[0].data
        assert created["room_id"] == room["id"] and created["room"]["kind"] == "direct"
        assert created["room"]["members"] == room["members"] and created["room"]["name"] == room["name"]
        assert stream.frames[1].data["message"] == marker
    assert carol_stream.frames == []


async def test_user_ids_in_the_path_that_cannot_be_user_ids_are_refused(alice: User) -> None:
    # Room members are 1..255 characters (POST /v1/rooms): a longer id cannot be a member.
    assert (await dm(alice, "y" * 255)).status_code == 201
    for r in (await dm(alice, "x" * 256), await alice.http.put("/v1/dms/nul%00byte")):
        assert r.status_code in (404, 422), r.text
        assert_problem(r, r.status_code)
    assert len((await alice.http.get("/v1/rooms")).json()["items"]) == 1


async def test_opening_dms_is_rate_limited_like_other_writes(
    start_server: ServerFactory, make_user: UserFactory
) -> None:
    running = await start_server(rate_limits=True)
    alice = make_user("alice", running.url)  # type: ignore[call-arg]
    statuses: list[int] = []
    for i in range(1000):
        r = await dm(alice, f"{alice.name}-friend-{i}")
        statuses.append(r.status_code)
        if r.status_code == 429:
            break
    assert statuses[-1] == 429, "1000 new direct rooms in a burst, none refused"
    assert len(statuses) > 5 and set(statuses[:-1]) == {201}, statuses
    assert_problem(r, 429)
    rooms = (await alice.http.get("/v1/rooms", params={"limit": 100})).json()["items"]
    assert len(rooms) == len(statuses) - 1, "the refused one created nothing"
