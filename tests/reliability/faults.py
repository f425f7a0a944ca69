"""The fault-injection harness: a private PostgreSQL (ThrowawayCluster) the test may stop, real
`chat-api serve` processes it may kill or SIGTERM, and bounded client loops that send with
idempotency keys and follow the event stream across the faults.

Nothing here touches the shared PostgreSQL: every fault lands on a cluster or a process the test
started itself."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from chat_api.auth.tokens import mint_token
from chat_api.core.migrations import migrate
from tests.support.pgcluster import ThrowawayCluster
from tests.support.processes import stop_process
from tests.support.servers import free_port
from tests.support.settings import TEST_SECRET, make_settings
from tests.support.sse import Frame, Parser, Retry

CLI = [sys.executable, "-m", "chat_api"]
DB_TIMEOUT = 3.0  # CHAT_API_DB_TIMEOUT of every server the harness starts
# A request during a fault must be answered within the database timeout plus this much.
ANSWER_MARGIN = 2.0
# The client gives up on one request much later than the bound above, so a hang is measured (and
# fails the test) instead of being cut short by the client.
CLIENT_TIMEOUT = httpx.Timeout(15.0, connect=3.0)
RETRY_PAUSE = 0.2  # between retries of one send (the 503's Retry-After says 1; clients may be eager)
STARTUP_SECONDS = 30
MESSAGE_KINDS = ("message.created",)


# -- the database ------------------------------------------------------------------------------------


@dataclass
class ChatDatabase:
    cluster: ThrowawayCluster
    url: str  # the service's DATABASE_URL (TCP, SCRAM, as CloudNativePG writes it)

    async def stop(self, mode: str = "fast") -> None:
        # pg_ctl -w blocks: run it off the event loop, so the clients keep going meanwhile.
        await asyncio.to_thread(self.cluster.stop, mode)

    async def start(self) -> None:
        await asyncio.to_thread(self.cluster.start)

    def processes(self) -> list[int]:
        """The cluster's postmaster and its children (backends, background workers)."""
        postmaster = int((self.cluster.data_dir / "postmaster.pid").read_text().split()[0])
        pids = [postmaster]
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    stat = (entry / "stat").read_text()
                    if int(stat.rsplit(")", 1)[1].split()[1]) == postmaster:
                        pids.append(int(entry.name))
        return pids

    def freeze(self) -> list[int]:
        """SIGSTOP the whole cluster: a database that hangs (a partition, a stalled disk), where
        connections neither fail nor answer. Returns the pids for thaw()."""
        pids = self.processes()
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        return pids

    @staticmethod
    def thaw(pids: list[int]) -> None:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    async def fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        conn = await asyncpg.connect(self.cluster.admin_dsn.replace("/postgres?", "/chat?"))
        try:
            return list(await conn.fetch(sql, *args))
        finally:
            await conn.close()


@contextlib.asynccontextmanager
async def chat_database() -> AsyncIterator[ChatDatabase]:
    """A throwaway cluster with database `chat`, migrated with the real migrations."""
    cluster = ThrowawayCluster()
    await asyncio.to_thread(cluster.start)
    try:
        admin = await asyncpg.connect(cluster.admin_dsn)
        try:
            await admin.execute("CREATE DATABASE chat")
        finally:
            await admin.close()
        url = cluster.url("postgres", cluster.admin_password, "chat")
        await migrate(make_settings(url))
        database = ChatDatabase(cluster, url)
        yield database
    finally:
        with contextlib.suppress(OSError, ValueError, RuntimeError):
            ChatDatabase.thaw(ChatDatabase(cluster, "").processes())  # a test failed while frozen
        await asyncio.to_thread(cluster.destroy)


# -- server processes ----------------------------------------------------------------------------------


def server_env(database_url: str, port: int, **extra: str) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("DATABASE_URL", "DATABASE_URL_FILE") and not key.startswith("CHAT_API_")
    }
    env.update(
        DATABASE_URL=database_url,
        CHAT_API_JWT_SECRET=TEST_SECRET,
        CHAT_API_HOST="127.0.0.1",
        CHAT_API_PORT=str(port),
        CHAT_API_SEND_RATE_PER_SECOND="0",
        CHAT_API_DB_TIMEOUT=str(DB_TIMEOUT),
        CHAT_API_STREAM_HEARTBEAT_SECONDS="1",
        CHAT_API_EVENT_PRUNE_INTERVAL_SECONDS="0",
    )
    env.update(extra)
    return env


