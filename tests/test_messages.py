"""Sending, reading, editing and deleting messages; idempotency; keyset pagination; read markers."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg

from tests.support.problems import assert_problem
from tests.support.users import User


async def test_sent_message_reads_back_identically(alice: User, bob: User) -> None:
    room = await alice.create_room(members=[bob])
    r = await alice.send(room["id"], "hello bob ✓")
    assert r.status_code == 201, r.text
    sent = r.json()
    assert set(sent) == {
        "id",
        "room_id",
        "seq",
        "sender",
        "body",
        "reply_to",
        "created_at",
        "edited_at",
        "deleted",
        "thread_root",
        "reply_count",
        "last_reply_seq",
        "mentions",
        "reactions",
    }
    assert sent["body"] == "hello bob ✓" and sent["sender"] == alice.name and sent["room_id"] == room["id"]
    assert sent["deleted"] is False and sent["edited_at"] is None and sent["reply_to"] is None
    assert sent["created_at"].endswith("Z")
    assert sent["thread_root"] is None and sent["reply_count"] == 0 and sent["last_reply_seq"] is None
    assert sent["mentions"] == [] and sent["reactions"] == []
    one = await bob.http.get(f"/v1/rooms/{room['id']}/messages/{sent['seq']}")
    assert one.json() == sent


async def test_seq_increases_per_room_and_room_tracks_it(alice: User) -> None:
    room = await alice.create_room()
    seqs = [(await alice.send(room["id"], f"m{i}")).json()["seq"] for i in range(5)]
    assert seqs == sorted(seqs) and len(set(seqs)) == 5
    got = (await alice.http.get(f"/v1/rooms/{room['id']}")).json()
    assert got["last_seq"] == seqs[-1]
    assert got["last_message"]["seq"] == seqs[-1] and got["last_message"]["body"] == "m4"


async def test_concurrent_senders_get_distinct_seqs_in_commit_order(
    alice: User, bob: User, database_url: str
) -> None:
    room = await alice.create_room(members=[bob])
    results = await asyncio.gather(*[(alice if i % 2 else bob).send(room["id"], f"c{i}") for i in range(40)])
    assert all(r.status_code == 201 for r in results), [r.text for r in results]
    seqs = sorted(r.json()["seq"] for r in results)
    assert len(set(seqs)) == 40
    # Commit order equals seq order: the writing transactions' ids increase with seq.
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT seq, xid::text::bigint AS xid FROM events "
            "WHERE room_id = $1 AND kind = 'message.created' ORDER BY seq",
            uuid.UUID(room["id"]),
        )
    finally:
        await conn.close()
    xids = [row["xid"] for row in rows]
    assert [row["seq"] for row in rows] == seqs
    assert xids == sorted(xids) and len(set(xids)) == 40


async def test_retry_with_same_key_returns_original_message(alice: User) -> None:
    room = await alice.create_room()
    key = f"k-{uuid.uuid4()}"
    first = await alice.send(room["id"], "once", key)
    again = await alice.send(room["id"], "once", key)
    assert (first.status_code, again.status_code) == (201, 200), (first.text, again.text)
    assert again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    history = (await alice.http.get(f"/v1/rooms/{room['id']}/messages")).json()["items"]
    assert [m["body"] for m in history] == ["once"]


async def test_racing_retries_create_one_message(alice: User) -> None:
    room = await alice.create_room()
    key = f"race-{uuid.uuid4()}"
    results = await asyncio.gather(*[alice.send(room["id"], "race", key) for _ in range(12)])
    assert sorted(r.status_code for r in results) == [200] * 11 + [201], [r.text for r in results]
    assert len({r.json()["id"] for r in results}) == 1
    history = (await alice.http.get(f"/v1/rooms/{room['id']}/messages")).json()["items"]
    assert len(history) == 1


async def test_same_key_with_other_body_or_room_is_422(alice: User) -> None:
    room, other = await alice.create_room(), await alice.create_room()
    key = f"k-{uuid.uuid4()}"
    assert (await alice.send(room["id"], "original", key)).status_code == 201
    assert_problem(await alice.send(room["id"], "different", key), 422)
    assert_problem(await alice.send(other["id"], "original", key), 422)
    assert_problem(await alice.send(room["id"], "original", key, reply_to=1), 422)
    assert (await alice.http.get(f"/v1/rooms/{other['id']}/messages")).json()["items"] == []


async def test_one_key_racing_into_two_rooms_sends_once_and_leaves_no_seq_gap(alice: User) -> None:
    # The two rooms' locks differ, so the sends run side by side: the loser either sees the key
    # taken before it takes a seq, or finds it taken at insert and must give its seq back.
    for attempt in range(10):
        rooms = [await alice.create_room(), await alice.create_room()]
        key = f"two-rooms-{attempt}-{uuid.uuid4()}"
        results = await asyncio.gather(*[alice.send(room["id"], "same", key) for room in rooms * 3])
        assert sorted(r.status_code for r in results) == [200, 200, 201, 422, 422, 422], [
            r.text for r in results
        ]
        winner = next(r.json() for r in results if r.status_code == 201)
        for room in rooms:
            got = (await alice.http.get(f"/v1/rooms/{room['id']}")).json()
            items = (await alice.http.get(f"/v1/rooms/{room['id']}/messages")).json()["items"]
            if room["id"] == winner["room_id"]:
                assert [m["id"] for m in items] == [winner["id"]]
                assert got["last_seq"] == winner["seq"]
            else:
                assert items == [] and got["last_seq"] == room["last_seq"]


async def test_keys_belong_to_their_sender(alice: User, bob: User) -> None:
    room = await alice.create_room(members=[bob])
    key = f"shared-{uuid.uuid4()}"
    a = await alice.send(room["id"], "same", key)
    b = await bob.send(room["id"], "same", key)
    assert (a.status_code, b.status_code) == (201, 201)
    assert a.json()["id"] != b.json()["id"]


async def test_idempotency_key_length_is_checked(alice: User) -> None:
    room = await alice.create_room()
    assert_problem(await alice.send(room["id"], "x", "k" * 201), 422)
    assert (await alice.send(room["id"], "x", "k" * 200)).status_code == 201


async def test_body_limits(alice: User) -> None:
    room = await alice.create_room()
    assert_problem(await alice.send(room["id"], ""), 422)
    assert_problem(await alice.send(room["id"], "x" * 4001), 422)
    assert (await alice.send(room["id"], "x" * 4000)).status_code == 201
    assert_problem(await alice.send(room["id"], "nul\x00byte"), 422)
    assert_problem(await alice.http.post(f"/v1/rooms/{room['id']}/messages", json={}), 422)
    assert_problem(await alice.http.post(f"/v1/rooms/{room['id']}/messages", json={"body": 5}), 422)


async def test_max_message_chars_is_configurable(start_server, make_user) -> None:  # type: ignore[no-untyped-def]
    small = await start_server(max_message_chars=10)
    user = make_user("dana", small.url)
    room = await user.create_room()
    assert (await user.send(room["id"], "x" * 10)).status_code == 201
    problem = assert_problem(await user.send(room["id"], "x" * 11), 422)
    assert "10" in problem["detail"]


async def test_reply_to_must_name_a_message_of_the_room(alice: User) -> None:
    room = await alice.create_room()
    first = (await alice.send(room["id"], "question")).json()
    reply = await alice.send(room["id"], "answer", reply_to=first["seq"])
    assert reply.status_code == 201 and reply.json()["reply_to"] == first["seq"]
    assert_problem(await alice.send(room["id"], "to nowhere", reply_to=first["seq"] + 100), 422)
    assert_problem(await alice.send(room["id"], "bad", reply_to=0), 422)


async def test_keyset_pagination_both_ways(alice: User) -> None:
    room = await alice.create_room()
    rid = room["id"]
    seqs = [(await alice.send(rid, f"m{i}")).json()["seq"] for i in range(25)]

    async def page(**params: int) -> dict:  # type: ignore[type-arg]
        r = await alice.http.get(f"/v1/rooms/{rid}/messages", params=params)
        assert r.status_code == 200, r.text
        return dict(r.json())

    newest = await page(limit=10)
    assert [m["seq"] for m in newest["items"]] == seqs[-10:] and newest["has_more"] is True
    older = await page(limit=10, before=seqs[-10])
    assert [m["seq"] for m in older["items"]] == seqs[5:15] and older["has_more"] is True
    oldest = await page(limit=10, before=seqs[5])
    assert [m["seq"] for m in oldest["items"]] == seqs[:5] and oldest["has_more"] is False
    forward = await page(limit=10, after=seqs[4])
    assert [m["seq"] for m in forward["items"]] == seqs[5:15] and forward["has_more"] is True
    tail = await page(limit=10, after=seqs[14])
    assert [m["seq"] for m in tail["items"]] == seqs[15:] and tail["has_more"] is False
    assert (await page(after=seqs[-1])) == {"items": [], "has_more": False}
    assert [m["seq"] for m in (await page())["items"]] == seqs  # default limit 50
    assert (await page(limit=25))["has_more"] is False


async def test_history_query_errors(alice: User) -> None:
    room = await alice.create_room()
    url = f"/v1/rooms/{room['id']}/messages"
    for params in ({"limit": 0}, {"limit": 101}, {"before": -1}, {"after": 2**63}, {"limit": "x"}):
        assert_problem(await alice.http.get(url, params=params), 422)
    assert_problem(await alice.http.get(url, params={"before": 5, "after": 1}), 422)


async def test_history_of_empty_room_is_empty(alice: User) -> None:
    room = await alice.create_room()
    r = await alice.http.get(f"/v1/rooms/{room['id']}/messages")
    assert r.json() == {"items": [], "has_more": False}


async def test_edit_own_message(alice: User, bob: User) -> None:
    room = await alice.create_room(members=[bob])
    m = (await alice.send(room["id"], "typo")).json()
    url = f"/v1/rooms/{room['id']}/messages/{m['seq']}"
    assert_problem(await bob.http.patch(url, json={"body": "hijack"}), 403)
    e = await alice.http.patch(url, json={"body": "fixed"})
    assert e.status_code == 200, e.text
    edited = e.json()
    assert (
        edited["body"] == "fixed"
        and edited["edited_at"]
        and edited["seq"] == m["seq"]
        and edited["id"] == m["id"]
    )
    assert (await bob.http.get(url)).json() == edited
    assert_problem(await alice.http.patch(url, json={"body": ""}), 422)
    assert_problem(
        await alice.http.patch(f"/v1/rooms/{room['id']}/messages/{m['seq'] + 50}", json={"body": "x"}), 404
    )


async def test_delete_leaves_a_tombstone(alice: User, bob: User) -> None:
    room = await alice.create_room(members=[bob])
    m = (await bob.send(room["id"], "oops")).json()
    url = f"/v1/rooms/{room['id']}/messages/{m['seq']}"
    assert (await bob.http.delete(url)).status_code == 204
    gone = (await alice.http.get(url)).json()
    assert (
        gone["deleted"] is True and gone["body"] is None and gone["seq"] == m["seq"] and gone["id"] == m["id"]
    )
    history = (await alice.http.get(f"/v1/rooms/{room['id']}/messages")).json()["items"]
    assert [h["seq"] for h in history] == [m["seq"]] and history[0]["deleted"] is True
    assert_problem(await bob.http.patch(url, json={"body": "resurrect"}), 409)
    assert (await bob.http.delete(url)).status_code == 204  # deleting again changes nothing


async def test_owner_deletes_others_messages_member_does_not(alice: User, bob: User, carol: User) -> None:
    room = await alice.create_room(members=[bob, carol])
    by_bob = (await bob.send(room["id"], "bob's")).json()
    by_alice = (await alice.send(room["id"], "alice's")).json()
    assert_problem(await carol.http.delete(f"/v1/rooms/{room['id']}/messages/{by_bob['seq']}"), 403)
    assert_problem(await bob.http.delete(f"/v1/rooms/{room['id']}/messages/{by_alice['seq']}"), 403)
    assert (await alice.http.delete(f"/v1/rooms/{room['id']}/messages/{by_bob['seq']}")).status_code == 204


async def test_bad_seq_in_path(alice: User) -> None:
    room = await alice.create_room()
    base = f"/v1/rooms/{room['id']}/messages"
    assert_problem(await alice.http.get(f"{base}/abc"), 422)
    assert_problem(await alice.http.get(f"{base}/0"), 422)
    assert_problem(await alice.http.get(f"{base}/{2**63}"), 422)
    assert_problem(await alice.http.get(f"{base}/{2**63 - 1}"), 404)


async def test_unread_counts_and_read_marker(alice: User, bob: User) -> None:
    room = await alice.create_room(members=[bob])
    rid = room["id"]
    sent = [(await alice.send(rid, f"u{i}")).json()["seq"] for i in range(3)]
    await bob.send(rid, "bob's own messages are never unread for bob")

    async def unread(user: User) -> int:
        rooms = {r["id"]: r for r in (await user.http.get("/v1/rooms")).json()["items"]}
        return int(rooms[rid]["unread_count"])

    assert await unread(bob) == 3 and await unread(alice) == 1
    assert (await bob.http.post(f"/v1/rooms/{rid}/read", json={"seq": sent[1]})).status_code == 204
    assert await unread(bob) == 1
    assert (await bob.http.post(f"/v1/rooms/{rid}/read", json={"seq": 1})).status_code == 204
    assert await unread(bob) == 1, "the read marker never moves backwards"
    await alice.http.delete(f"/v1/rooms/{rid}/messages/{sent[2]}")
    assert await unread(bob) == 0, "deleted messages are not unread"
    detail = (await bob.http.get(f"/v1/rooms/{rid}")).json()
    marker = {m["user_id"]: m["last_read_seq"] for m in detail["members"]}
    assert marker[bob.name] == sent[1]


async def test_read_marker_is_clamped_to_last_seq(alice: User) -> None:
    room = await alice.create_room()
    await alice.send(room["id"], "one")
    assert (await alice.http.post(f"/v1/rooms/{room['id']}/read", json={"seq": 10**12})).status_code == 204
    detail = (await alice.http.get(f"/v1/rooms/{room['id']}")).json()
    assert detail["members"][0]["last_read_seq"] == detail["last_seq"]
    assert_problem(await alice.http.post(f"/v1/rooms/{room['id']}/read", json={"seq": -1}), 422)
    assert_problem(await alice.http.post(f"/v1/rooms/{room['id']}/read", json={}), 422)


async def test_every_query_path_works_without_prepared_statement_cache(start_server, make_user) -> None:  # type: ignore[no-untyped-def]
    # CHAT_API_DB_STATEMENT_CACHE=0 is the PgBouncer (CNPG Pooler, transaction mode) setting.
    running = await start_server(db_statement_cache=False)
    alice, bob = make_user("alice", running.url), make_user("bob", running.url)
    room = await alice.create_room(members=[bob])
    rid = room["id"]
    sent = (await alice.send(rid, "one", "key-1")).json()
    assert (await alice.send(rid, "one", "key-1")).status_code == 200
    assert (
        await alice.http.patch(f"/v1/rooms/{rid}/messages/{sent['seq']}", json={"body": "1"})
    ).status_code == 200
    assert (await bob.http.get(f"/v1/rooms/{rid}/messages", params={"after": 0})).json()["items"][0][
        "body"
    ] == "1"
    assert (await bob.http.post(f"/v1/rooms/{rid}/read", json={"seq": sent["seq"]})).status_code == 204
    assert (await alice.http.delete(f"/v1/rooms/{rid}/messages/{sent['seq']}")).status_code == 204
    assert (await alice.http.put(f"/v1/rooms/{rid}/members/carol")).status_code == 201
    assert (await alice.http.delete(f"/v1/rooms/{rid}/members/carol")).status_code == 204
    assert (await bob.http.get("/v1/rooms")).json()["items"][0]["id"] == rid


async def test_sending_too_fast_is_429_with_retry_after(start_server, make_user) -> None:  # type: ignore[no-untyped-def]
    running = await start_server(rate_limits=True, send_rate_per_second=1, send_rate_burst=3)
    alice, bob = make_user("alice", running.url), make_user("bob", running.url)
    room = await alice.create_room(members=[bob])
    results = [await alice.send(room["id"], f"burst {i}") for i in range(5)]
    assert [r.status_code for r in results] == [201, 201, 201, 429, 429]
    problem = assert_problem(results[3], 429)
    assert int(results[3].headers["retry-after"]) >= 1 and "slow down" in problem["detail"].lower()
    assert (await bob.send(room["id"], "others are not limited")).status_code == 201
    history = (await bob.http.get(f"/v1/rooms/{room['id']}/messages")).json()["items"]
    assert len(history) == 4, "refused sends store nothing"
