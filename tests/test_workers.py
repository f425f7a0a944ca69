"""CHAT_API_WORKERS: `chat-api serve` as N processes on one port, seen from outside as an operator
sees it: real processes, real HTTP, the session's PostgreSQL. Which worker serves a connection is read
from /proc (the process that holds the accepted socket) and from the pid on every log line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from uvicorn.config import STARTUP_FAILURE

from chat_api.auth.tokens import mint_token
from chat_api.workers import RESTART_PAUSE_MAX_SECONDS, YOUNG_SECONDS, Slot, Supervisor
from tests.support.settings import TEST_SECRET, make_settings
from tests.support.sse import Frame, Parser
from tests.support.workers import (
    CLI,
    Connection,
    alive,
    connection_on,
    serve_env,
    serve_process,
)

TWO = {"CHAT_API_WORKERS": "2"}
STOP_SECONDS = 30  # a deadline for waiting on the exit, never a measurement
STREAM_SECONDS = 20


def token(user: str) -> str:
    return mint_token(TEST_SECRET, user, 3600)


@pytest.fixture
def tag() -> str:
    return uuid.uuid4().hex[:8]


def access_records(records: list[dict[str, Any]], users: set[str]) -> dict[str, int]:
    """user → the pid that logged that user's request (the access log)."""
    return {
        r["user.id"]: r["process.pid"]
        for r in records
        if r.get("logger") == "chat_api.access" and r.get("user.id") in users
    }


def test_one_worker_is_one_process_as_before(runtime_url: str, tmp_path: Path, tag: str) -> None:
    with serve_process(runtime_url, tmp_path) as server:
        server.wait_ready(1)
        assert server.workers() == set()
        conn = Connection(server, token(f"solo-{tag}"))
        assert conn.worker == server.pid
        assert conn.request("GET", "/v1/rooms")[0] == 200
        conn.close()
    assert {r["process.pid"] for r in server.log_records()} == {server.pid}


def test_two_workers_serve_requests_in_two_processes(runtime_url: str, tmp_path: Path, tag: str) -> None:
    with serve_process(runtime_url, tmp_path, **TWO) as server:
        workers = server.wait_ready(2)
        assert server.workers() == workers and len(workers) == 2 and server.pid not in workers

        # New connections, each as a new user, until both workers have answered one.
        served_by: dict[str, int] = {}
        for number in range(200):
            user = f"user{number}-{tag}"
            conn = Connection(server, token(user))
            status, page = conn.request("GET", "/v1/rooms")
            conn.close()
            assert status == 200, page
            assert conn.worker in workers
            served_by[user] = conn.worker
            if set(served_by.values()) == workers:
                break
        assert set(served_by.values()) == workers

        # Each request's access-log line carries the pid of the worker that held its connection.
        users = set(served_by)
        server.wait_until(
            "access lines", lambda: len(access_records(server.log_records(), users)) == len(users)
        )
        assert access_records(server.log_records(), users) == served_by
    assert server.proc.returncode == -signal.SIGTERM


def read_frames(response: Any, until: Any) -> list[Frame]:
    """Reads SSE frames from an http.client response until `until(frame)` or the deadline."""
    parser, frames = Parser(), []
    deadline = time.monotonic() + STREAM_SECONDS
    while time.monotonic() < deadline:
        line = response.readline()
        if not line:
            break
        item = parser.feed(line.decode().rstrip("\r\n"))
        if isinstance(item, Frame):
            frames.append(item)
            if until(item):
                return frames
    raise AssertionError(f"the frame did not arrive; got {frames}")


def test_a_stream_on_one_worker_gets_a_message_sent_through_the_other(
    runtime_url: str, tmp_path: Path, tag: str
) -> None:
    alice, bob = f"alice-{tag}", f"bob-{tag}"
    with serve_process(runtime_url, tmp_path, **TWO) as server:
        server.wait_ready(2)
        owner = Connection(server, token(alice))
        status, room = owner.request("POST", "/v1/rooms", {"name": "across", "members": [bob]})
        assert status == 201, room

        stream = Connection(server, token(bob))
        stream.http.request("GET", f"/v1/events?room_id={room['id']}", headers=stream.headers())
        response = stream.http.getresponse()
        assert response.status == 200
        sender = connection_on(server, token(alice), lambda pid: pid != stream.worker)
        assert {stream.worker, sender.worker} == server.workers()

        status, message = sender.request("POST", f"/v1/rooms/{room['id']}/messages", {"body": "hello across"})
        assert status == 201, message
        frames = read_frames(
            response, lambda f: f.event == "message.created" and f.data["message"]["seq"] == message["seq"]
        )
        assert frames[-1].data["message"]["body"] == "hello across"
        assert frames[-1].data["message"]["sender"] == alice
        for conn in (owner, stream, sender):
            conn.close()


