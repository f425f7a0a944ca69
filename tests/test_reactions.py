"""Reactions (SPEC §8): PUT adds (201, 200 when already there), DELETE removes (204); one emoji or a
shortcode per path segment; at most 20 distinct per message; shown on the message in order of first use
with exact counts; each change a message.updated event; races give one reaction per user and emoji."""

from __future__ import annotations

import asyncio
import urllib.parse
from typing import Any

import httpx

from tests.support.problems import assert_problem
from tests.support.servers import RunningServer, ServerFactory
from tests.support.sse import open_stream
from tests.support.users import User, UserFactory


def reaction_path(room_id: str, seq: int, emoji: str) -> str:
    return f"/v1/rooms/{room_id}/messages/{seq}/reactions/{urllib.parse.quote(emoji, safe='')}"


async def react(user: User, room_id: str, seq: int, emoji: str) -> httpx.Response:
    return await user.http.put(reaction_path(room_id, seq, emoji))


async def unreact(user: User, room_id: str, seq: int, emoji: str) -> httpx.Response:
    return await user.http.delete(reaction_path(room_id, seq, emoji))


async def message(user: User, room_id: str, seq: int) -> dict[str, Any]:
    r = await user.http.get(f"/v1/rooms/{room_id}/messages/{seq}")
    assert r.status_code == 200, r.text
    return dict(r.json())


async def test_react_201_then_200_with_the_message(alice: User, bob: User) -> None:
    room = await alice.create_room(members=[bob])
    sent = (await alice.send(room["id"], "hello")).json()
    assert sent["reactions"] == []
    first = await react(bob, room["id"], sent["seq"], "👍")
    assert first.status_code == 201, first.text
    reacted = first.json()
    assert reacted["reactions"] == [{"emoji": "👍", "count": 1, "users": [bob.name]}]
    assert {k: v for k, v in reacted.items() if k != "reactions"} == {
        k: v for k, v in sent.items() if k != "reactions"
    }, "a reaction changes nothing else of the message"
    again = await react(bob, room["id"], sent["seq"], "👍")
    assert again.status_code == 200, again.text
    assert again.json() == reacted
    assert await message(alice, room["id"], sent["seq"]) == reacted


async def test_reactions_are_in_order_of_first_use_with_exact_counts(
    alice: User, bob: User, carol: User
) -> None:
    room = await alice.create_room(members=[bob, carol])
    seq = (await alice.send(room["id"], "vote")).json()["seq"]
    assert (await react(bob, room["id"], seq, "🎉")).status_code == 201
    assert (await react(alice, room["id"], seq, "👍")).status_code == 201
    assert (await react(carol, room["id"], seq, "👍")).status_code == 201
    last = await react(carol, room["id"], seq, "🎉")
    assert last.status_code == 201
    reactions = last.json()["reactions"]
    assert [(r["emoji"], r["count"]) for r in reactions] == [("🎉", 2), ("👍", 2)]
    assert sorted(reactions[0]["users"]) == sorted([bob.name, carol.name])
    assert sorted(reactions[1]["users"]) == sorted([alice.name, carol.name])
    assert (await message(bob, room["id"], seq))["reactions"] == reactions


async def test_delete_removes_only_the_callers_reaction_and_is_204_when_there_was_none(
    alice: User, bob: User
) -> None:
    room = await alice.create_room(members=[bob])
    seq = (await alice.send(room["id"], "hi")).json()["seq"]
    await react(alice, room["id"], seq, "👍")
    await react(bob, room["id"], seq, "👍")
    await react(bob, room["id"], seq, "heart")
    r = await unreact(bob, room["id"], seq, "👍")
    assert r.status_code == 204 and r.content == b""
    assert (await message(alice, room["id"], seq))["reactions"] == [
        {"emoji": "👍", "count": 1, "users": [alice.name]},
        {"emoji": "heart", "count": 1, "users": [bob.name]},
    ]
    assert (await unreact(bob, room["id"], seq, "👍")).status_code == 204, "none left: still 204"
    assert (await unreact(bob, room["id"], seq, "never-used")).status_code == 204
    assert (await unreact(alice, room["id"], seq, "👍")).status_code == 204
    assert (await unreact(bob, room["id"], seq, "heart")).status_code == 204
    assert (await message(alice, room["id"], seq))["reactions"] == [], "[] when none, not stale entries"


async def test_reactions_show_in_every_read(alice: User, bob: User) -> None:
    room = await alice.create_room(members=[bob])
    seq = (await alice.send(room["id"], "read me")).json()["seq"]
    reacted = (await react(bob, room["id"], seq, "🚀")).json()
    history = (await alice.http.get(f"/v1/rooms/{room['id']}/messages")).json()["items"]
    assert [m for m in history if m["seq"] == seq] == [reacted]
    listed = {r["id"]: r for r in (await alice.http.get("/v1/rooms")).json()["items"]}
    assert listed[room["id"]]["last_message"]["reactions"] == reacted["reactions"]


