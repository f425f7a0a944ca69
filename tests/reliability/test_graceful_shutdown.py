"""Two replicas on one database; one gets SIGTERM under load (a rolling update, a node drain): every
request it accepted is answered, it exits well inside the pod's grace period, its streams end at
once and resume on the other replica from their Last-Event-ID with nothing lost or repeated."""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
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
from tests.reliability.support.servers import ServerProcess, server_processes

pytestmark = pytest.mark.slow

SENDERS = 6
LOAD_BEFORE_SIGTERM = 1.5
EXIT_WITHIN = 25.0  # the pod's grace period is 30 s
STREAMS_END_WITHIN = 2.0
BUDGET = 60.0
SEND_ROUTE = "/v1/rooms/{room_id}/messages"


def sends_logged(server: ServerProcess) -> Counter[str]:
    """POST .../messages requests the server's app handled, per user (its access log)."""
    return Counter(
        r["user.id"]
        for r in server.log_records()
        if r.get("logger") == "chat_api.access"
        and r.get("http.route") == SEND_ROUTE
        and r.get("http.request.method") == "POST"
    )


async def test_sigterm_under_load_drains_and_streams_resume_elsewhere(
    cluster_db: ChatDatabase, tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    began = time.monotonic()
    deadline = began + BUDGET
    with server_processes() as servers:
        a, b = await asyncio.gather(
            servers.start("a", cluster_db.url, tmp_path), servers.start("b", cluster_db.url, tmp_path)
        )
        tag = f"drain-{int(began)}"
        users = [f"sender{i}-{tag}" for i in range(SENDERS)]
        watcher = f"watcher-{tag}"
        room_id = await create_room(a.url, f"owner-{tag}", [*users, watcher])
        # Everyone uses A; a client that A refuses (no longer listening) goes on to B.
        route = Route(a.url, b.url)
        senders = [Sender(u, room_id, route, deadline, marker=f"[{tag}]") for u in users]
        follower = Follower(watcher, route)

        async with running(follower.run(), "follower"):
            await asyncio.wait_for(follower.opened.wait(), 10)
            load = [asyncio.create_task(s.run(), name=s.user) for s in senders]
            try:
                await asyncio.sleep(LOAD_BEFORE_SIGTERM)
                assert sum(len(s.acked) for s in senders) > 0
                a.sigterm()
                signalled = time.monotonic()
                code = await a.exited(EXIT_WITHIN + 5)
                exited_after = time.monotonic() - signalled
                assert code == -signal.SIGTERM, (code, a.output()[-3000:])
                assert exited_after < EXIT_WITHIN, exited_after
                await wait_until(acked_again(senders, 5), 20, "every client acknowledged again")
            finally:
                for s in senders:
                    s.stop.set()
                await asyncio.gather(*load)

            acked_ids = {m["id"] for s in senders for m in s.acked.values()}
            missing = await follower.wait_for_ids(acked_ids, 20)
            assert not missing, f"{len(missing)} acknowledged messages never streamed"

    attempts = [at for s in senders for at in s.attempts]
    assert not [s.unacked for s in senders if s.unacked], "sends were never acknowledged"
    # Every answer from either server was a success (draining refuses no request it accepted).
    answers = Counter(at.status for at in attempts if at.status is not None)
    assert set(answers) <= {200, 201}, answers
    # Every request A's application took in was answered to its client: the access log of A and
    # the answers the clients got from A agree, user by user. The other requests that failed on A
    # never reached it (refused, or sent on an idle keep-alive connection A was closing).
    answered_by_a = Counter(s.user for s in senders for at in s.attempts if at.server == a.url and at.status)
    assert sends_logged(a) == answered_by_a, (sends_logged(a), answered_by_a)
    not_taken = Counter(at.error for at in attempts if at.server == a.url and at.status is None)
    assert set(not_taken) <= {"ConnectError", "RemoteProtocolError", "ReadError"}, not_taken
    assert "chat-api stopped" in a.output() and not a.errors_logged(), a.errors_logged()[:3]
    assert not b.errors_logged(), b.errors_logged()[:3]

    # A's stream ended promptly after the signal and resumed on B with its Last-Event-ID.
    on_a = [c for c in follower.connections if c.server == a.url and c.status == 200]
    assert on_a and on_a[-1].ended is not None and on_a[-1].error is None, on_a
    stream_ended_after = on_a[-1].ended - signalled
    assert stream_ended_after < STREAMS_END_WITHIN, stream_ended_after
    on_b = [c for c in follower.connections if c.server == b.url and c.status == 200]
    assert on_b and on_b[0].last_event_id, "the stream did not resume on B with Last-Event-ID"
    streamed = check_stream(follower, senders, room_id)
    tally = await check_database(cluster_db, room_id, senders)
    assert tally.found == tally.acked == streamed
    record_property(
        "figures",
        report(
            "sigterm",
            **vars(tally),
            acked_by_a=sum(answered_by_a.values()),
            not_taken_by_a=dict(not_taken),
            streamed=streamed,
            stream_ended_after_s=round(stream_ended_after, 2),
            a_exited_after_s=round(exited_after, 2),
            duration_s=round(time.monotonic() - began, 1),
        ),
    )
