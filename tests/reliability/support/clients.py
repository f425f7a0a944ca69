"""Bounded client loops across faults: senders retrying with their idempotency keys, a stream follower."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from chat_api.auth.tokens import mint_token
from tests.support.settings import TEST_SECRET
from tests.support.sse import Frame, Parser, Retry

# The client gives up on one request much later than a fault's answer bound (servers.DB_TIMEOUT plus
# servers.ANSWER_MARGIN), so a hang is measured (and fails the test) instead of being cut short here.
CLIENT_TIMEOUT = httpx.Timeout(15.0, connect=3.0)
RETRY_PAUSE = 0.2  # between retries of one send (the 503's Retry-After says 1; clients may be eager)
MESSAGE_KINDS = ("message.created",)


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
