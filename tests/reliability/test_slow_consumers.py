"""A burst of large messages while 20 streams read nothing at all: the server's memory stays bounded
(each stalled stream is cut off once its queue is full, instead of buffering the burst), the cut
streams are ended by the server, and a stream that does read gets every message exactly once."""

from __future__ import annotations

import asyncio
import re
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.reliability.support.checks import check_database, check_stream, report
from tests.reliability.support.clients import Follower, Route, Sender, bearer, create_room, running
from tests.reliability.support.cluster import ChatDatabase
from tests.reliability.support.servers import server_processes

pytestmark = pytest.mark.slow

SLOW_STREAMS = 20
BUFFER_EVENTS = 50  # CHAT_API_STREAM_BUFFER_EVENTS
MESSAGES = 1000
BODY_CHARS = 3900
SENDERS = 8
WARM_UP = 40  # messages sent before the first measurement
RSS_GROWTH_LIMIT_MIB = 150
BUDGET = 90.0


def open_stalled_stream(port: int, user: str) -> socket.socket:
    """GET /v1/events on a raw socket with a tiny receive buffer; reads the response head and the
    first `retry:` line (the subscription exists from then on), then nothing more until the end."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    auth = bearer(user)["Authorization"]
    request = (
        f"GET /v1/events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: {auth}\r\n"
        "Accept: text/event-stream\r\nConnection: close\r\n\r\n"
    )
    sock.sendall(request.encode())
    head = b""
    while b"retry:" not in head:
        chunk = sock.recv(256)
        assert chunk, head
        head += chunk
    assert head.startswith(b"HTTP/1.1 200"), head
    return sock


def read_to_end(sock: socket.socket, timeout: float) -> tuple[bytes, str]:
    """Everything left on the socket, and how it ended: "eof" (the server closed it), "reset", or
    "open" (still open after `timeout` seconds: the server never ended the stream)."""
    data = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            chunk = sock.recv(65536)
            if not chunk:
                return data, "eof"
            data += chunk
    except TimeoutError:
        return data, "open"
    except ConnectionResetError:
        return data, "reset"
    finally:
        sock.close()
    return data, "open"


def established_connections(port: int) -> int:
    """Server-side TCP connections of this port that are still open."""
    out = subprocess.run(
        ["ss", "-Htn", "state", "established", f"( sport = :{port} )"],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    ).stdout
    return len(out.splitlines())


async def test_slow_consumers_are_cut_and_memory_stays_bounded(
    cluster_db: ChatDatabase, tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    began = time.monotonic()
    deadline = began + BUDGET
    with server_processes() as servers:
        server = await servers.start(
            "serve",
            cluster_db.url,
            tmp_path,
            CHAT_API_STREAM_BUFFER_EVENTS=str(BUFFER_EVENTS),
            CHAT_API_STREAM_HEARTBEAT_SECONDS="15",  # stalled streams see nothing but the burst
        )
        tag = f"slow-{int(began)}"
        users = [f"sender{i}-{tag}" for i in range(SENDERS)]
        slow_users = [f"slow{i}-{tag}" for i in range(SLOW_STREAMS)]
        reader = f"reader-{tag}"
        room_id = await create_room(server.url, f"owner-{tag}", [*users, *slow_users, reader])
        route = Route(server.url)

        def senders(n: int) -> list[Sender]:
            return [Sender(u, room_id, route, deadline, f"[{tag}-{n}]", BODY_CHARS) for u in users]

        warm = senders(0)
        await asyncio.gather(*(s.run(limit=WARM_UP // SENDERS) for s in warm))
        rss_before = server.rss_kib()

        stalled = await asyncio.gather(
            *(asyncio.to_thread(open_stalled_stream, server.port, u) for u in slow_users)
        )
        follower = Follower(reader, route)
        peak = rss_before
        async with running(follower.run(), "reader"):
            await asyncio.wait_for(follower.opened.wait(), 10)
            burst = senders(1)
            burst_began = time.monotonic()
            sending = asyncio.gather(*(s.run(limit=MESSAGES // SENDERS) for s in burst))
            while not sending.done():
                peak = max(peak, server.rss_kib())
                await asyncio.sleep(0.05)
            await sending
            burst_s = time.monotonic() - burst_began
            acked_ids = {m["id"] for s in burst for m in s.acked.values()}
            assert len(acked_ids) == MESSAGES
            missing = await follower.wait_for_ids(acked_ids, 30)
            assert not missing, f"the reading stream missed {len(missing)} messages"
            peak = max(peak, server.rss_kib())
            rss_after = server.rss_kib()
            held_open = established_connections(server.port)

            # Now read the stalled streams: each was ended by the server, well before the burst was
            # through (it got the head of the burst at most, never all of it).
            results = await asyncio.gather(*(asyncio.to_thread(read_to_end, s, 15) for s in stalled))
        ends = [how for _, how in results]
        assert "open" not in ends, ends
        frames = [len(re.findall(rb"^event: message\.created$", data, re.MULTILINE)) for data, _ in results]
        assert max(frames) < MESSAGES, frames
        assert all(data.endswith(b"0\r\n\r\n") for data, how in results if how == "eof"), "unclean end"
        assert not server.errors_logged(), server.errors_logged()[:3]

    growth_mib = (peak - rss_before) / 1024
    assert growth_mib < RSS_GROWTH_LIMIT_MIB, (rss_before, peak, rss_after)
    tally = await check_database(cluster_db, room_id, [*warm, *burst])
    streamed = check_stream(follower, burst, room_id)
    assert tally.found == tally.acked == MESSAGES + len(warm) * (WARM_UP // SENDERS)
    record_property(
        "figures",
        report(
            "slow-consumers",
            **vars(tally),
            rss_before_mib=round(rss_before / 1024, 1),
            rss_peak_mib=round(peak / 1024, 1),
            rss_after_mib=round(rss_after / 1024, 1),
            growth_mib=round(growth_mib, 1),
            stalled_frames_max=max(frames),
            stalled_ends=dict((e, ends.count(e)) for e in set(ends)),
            connections_open_before_reading=held_open,
            reader_reconnects=len(follower.connections) - 1,
            streamed=streamed,
            burst_s=round(burst_s, 1),
            duration_s=round(time.monotonic() - began, 1),
        ),
    )