async def test_edited_at_is_unchanged_by_reactions(alice: User, bob: User) -> None:
    room = await alice.create_room(members=[bob])
    plain = (await alice.send(room["id"], "never edited")).json()
    reacted = (await react(bob, room["id"], plain["seq"], "👀")).json()
    assert reacted["edited_at"] is None
    await unreact(bob, room["id"], plain["seq"], "👀")
    assert (await message(bob, room["id"], plain["seq"]))["edited_at"] is None
    edited_seq = (await alice.send(room["id"], "tpyo")).json()["seq"]
    url = f"/v1/rooms/{room['id']}/messages/{edited_seq}"
    edited = (await alice.http.patch(url, json={"body": "typo"})).json()
    assert edited["edited_at"]
    after = (await react(bob, room["id"], edited_seq, "👀")).json()
    assert after["edited_at"] == edited["edited_at"] and after["body"] == "typo"


async def test_valid_emoji_and_shortcodes(alice: User) -> None:
    room = await alice.create_room()
    seq = (await alice.send(room["id"], "react to me")).json()["seq"]
    valid = [
        "👍",
        "❤️",  # with a variation selector
        "👍🏽",  # skin tone modifier
        "👨‍👩‍👧‍👦",  # ZWJ sequence
        "🏳️‍🌈",  # ZWJ sequence with a variation selector
        "🇫🇷",  # flag: two regional indicators
        "+1",
        "-1",
        "white_check_mark",
        "a",
        "100",
        "x" * 32,
    ]
    for emoji in valid:
        r = await react(alice, room["id"], seq, emoji)
        assert r.status_code == 201, (emoji, r.text)
    reactions = (await message(alice, room["id"], seq))["reactions"]
    assert [r["emoji"] for r in reactions] == valid, "stored as sent (decoded), in order of first use"


async def test_invalid_emoji_are_422(alice: User) -> None:
    room = await alice.create_room()
    seq = (await alice.send(room["id"], "react to me")).json()["seq"]
    invalid = [
        "👍👍",  # two emoji
        "👍🎉",
        "🇫🇷🇩🇪",  # two flags
        "thumbs up",  # a space
        " 👍",
        "👍 ",
        "ThumbsUp",  # uppercase
        "A",
        "x" * 33,  # too long for a shortcode
        "hello!",
        "é",  # a letter, not an emoji, not a shortcode character
        "a:b",
        "a.b",
        "汉",
        "<script>",
        "\u200d",  # a lone ZWJ
    ]
    for emoji in invalid:
        assert_problem(await react(alice, room["id"], seq, emoji), 422)
    assert (await message(alice, room["id"], seq))["reactions"] == []


async def test_emoji_are_percent_decoded_from_the_path(alice: User) -> None:
    room = await alice.create_room()
    seq = (await alice.send(room["id"], "encoded")).json()["seq"]
    base = f"/v1/rooms/{room['id']}/messages/{seq}/reactions"
    r = await alice.http.put(f"{base}/%F0%9F%91%8D")
    assert r.status_code == 201 and r.json()["reactions"][0]["emoji"] == "👍", r.text
    assert (await alice.http.put(f"{base}/%f0%9f%91%8d")).status_code == 200, "hex case does not matter"
    assert (await alice.http.put(f"{base}/%2B1")).status_code == 201
    assert (await alice.http.put(f"{base}/+1")).status_code == 200, "a literal + in a path is a +"
    assert (await alice.http.delete(f"{base}/%F0%9F%91%8D")).status_code == 204
    assert [r["emoji"] for r in (await message(alice, room["id"], seq))["reactions"]] == ["+1"]
    assert_problem(await alice.http.put(f"{base}/%F0%9F"), 422)  # half an emoji: not valid UTF-8 text
    assert_problem(await alice.http.put(f"{base}/a%20b"), 422)


async def test_at_most_20_distinct_reactions(alice: User, bob: User) -> None:
    room = await alice.create_room(members=[bob])
    seq = (await alice.send(room["id"], "popular")).json()["seq"]
    codes = [f"code{i}" for i in range(20)]
    for code in codes:
        assert (await react(alice, room["id"], seq, code)).status_code == 201
    before = await message(alice, room["id"], seq)
    assert_problem(await react(alice, room["id"], seq, "code20"), 422)
    assert_problem(await react(bob, room["id"], seq, "🎉"), 422)
    assert await message(alice, room["id"], seq) == before, "a refused reaction changes nothing"
    # Joining an existing reaction adds no distinct one: allowed at the limit.
    joined = await react(bob, room["id"], seq, "code7")
    assert joined.status_code == 201, joined.text
    assert len(joined.json()["reactions"]) == 20
    # Once one is gone entirely, there is room for another.
    assert (await unreact(alice, room["id"], seq, "code0")).status_code == 204
    assert (await react(alice, room["id"], seq, "code20")).status_code == 201
    assert [r["emoji"] for r in (await message(alice, room["id"], seq))["reactions"]] == [
        *codes[1:],
        "code20",
    ]


