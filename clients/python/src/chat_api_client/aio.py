"""AsyncChatClient: the whole /v1 API, asynchronous (httpx.AsyncClient)."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol, cast

import httpx

from chat_api_client import _calls
from chat_api_client._calls import UNSET, Call, _Unset
from chat_api_client.models import Member, Message, MessagePage, RoomDetail, RoomPage, SearchPage
from chat_api_client.stream import MAX_BACKOFF, READ_TIMEOUT, AsyncEventStream, Reset


class AsyncTokenProvider(Protocol):
    """Called for every request; with refresh=True after a 401 or a `reauth`: return a fresh token.
    A plain function or a coroutine function."""

    def __call__(self, *, refresh: bool) -> str | Awaitable[str]: ...


class AsyncChatClient:
    """A chat-api user: `AsyncChatClient("https://chat.example", token)` where token is a JWT or
    an AsyncTokenProvider. Errors are raised as ProblemError; lost connections, 429 and 502-504 are retried
    (`retries` times) when sending again is safe: reads, idempotent writes, and sends, which carry one
    Idempotency-Key per message on every attempt."""

    def __init__(
        self,
        base_url: str,
        token: str | AsyncTokenProvider,
        *,
        timeout: float = 20.0,
        retries: int = 2,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._provider: AsyncTokenProvider = (lambda *, refresh: token) if isinstance(token, str) else token
        self._retries = retries
        self._http = httpx.AsyncClient(base_url=base_url, timeout=timeout, transport=transport)

    async def __aenter__(self) -> AsyncChatClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _token(self, *, refresh: bool = False) -> str:
        token = self._provider(refresh=refresh)
        return await token if inspect.isawaitable(token) else token

    async def _stream_cursor(self) -> str:
        return (await self.list_rooms(limit=1))["stream_cursor"]

    async def _send(self, call: Call) -> httpx.Response:
        attempt, refreshed = 0, False
        refresh = False
        while True:
            headers = _calls.request_headers(call, await self._token(refresh=refresh))
            refresh = False
            try:
                response = await self._http.request(
                    call.method, call.path, params=call.params, json=call.json, headers=headers
                )
            except httpx.TransportError as exc:
                if attempt >= self._retries or not _calls.may_resend_after(call, exc):
                    raise
                attempt += 1
                await asyncio.sleep(_calls.backoff(attempt))
                continue
            if response.status_code == 401 and not refreshed:
                refreshed = refresh = True
                continue
            wait = _calls.retry_wait(call, response, attempt + 1) if attempt < self._retries else None
            if wait is None:
                return response
            attempt += 1
            await asyncio.sleep(wait)

    async def _call(self, call: Call) -> Any:
        return _calls.result(await self._send(call))

    async def user_id(self) -> str:
        """Who this client is: the current token's `sub`."""
        return _calls.token_subject(await self._token())

    # --- rooms ---------------------------------------------------------------------------------------

    async def create_room(self, name: str, members: list[str] | None = None) -> RoomDetail:
        return cast(RoomDetail, await self._call(_calls.create_room(name, members)))

    async def list_rooms(self, *, limit: int | None = None, cursor: str | None = None) -> RoomPage:
        """One page, most recent activity first; `stream_cursor` is where to open the stream from."""
        return cast(RoomPage, await self._call(_calls.list_rooms(limit, cursor)))

    async def iter_rooms(self, *, limit: int | None = None) -> AsyncIterator[RoomPage]:
        """Every page of your rooms (`next_cursor` followed)."""
        cursor = None
        while True:
            page = await self.list_rooms(limit=limit, cursor=cursor)
            yield page
            if not (cursor := page["next_cursor"]):
                return

    async def get_room(self, room_id: str) -> RoomDetail:
        return cast(RoomDetail, await self._call(_calls.get_room(room_id)))

    async def update_room(
        self, room_id: str, *, name: str | _Unset = UNSET, topic: str | _Unset | None = UNSET
    ) -> RoomDetail:
        """Rename and/or set the topic (owner only); topic=None clears it."""
        return cast(RoomDetail, await self._call(_calls.update_room(room_id, name, topic)))

    async def add_member(self, room_id: str, user_id: str) -> Member:
        return cast(Member, await self._call(_calls.add_member(room_id, user_id)))

    async def remove_member(self, room_id: str, user_id: str) -> None:
        await self._call(_calls.remove_member(room_id, user_id, stay_out=False))

    async def leave_room(self, room_id: str, *, stay_out: bool = False) -> None:
        """Leave; stay_out=True: and never be added to this room again."""
        await self._call(_calls.remove_member(room_id, await self.user_id(), stay_out))

    async def open_dm(self, user_id: str) -> RoomDetail:
        """Your one direct room with `user_id` (created on the first call, from either side)."""
        return cast(RoomDetail, await self._call(_calls.open_dm(user_id)))

    # --- messages ------------------------------------------------------------------------------------

    async def send_message(
        self, room_id: str, body: str, *, reply_to: int | None = None, idempotency_key: str | None = None
    ) -> Message:
        """Sends once, however many attempts it takes (a fresh Idempotency-Key unless you give one)."""
        return cast(Message, await self._call(_calls.send_message(room_id, body, reply_to, idempotency_key)))

    async def get_messages(
        self, room_id: str, *, limit: int | None = None, before: int | None = None, after: int | None = None
    ) -> MessagePage:
        """A history page in ascending seq: the newest, `before` a seq, or `after` one."""
        return cast(MessagePage, await self._call(_calls.get_messages(room_id, limit, before, after)))

    async def get_thread(
        self,
        room_id: str,
        root_seq: int,
        *,
        limit: int | None = None,
        before: int | None = None,
        after: int | None = None,
    ) -> MessagePage:
        """A page of the replies of the thread whose first message is `root_seq`."""
        return cast(
            MessagePage, await self._call(_calls.get_messages(room_id, limit, before, after, root_seq))
        )

    async def get_message(self, room_id: str, seq: int) -> Message:
        return cast(Message, await self._call(_calls.get_message(room_id, seq)))

    async def edit_message(self, room_id: str, seq: int, body: str) -> Message:
        return cast(Message, await self._call(_calls.edit_message(room_id, seq, body)))

    async def delete_message(self, room_id: str, seq: int) -> None:
        await self._call(_calls.delete_message(room_id, seq))

    async def add_reaction(self, room_id: str, seq: int, emoji: str) -> Message:
        """One emoji ("👍🏽") or a shortcode ("tada"); percent-encoded for you."""
        return cast(Message, await self._call(_calls.reaction("PUT", room_id, seq, emoji)))

    async def remove_reaction(self, room_id: str, seq: int, emoji: str) -> None:
        await self._call(_calls.reaction("DELETE", room_id, seq, emoji))

    async def mark_read(self, room_id: str, seq: int) -> None:
        """Moves your read marker forward (never back)."""
        await self._call(_calls.mark_read(room_id, seq))

    async def typing(self, room_id: str) -> None:
        """ "I am typing" for 5 s (call again every couple of seconds while it lasts)."""
        await self._call(_calls.typing(room_id))

    async def search(
        self, q: str, *, room_id: str | None = None, limit: int | None = None, cursor: str | None = None
    ) -> SearchPage:
        """Full-text search of your rooms (web-search syntax), newest first."""
        return cast(SearchPage, await self._call(_calls.search(q, room_id, limit, cursor)))

    # --- the event stream ----------------------------------------------------------------------------

    def stream(
        self,
        cursor: str | None = None,
        *,
        room_id: str | None = None,
        on_reset: Callable[[Reset], object | Awaitable[object]] | None = None,
        marks: dict[str, int] | None = None,
        max_backoff: float = MAX_BACKOFF,
        read_timeout: float = READ_TIMEOUT,
    ) -> AsyncEventStream:
        """Every change you may see, each once, in order, across disconnects (chat_api_client.stream).
        cursor=None: from the `stream_cursor` of GET /v1/rooms. `marks`: room id → seq already applied."""
        return AsyncEventStream(
            self._http,
            lambda refresh: self._token(refresh=refresh),
            self._stream_cursor,
            cursor,
            room_id=room_id,
            on_reset=on_reset,
            marks=marks,
            max_backoff=max_backoff,
            read_timeout=read_timeout,
        )