class ServerProcess:
    """`python -m chat_api serve` on a free port; output goes to files (no pipe to fill up)."""

    def __init__(self, name: str, database_url: str, directory: Path, **extra_env: str) -> None:
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.stdout_path = directory / f"{name}.stdout"
        self.stderr_path = directory / f"{name}.stderr"
        env = server_env(database_url, self.port, **extra_env)
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.proc = subprocess.Popen(
                [*CLI, "serve"], env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        return self.stdout_path.read_text(errors="replace") + self.stderr_path.read_text(errors="replace")

    def log_records(self) -> list[dict[str, Any]]:
        records = []
        for line in self.stdout_path.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                records.append(json.loads(line))
        return records

    def errors_logged(self) -> list[dict[str, Any]]:
        return [r for r in self.log_records() if r.get("level") in ("ERROR", "CRITICAL")]

    async def ready(self, timeout: float = STARTUP_SECONDS) -> float:  # noqa: ASYNC109
        """Waits for /readyz 200; returns how long that took."""
        started = time.monotonic()
        last: object = None
        async with httpx.AsyncClient(timeout=2) as client:
            while time.monotonic() - started < timeout:
                if self.proc.poll() is not None:
                    raise AssertionError(f"{self.name} exited with {self.proc.returncode}:\n{self.output()}")
                try:
                    last = r = await client.get(f"{self.url}/readyz")
                    if r.status_code == 200:
                        return time.monotonic() - started
                except httpx.TransportError as exc:
                    last = exc
                await asyncio.sleep(0.1)
        raise AssertionError(f"{self.name}: /readyz not 200 within {timeout} s ({last!r}):\n{self.output()}")

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def sigterm(self) -> None:
        self.proc.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.proc.kill()  # SIGKILL: no drain, no lifespan shutdown, sockets reset by the kernel

    async def exited(self, timeout: float) -> int | None:  # noqa: ASYNC109
        """The exit status once the process ends within `timeout` seconds, else None."""
        deadline = time.monotonic() + timeout
        while True:
            code = self.proc.poll()
            if code is not None or time.monotonic() > deadline:
                return code
            await asyncio.sleep(0.02)

    def stop(self) -> None:
        stop_process(self.proc)


class Servers:
    """The servers a test starts (see server_processes)."""

    def __init__(self) -> None:
        self.started: list[ServerProcess] = []

    async def start(self, name: str, database_url: str, directory: Path, **extra_env: str) -> ServerProcess:
        """`chat-api serve`, once it is ready."""
        server = ServerProcess(name, database_url, directory, **extra_env)
        self.started.append(server)
        await server.ready()
        return server


@contextlib.contextmanager
def server_processes() -> Iterator[Servers]:
    """Starts servers for a test and stops whatever is still running at the end."""
    servers = Servers()
    try:
        yield servers
    finally:
        for server in servers.started:
            server.stop()


# -- where clients go ----------------------------------------------------------------------------------


class Route:
    """The servers clients may use, in order. A client refused by the current one (it is not
    listening any more) moves to the next, if there is one yet; the test appends replacements."""

    def __init__(self, *urls: str) -> None:
        self.urls = list(urls)
        self.index = 0

    def current(self) -> str:
        return self.urls[self.index]

    def add(self, url: str) -> None:
        self.urls.append(url)

    def refused(self, url: str) -> None:
        if self.urls[self.index] == url and self.index + 1 < len(self.urls):
            self.index += 1


def bearer(user: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {mint_token(TEST_SECRET, user, 3600)}"}


async def create_room(base_url: str, owner: str, members: list[str]) -> str:
    async with httpx.AsyncClient(base_url=base_url, headers=bearer(owner), timeout=10) as client:
        r = await client.post("/v1/rooms", json={"name": "reliability", "members": members})
        assert r.status_code == 201, r.text
        return str(r.json()["id"])


# -- senders -------------------------------------------------------------------------------------------


@dataclass
class Attempt:
    """One HTTP request of a client: where, when, how long, and what came back."""

    server: str
    key: str
    started: float  # time.monotonic()
    duration: float
    status: int | None = None  # None: a transport error
    error: str | None = None  # the transport error's class name
    problem: dict[str, Any] | None = None  # the body of a problem answer
    retry_after: str | None = None


@dataclass
class Sender:
    """One user sending messages one after another into a room, each with its own Idempotency-Key,
    retried with the same key (on 503 and on connection errors) until acknowledged or out of time."""

    user: str
    room_id: str
    route: Route
    deadline: float  # time.monotonic() after which nothing is retried any more
    marker: str  # in every body, so the database can be counted by body
    body_size: int = 0  # pad bodies to this many characters
    keep_alive: bool = True
    retry: bool = True  # False: one try per message (a failure is recorded, not hidden)
    attempts: list[Attempt] = field(default_factory=list)
    acked: dict[str, dict[str, Any]] = field(default_factory=dict)  # key -> the message
    replayed: set[str] = field(default_factory=set)  # keys acknowledged by a 200 replay
    unacked: list[str] = field(default_factory=list)  # keys given up on (out of time)
    unexpected: list[Attempt] = field(default_factory=list)  # answers other than 200/201/503
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])  # keys are unique per Sender

    def body(self, key: str) -> str:
        text = f"{self.marker} {key}"
        return text + "." * max(0, self.body_size - len(text))

    @property
    def keys(self) -> list[str]:
        return [*self.acked, *self.unacked]

    async def run(self, limit: int | None = None) -> None:
        """Sends until stopped (or `limit` messages); the message being sent when the stop comes is
        still carried through to an acknowledgement: a client does not drop what it was sending."""
        limits = httpx.Limits(max_keepalive_connections=10 if self.keep_alive else 0)
        async with httpx.AsyncClient(
            headers=bearer(self.user), timeout=CLIENT_TIMEOUT, limits=limits
        ) as client:
            n = 0
            while not self.stop.is_set() and (limit is None or n < limit):
                n += 1
                await self.deliver(client, f"{self.user}-{self.run_id}-{n}")

    async def deliver(self, client: httpx.AsyncClient, key: str) -> None:
        body = self.body(key)
        tries = 0
        while time.monotonic() < self.deadline and (self.retry or not tries):
            tries += 1
            base = self.route.current()
            started = time.monotonic()
            attempt = Attempt(server=base, key=key, started=started, duration=0.0)
            try:
                r = await client.post(
                    f"{base}/v1/rooms/{self.room_id}/messages",
                    json={"body": body},
                    headers={"Idempotency-Key": key},
                )
            except httpx.TransportError as exc:
                attempt.duration = time.monotonic() - started
                attempt.error = type(exc).__name__
                self.attempts.append(attempt)
                if isinstance(exc, httpx.ConnectError):
                    self.route.refused(base)
                await asyncio.sleep(RETRY_PAUSE)
                continue
            attempt.duration = time.monotonic() - started
            attempt.status = r.status_code
            self.attempts.append(attempt)
            if r.status_code in (200, 201):
                message = r.json()
                assert message["body"] == body, (key, message)
                self.acked[key] = message
                if r.status_code == 200:
                    assert r.headers.get("idempotent-replayed") == "true", r.headers
                    self.replayed.add(key)
                return
            if r.headers.get("content-type", "").startswith("application/problem+json"):
                attempt.problem = r.json()
            attempt.retry_after = r.headers.get("retry-after")
            if r.status_code != 503:
                self.unexpected.append(attempt)
            await asyncio.sleep(RETRY_PAUSE)
        self.unacked.append(key)


