"""The database goes away under load and comes back: the service answers 503 with Retry-After (never
500, never later than its database timeout), reports not-ready, and recovers by itself; nothing
acknowledged is lost or duplicated, in the database or on the event stream."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.reliability.support.checks import check_database, check_stream, report
from tests.reliability.support.clients import (
    Follower,
    Route,
    Sender,
    acked_again,
    bearer,
    create_room,
    running,
    wait_until,
)
from tests.reliability.support.cluster import ChatDatabase
from tests.reliability.support.servers import ANSWER_MARGIN, DB_TIMEOUT, server_processes

pytestmark = pytest.mark.slow

SENDERS = 6
LOAD_BEFORE_OUTAGE = 1.5  # seconds of normal load before the database stops
# Seconds the database stays away: longer than the database timeout plus the margin, so that a wait
# the timeout does not bound (e.g. connecting to a hung database) is caught, not ended by the thaw.
OUTAGE = {"stop": 4.0, "freeze": 8.0}
BUDGET = 60.0  # the whole test's client budget


@dataclass
class Probe:
    at: float
    status: int | None
    duration: float


async def probe_readiness(url: str, probes: list[Probe]) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        while True:
            started = time.monotonic()
            try:
                status: int | None = (await client.get(f"{url}/readyz")).status_code
            except httpx.TransportError:
                status = None
            probes.append(Probe(started, status, time.monotonic() - started))
            await asyncio.sleep(0.1)


@pytest.mark.parametrize("fault", ["stop", "freeze"])
async def test_database_outage_under_load(
    fault: str, cluster_db: ChatDatabase, tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    """stop: `pg_ctl stop -m fast` (connections closed, new ones refused), then start again.
    freeze: SIGSTOP on every process of the cluster (nothing fails, nothing answers), then SIGCONT."""
    began = time.monotonic()
    deadline = began + BUDGET
    with server_processes() as servers:
        # A pool smaller than the load: requests wait for the pool, and when the database hangs they
        # soon need new connections, so waiting and connecting are under test too, not only
        # statements on pooled connections.
        server = await servers.start(
            "serve", cluster_db.url, tmp_path, CHAT_API_DB_POOL_SIZE="4", CHAT_API_DB_POOL_MAX_OVERFLOW="0"
        )
        tag = f"{fault}-{int(began)}"
        users = [f"sender{i}-{tag}" for i in range(SENDERS)]
        watcher = f"watcher-{tag}"
        room_id = await create_room(server.url, f"owner-{tag}", [*users, watcher])
        route = Route(server.url)
        senders = [Sender(u, room_id, route, deadline, marker=f"[{tag}]") for u in users]
        follower = Follower(watcher, route)
        probes: list[Probe] = []

        async with (
            running(follower.run(), "follower"),
            running(probe_readiness(server.url, probes), "readiness"),
        ):
            await asyncio.wait_for(follower.opened.wait(), 10)
            load = [asyncio.create_task(s.run(), name=s.user) for s in senders]
            try:
                await asyncio.sleep(LOAD_BEFORE_OUTAGE)
                acked_before = sum(len(s.acked) for s in senders)
                assert acked_before > 0, "no message was acknowledged before the outage"

                down_at = time.monotonic()
                if fault == "stop":
                    await cluster_db.stop("fast")
                else:
                    frozen = cluster_db.freeze()
                stopped_at = time.monotonic()
                not_ready_after = await wait_until(
                    lambda: any(p.at >= stopped_at and p.status == 503 for p in probes),
                    DB_TIMEOUT + ANSWER_MARGIN,
                    "/readyz 503 while the database is down",
                )
                await asyncio.sleep(max(0.0, OUTAGE[fault] - (time.monotonic() - stopped_at)))
                if fault == "stop":
                    await cluster_db.start()
                else:
                    cluster_db.thaw(frozen)
                up_at = time.monotonic()

                ready_after = await wait_until(
                    lambda: any(p.at >= up_at and p.status == 200 for p in probes),
                    20,
                    "/readyz 200 after the database came back",
                )
                ready_at = time.monotonic()
                # Sends succeed again, for every client, without restarting the service.
                await wait_until(acked_again(senders, 5), 20, "every client acknowledged again")
            finally:
                for s in senders:
                    s.stop.set()
                await asyncio.gather(*load)

            acked_ids = {m["id"] for s in senders for m in s.acked.values()}
            missing = await follower.wait_for_ids(acked_ids, 20)
            assert not missing, f"{len(missing)} acknowledged messages never streamed"
        assert server.proc.poll() is None, "the service died:\n" + server.output()

    # Every answer was a success or a 503 problem with Retry-After, and came in time.
    attempts = [a for s in senders for a in s.attempts]
    unexpected = [a for s in senders for a in s.unexpected]
    assert not unexpected, f"answers other than 200/201/503: {unexpected[:5]}"
    transport = [a for a in attempts if a.status is None]
    assert not transport, f"requests without an answer: {transport[:5]}"
    unavailable = [a for a in attempts if a.status == 503]
    assert unavailable, "no request met the outage"
    for a in unavailable:
        assert a.retry_after is not None and int(a.retry_after) >= 1, a
        assert (
            a.problem is not None
            and a.problem["status"] == 503
            and a.problem["type"].endswith("/database-unavailable")
        ), a
    # Once ready again, ready for real: no request fails on a connection the outage left behind.
    late = [a for a in attempts if a.started >= ready_at and a.status not in (200, 201)]
    assert not late, f"failures after /readyz said ready again: {late[:5]}"
    slowest = max(a.duration for a in attempts)
    slow = [
        (a.status, a.error, round(a.started - down_at, 2), round(a.duration, 2))
        for a in attempts
        if a.duration >= DB_TIMEOUT + ANSWER_MARGIN
    ]
    assert slowest < DB_TIMEOUT + ANSWER_MARGIN, (
        f"a request took {slowest:.2f} s: {slow} up at {up_at - down_at:.2f}"
    )
    slowest_probe = max(p.duration for p in probes)
    assert slowest_probe < DB_TIMEOUT + ANSWER_MARGIN, f"a /readyz took {slowest_probe:.2f} s"
    assert not any(p.status not in (200, 503) for p in probes), {p.status for p in probes}
    assert not [s.unacked for s in senders if s.unacked], "sends were never acknowledged"

    tally = await check_database(cluster_db, room_id, senders)
    streamed = check_stream(follower, senders, room_id)
    assert tally.found == tally.acked == streamed
    assert not server.errors_logged(), server.errors_logged()[:3]
    reconnects = len(follower.connections) - 1
    record_property(
        "figures",
        report(
            f"database-{fault}",
            **{k: v for k, v in vars(tally).items()},
            answered_503=len(unavailable),
            streamed=streamed,
            stream_reconnects=reconnects,
            outage_s=round(up_at - down_at, 2),
            not_ready_after_s=round(not_ready_after, 2),
            ready_again_after_s=round(ready_after, 2),
            slowest_request_s=round(slowest, 2),
            duration_s=round(time.monotonic() - began, 1),
        ),
    )


async def test_first_requests_after_a_quiet_database_restart_succeed(
    cluster_db: ChatDatabase, tmp_path: Path
) -> None:
    # A restart between requests (a failover, a minor-version upgrade) closes every pooled
    # connection. The next requests must get fresh connections, not the pool's dead ones.
    with server_processes() as servers:
        server = await servers.start("serve", cluster_db.url, tmp_path)
        tag = f"restart-{int(time.monotonic())}"
        users = [f"sender{i}-{tag}" for i in range(10)]
        room_id = await create_room(server.url, f"owner-{tag}", users)
        route = Route(server.url)
        deadline = time.monotonic() + 30

        async def send_once(n: int, *, concurrently: bool) -> list[Sender]:
            # One try each: no retry hides a failure.
            senders = [Sender(u, room_id, route, deadline, f"[{tag}-{n}]", retry=False) for u in users]
            async with asyncio.timeout(20):
                if concurrently:
                    await asyncio.gather(*(s.run(limit=1) for s in senders))
                else:
                    for s in senders:
                        await s.run(limit=1)
            return senders

        # Concurrent sends leave several connections in the pool.
        before = await send_once(1, concurrently=True)
        await cluster_db.stop("fast")
        await cluster_db.start()
        await asyncio.sleep(0.5)  # the server noticed its connections closing; nobody asked meanwhile
        # One after another: each request meets the dead connections the pool hands out first.
        after = await send_once(2, concurrently=False)
        statuses = [a.status for s in after for a in s.attempts]
        assert statuses == [201] * len(users), statuses
        tally = await check_database(cluster_db, room_id, before + after)
        assert tally.found == tally.acked == 2 * len(users)
        assert not server.errors_logged(), server.errors_logged()[:3]


async def test_resuming_a_stream_while_the_database_is_down_is_a_503(
    cluster_db: ChatDatabase, tmp_path: Path
) -> None:
    with server_processes() as servers:
        server = await servers.start("serve", cluster_db.url, tmp_path)
        tag = f"resume-{int(time.monotonic())}"
        watcher = f"watcher-{tag}"
        room_id = await create_room(server.url, f"owner-{tag}", [watcher])
        follower = Follower(watcher, Route(server.url))
        async with running(follower.run(), "follower"):
            await asyncio.wait_for(follower.opened.wait(), 10)
            sender = Sender(f"owner-{tag}", room_id, Route(server.url), time.monotonic() + 10, f"[{tag}]")
            await sender.run(limit=1)
            assert not await follower.wait_for_ids({m["id"] for m in sender.acked.values()}, 10)
            await cluster_db.stop("fast")
            # The same user reconnects (a second tab, or the first stream broke): the hub knows the
            # user already, so only the cursor check needs the database.
            headers = {**bearer(watcher), "Last-Event-ID": str(follower.last_id)}
            body = b""
            async with (
                httpx.AsyncClient(timeout=DB_TIMEOUT + ANSWER_MARGIN) as client,
                client.stream("GET", f"{server.url}/v1/events", headers=headers) as response,
            ):
                status = response.status_code
                retry_after = response.headers.get("retry-after")
                with contextlib.suppress(httpx.TransportError):
                    async for chunk in response.aiter_raw():
                        body += chunk
        assert (status, retry_after) == (503, "1"), (status, retry_after, body[:200])
        assert not server.errors_logged(), server.errors_logged()[:1]
