"""The server process dies (SIGKILL) under load and a new one takes over on the same database:
clients retry what was not acknowledged with the same Idempotency-Key; everything acknowledged is
stored exactly once, no key made two messages, and the stream resumes on the new server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.reliability.support.checks import check_database, check_stream, report
from tests.reliability.support.clients import (
    Follower,
    Route,
    Sender,
    acked_again,
    create_room,
    running,
    wait_until,
)
from tests.reliability.support.cluster import ChatDatabase
from tests.reliability.support.servers import server_processes

pytestmark = pytest.mark.slow

SENDERS = 6
LOAD_BEFORE_CRASH = 1.5
BUDGET = 60.0


async def test_kill_9_under_load_loses_and_duplicates_nothing(
    cluster_db: ChatDatabase, tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    began = time.monotonic()
    deadline = began + BUDGET
    with server_processes() as servers:
        a = await servers.start("a", cluster_db.url, tmp_path)
        tag = f"crash-{int(began)}"
        users = [f"sender{i}-{tag}" for i in range(SENDERS)]
        watcher = f"watcher-{tag}"
        room_id = await create_room(a.url, f"owner-{tag}", [*users, watcher])
        route = Route(a.url)
        senders = [Sender(u, room_id, route, deadline, marker=f"[{tag}]") for u in users]
        follower = Follower(watcher, route)

        async with running(follower.run(), "follower"):
            await asyncio.wait_for(follower.opened.wait(), 10)
            load = [asyncio.create_task(s.run(), name=s.user) for s in senders]
            try:
                await asyncio.sleep(LOAD_BEFORE_CRASH)
                acked_before = {s.user: len(s.acked) for s in senders}
                assert sum(acked_before.values()) > 0
                a.kill()
                killed_at = time.monotonic()
                assert await a.exited(5) == -9

                b = await servers.start("b", cluster_db.url, tmp_path)
                route.add(b.url)  # clients refused by A go on to B
                b_ready_after = time.monotonic() - killed_at
                await wait_until(acked_again(senders, 5), 20, "every client acknowledged again")
            finally:
                for s in senders:
                    s.stop.set()
                await asyncio.gather(*load)

            acked_ids = {m["id"] for s in senders for m in s.acked.values()}
            missing = await follower.wait_for_ids(acked_ids, 20)
            assert not missing, f"{len(missing)} acknowledged messages never streamed"
        assert b.proc.poll() is None, b.output()

    attempts = [at for s in senders for at in s.attempts]
    unexpected = [at for s in senders for at in s.unexpected]
    assert not unexpected, f"answers other than 200/201/503: {unexpected[:5]}"
    assert not [s.unacked for s in senders if s.unacked], "sends were never acknowledged"
    # Every request B answered was a success: it started on a healthy database.
    assert all(at.status in (200, 201) for at in attempts if at.server == b.url and at.status), [
        at for at in attempts if at.server == b.url and at.status not in (200, 201)
    ][:5]
    lost_on_a = [at for at in attempts if at.server == a.url and at.status is None]
    assert lost_on_a, "no request met the crash"

    tally = await check_database(cluster_db, room_id, senders)
    streamed = check_stream(follower, senders, room_id)
    assert tally.found == tally.acked == streamed
    assert not b.errors_logged(), b.errors_logged()[:3]
    resumed = [c for c in follower.connections if c.server == b.url and c.status == 200]
    assert resumed and resumed[0].last_event_id, "the stream did not resume on B with Last-Event-ID"
    record_property(
        "figures",
        report(
            "kill-9",
            **vars(tally),
            in_flight_at_kill=len({at.key for at in lost_on_a}),
            transport_errors=len(lost_on_a),
            streamed=streamed,
            replacement_ready_after_s=round(b_ready_after, 2),
            duration_s=round(time.monotonic() - began, 1),
        ),
    )
