"""The event stream done right, for the sync and the async client: start from `stream_cursor` (no gap
after listing rooms) or a saved cursor; resume after any disconnect with `Last-Event-ID`, waiting as
`retry:` says and backing off while the service stays away; `reset` (the cursor is older than the
retained log) calls `on_reset` and continues from the reset's id; `reauth` (the token expired or was
revoked) reconnects at once with a fresh token from the last id; every change is applied once by
`(room_id, seq)`; `typing` frames (no id) come through without moving the cursor."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import time
from collections import OrderedDict
from collections.abc import AsyncGenerator, Awaitable, Callable, Generator
from dataclasses import dataclass
from typing import Any, Final, cast

import httpx

from chat_api_client import _calls
from chat_api_client.errors import ProblemError
from chat_api_client.models import Member, Message, RoomDetail

DEFAULT_RETRY: Final = 2.0  # seconds until the service's `retry:` field says otherwise
MAX_BACKOFF: Final = 30.0
READ_TIMEOUT: Final = 45.0  # three missed heartbeats (one per 15 s): the connection is dead
MAX_ROOMS: Final = 100_000  # high-water marks kept; the least recently changed room is forgotten first


@dataclass(frozen=True)
class Event:
    """A change in a room: `kind` is the `event:` (message.created, member.added, ...), `id` the cursor
    just after it, `data` the whole `data:` object ({"room_id", "seq", and "message", "member" or "room"})."""

    kind: str
    id: str
    room_id: str
    seq: int
    data: dict[str, Any]

    @property
    def message(self) -> Message:
        return cast(Message, self.data["message"])

    @property
    def member(self) -> Member:
        return cast(Member, self.data["member"])

    @property
    def room(self) -> RoomDetail:
        return cast(RoomDetail, self.data["room"])


@dataclass(frozen=True)
class Typing:
    """Someone else is typing in `room_id` until `expires_at`. Ephemeral: no id, no seq, never replayed."""

    room_id: str
    user_id: str
    expires_at: str


@dataclass(frozen=True)
class Reset:
    """The cursor was older than the retained log: reload your state. The stream goes on from `cursor`."""

    cursor: str


StreamItem = Event | Typing | Reset


class _Reauth:
    """The stream ended because its credential did (`event: reauth`): reconnect with a fresh token."""


REAUTH: Final = _Reauth()


class Parser:
    """text/event-stream, one line at a time (as httpx's iter_lines gives them), per the HTML standard:
    a blank line dispatches the frame; `retry:` sets the reconnection time; comments are ignored."""

    def __init__(self) -> None:
        self.retry: float | None = None  # seconds
        self._event = ""
        self._data: list[str] = []
        self._id: str | None = None
        self._has_id = False

    def feed(self, line: str) -> tuple[str, str | None, str] | None:
        """(event, id or None, data) at the end of a frame, else None."""
        if not line:
            if not self._data and not self._event:
                self._reset()
                return None
            frame = (self._event or "message", self._id if self._has_id else None, "\n".join(self._data))
            self._reset()
            return frame
        if line.startswith(":"):
            return None
        name, colon, value = line.partition(":")
        value = value.removeprefix(" ") if colon else ""
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id" and "\0" not in value:
            self._id, self._has_id = value, True
        elif name == "retry" and value.isdigit():
            self.retry = int(value) / 1000
        return None

    def _reset(self) -> None:
        self._event, self._data, self._id, self._has_id = "", [], None, False


class StreamState:
    """Where a stream is: the last id received (what a resume sends as Last-Event-ID) and the
    highest seq applied per room (what makes a repeated change a no-op)."""

    def __init__(self, cursor: str | None, marks: dict[str, int] | None = None, max_rooms: int = MAX_ROOMS):
        self.last_id = cursor
        self.max_rooms = max_rooms
        self.marks: OrderedDict[str, int] = OrderedDict(marks or {})

    def is_new(self, room_id: str, seq: int) -> bool:
        """True once per (room_id, seq), and never for a seq at or below the room's last applied one."""
        if seq <= self.marks.get(room_id, 0):
            return False
        self.marks[room_id] = seq
        self.marks.move_to_end(room_id)
        while len(self.marks) > self.max_rooms:
            self.marks.popitem(last=False)
        return True

    def apply(self, event: str, id: str | None, data: str) -> StreamItem | _Reauth | None:
        """What a frame means for the application: an item to hand over, REAUTH, or None (nothing)."""
        if id:
            self.last_id = id  # the position moves past repeats too: they are behind it
        if event == "reauth":
            return REAUTH
        if event == "reset" and id:
            return Reset(id)
        try:
            payload = _json(data)
        except ValueError:
            return None
        if event == "typing" and id is None:
            return Typing(str(payload["room_id"]), str(payload["user_id"]), str(payload["expires_at"]))
        if (
            id is None
            or not isinstance(payload.get("room_id"), str)
            or not isinstance(payload.get("seq"), int)
        ):
            return None
        if not self.is_new(payload["room_id"], payload["seq"]):
            return None
        return Event(event, id, payload["room_id"], payload["seq"], payload)


def _json(data: str) -> dict[str, Any]:
    value = json.loads(data)
    if not isinstance(value, dict):
        raise ValueError("not an object")
    return value


class _Connection:
    """What both stream loops decide between connections: when to reconnect, with which token."""

    def __init__(self, max_backoff: float) -> None:
        self.failures = 0  # connections in a row that did not open
        self.refresh = False  # the next token must be a fresh one
        self.refreshed_after_401 = False
        self.max_backoff = max_backoff

    def wait(self, retry: float, at_least: float = 0.0) -> float:
        if self.refresh and not self.failures:
            return 0.0  # reauth: at once
        delay: float = retry * 2 ** max(0, self.failures - 1)
        return max(at_least, min(self.max_backoff, delay))

    def opened(self, response: httpx.Response) -> bool | ProblemError:
        """True: read it. False: reconnect (after wait()). ProblemError: give up with it."""
        if response.status_code == 200:
            self.failures, self.refreshed_after_401 = 0, False
            return True
        if response.status_code == 401 and not self.refreshed_after_401:
            self.refreshed_after_401 = self.refresh = True
            return False
        error = ProblemError.from_response(response)
        if response.status_code in _calls.RETRY_STATUSES or response.status_code >= 500:
            self.failures += 1
            return False
        return error


class _Stream:
    """What the sync and the async stream share: their place, how they read a line, when they retry."""

    def __init__(
        self,
        cursor: str | None,
        room_id: str | None,
        marks: dict[str, int] | None,
        max_backoff: float,
        read_timeout: float,
    ) -> None:
        self.state = StreamState(cursor, marks)
        self._room_id = room_id
        self._conn = _Connection(max_backoff)
        self._timeout = httpx.Timeout(10.0, read=read_timeout)
        self._retry = DEFAULT_RETRY
        self._closed = False

    @property
    def cursor(self) -> str | None:
        """The last id received: save it, and pass it as `cursor` to continue where this stream was."""
        return self.state.last_id

    def _request(self, token: str) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {token}", "Accept": "text/event-stream"}
        if self.state.last_id:
            headers["Last-Event-ID"] = self.state.last_id
        return {
            "params": {"room_id": self._room_id} if self._room_id else {},
            "headers": headers,
            "timeout": self._timeout,
        }

    def _take(self, parser: Parser, line: str) -> StreamItem | _Reauth | None:
        frame = parser.feed(line)
        if parser.retry is not None:
            self._retry = parser.retry
        if frame is None:
            return None
        item = self.state.apply(*frame)
        if item is REAUTH:
            self._conn.refresh = True
        return item

    def _next_wait(self, at_least: float) -> float:
        return self._conn.wait(self._retry, at_least)


class EventStream(_Stream):
    """`for item in client.stream(...)`: Event, Typing and Reset items, forever (until close())."""

    def __init__(
        self,
        http: httpx.Client,
        token: Callable[[bool], str],
        first_cursor: Callable[[], str],
        cursor: str | None,
        *,
        room_id: str | None = None,
        on_reset: Callable[[Reset], object] | None = None,
        marks: dict[str, int] | None = None,
        max_backoff: float = MAX_BACKOFF,
        read_timeout: float = READ_TIMEOUT,
    ) -> None:
        """`http` reaches the service, `token(refresh)` gives a bearer token, `first_cursor()` the
        `stream_cursor` to start from when `cursor` is None (the client hands in its own)."""
        super().__init__(cursor, room_id, marks, max_backoff, read_timeout)
        self._http, self._token, self._first_cursor = http, token, first_cursor
        self._on_reset = on_reset
        self._items = self._run()

    def __iter__(self) -> EventStream:
        return self

    def __next__(self) -> StreamItem:
        return next(self._items)

    def __enter__(self) -> EventStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Ends the iteration; called from another thread, at the next line the service sends (a
        heartbeat at the latest) or the next reconnection."""
        self._closed = True
        with contextlib.suppress(ValueError):  # running in another thread: it stops by itself
            self._items.close()

    def _run(self) -> Generator[StreamItem]:
        if self.state.last_id is None:
            self.state.last_id = self._first_cursor()
        while not self._closed:
            at_least = 0.0
            refresh, self._conn.refresh = self._conn.refresh, False
            try:
                request = self._request(self._token(refresh))
                with self._http.stream("GET", "/v1/events", **request) as response:
                    opened = self._conn.opened(response)
                    if opened is not True:
                        response.read()
                        if isinstance(opened, ProblemError):
                            raise ProblemError.from_response(response)
                        at_least = ProblemError.from_response(response).retry_after or 0.0
                    else:
                        parser = Parser()
                        for line in response.iter_lines():
                            if self._closed:
                                return
                            item = self._take(parser, line)
                            if isinstance(item, _Reauth):
                                break
                            if isinstance(item, Reset) and self._on_reset is not None:
                                self._on_reset(item)
                            if item is not None:
                                yield item
                        else:
                            self._conn.failures += 1  # the service ended it (restart, slow reader)
            except httpx.TransportError:
                self._conn.failures += 1
            if not self._closed:
                time.sleep(self._next_wait(at_least))


class AsyncEventStream(_Stream):
    """`async for item in client.stream(...)`: Event, Typing and Reset items, forever (until aclose())."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        token: Callable[[bool], Awaitable[str]],
        first_cursor: Callable[[], Awaitable[str]],
        cursor: str | None,
        *,
        room_id: str | None = None,
        on_reset: Callable[[Reset], object | Awaitable[object]] | None = None,
        marks: dict[str, int] | None = None,
        max_backoff: float = MAX_BACKOFF,
        read_timeout: float = READ_TIMEOUT,
    ) -> None:
        """As EventStream's, awaited."""
        super().__init__(cursor, room_id, marks, max_backoff, read_timeout)
        self._http, self._token, self._first_cursor = http, token, first_cursor
        self._on_reset = on_reset
        self._items = self._run()

    def __aiter__(self) -> AsyncEventStream:
        return self

    async def __anext__(self) -> StreamItem:
        return await self._items.__anext__()

    async def __aenter__(self) -> AsyncEventStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Ends the iteration; from another task, cancel the task that iterates instead."""
        self._closed = True
        with contextlib.suppress(RuntimeError):  # running in another task: it stops by itself
            await self._items.aclose()

    async def _run(self) -> AsyncGenerator[StreamItem]:
        if self.state.last_id is None:
            self.state.last_id = await self._first_cursor()
        while not self._closed:
            at_least = 0.0
            refresh, self._conn.refresh = self._conn.refresh, False
            try:
                request = self._request(await self._token(refresh))
                async with self._http.stream("GET", "/v1/events", **request) as response:
                    opened = self._conn.opened(response)
                    if opened is not True:
                        await response.aread()
                        if isinstance(opened, ProblemError):
                            raise ProblemError.from_response(response)
                        at_least = ProblemError.from_response(response).retry_after or 0.0
                    else:
                        parser = Parser()
                        async for line in response.aiter_lines():
                            if self._closed:
                                return
                            item = self._take(parser, line)
                            if isinstance(item, _Reauth):
                                break
                            if isinstance(item, Reset) and self._on_reset is not None:
                                called = self._on_reset(item)
                                if inspect.isawaitable(called):
                                    await called
                            if item is not None:
                                yield item
                        else:
                            self._conn.failures += 1  # the service ended it (restart, slow reader)
            except httpx.TransportError:
                self._conn.failures += 1
            if not self._closed:
                await asyncio.sleep(self._next_wait(at_least))
