"""Mentions (SPEC §8): `@user_id` of a member, the longest member id that ends at a non-id character;
messages list their mentions (members only, once each, recomputed on edit); the room list counts the
unread messages of others that mention the caller."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.support.servers import RunningServer
from tests.support.sse import open_stream
from tests.support.users import User, UserFactory


async def mentions_of(user: User, room_id: str, body: str) -> list[str]:
    r = await user.send(room_id, body)
    assert r.status_code == 201, r.text
    return list(r.json()["mentions"])


async def listed(user: User, room_id: str) -> dict[str, Any]:
    items = {r["id"]: r for r in (await user.http.get("/v1/rooms")).json()["items"]}
    return dict(items[room_id])


async def test_a_message_lists_the_members_it_mentions(alice: User, bob: User, carol: User) -> None:
    room = await alice.create_room(members=[bob, carol])
    rid = room["id"]
    assert await mentions_of(alice, rid, "no mentions here") == []
    assert await mentions_of(alice, rid, f"@{bob.name} look") == [bob.name]
    assert await mentions_of(alice, rid, f"hey @{bob.name}") == [bob.name], "at the end of the text"
    assert sorted(await mentions_of(alice, rid, f"@{bob.name} and @{carol.name}: lunch?")) == sorted(
        [bob.name, carol.name]
    )
    assert await mentions_of(alice, rid, f"@{bob.name} @{bob.name}, @{bob.name}!") == [bob.name], "once each"
    assert await mentions_of(alice, rid, f"note to self @{alice.name}") == [alice.name]
    sent = (await alice.send(rid, f"(@{carol.name})")).json()
    got = (await bob.http.get(f"/v1/rooms/{rid}/messages/{sent['seq']}")).json()
    assert got["mentions"] == [carol.name] == sent["mentions"]
    history = (await bob.http.get(f"/v1/rooms/{rid}/messages")).json()["items"]
    assert history[-1]["mentions"] == [carol.name] and history[0]["mentions"] == []


async def test_only_members_are_mentioned(alice: User, bob: User, carol: User) -> None:
    room = await alice.create_room(members=[bob])
    rid = room["id"]
    assert await mentions_of(alice, rid, f"@{carol.name} is not here, @{bob.name} is") == [bob.name]
    assert await mentions_of(alice, rid, "@nobody-at-all @ @@ @-") == []
    assert (await alice.http.delete(f"/v1/rooms/{rid}/members/{bob.name}")).status_code == 204
    assert await mentions_of(alice, rid, f"@{bob.name} left") == [], "a former member is not a member"
    assert (await alice.http.put(f"/v1/rooms/{rid}/members/{carol.name}")).status_code == 201
    assert await mentions_of(alice, rid, f"@{carol.name} joined") == [carol.name]


async def test_the_longest_member_id_wins(alice: User, bob: User, make_user: UserFactory) -> None:
    longer = make_user(bob.name)  # an id that starts with bob's id: "<bob's id>-<tag>"
    assert longer.name.startswith(bob.name + "-")
    room = await alice.create_room(members=[bob, longer])
    rid = room["id"]
    assert await mentions_of(alice, rid, f"@{longer.name} hi") == [longer.name]
    assert await mentions_of(alice, rid, f"@{bob.name} hi") == [bob.name]
    assert await mentions_of(alice, rid, f"@{longer.name}") == [longer.name]
    # Not a member's whole id, but bob's id ends at "-": bob is mentioned.
    assert await mentions_of(alice, rid, f"@{bob.name}-unknown") == [bob.name]


async def test_a_mention_ends_at_a_non_id_character(alice: User, bob: User) -> None:
    room = await alice.create_room(members=[bob])
    rid = room["id"]
    for after in (" ", ",", ".", "!", "?", ":", ";", ")", "'", '"', "\n", "-", "/", "@"):
        assert await mentions_of(alice, rid, f"@{bob.name}{after}x") == [bob.name], repr(after)
    for after in ("x", "Z", "0", "_", "é", "ß"):
        assert await mentions_of(alice, rid, f"@{bob.name}{after}") == [], repr(after)
    assert await mentions_of(alice, rid, f"{bob.name} without at") == []
    assert await mentions_of(alice, rid, f"@ {bob.name}") == []


async def test_mentions_are_recomputed_on_edit(
    server: RunningServer, alice: User, bob: User, carol: User
) -> None:
    room = await alice.create_room(members=[bob, carol])
    rid = room["id"]
    sent = (await alice.send(rid, f"@{bob.name} please")).json()
    url = f"/v1/rooms/{rid}/messages/{sent['seq']}"
    async with open_stream(server.url, carol.token, room_id=rid) as stream:
        edited = (await alice.http.patch(url, json={"body": f"@{carol.name} please"})).json()
        assert edited["mentions"] == [carol.name]
        cleared = (await alice.http.patch(url, json={"body": "never mind"})).json()
        assert cleared["mentions"] == []
        frames = await stream.wait_for(2, "message.updated")
    assert [f.data["message"]["mentions"] for f in frames] == [[carol.name], []]
    assert (await bob.http.get(url)).json()["mentions"] == []
    assert (await alice.http.delete(url)).status_code == 204
    assert (await bob.http.get(url)).json()["mentions"] == [], "a tombstone mentions nobody"


async def test_mention_count_counts_unread_mentions_by_others(alice: User, bob: User, carol: User) -> None:
    room = await alice.create_room(members=[bob, carol])
    rid = room["id"]
    assert (await listed(bob, rid))["mention_count"] == 0
    first = (await alice.send(rid, f"@{bob.name} one")).json()
    await alice.send(rid, "no mention")
    second = (await carol.send(rid, f"@{bob.name} two, @{bob.name} again")).json()
    await bob.send(rid, f"@{bob.name} talking to myself")
    third = (await alice.send(rid, f"@{carol.name} and @{bob.name} three")).json()
    item = await listed(bob, rid)
    assert item["mention_count"] == 3 and item["unread_count"] == 4
    assert (await listed(carol, rid))["mention_count"] == 1
    assert (await listed(alice, rid))["mention_count"] == 0
    detail = (await bob.http.get(f"/v1/rooms/{rid}")).json()
    assert detail["mention_count"] == 3

    # Reading moves the count down; it never counts what was read.
    assert (await bob.http.post(f"/v1/rooms/{rid}/read", json={"seq": first["seq"]})).status_code == 204
    assert (await listed(bob, rid))["mention_count"] == 2
    # A deleted message no longer counts.
    assert (await alice.http.delete(f"/v1/rooms/{rid}/messages/{third['seq']}")).status_code == 204
    assert (await listed(bob, rid))["mention_count"] == 1
    # An edit that removes the mention uncounts it; one that adds a mention counts it.
    await carol.http.patch(f"/v1/rooms/{rid}/messages/{second['seq']}", json={"body": "nobody"})
    assert (await listed(bob, rid))["mention_count"] == 0
    plain = (await alice.send(rid, "plain")).json()
    await alice.http.patch(f"/v1/rooms/{rid}/messages/{plain['seq']}", json={"body": f"@{bob.name} now"})
    assert (await listed(bob, rid))["mention_count"] == 1
    assert (await bob.http.post(f"/v1/rooms/{rid}/read", json={"seq": plain["seq"]})).status_code == 204
    assert (await listed(bob, rid))["mention_count"] == 0


async def test_mention_count_is_per_room(alice: User, bob: User) -> None:
    one = await alice.create_room("one", members=[bob])
    two = await alice.create_room("two", members=[bob])
    await alice.send(one["id"], f"@{bob.name} here")
    await alice.send(two["id"], "nothing for bob")
    items = {r["id"]: r for r in (await bob.http.get("/v1/rooms")).json()["items"]}
    assert items[one["id"]]["mention_count"] == 1 and items[two["id"]]["mention_count"] == 0


async def test_concurrent_mentions_are_all_counted(alice: User, make_user: UserFactory) -> None:
    others = [make_user(f"caller{i}") for i in range(10)]
    room = await alice.create_room(members=others)
    results = await asyncio.gather(*[u.send(room["id"], f"hey @{alice.name}") for u in others])
    assert all(r.status_code == 201 and r.json()["mentions"] == [alice.name] for r in results)
    assert (await listed(alice, room["id"]))["mention_count"] == 10


async def test_mention_count_is_capped_like_unread_count(alice: User, bob: User) -> None:
    room = await alice.create_room(members=[bob])
    rid = room["id"]
    for start in range(0, 1005, 25):
        batch = [alice.send(rid, f"@{bob.name} ping {i}") for i in range(start, min(start + 25, 1005))]
        assert all(r.status_code == 201 for r in await asyncio.gather(*batch))
    item = await listed(bob, rid)
    assert item["unread_count"] == 1000, "the cap of unread_count"
    assert item["mention_count"] == 1000, "capped the same way"
    last = (await alice.http.get(f"/v1/rooms/{rid}")).json()["last_seq"]
    assert (await bob.http.post(f"/v1/rooms/{rid}/read", json={"seq": last - 3})).status_code == 204
    assert (await listed(bob, rid))["mention_count"] == 3
