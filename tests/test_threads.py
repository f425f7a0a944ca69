"""Threads (SPEC §8): a reply joins its target's thread (a reply to a reply joins the same root); the
root carries reply_count and last_reply_seq in every read; ?thread=SEQ pages a thread's replies like
history."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from tests.support.problems import assert_problem
from tests.support.servers import RunningServer
from tests.support.sse import open_stream
from tests.support.users import User, UserFactory


async def message(user: User, room_id: str, seq: int) -> dict[str, Any]:
    r = await user.http.get(f"/v1/rooms/{room_id}/messages/{seq}")
    assert r.status_code == 200, r.text
    return dict(r.json())


async def thread(user: User, room_id: str, root: int, **params: int) -> httpx.Response:
    return await user.http.get(f"/v1/rooms/{room_id}/messages", params={"thread": root, **params})


MESSAGE_KEYS = {
    "id", "room_id", "seq", "sender", "body", "reply_to", "created_at", "edited_at", "deleted",
    "thread_root", "reply_count", "last_reply_seq", "mentions", "reactions",
}  # fmt: skip


async def test_messages_carry_the_thread_mention_and_reaction_fields_everywhere(
    alice: User, bob: User
) -> None:
    room = await alice.create_room(members=[bob])
    rid = room["id"]
    sent = (await alice.send(rid, "shape")).json()
    assert set(sent) == MESSAGE_KEYS
    assert (sent["mentions"], sent["reactions"]) == ([], [])
    assert set(await message(bob, rid, sent["seq"])) == MESSAGE_KEYS
    assert all(
        set(m) == MESSAGE_KEYS for m in (await bob.http.get(f"/v1/rooms/{rid}/messages")).json()["items"]
    )
    item = next(r for r in (await bob.http.get("/v1/rooms")).json()["items"] if r["id"] == rid)
    assert set(item["last_message"]) == MESSAGE_KEYS
    assert (await alice.http.delete(f"/v1/rooms/{rid}/messages/{sent['seq']}")).status_code == 204
    tombstone = await message(bob, rid, sent["seq"])
    assert set(tombstone) == MESSAGE_KEYS
    assert (tombstone["body"], tombstone["mentions"], tombstone["reactions"]) == (None, [], [])


async def test_a_message_without_replies_has_no_thread(alice: User) -> None:
    room = await alice.create_room()
    sent = (await alice.send(room["id"], "alone")).json()
    assert (sent["thread_root"], sent["reply_count"], sent["last_reply_seq"]) == (None, 0, None)
    assert await message(alice, room["id"], sent["seq"]) == sent


async def test_replies_join_the_thread_of_their_target(alice: User, bob: User) -> None:
    room = await alice.create_room(members=[bob])
    rid = room["id"]
    root = (await alice.send(rid, "question")).json()
    first = (await bob.send(rid, "answer", reply_to=root["seq"])).json()
    assert first["reply_to"] == root["seq"] and first["thread_root"] == root["seq"]
    second = (await alice.send(rid, "to the answer", reply_to=first["seq"])).json()
    assert second["reply_to"] == first["seq"], "reply_to keeps the message replied to"
    assert second["thread_root"] == root["seq"], "a reply to a reply joins the root's thread"
    third = (await bob.send(rid, "deeper", reply_to=second["seq"])).json()
    assert third["thread_root"] == root["seq"]
    for reply in (first, second, third):
        assert reply["reply_count"] == 0 and reply["last_reply_seq"] is None

    got = await message(bob, rid, root["seq"])
    assert got["thread_root"] is None, "a root is not in a thread of its own"
    assert (got["reply_count"], got["last_reply_seq"]) == (3, third["seq"])
    replied = await message(alice, rid, first["seq"])
    assert (replied["reply_count"], replied["last_reply_seq"]) == (0, None), "only the root counts"


async def test_thread_counts_are_current_in_every_read(alice: User, bob: User) -> None:
    room = await alice.create_room(members=[bob])
    rid = room["id"]
    root = (await alice.send(rid, "root")).json()
    other = (await alice.send(rid, "not a thread")).json()
    replies = [(await bob.send(rid, f"reply {i}", reply_to=root["seq"])).json() for i in range(3)]

    history = {m["seq"]: m for m in (await alice.http.get(f"/v1/rooms/{rid}/messages")).json()["items"]}
    assert (history[root["seq"]]["reply_count"], history[root["seq"]]["last_reply_seq"]) == (
        3,
        replies[-1]["seq"],
    )
    assert (history[other["seq"]]["reply_count"], history[other["seq"]]["last_reply_seq"]) == (0, None)
    assert all(history[r["seq"]]["thread_root"] == root["seq"] for r in replies)
    assert history[other["seq"]]["thread_root"] is None
    older = await alice.http.get(f"/v1/rooms/{rid}/messages", params={"before": other["seq"]})
    [root_again] = [m for m in older.json()["items"] if m["seq"] == root["seq"]]
    assert root_again["reply_count"] == 3 and root_again["last_reply_seq"] == replies[-1]["seq"]
    # An edit of the root keeps its thread figures.
    edited = await alice.http.patch(f"/v1/rooms/{rid}/messages/{root['seq']}", json={"body": "root!"})
    assert (edited.json()["reply_count"], edited.json()["last_reply_seq"]) == (3, replies[-1]["seq"])


async def test_concurrent_replies_are_all_counted(alice: User, make_user: UserFactory) -> None:
    others = [make_user(f"replier{i}") for i in range(10)]
    room = await alice.create_room(members=others)
    rid = room["id"]
    root = (await alice.send(rid, "everyone answer")).json()
    results = await asyncio.gather(*[u.send(rid, f"from {u.name}", reply_to=root["seq"]) for u in others])
    assert all(r.status_code == 201 for r in results), [r.text for r in results]
    got = await message(alice, rid, root["seq"])
    assert got["reply_count"] == 10 and got["last_reply_seq"] == max(r.json()["seq"] for r in results)


async def test_a_reply_is_streamed_with_its_thread_root_and_no_extra_event_for_the_root(
    server: RunningServer, alice: User, bob: User
) -> None:
    room = await alice.create_room(members=[bob])
    rid = room["id"]
    root = (await alice.send(rid, "root")).json()
    async with open_stream(server.url, bob.token, room_id=rid) as stream:
        reply = (await alice.send(rid, "reply", reply_to=root["seq"])).json()
        marker = (await alice.send(rid, "marker")).json()
        await stream.wait_until(lambda: len(stream.after(root["seq"])) >= 2)
        await asyncio.sleep(0.2)
    assert [(f.event, f.data["message"]) for f in stream.after(root["seq"])] == [
        ("message.created", reply),
        ("message.created", marker),
    ]
    assert reply["thread_root"] == root["seq"] and marker["seq"] == reply["seq"] + 1


async def test_thread_listing_pages_the_replies_like_history(alice: User, bob: User) -> None:
    room = await alice.create_room(members=[bob])
    rid = room["id"]
    root = (await alice.send(rid, "root")).json()
    other_root = (await alice.send(rid, "another thread")).json()
    replies: list[int] = []
    for i in range(25):
        target = root["seq"] if i % 3 else (replies[-1] if replies else root["seq"])
        replies.append((await bob.send(rid, f"r{i}", reply_to=target)).json()["seq"])
        await alice.send(rid, f"outside {i}")  # not in the thread
        await alice.send(rid, f"other thread {i}", reply_to=other_root["seq"])

    async def page(**params: int) -> dict[str, Any]:
        r = await thread(alice, rid, root["seq"], **params)
        assert r.status_code == 200, r.text
        assert set(r.json()) == {"items", "has_more"}
        return dict(r.json())

    everything = await page()  # default limit 50
    assert [m["seq"] for m in everything["items"]] == replies and everything["has_more"] is False
    assert all(m["thread_root"] == root["seq"] for m in everything["items"]), "the root itself is not listed"
    assert everything["items"][0] == await message(alice, rid, replies[0])

    newest = await page(limit=10)
    assert [m["seq"] for m in newest["items"]] == replies[-10:] and newest["has_more"] is True
    older = await page(limit=10, before=replies[-10])
    assert [m["seq"] for m in older["items"]] == replies[5:15] and older["has_more"] is True
    oldest = await page(limit=10, before=replies[5])
    assert [m["seq"] for m in oldest["items"]] == replies[:5] and oldest["has_more"] is False
    forward = await page(limit=10, after=replies[4])
    assert [m["seq"] for m in forward["items"]] == replies[5:15] and forward["has_more"] is True
    tail = await page(limit=10, after=replies[14])
    assert [m["seq"] for m in tail["items"]] == replies[15:] and tail["has_more"] is False
    assert await page(after=replies[-1]) == {"items": [], "has_more": False}
    assert (await page(limit=25))["has_more"] is False
    # A cursor between replies (a seq outside the thread) works like any seq.
    between = await page(limit=3, after=root["seq"] + 1)
    assert [m["seq"] for m in between["items"]] == [s for s in replies if s > root["seq"] + 1][:3]


async def test_a_deleted_reply_stays_in_the_thread_as_a_tombstone(alice: User, bob: User) -> None:
    room = await alice.create_room(members=[bob])
    rid = room["id"]
    root = (await alice.send(rid, "root")).json()
    reply = (await bob.send(rid, "regret", reply_to=root["seq"])).json()
    assert (await bob.http.delete(f"/v1/rooms/{rid}/messages/{reply['seq']}")).status_code == 204
    items = (await thread(alice, rid, root["seq"])).json()["items"]
    assert [(m["seq"], m["deleted"], m["body"]) for m in items] == [(reply["seq"], True, None)]
    # ... and in the count (docs/api.md, "Threads").
    counted = (await alice.http.get(f"/v1/rooms/{rid}/messages/{root['seq']}")).json()
    assert (counted["reply_count"], counted["last_reply_seq"]) == (1, reply["seq"])


async def test_a_message_without_replies_has_an_empty_thread(alice: User) -> None:
    room = await alice.create_room()
    rid = room["id"]
    plain = (await alice.send(rid, "plain")).json()
    r = await thread(alice, rid, plain["seq"])
    assert r.status_code == 200 and r.json() == {"items": [], "has_more": False}


async def test_thread_of_a_seq_that_is_not_a_message_of_the_room_is_404(alice: User) -> None:
    room = await alice.create_room()
    rid = room["id"]
    await alice.send(rid, "one")
    await alice.http.put(f"/v1/rooms/{rid}/members/someone")  # a seq taken by a membership change
    last_seq = (await alice.http.get(f"/v1/rooms/{rid}")).json()["last_seq"]
    # 1 is the room's creation and last_seq the member's addition: seqs, but not messages.
    for seq in (1, last_seq, last_seq + 1, 10**12):
        assert_problem(await thread(alice, rid, seq), 404)
    assert_problem(await thread(alice, "00000000-0000-0000-0000-000000000000", 2), 404)
    assert_problem(await thread(alice, "not-a-room", 2), 404)


async def test_thread_query_errors(alice: User) -> None:
    room = await alice.create_room()
    rid = room["id"]
    root = (await alice.send(rid, "root")).json()["seq"]
    url = f"/v1/rooms/{rid}/messages"
    for params in (
        {"thread": 0},
        {"thread": -1},
        {"thread": "abc"},
        {"thread": 2**63},
        {"thread": root, "limit": 0},
        {"thread": root, "limit": 101},
        {"thread": root, "before": 5, "after": 1},
    ):
        assert_problem(await alice.http.get(url, params=params), 422)


async def test_threads_are_for_members_only(alice: User, bob: User, make_user: UserFactory) -> None:
    room = await alice.create_room(members=[bob])
    rid = room["id"]
    root = (await alice.send(rid, "secret root")).json()
    await alice.send(rid, "secret reply", reply_to=root["seq"])
    assert (await thread(bob, rid, root["seq"])).status_code == 200
    assert (await bob.http.delete(f"/v1/rooms/{rid}/members/{bob.name}")).status_code == 204
    for user in (bob, make_user("mallory")):
        r = await thread(user, rid, root["seq"])
        assert_problem(r, 404)
        assert "secret" not in r.text