async def test_at_most_20_distinct_reactions_when_they_race(alice: User) -> None:
    room = await alice.create_room()
    seq = (await alice.send(room["id"], "racing")).json()["seq"]
    results = await asyncio.gather(*[react(alice, room["id"], seq, f"race{i}") for i in range(30)])
    statuses = sorted(r.status_code for r in results)
    assert statuses == [201] * 20 + [422] * 10, [r.text for r in results if r.status_code not in (201, 422)]
    assert len((await message(alice, room["id"], seq))["reactions"]) == 20


async def test_users_list_at_most_50_and_count_is_exact(alice: User, make_user: UserFactory) -> None:
    others = [make_user(f"fan{i}") for i in range(50)]
    room = await alice.create_room("fans", members=others)
    seq = (await alice.send(room["id"], "like this")).json()["seq"]
    everyone = [alice, *others]
    results = await asyncio.gather(*[react(user, room["id"], seq, "❤️") for user in everyone])
    assert [r.status_code for r in results] == [201] * 51, [r.text for r in results if r.status_code != 201]
    [reaction] = (await message(alice, room["id"], seq))["reactions"]
    assert reaction["emoji"] == "❤️" and reaction["count"] == 51
    assert len(reaction["users"]) == 50 and len(set(reaction["users"])) == 50
    assert set(reaction["users"]) <= {u.name for u in everyone}
    assert (await unreact(others[0], room["id"], seq, "❤️")).status_code == 204
    [reaction] = (await message(alice, room["id"], seq))["reactions"]
    assert reaction["count"] == 50 and sorted(reaction["users"]) == sorted(
        u.name for u in everyone if u is not others[0]
    )


async def test_many_users_reacting_at_once_are_each_counted_once(alice: User, make_user: UserFactory) -> None:
    others = [make_user(f"racer{i}") for i in range(30)]
    room = await alice.create_room(members=others)
    seq = (await alice.send(room["id"], "race")).json()["seq"]
    # Each user twice, all at once: one 201 and one 200 per user.
    results = await asyncio.gather(*[react(user, room["id"], seq, "🔥") for user in others * 2])
    by_user: dict[str, list[int]] = {}
    for user, r in zip(others * 2, results, strict=True):
        by_user.setdefault(user.name, []).append(r.status_code)
    assert all(sorted(s) == [200, 201] for s in by_user.values()), by_user
    [reaction] = (await message(alice, room["id"], seq))["reactions"]
    assert reaction["count"] == 30 and sorted(reaction["users"]) == sorted(u.name for u in others)


async def test_the_same_user_reacting_twice_at_once_gets_one_201_and_one_200(alice: User) -> None:
    room = await alice.create_room()
    for attempt in range(5):
        seq = (await alice.send(room["id"], f"twice {attempt}")).json()["seq"]
        results = await asyncio.gather(*[react(alice, room["id"], seq, "👍") for _ in range(2)])
        assert sorted(r.status_code for r in results) == [200, 201], [r.text for r in results]
        assert results[0].json()["reactions"] == results[1].json()["reactions"]
        assert (await message(alice, room["id"], seq))["reactions"] == [
            {"emoji": "👍", "count": 1, "users": [alice.name]}
        ]


async def test_reacting_to_a_deleted_message_is_409_and_a_tombstone_has_no_reactions(
    alice: User, bob: User
) -> None:
    room = await alice.create_room(members=[bob])
    seq = (await alice.send(room["id"], "soon gone")).json()["seq"]
    await react(bob, room["id"], seq, "👍")
    assert (await alice.http.delete(f"/v1/rooms/{room['id']}/messages/{seq}")).status_code == 204
    tombstone = await message(bob, room["id"], seq)
    assert tombstone["deleted"] is True and tombstone["reactions"] == []
    assert_problem(await react(bob, room["id"], seq, "👍"), 409)
    assert_problem(await react(bob, room["id"], seq, "🎉"), 409)
    assert await message(bob, room["id"], seq) == tombstone