def test_sigterm_drains_both_workers_and_the_parent_exits_by_the_signal(
    runtime_url: str, tmp_path: Path, tag: str
) -> None:
    alice = f"alice-{tag}"
    with serve_process(runtime_url, tmp_path, **TWO) as server:
        workers = server.wait_ready(2)
        owner = Connection(server, token(alice))
        status, room = owner.request("POST", "/v1/rooms", {"name": "drain"})
        owner.close()
        assert status == 201, room

        # A send in flight on each worker: headers and half the body are in when SIGTERM comes.
        in_flight = []
        for worker in sorted(workers):
            conn = connection_on(server, token(alice), lambda pid, w=worker: pid == w)
            body = json.dumps({"body": f"in flight on {worker}"}).encode()
            conn.http.putrequest("POST", f"/v1/rooms/{room['id']}/messages")
            for name, value in conn.headers(**{"Content-Type": "application/json"}).items():
                conn.http.putheader(name, value)
            conn.http.putheader("Content-Length", str(len(body)))
            conn.http.endheaders()
            conn.http.send(body[: len(body) // 2])
            in_flight.append((conn, body))

        os.kill(server.pid, signal.SIGTERM)

        def shutting_down() -> bool:
            return workers <= {
                r["process.pid"] for r in server.log_records() if r.get("message") == "Shutting down"
            }

        server.wait_until("both workers shutting down", shutting_down)
        for conn, body in in_flight:
            conn.http.send(body[len(body) // 2 :])
            response = conn.http.getresponse()
            answer = json.loads(response.read())
            assert response.status == 201, answer
            assert answer["body"].startswith("in flight on ")
            conn.close()
        code = server.proc.wait(STOP_SECONDS)

    # As one server: drained, then ended by the signal (143 in a shell). No worker is left.
    assert code == -signal.SIGTERM, server.output()
    assert not any(alive(pid) for pid in workers)
    stopped = [r for r in server.log_records() if r.get("message") == "chat-api stopped"]
    assert {r["process.pid"] for r in stopped} == workers
    assert not [r for r in server.log_records() if r.get("level") in ("ERROR", "CRITICAL")], server.output()


def test_a_killed_worker_is_replaced_and_the_others_keep_serving(
    runtime_url: str, tmp_path: Path, tag: str
) -> None:
    with serve_process(runtime_url, tmp_path, **TWO) as server:
        workers = server.wait_ready(2)
        victim, survivor = sorted(workers)
        os.kill(victim, signal.SIGKILL)

        def replaced() -> set[int] | None:
            now = server.workers()
            return now if len(now) == 2 and victim not in now else None

        now = server.wait_until("a new worker", replaced)
        assert survivor in now and server.proc.poll() is None
        (newcomer,) = now - {survivor}
        server.wait_ready(2)  # the newcomer's app has started too

        conn = connection_on(server, token(f"after-{tag}"), lambda pid: pid == newcomer)
        assert conn.request("GET", "/v1/rooms")[0] == 200
        conn.close()
        died = [
            r
            for r in server.log_records()
            if r.get("level") == "ERROR"
            and r.get("process.pid") == server.pid
            and str(victim) in r["message"]
        ]
        assert died and "SIGKILL" in died[0]["message"], server.output()

        os.kill(server.pid, signal.SIGTERM)
        code = server.proc.wait(STOP_SECONDS)
    # The kill happened before the stop: the stop itself was clean.
    assert code == -signal.SIGTERM, server.output()
    assert not any(alive(pid) for pid in now)


def test_workers_drain_and_exit_by_themselves_when_the_parent_is_killed(
    runtime_url: str, tmp_path: Path
) -> None:
    with serve_process(runtime_url, tmp_path, **TWO) as server:
        workers = server.wait_ready(2)
        os.kill(server.pid, signal.SIGKILL)
        server.proc.wait(STOP_SECONDS)
        deadline = time.monotonic() + STOP_SECONDS  # a deadline for waiting, not a measurement
        while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(alive(pid) for pid in workers), server.output()
    gone = [r for r in server.log_records() if "is gone; draining" in r.get("message", "")]
    assert {r["process.pid"] for r in gone} == workers
    stopped = [r for r in server.log_records() if r.get("message") == "chat-api stopped"]
    assert {r["process.pid"] for r in stopped} == workers


@pytest.mark.parametrize("value", ["0", "-1", "two", "1.5", "65"])
def test_a_bad_workers_value_stops_start_up_with_one_line(runtime_url: str, value: str) -> None:
    env = serve_env(runtime_url, 1, CHAT_API_WORKERS=value)
    result = subprocess.run(
        [*CLI, "serve"],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("chat-api: configuration error: CHAT_API_WORKERS: "), lines


# -- the supervisor's decisions, without processes ---------------------------------------------------


def supervisor_of(workers: int, runtime_url: str) -> Supervisor:
    """A supervisor whose workers have all just exited (reaped: no pid, so it signals nobody)."""
    supervisor = Supervisor(FastAPI(), make_settings(runtime_url, workers=workers))
    supervisor.slots = [Slot(n, pid=None, started=time.monotonic()) for n in range(1, workers + 1)]
    return supervisor


def test_a_worker_that_dies_young_again_and_again_is_restarted_ever_more_slowly(runtime_url: str) -> None:
    supervisor = supervisor_of(2, runtime_url)
    slot = supervisor.slots[0]
    pauses = []
    for _ in range(8):
        supervisor._worker_exited(slot, 1001, signal.SIGKILL)  # the wait status of a SIGKILLed process
        pauses.append(slot.pause)
        slot.started = time.monotonic()
    assert pauses == sorted(pauses) and pauses[0] > 0 and pauses[-1] == RESTART_PAUSE_MAX_SECONDS
    assert supervisor.stopping is None and not supervisor.failed

    slot.started = time.monotonic() - 2 * YOUNG_SECONDS  # one that served a while: at once
    supervisor._worker_exited(slot, 1001, signal.SIGKILL)
    assert slot.pause == 0 and slot.restart_at is not None and supervisor.stopping is None


def test_a_worker_whose_app_cannot_start_stops_the_server_with_a_failure(runtime_url: str) -> None:
    supervisor = supervisor_of(2, runtime_url)
    slot = supervisor.slots[0]
    supervisor._worker_exited(slot, 1001, STARTUP_FAILURE << 8)  # exit status 3: no restart
    assert supervisor.failed and supervisor.stopping == signal.SIGTERM and slot.restart_at is None
