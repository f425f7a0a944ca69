"""Search (SPEC §8): GET /v1/search in web-search syntax, whole words, case-insensitive, newest first,
over the rooms the caller is a member of now (or one of them); deleted messages never match, edited
ones by their current text; keyset pages with no duplicates or gaps."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from tests.support.problems import assert_problem
from tests.support.users import User, UserFactory


async def search(user: User, q: str, **params: Any) -> httpx.Response:
    return await user.http.get("/v1/search", params={"q": q, **params})


async def found(user: User, q: str, **params: Any) -> list[str]:
    """The bodies of the first page of results, newest first."""
    r = await search(user, q, **params)
    assert r.status_code == 200, r.text
    page = r.json()
    assert set(page) == {"items", "next_cursor"}, page
    return [m["body"] for m in page["items"]]


async def test_words_phrases_or_and_exclusion(alice: User) -> None:
    room = await alice.create_room()
    bodies = [
        "the red apple is ripe",
        "apple red juice",
        "Banana bread",
        "APPLE and banana",
        "pineapple pie",
        "apples are nice",
        "I like apple, really!",
    ]
    for body in bodies:
        assert (await alice.send(room["id"], body)).status_code == 201
    apple = ["I like apple, really!", "APPLE and banana", "apple red juice", "the red apple is ripe"]
    assert await found(alice, "apple") == apple, "whole words only, newest first"
    assert await found(alice, "ApPlE") == apple, "case-insensitive"
    assert await found(alice, "apple banana") == ["APPLE and banana"], "all words must match"
    assert await found(alice, '"red apple"') == ["the red apple is ripe"], "a phrase keeps its order"
    assert await found(alice, "red apple") == ["apple red juice", "the red apple is ripe"]
    assert await found(alice, "banana or ripe") == [
        "APPLE and banana",
        "Banana bread",
        "the red apple is ripe",
    ]
    assert await found(alice, "apple -banana") == [
        "I like apple, really!",
        "apple red juice",
        "the red apple is ripe",
    ]
    assert await found(alice, "-red apple") == ["I like apple, really!", "APPLE and banana"]
    assert await found(alice, "pineapple") == ["pineapple pie"]
    assert await found(alice, "app") == [], "no prefix matches"
    assert await found(alice, "apples") == ["apples are nice"]
    assert await found(alice, "cherry") == []


async def test_words_of_any_language_match_case_insensitively(alice: User) -> None:
    room = await alice.create_room()
    for body in ("Привет, мир", "Die Straße ist lang", "Un été chaud", "Καλημέρα κόσμε"):
        await alice.send(room["id"], body)
    assert await found(alice, "привет") == ["Привет, мир"]
    assert await found(alice, "МИР") == ["Привет, мир"]
    assert await found(alice, "straße") == ["Die Straße ist lang"]
    assert await found(alice, "ÉTÉ") == ["Un été chaud"]
    assert await found(alice, "καλημέρα") == ["Καλημέρα κόσμε"]
    assert await found(alice, "мир -привет") == []


async def test_results_are_whole_messages(alice: User, bob: User) -> None:
    room = await alice.create_room(members=[bob])
    root = (await alice.send(room["id"], "whole thing")).json()
    reply = (await bob.send(room["id"], "whole reply", reply_to=root["seq"])).json()
    r = await search(alice, "whole")
    items = r.json()["items"]
    expected = [
        (await alice.http.get(f"/v1/rooms/{room['id']}/messages/{seq}")).json()
        for seq in (reply["seq"], root["seq"])
    ]
    assert items == expected
    assert items[1]["reply_count"] == 1 and items[0]["sender"] == bob.name


async def test_blank_or_missing_q_is_422(alice: User) -> None:
    await alice.create_room()
    for q in ("", " ", "   ", "\t\n"):
        assert_problem(await search(alice, q), 422)
    assert_problem(await alice.http.get("/v1/search"), 422)


async def test_odd_queries_never_fail_the_server(alice: User) -> None:
    room = await alice.create_room()
    await alice.send(room["id"], "some ordinary text")
    for q in ("-", '"', '""', "or", "-or", "&|!", "'", "\\", ":*", "a:*", "(a", "a & b", "x" * 2000):
        r = await search(alice, q)
        assert r.status_code in (200, 422), (q, r.status_code, r.text)
        if r.status_code == 200:
            assert set(r.json()) == {"items", "next_cursor"}
        else:
            assert_problem(r, 422)


async def test_limit_bounds_and_default(alice: User) -> None:
    room = await alice.create_room()
    for i in range(23):
        await alice.send(room["id"], f"counted {i}")
    page = (await search(alice, "counted")).json()
    assert len(page["items"]) == 20 and page["next_cursor"], "default limit 20"
    assert len((await search(alice, "counted", limit=50)).json()["items"]) == 23
    assert [m["body"] for m in (await search(alice, "counted", limit=1)).json()["items"]] == ["counted 22"]
    for limit in (0, 51, -1, "many"):
        assert_problem(await search(alice, "counted", limit=limit), 422)


async def test_only_rooms_the_caller_is_a_member_of_now(
    alice: User, bob: User, carol: User, make_user: UserFactory
) -> None:
    shared = await alice.create_room("shared", members=[bob])
    left = await alice.create_room("left", members=[bob])
    private = await alice.create_room("private")
    await alice.send(shared["id"], "zebra in shared")
    await alice.send(left["id"], "zebra in left")
    await alice.send(private["id"], "zebra in private")
    assert await found(bob, "zebra") == ["zebra in left", "zebra in shared"]
    assert await found(make_user("mallory"), "zebra") == []
    # Leaving or being removed: gone at once.
    assert (await bob.http.delete(f"/v1/rooms/{left['id']}/members/{bob.name}")).status_code == 204
    assert await found(bob, "zebra") == ["zebra in shared"]
    assert (await alice.http.delete(f"/v1/rooms/{shared['id']}/members/{bob.name}")).status_code == 204
    assert await found(bob, "zebra") == []
    # Joining: the room's whole history, also what was said before.
    assert (await alice.http.put(f"/v1/rooms/{private['id']}/members/{carol.name}")).status_code == 201
    assert await found(carol, "zebra") == ["zebra in private"]
    assert await found(alice, "zebra") == ["zebra in private", "zebra in left", "zebra in shared"]


async def test_room_id_narrows_to_one_room(alice: User, bob: User, make_user: UserFactory) -> None:
    one = await alice.create_room("one", members=[bob])
    two = await alice.create_room("two")
    await alice.send(one["id"], "kiwi one")
    await alice.send(two["id"], "kiwi two")
    assert await found(alice, "kiwi", room_id=one["id"]) == ["kiwi one"]
    assert await found(alice, "kiwi", room_id=two["id"]) == ["kiwi two"]
    assert await found(bob, "kiwi", room_id=one["id"]) == ["kiwi one"]
    for user, room_id in (
        (bob, two["id"]),  # not a member
        (make_user("mallory"), one["id"]),
        (alice, "00000000-0000-0000-0000-000000000000"),
        (alice, "not-a-room"),
    ):
        r = await search(user, "kiwi", room_id=room_id)
        problem = assert_problem(r, 404)
        assert "kiwi" not in r.text and problem["detail"] == "No such room."
    assert (await bob.http.delete(f"/v1/rooms/{one['id']}/members/{bob.name}")).status_code == 204
    assert_problem(await search(bob, "kiwi", room_id=one["id"]), 404)


async def test_deleted_messages_never_match(alice: User, bob: User) -> None:
    room = await alice.create_room(members=[bob])
    gone = (await alice.send(room["id"], "mango secret")).json()
    await alice.send(room["id"], "mango public")
    assert (await alice.http.delete(f"/v1/rooms/{room['id']}/messages/{gone['seq']}")).status_code == 204
    assert await found(bob, "mango") == ["mango public"]
    assert await found(bob, "secret") == []


async def test_an_edited_message_matches_its_current_text_only(alice: User) -> None:
    room = await alice.create_room()
    sent = (await alice.send(room["id"], "lemon tart")).json()
    url = f"/v1/rooms/{room['id']}/messages/{sent['seq']}"
    edited = (await alice.http.patch(url, json={"body": "lime tart"})).json()
    assert await found(alice, "lemon") == []
    r = await search(alice, "lime")
    assert r.json()["items"] == [edited]
    assert await found(alice, "tart") == ["lime tart"]


async def test_keyset_pages_have_no_duplicates_or_gaps(alice: User, bob: User) -> None:
    rooms = [await alice.create_room(f"r{i}", members=[bob]) for i in range(3)]
    sent: list[tuple[str, int]] = []
    for i in range(31):
        room = rooms[i % 3]["id"]
        m = (await (alice if i % 2 else bob).send(room, f"paging item {i}")).json()
        sent.append((m["room_id"], m["seq"]))
        await alice.send(room, f"noise {i}")
    newest_first = list(reversed(sent))

    got: list[tuple[str, int]] = []
    cursor: str | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 7} | ({"cursor": cursor} if cursor else {})
        r = await search(bob, "paging", **params)
        assert r.status_code == 200, r.text
        page = r.json()
        assert len(page["items"]) <= 7
        got += [(m["room_id"], m["seq"]) for m in page["items"]]
        pages += 1
        # New matches arriving while paging are newer than the cursor: they never shift a page.
        await alice.send(rooms[pages % 3]["id"], f"paging late {pages}")
        cursor = page["next_cursor"]
        if cursor is None:
            break
        assert pages < 20
    assert got == newest_first, "every match once, newest first, none late"
    assert pages == 5


async def test_a_malformed_cursor_is_400(alice: User) -> None:
    room = await alice.create_room()
    for i in range(3):
        await alice.send(room["id"], f"cursor test {i}")
    cursor = (await search(alice, "cursor", limit=1)).json()["next_cursor"]
    assert cursor
    assert [m["body"] for m in (await search(alice, "cursor", limit=1, cursor=cursor)).json()["items"]] == [
        "cursor test 1"
    ]
    for bad in ("garbage", "v1.", "!!!!", cursor[:-2] + "!!", "v1.AAAAAAAAAAAAAAAAAAAAAA"):
        assert_problem(await search(alice, "cursor", cursor=bad), 400)


async def test_searches_from_many_users_at_once(alice: User, make_user: UserFactory) -> None:
    others = [make_user(f"seeker{i}") for i in range(8)]
    room = await alice.create_room(members=others)
    await alice.send(room["id"], "needle in the haystack")
    results = await asyncio.gather(*[found(u, "needle") for u in others])
    assert results == [["needle in the haystack"]] * 8