async def test_each_change_is_a_message_updated_event_with_the_whole_message(
    server: RunningServer, alice: User, bob: User
) -> None:
    room = await alice.create_room(members=[bob])
    rid = room["id"]
    sent = (await alice.send(rid, "watch me")).json()
    async with open_stream(server.url, bob.token, room_id=rid) as stream:
        added = (await react(alice, rid, sent["seq"], "👍")).json()
        last_seq_after_add = (await alice.http.get(f"/v1/rooms/{rid}")).json()["last_seq"]
        assert (await unreact(alice, rid, sent["seq"], "👍")).status_code == 204
        frames = await stream.wait_for(2, "message.updated")
    assert [f.data["message"] for f in frames] == [added, {**added, "reactions": []}]
    assert all(f.id and f.data["room_id"] == rid for f in frames)
    seqs = [f.data["seq"] for f in frames]
    assert sent["seq"] < seqs[0] < seqs[1] and seqs[0] == last_seq_after_add, (
        "each change takes the room's next seq"
    )
    assert (await alice.http.get(f"/v1/rooms/{rid}")).json()["last_seq"] == seqs[1]


async def test_a_repeated_reaction_emits_no_event(server: RunningServer, alice: User, bob: User) -> None:
    room = await alice.create_room(members=[bob])
    rid = room["id"]
    seq = (await alice.send(rid, "once")).json()["seq"]
    await react(alice, rid, seq, "👍")
    before = (await alice.http.get(f"/v1/rooms/{rid}")).json()["last_seq"]
    async with open_stream(server.url, bob.token, room_id=rid) as stream:
        assert (await react(alice, rid, seq, "👍")).status_code == 200
        marker = (await alice.send(rid, "marker")).json()
        await stream.wait_until(lambda: any(f.data["seq"] == marker["seq"] for f in stream.frames))
        await asyncio.sleep(0.2)
    assert [(f.event, f.data["message"]) for f in stream.after(before)] == [("message.created", marker)]
    assert marker["seq"] == before + 1, "the repeated reaction took no seq"


async def test_who_may_react(alice: User, bob: User, carol: User, make_user: UserFactory) -> None:
    room = await alice.create_room(members=[bob, carol])
    rid = room["id"]
    seq = (await alice.send(rid, "members only")).json()["seq"]
    # Any member may react to anyone's message: no 403.
    assert (await react(bob, rid, seq, "👍")).status_code == 201
    assert (await alice.http.delete(f"/v1/rooms/{rid}/members/{carol.name}")).status_code == 204
    outsider = make_user("mallory")
    for user in (carol, outsider):
        for r in (await react(user, rid, seq, "👍"), await unreact(user, rid, seq, "👍")):
            problem = assert_problem(r, 404)
            assert "members only" not in r.text and problem["detail"] == "No such room."
    assert (await message(alice, rid, seq))["reactions"] == [{"emoji": "👍", "count": 1, "users": [bob.name]}]


async def test_unknown_messages_and_bad_paths(alice: User) -> None:
    room = await alice.create_room()
    rid = room["id"]
    seq = (await alice.send(rid, "only one")).json()["seq"]
    assert_problem(await react(alice, rid, seq + 100, "👍"), 404)
    assert_problem(await unreact(alice, rid, seq + 100, "👍"), 404)
    assert_problem(await react(alice, rid, 1, "👍"), 404)  # seq 1 is the room's creation, not a message
    for bad in ("0", "-1", "abc", str(2**63)):
        r = await alice.http.put(f"/v1/rooms/{rid}/messages/{bad}/reactions/%F0%9F%91%8D")
        assert r.status_code in (404, 422), (bad, r.status_code)
        assert_problem(r, r.status_code)
    for room_id in ("00000000-0000-0000-0000-000000000000", "not-a-uuid"):
        assert_problem(await react(alice, room_id, seq, "👍"), 404)


async def test_reactions_are_rate_limited_like_other_writes(
    start_server: ServerFactory, make_user: UserFactory
) -> None:
    running = await start_server(rate_limits=True)
    alice, bob = make_user("alice", running.url), make_user("bob", running.url)  # type: ignore[call-arg]
    room = await alice.create_room(members=[bob])
    seq = (await alice.send(room["id"], "spam target")).json()["seq"]
    statuses: list[int] = []
    for i in range(1000):
        r = await (react if i % 2 == 0 else unreact)(alice, room["id"], seq, "👍")
        statuses.append(r.status_code)
        if r.status_code == 429:
            break
    assert statuses[-1] == 429, "1000 reaction changes in a burst, none refused"
    assert len(statuses) > 5 and set(statuses[:-1]) == {201, 204}, statuses
    assert int(r.headers["retry-after"]) >= 1
    assert_problem(r, 429)
    assert (await react(bob, room["id"], seq, "👍")).status_code == 201, "another user's budget is their own"
