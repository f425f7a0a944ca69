"""The tests' one SSE parser, and a small client that reads /v1/events in the background with it."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass
class Frame:
    event: str
    id: str | None
    data: Any


@dataclass(frozen=True)
class Comment:
    text: str  # the whole line, its leading ":" included


@dataclass(frozen=True)
class Retry:
    milliseconds: int


class Parser:
    """Reads an event stream one line at a time (as `aiter_lines()` gives them) and says what each
    line completes: a comment, a `retry:` field, or a frame (at the blank line that ends it)."""

    def __init__(self) -> None:
        self.fields: dict[str, str] = {}

    def feed(self, line: str) -> Frame | Comment | Retry | None:
        if line.startswith(":"):
            return Comment(line)
        if not line:
            fields, self.fields = self.fields, {}
            if "event" in fields or "data" in fields:
                data = json.loads(fields["data"]) if "data" in fields else None
                return Frame(fields.get("event", "message"), fields.get("id"), data)
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "retry":
            return Retry(int(value))
        self.fields[name] = value
        return None


@dataclass
class Stream:
    frames: list[Frame] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)
    retry: int | None = None
    status: int | None = None
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    opened: asyncio.Event = field(default_factory=asyncio.Event)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def of(self, *kinds: str) -> list[Frame]:
        return [f for f in self.frames if f.event in kinds]

    def after(self, seq: int) -> list[Frame]:
        """The frames of changes after `seq` (of the rooms it is a seq of), and the frames of no
        change (such as typing): a stream opened without a cursor, or from `stream_cursor`, may
        begin with events committed just before."""
        return [f for f in self.frames if not isinstance(f.data, dict) or f.data.get("seq", seq + 1) > seq]

    @property
    def last_id(self) -> str | None:
        ids = [f.id for f in self.frames if f.id]
        return ids[-1] if ids else None

    async def wait_until(self, condition: Callable[[], bool], timeout: float = 10.0) -> None:  # noqa: ASYNC109
        """Waits until `condition()` holds, checked as frames arrive."""
        async with asyncio.timeout(timeout):
            while not condition():
                if self.ended.is_set():
                    raise AssertionError(f"stream ended before the condition held: {self.frames}")
                self.changed.clear()
                await self.changed.wait()

    async def wait_for(self, count: int, *kinds: str, timeout: float = 10.0) -> list[Frame]:  # noqa: ASYNC109
        """Waits until `count` frames (of `kinds`, if given) arrived; returns them."""
        async with asyncio.timeout(timeout):
            while True:
                got = self.of(*kinds) if kinds else list(self.frames)
                if len(got) >= count:
                    return got
                if self.ended.is_set():
                    raise AssertionError(f"stream ended with {len(got)} of {count} frames: {got}")
                self.changed.clear()
                await self.changed.wait()


async def _read(
    client: httpx.AsyncClient, stream: Stream, params: dict[str, str], headers: dict[str, str]
) -> None:
    try:
        async with client.stream("GET", "/v1/events", params=params, headers=headers) as response:
            stream.status = response.status_code
            stream.opened.set()
            if response.status_code != 200:
                await response.aread()
                return
            parser = Parser()
            async for line in response.aiter_lines():
                item = parser.feed(line)
                if isinstance(item, Comment):
                    stream.comments.append(item.text)
                elif isinstance(item, Retry):
                    stream.retry = item.milliseconds
                elif isinstance(item, Frame):
                    stream.frames.append(item)
                    stream.changed.set()
    finally:
        stream.opened.set()
        stream.ended.set()
        stream.changed.set()


@contextlib.asynccontextmanager
async def open_stream(
    base_url: str,
    token: str,
    *,
    room_id: str | None = None,
    cursor: str | None = None,
    last_event_id: str | None = None,
) -> AsyncIterator[Stream]:
    """Opens /v1/events and reads it in the background until the block ends."""
    params = {k: v for k, v in {"room_id": room_id, "cursor": cursor}.items() if v is not None}
    headers = {"Authorization": f"Bearer {token}"}
    if last_event_id is not None:
        headers["Last-Event-ID"] = last_event_id
    stream = Stream()
    async with httpx.AsyncClient(base_url=base_url, timeout=httpx.Timeout(10, read=None)) as client:
        task = asyncio.create_task(_read(client, stream, params, headers))
        try:
            async with asyncio.timeout(10):
                await stream.opened.wait()
            yield stream
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, httpx.HTTPError):
                await task
