"""Rooms and membership: create, list with activity order and cursors, show, add, remove, leave."""

from __future__ import annotations

import asyncio

from tests.support.problems import assert_problem
from tests.support.users import User, UserFactory


async def test_creator_is_owner_and_listed_members_are_members(alice: User, bob: User, carol: User) -> None:
    room = await alice.create_room("general", members=[bob, carol, alice, bob])
    assert room["name"] == "general" and room["created_by"] == alice.name and room["last_seq"] == 1
    roles = {m["user_id"]: m["role"] for m in room["members"]}
    assert roles == {alice.name: "owner", bob.name: "member", carol.name: "member"}
    assert room["unread_count"] == 0 and room["last_message"] is None
    assert (await bob.http.get(f"/v1/rooms/{room['id']}")).json()["members"] == room["members"]


async def test_room_name_is_validated(alice: User) -> None:
    for body in (
        {"name": ""},
        {"name": "x" * 201},
        {},
        {"name": 3},
        {"name": "a", "members": "bob"},
        {"name": "a", "members": [""]},
        {"name": "nul\x00"},
        {"name": "a", "colour": "red"},
    ):
        assert_problem(await alice.http.post("/v1/rooms", json=body), 422)
    ok = await alice.http.post("/v1/rooms", json={"name": "x" * 200})
    assert ok.status_code == 201


async def test_malformed_json_is_a_clear_4xx(alice: User) -> None:
    r = await alice.http.post("/v1/rooms", content=b"{not json", headers={"content-type": "application/json"})
    problem = assert_problem(r, 422)
    assert "json" in problem["detail"].lower()


async def test_listing_orders_by_latest_activity(alice: User, bob: User) -> None:
    first = await alice.create_room("first")
    second = await alice.create_room("second", members=[bob])
    third = await alice.create_room("third")
    names = [r["name"] for r in (await alice.http.get("/v1/rooms")).json()["items"]]
    assert names == ["third", "second", "first"]
    await alice.send(first["id"], "wake up")
    names = [r["name"] for r in (await alice.http.get("/v1/rooms")).json()["items"]]
    assert names == ["first", "third", "second"]
    await alice.http.put(f"/v1/rooms/{second['id']}/members/{bob.name}x")
    names = [r["name"] for r in (await alice.http.get("/v1/rooms")).json()["items"]]
    assert names == ["second", "first", "third"], "a membership change is activity too"
    assert [r["name"] for r in (await bob.http.get("/v1/rooms")).json()["items"]] == ["second"]
    del third


