"""ChatClient: the whole /v1 API, synchronous (httpx.Client)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol, cast

import httpx

from chat_api_client import _calls
from chat_api_client._calls import UNSET, Call, _Unset
from chat_api_client.models import Member, Message, MessagePage, RoomDetail, RoomPage, SearchPage
from chat_api_client.stream import MAX_BACKOFF, READ_TIMEOUT, EventStream, Reset


class TokenProvider(Protocol):
    """Called for every request; with refresh=True after a 401 or a `reauth`: return a fresh token."""

    def __call__(self, *, refresh: bool) -> str: ...


class ChatClient:
    """A chat-api user: `ChatClient("https://chat.example", token)` where token is a JWT or a
    TokenProvider. Errors are raised as ProblemError; lost connections, 429 and 502-504 are retried
    (`retries` times) when sending again is safe: reads, idempotent writes, and sends, which carry one
    Idempotency-Key per message on every attempt."""

    def __init__(
        self,
        base_url: str,
        token: str | TokenProvider,
        *,
        timeout: float = 20.0,
        retries: int = 2,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._provider: TokenProvider = (lambda *, refresh: token) if isinstance(token, str) else token
        self._retries = retries
        self._http = httpx.Client(base_url=base_url, timeout=timeout, transport=transport)

    def __enter__(self) -> ChatClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _token(self, *, refresh: bool = False) -> str:
        return self._provider(refresh=refresh)

    def _stream_cursor(self) -> str:
        return self.list_rooms(limit=1)["stream_cursor"]

    def _send(self, call: Call) -> httpx.Response:
        attempt, refreshed = 0, False
        refresh = False
        while True:
            headers = _calls.request_headers(call, self._token(refresh=refresh))
            refresh = False
            try:
                response = self._http.request(
                    call.method, call.path, params=call.params, json=call.json, headers=headers
                )
            except httpx.TransportError as exc:
                if attempt >= self._retries or not _calls.may_resend_after(call, exc):
                    raise
                attempt += 1
                time.sleep(_calls.backoff(attempt))
                continue
            if response.status_code == 401 and not refreshed:
                refreshed = refresh = True
                continue
            wait = _calls.retry_wait(call, response, attempt + 1) if attempt < self._retries else None
            if wait is None:
                return response
            attempt += 1
            time.sleep(wait)

    def _call(self, call: Call) -> Any:
        return _calls.result(self._send(call))

    def user_id(self) -> str:
        """Who this client is: the current token's `sub`."""
        return _calls.token_subject(self._token())

    # --- rooms ---------------------------------------------------------------------------------------

    def create_room(self, name: str, members: list[str] | None = None) -> RoomDetail:
        return cast(RoomDetail, self._call(_calls.create_room(name, members)))

    def list_rooms(self, *, limit: int | None = None, cursor: str | None = None) -> RoomPage:
        """One page, most recent activity first; `stream_cursor` is where to open the stream from."""
        return cast(RoomPage, self._call(_calls.list_rooms(limit, cursor)))

    def iter_rooms(self, *, limit: int | None = None) -> Iterator[RoomPage]:
        """Every page of your rooms (`next_cursor` followed)."""
        cursor = None
        while True:
            page = self.list_rooms(limit=limit, cursor=cursor)
            yield page
            if not (cursor := page["next_cursor"]):
                return

    def get_room(self, room_id: str) -> RoomDetail:
        return cast(RoomDetail, self._call(_calls.get_room(room_id)))

    def update_room(
        self, room_id: str, *, name: str | _Unset = UNSET, topic: str | _Unset | None = UNSET
    ) -> RoomDetail:
        """Rename and/or set the topic (owner only); topic=None clears it."""
        return cast(RoomDetail, self._call(_calls.update_room(room_id, name, topic)))

    def add_member(self, room_id: str, user_id: str) -> Member:
        return cast(Member, self._call(_calls.add_member(room_id, user_id)))

    def remove_member(self, room_id: str, user_id: str) -> None:
        self._call(_calls.remove_member(room_id, user_id, stay_out=False))

    def leave_room(self, room_id: str, *, stay_out: bool = False) -> None:
        """Leave; stay_out=True: and never be added to this room again."""
        self._call(_calls.remove_member(room_id, self.user_id(), stay_out))

    def open_dm(self, user_id: str) -> RoomDetail:
        """Your one direct room with `user_id` (created on the first call, from either side)."""
        return cast(RoomDetail, self._call(_calls.open_dm(user_id)))

    # --- messages ------------------------------------------------------------------------------------

    def send_message(
        self, room_id: str, body: str, *, reply_to: int | None = None, idempotency_key: str | None = None
    ) -> Message:
        """Sends once, however many attempts it takes (a fresh Idempotency-Key unless you give one)."""
        return cast(Message, self._call(_calls.send_message(room_id, body, reply_to, idempotency_key)))

    def get_messages(
        self, room_id: str, *, limit: int | None = None, before: int | None = None, after: int | None = None
    ) -> MessagePage:
        """A history page in ascending seq: the newest, `before` a seq, or `after` one."""
        return cast(MessagePage, self._call(_calls.get_messages(room_id, limit, before, after)))

    def get_thread(
        self,
        room_id: str,
        root_seq: int,
        *,
        limit: int | None = None,
        before: int | None = None,
        after: int | None = None,
    ) -> MessagePage:
        """A page of the replies of the thread whose first message is `root_seq`."""
        return cast(MessagePage, self._call(_calls.get_messages(room_id, limit, before, after, root_seq)))

    def get_message(self, room_id: str, seq: int) -> Message:
        return cast(Message, self._call(_calls.get_message(room_id, seq)))

    def edit_message(self, room_id: str, seq: int, body: str) -> Message:
        return cast(Message, self._call(_calls.edit_message(room_id, seq, body)))

    def delete_message(self, room_id: str, seq: int) -> None:
        self._call(_calls.delete_message(room_id, seq))

    def add_reaction(self, room_id: str, seq: int, emoji: str) -> Message:
        """One emoji ("👍🏽") or a shortcode ("tada"); percent-encoded for you."""
        return cast(Message, self._call(_calls.reaction("PUT", room_id, seq, emoji)))

    def remove_reaction(self, room_id: str, seq: int, emoji: str) -> None:
        self._call(_calls.reaction("DELETE", room_id, seq, emoji))

    def mark_read(self, room_id: str, seq: int) -> None:
        """Moves your read marker forward (never back)."""
        self._call(_calls.mark_read(room_id, seq))

    def typing(self, room_id: str) -> None:
        """ "I am typing" for 5 s (call again every couple of seconds while it lasts)."""
        self._call(_calls.typing(room_id))

    def search(
        self, q: str, *, room_id: str | None = None, limit: int | None = None, cursor: str | None = None
    ) -> SearchPage:
        """Full-text search of your rooms (web-search syntax), newest first."""
        return cast(SearchPage, self._call(_calls.search(q, room_id, limit, cursor)))

    # --- the event stream ----------------------------------------------------------------------------

    def stream(
        self,
        cursor: str | None = None,
        *,
        room_id: str | None = None,
        on_reset: Callable[[Reset], object] | None = None,
        marks: dict[str, int] | None = None,
        max_backoff: float = MAX_BACKOFF,
        read_timeout: float = READ_TIMEOUT,
    ) -> EventStream:
        """Every change you may see, each once, in order, across disconnects (chat_api_client.stream).
        cursor=None: from the `stream_cursor` of GET /v1/rooms. `marks`: room id → seq already applied."""
        return EventStream(
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
