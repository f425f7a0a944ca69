"""Per-user rate limits on every write and on stream opens (security review finding 6: only sends
were limited; 70 of 70 edits in a burst were accepted). Each budget: a burst is allowed, the next
request is 429 with Retry-After and writes nothing, other users are not affected."""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Awaitable, Callable

import httpx
import pytest

from chat_api.core.config import Settings
from chat_api.core.errors import Problem
from chat_api.core.ratelimit import BUDGETS, Action, Budget, RateLimits, TokenBucket
from tests.support.problems import assert_problem
from tests.support.servers import ServerFactory
from tests.support.settings import make_settings
from tests.support.users import User, UserFactory

# ---- the bucket itself (no server) ----------------------------------------------------------------


def test_a_bucket_allows_its_burst_then_says_how_long_to_wait() -> None:
    bucket = TokenBucket(Budget(per_second=0.5, burst=3))
    assert [bucket.retry_after("ann") for _ in range(3)] == [0, 0, 0]
    assert bucket.retry_after("ann") == 2  # one token every 2 s
    assert bucket.retry_after("bob") == 0  # per user


def test_a_zero_rate_is_no_limit() -> None:
    bucket = TokenBucket(Budget(per_second=0, burst=1))
    assert all(bucket.retry_after("ann") == 0 for _ in range(1000))


def test_rate_limits_off_limits_nothing(database_url: str) -> None:
    limits = RateLimits(make_settings(database_url, rate_limits=False, send_rate_per_second=1))
    for action in Action:
        for _ in range(200):
            limits.check(action, "ann")


def test_every_action_has_a_budget_and_sends_come_from_the_settings(database_url: str) -> None:
    settings: Settings = make_settings(
        database_url, rate_limits=True, send_rate_per_second=1, send_rate_burst=2
    )
    limits = RateLimits(settings)
    assert set(BUDGETS) | {Action.SEND} == set(Action)
    limits.check(Action.SEND, "ann")
    limits.check(Action.SEND, "ann")
    with pytest.raises(Problem) as refused:
        limits.check(Action.SEND, "ann")
    assert refused.value.status == 429 and refused.value.headers == {"Retry-After": "1"}


# ---- over HTTP --------------------------------------------------------------------------------------

Request = Callable[[User, int], Awaitable[httpx.Response]]


async def until_refused(
    user: User, budget: Budget, request: Request
) -> tuple[list[int], float, httpx.Response]:
    """Requests as fast as they go until the first 429: the statuses, how long that took, and the
    last answer."""
    started = time.monotonic()
    statuses: list[int] = []
    while True:
        answer = await request(user, len(statuses))
        statuses.append(answer.status_code)
        if answer.status_code == 429 or len(statuses) > budget.burst + 50:
            return statuses, time.monotonic() - started, answer


async def test_each_write_and_stream_opens_are_limited(
    start_server: ServerFactory, make_user: UserFactory
) -> None:
    running = await start_server(rate_limits=True)
    alice, bob, carol = (make_user(n, running.url) for n in ("alice", "bob", "carol"))
    room = (await alice.create_room(members=[bob]))["id"]
    seq = (await alice.send(room, "edit me")).json()["seq"]
    seqs = [(await alice.send(room, f"delete me {i}")).json()["seq"] for i in range(50)]

    async def edit(user: User, i: int) -> httpx.Response:
        return await user.http.patch(f"/v1/rooms/{room}/messages/{seq}", json={"body": f"edit {i}"})

    async def delete(user: User, i: int) -> httpx.Response:
        return await user.http.delete(f"/v1/rooms/{room}/messages/{seqs[i]}")

    async def create(user: User, i: int) -> httpx.Response:
        return await user.http.post("/v1/rooms", json={"name": f"room {i}"})

    async def add_and_remove(user: User, i: int) -> httpx.Response:
        path = f"/v1/rooms/{room}/members/member-{i // 2}"
        return await (user.http.put(path) if i % 2 == 0 else user.http.delete(path))

    async def mark_read(user: User, i: int) -> httpx.Response:
        return await user.http.post(f"/v1/rooms/{room}/read", json={"seq": i})

    async def open_stream(user: User, i: int) -> httpx.Response:
        # A malformed cursor is refused after the limit is checked: no stream stays open.
        return await user.http.get("/v1/events", params={"cursor": "nope"})

    cases: list[tuple[Action, Request, User, int]] = [
        (Action.EDIT, edit, alice, 200),
        (Action.DELETE, delete, alice, 204),
        (Action.CREATE_ROOM, create, carol, 201),
        (Action.CHANGE_MEMBERS, add_and_remove, alice, 0),
        (Action.MARK_READ, mark_read, bob, 204),
        (Action.OPEN_STREAM, open_stream, carol, 400),
    ]
    allowed: dict[Action, int] = {}
    for action, request, user, ok in cases:
        budget = BUDGETS[action]
        statuses, took, refused = await until_refused(user, budget, request)
        # The whole burst, plus what the bucket refilled while the burst was being sent, then 429.
        allowed[action] = len(statuses) - 1
        refill = math.ceil(took * budget.per_second)
        assert budget.burst <= allowed[action] <= budget.burst + refill, (action, statuses, took)
        if ok:
            assert set(statuses[:-1]) == {ok}, (action, statuses)
        problem = assert_problem(refused, 429)
        assert int(refused.headers["retry-after"]) >= 1 and "slow down" in problem["detail"], problem

    # Refused edits and deletes wrote nothing: the message has the last allowed edit, and exactly the
    # allowed number of messages are tombstones.
    page = (await bob.http.get(f"/v1/rooms/{room}/messages", params={"limit": 100})).json()["items"]
    by_seq = {m["seq"]: m for m in page}
    assert by_seq[seq]["body"] == f"edit {allowed[Action.EDIT] - 1}"
    assert sum(m["deleted"] for m in page) == allowed[Action.DELETE]
    # Another user's budget is their own.
    assert (await edit(bob, 0)).status_code == 403  # not 429: bob's edit budget is untouched
    other = make_user(f"dave-{uuid.uuid4().hex[:4]}", running.url)
    assert (await create(other, 0)).status_code == 201