# -- a stream reader that survives faults ----------------------------------------------------------------


@dataclass
class Connection:
    """One GET /v1/events of a Follower: where, what it got, and how it ended."""

    server: str
    started: float
    last_event_id: str | None
    status: int | None = None
    ended: float | None = None
    error: str | None = None
    frames: int = 0


@dataclass
class Follower:
    """Reads /v1/events like a browser's EventSource: on any end or error it reconnects (to the
    route's current server) with Last-Event-ID, and keeps every frame it got."""

    user: str
    route: Route
    frames: list[Frame] = field(default_factory=list)
    connections: list[Connection] = field(default_factory=list)
    last_id: str | None = None
    opened: asyncio.Event = field(default_factory=asyncio.Event)  # the first stream is subscribed
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def messages(self) -> list[Frame]:
        return [f for f in self.frames if f.event in MESSAGE_KINDS]

    async def run(self) -> None:
        timeout = httpx.Timeout(10.0, read=5.0)  # heartbeats come every second
        async with httpx.AsyncClient(headers=bearer(self.user), timeout=timeout) as client:
            while True:
                await self._connect_once(client)
                await asyncio.sleep(RETRY_PAUSE)

    async def _connect_once(self, client: httpx.AsyncClient) -> None:
        base = self.route.current()
        connection = Connection(server=base, started=time.monotonic(), last_event_id=self.last_id)
        self.connections.append(connection)
        headers = {"Last-Event-ID": self.last_id} if self.last_id else {}
        try:
            async with client.stream("GET", f"{base}/v1/events", headers=headers) as response:
                connection.status = response.status_code
                if response.status_code != 200:
                    await response.aread()
                    return
                parser = Parser()
                async for line in response.aiter_lines():
                    item = parser.feed(line)
                    if isinstance(item, Retry):
                        self.opened.set()  # sent after the subscription is registered
                    elif isinstance(item, Frame):
                        self.frames.append(item)
                        connection.frames += 1
                        if item.id:
                            self.last_id = item.id
                        self.changed.set()
        except httpx.TransportError as exc:
            connection.error = type(exc).__name__
            if isinstance(exc, httpx.ConnectError):
                self.route.refused(base)
        finally:
            connection.ended = time.monotonic()

    async def wait_for_ids(self, message_ids: set[str], timeout: float) -> set[str]:  # noqa: ASYNC109
        """Waits until every id is among the streamed messages; returns the ids still missing."""
        deadline = time.monotonic() + timeout
        while True:
            missing = message_ids - {f.data["message"]["id"] for f in self.messages()}
            if not missing or time.monotonic() > deadline:
                return missing
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), 0.5)