async def test_listing_pages_with_cursor(alice: User) -> None:
    for i in range(7):
        await alice.create_room(f"r{i}")
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 3} | ({"cursor": cursor} if cursor else {})
        page = (await alice.http.get("/v1/rooms", params=params)).json()
        assert len(page["items"]) <= 3 and page["stream_cursor"]
        seen += [r["name"] for r in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [f"r{i}" for i in reversed(range(7))]


async def test_listing_shows_last_message_and_unread(alice: User, bob: User) -> None:
    room = await alice.create_room(members=[bob])
    await alice.send(room["id"], "first")
    await alice.send(room["id"], "latest")
    item = (await bob.http.get("/v1/rooms")).json()["items"][0]
    assert item["id"] == room["id"] and item["unread_count"] == 2
    assert item["last_message"]["body"] == "latest" and item["last_message"]["sender"] == alice.name
    assert set(item) == {
        "id",
        "kind",
        "name",
        "topic",
        "created_by",
        "created_at",
        "last_seq",
        "unread_count",
        "mention_count",
        "last_message",
    }


async def test_listing_query_errors(alice: User) -> None:
    for params in ({"limit": 0}, {"limit": 101}, {"limit": "many"}):
        assert_problem(await alice.http.get("/v1/rooms", params=params), 422)
    assert_problem(await alice.http.get("/v1/rooms", params={"cursor": "garbage!"}), 400)


async def test_empty_listing(alice: User) -> None:
    page = (await alice.http.get("/v1/rooms")).json()
    assert page["items"] == [] and page["next_cursor"] is None and page["stream_cursor"].startswith("v1.")


async def test_owner_adds_member_201_then_200(alice: User, bob: User) -> None:
    room = await alice.create_room()
    first = await alice.http.put(f"/v1/rooms/{room['id']}/members/{bob.name}")
    again = await alice.http.put(f"/v1/rooms/{room['id']}/members/{bob.name}")
    assert (first.status_code, again.status_code) == (201, 200), (first.text, again.text)
    assert first.json() == {"user_id": bob.name, "role": "member", "last_read_seq": 0} == again.json()
    owner_again = await alice.http.put(f"/v1/rooms/{room['id']}/members/{alice.name}")
    assert owner_again.status_code == 200 and owner_again.json()["role"] == "owner"
    assert (await bob.http.get(f"/v1/rooms/{room['id']}")).status_code == 200


async def test_concurrent_adds_of_one_user_add_once(alice: User, bob: User) -> None:
    room = await alice.create_room()
    results = await asyncio.gather(
        *[alice.http.put(f"/v1/rooms/{room['id']}/members/{bob.name}") for _ in range(6)]
    )
    assert sorted(r.status_code for r in results) == [200] * 5 + [201]


async def test_member_cannot_add_or_remove_others(alice: User, bob: User, carol: User) -> None:
    room = await alice.create_room(members=[bob, carol])
    assert_problem(await bob.http.put(f"/v1/rooms/{room['id']}/members/someone"), 403)
    assert_problem(await bob.http.delete(f"/v1/rooms/{room['id']}/members/{carol.name}"), 403)


async def test_owner_removes_member(alice: User, bob: User) -> None:
    room = await alice.create_room(members=[bob])
    assert (await alice.http.delete(f"/v1/rooms/{room['id']}/members/{bob.name}")).status_code == 204
    assert_problem(await bob.http.get(f"/v1/rooms/{room['id']}"), 404)
    assert_problem(await alice.http.delete(f"/v1/rooms/{room['id']}/members/{bob.name}"), 404)
    assert room["id"] not in [r["id"] for r in (await bob.http.get("/v1/rooms")).json()["items"]]


async def test_member_leaves_and_loses_access(alice: User, bob: User) -> None:
    room = await alice.create_room(members=[bob])
    await alice.send(room["id"], "before")
    assert (await bob.http.delete(f"/v1/rooms/{room['id']}/members/{bob.name}")).status_code == 204
    assert_problem(await bob.http.get(f"/v1/rooms/{room['id']}/messages"), 404)
    assert_problem(await bob.send(room["id"], "let me back"), 404)
    members = (await alice.http.get(f"/v1/rooms/{room['id']}")).json()["members"]
    assert [m["user_id"] for m in members] == [alice.name]


async def test_outsider_sees_404_everywhere(alice: User, bob: User, make_user: UserFactory) -> None:
    room = await alice.create_room(members=[bob])
    m = (await alice.send(room["id"], "secret")).json()
    outsider = make_user("mallory")
    rid = room["id"]
    for r in [
        await outsider.http.get(f"/v1/rooms/{rid}"),
        await outsider.http.get(f"/v1/rooms/{rid}/messages"),
        await outsider.http.get(f"/v1/rooms/{rid}/messages/{m['seq']}"),
        await outsider.send(rid, "hi"),
        await outsider.http.patch(f"/v1/rooms/{rid}/messages/{m['seq']}", json={"body": "x"}),
        await outsider.http.delete(f"/v1/rooms/{rid}/messages/{m['seq']}"),
        await outsider.http.post(f"/v1/rooms/{rid}/read", json={"seq": 1}),
        await outsider.http.put(f"/v1/rooms/{rid}/members/{outsider.name}"),
        await outsider.http.delete(f"/v1/rooms/{rid}/members/{bob.name}"),
        await outsider.http.get("/v1/events", params={"room_id": rid}),
    ]:
        problem = assert_problem(r, 404)
        assert "secret" not in r.text and problem["detail"] == "No such room."


async def test_unknown_and_malformed_room_ids_are_404(alice: User) -> None:
    for rid in ("00000000-0000-0000-0000-000000000000", "not-a-uuid", "1"):
        assert_problem(await alice.http.get(f"/v1/rooms/{rid}"), 404)
        assert_problem(await alice.http.get(f"/v1/rooms/{rid}/messages"), 404)
        assert_problem(await alice.send(rid, "x"), 404)


async def test_a_member_who_leaves_for_good_cannot_be_added_again(
    alice: User, bob: User, carol: User
) -> None:
    """Security review finding 6: anyone could add anyone to a room, again right after they left."""
    room = (await alice.create_room(members=[bob, carol]))["id"]
    members = f"/v1/rooms/{room}/members"
    # A plain leave: the owner may add you back.
    assert (await carol.http.delete(f"{members}/{carol.name}")).status_code == 204
    assert (await alice.http.put(f"{members}/{carol.name}")).status_code == 201
    # Leaving with stay_out: not again, whatever the owner tries.
    assert (await bob.http.delete(f"{members}/{bob.name}", params={"stay_out": "true"})).status_code == 204
    before = (await alice.http.get(f"/v1/rooms/{room}")).json()
    refused = await alice.http.put(f"{members}/{bob.name}")
    problem = assert_problem(refused, 403)
    assert problem["type"].endswith("/refused"), problem
    after = (await alice.http.get(f"/v1/rooms/{room}")).json()
    assert after["last_seq"] == before["last_seq"] and bob.name not in {
        m["user_id"] for m in after["members"]
    }
    assert_problem(await bob.http.get(f"/v1/rooms/{room}"), 404)
    # Only the one leaving can ask to stay out.
    assert_problem(await alice.http.delete(f"{members}/{carol.name}", params={"stay_out": "true"}), 422)
    assert carol.name in {m["user_id"] for m in (await alice.http.get(f"/v1/rooms/{room}")).json()["members"]}