async def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> float:  # noqa: ASYNC109
    """Polls state that other tasks and processes change until `predicate` holds; returns how long
    that took, or fails naming `what`."""
    started = time.monotonic()
    while True:
        if predicate():
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{what}: not within {timeout} s")
        await asyncio.sleep(0.05)


def acked_again(senders: list[Sender], more: int) -> Callable[[], bool]:
    """A predicate: every sender has had `more` further messages acknowledged since now."""
    now = {s.user: len(s.acked) for s in senders}
    return lambda: all(len(s.acked) >= now[s.user] + more for s in senders)


@contextlib.asynccontextmanager
async def running(coroutine: Any, name: str) -> AsyncIterator[asyncio.Task[Any]]:
    """Runs a coroutine as a task for the block; cancels it at the end."""
    task = asyncio.create_task(coroutine, name=name)
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


# -- checks --------------------------------------------------------------------------------------------


@dataclass
class Tally:
    """What a run sent, what was acknowledged and what the database holds."""

    attempts: int  # HTTP requests (first tries and retries)
    messages: int  # distinct idempotency keys the clients tried to send
    acked: int
    replayed: int  # acknowledged by a 200 replay of a retry
    found: int  # acknowledged messages in the database (exactly once each)
    rows: int  # rows in the database for these senders (acked or not)

    def line(self) -> str:
        return (
            f"requests={self.attempts} messages={self.messages} acked={self.acked} "
            f"(replayed={self.replayed}) found={self.found} rows={self.rows}"
        )


async def check_database(db: ChatDatabase, room_id: str, senders: list[Sender]) -> Tally:
    """Every acknowledged message is in the database exactly once, with the acknowledged seq; no
    key and no body produced two rows; nothing is in the room that no client sent."""
    rows = await db.fetch(
        "SELECT sender, idempotency_key, body, seq, id::text AS id FROM messages WHERE room_id = $1::uuid",
        room_id,
    )
    by_key = Counter((r["sender"], r["idempotency_key"]) for r in rows)
    by_body = Counter(r["body"] for r in rows)
    assert not [k for k, n in by_key.items() if n > 1], "a key produced two messages"
    assert not [b[:40] for b, n in by_body.items() if n > 1], "a body is stored twice"
    index = {(r["sender"], r["idempotency_key"]): r for r in rows}
    tried = {(s.user, k) for s in senders for k in s.keys}
    assert set(index) <= tried, f"messages nobody sent: {set(index) - tried}"
    found = 0
    for sender in senders:
        for key, message in sender.acked.items():
            row = index.get((sender.user, key))
            assert row is not None, f"acknowledged message {sender.user}/{key} is not in the database"
            assert row["id"] == message["id"] and row["seq"] == message["seq"], (row, message)
            assert row["body"] == sender.body(key)
            found += 1
    return Tally(
        attempts=sum(len(s.attempts) for s in senders),
        messages=sum(len(s.keys) for s in senders),
        acked=sum(len(s.acked) for s in senders),
        replayed=sum(len(s.replayed) for s in senders),
        found=found,
        rows=len(rows),
    )


def check_stream(follower: Follower, senders: list[Sender], room_id: str) -> int:
    """Every acknowledged message arrived on the stream exactly once, and no event of the room
    twice; returns how many acknowledged messages were streamed."""
    seen = Counter((f.data["room_id"], f.data["seq"]) for f in follower.frames if f.data and "seq" in f.data)
    assert not [p for p, n in seen.items() if n > 1], f"events streamed twice: {seen.most_common(3)}"
    streamed = Counter(f.data["message"]["id"] for f in follower.messages() if f.data["room_id"] == room_id)
    acked = {m["id"] for s in senders for m in s.acked.values()}
    missing = acked - set(streamed)
    assert not missing, f"{len(missing)} acknowledged messages never arrived on the stream"
    return len(acked)


def report(name: str, **figures: Any) -> str:
    """One line of figures; printed (pytest -rP / -s shows it) and returned for record_property."""
    text = f"RELIABILITY {name}: " + " ".join(f"{k}={v}" for k, v in figures.items())
    print(text)
    return text
