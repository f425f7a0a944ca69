"""Every /v1 operation once, as a description of its request (method, path, query, body, headers) that
the sync and the async client both send; and what they share: tokens, retries, answers."""

from __future__ import annotations

import base64
import json
import random
import urllib.parse
import uuid
from dataclasses import dataclass, field
from typing import Any, Final

import httpx

from chat_api_client.errors import ProblemError, retry_after

# The operations of the service's OpenAPI document this module covers, with the schema of their
# success answer (None: no body). The drift test checks this table against the document both ways.
OPERATIONS: Final[dict[tuple[str, str], str | None]] = {
    ("POST", "/v1/rooms"): "RoomDetail",
    ("GET", "/v1/rooms"): "RoomPage",
    ("GET", "/v1/rooms/{room_id}"): "RoomDetail",
    ("PATCH", "/v1/rooms/{room_id}"): "RoomDetail",
    ("PUT", "/v1/rooms/{room_id}/members/{user_id}"): "Member",
    ("DELETE", "/v1/rooms/{room_id}/members/{user_id}"): None,
    ("PUT", "/v1/dms/{user_id}"): "RoomDetail",
    ("POST", "/v1/rooms/{room_id}/messages"): "Message",
    ("GET", "/v1/rooms/{room_id}/messages"): "MessagePage",
    ("GET", "/v1/rooms/{room_id}/messages/{seq}"): "Message",
    ("PATCH", "/v1/rooms/{room_id}/messages/{seq}"): "Message",
    ("DELETE", "/v1/rooms/{room_id}/messages/{seq}"): None,
    ("PUT", "/v1/rooms/{room_id}/messages/{seq}/reactions/{emoji}"): "Message",
    ("DELETE", "/v1/rooms/{room_id}/messages/{seq}/reactions/{emoji}"): None,
    ("POST", "/v1/rooms/{room_id}/read"): None,
    ("POST", "/v1/rooms/{room_id}/typing"): None,
    ("GET", "/v1/search"): "SearchPage",
    ("GET", "/v1/events"): None,  # the stream (stream.py)
}

# Answers worth sending the same request again for (when it is safe to), after Retry-After or a backoff.
RETRY_STATUSES: Final = frozenset({429, 502, 503, 504})
MAX_RETRY_WAIT: Final = 30.0  # a longer Retry-After is raised to the caller instead of slept through


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


UNSET: Final = _Unset()  # "leave this field as it is" (PATCH), as opposed to None ("clear it")


def seg(value: str | int) -> str:
    """One path segment, percent-encoded whole (an emoji becomes its UTF-8 bytes, `+1` becomes %2B1)."""
    return urllib.parse.quote(str(value), safe="")


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    params: dict[str, str | int] = field(default_factory=dict)
    json: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    # Sending it twice does no harm (it is idempotent or carries an Idempotency-Key), so it is sent
    # again after a lost connection or a 502/503/504. Anything is sent again after a refused
    # connection or a 429, which the service answers before doing anything.
    repeatable: bool = True


def _page(limit: int | None, **cursors: str | int | None) -> dict[str, str | int]:
    params: dict[str, str | int] = {k: v for k, v in cursors.items() if v is not None}
    if limit is not None:
        params["limit"] = limit
    return params


def create_room(name: str, members: list[str] | None) -> Call:
    return Call("POST", "/v1/rooms", json={"name": name, "members": members or []}, repeatable=False)


def list_rooms(limit: int | None, cursor: str | None) -> Call:
    return Call("GET", "/v1/rooms", params=_page(limit, cursor=cursor))


def get_room(room_id: str) -> Call:
    return Call("GET", f"/v1/rooms/{seg(room_id)}")


def update_room(room_id: str, name: str | _Unset, topic: str | _Unset | None) -> Call:
    body: dict[str, Any] = {}
    if not isinstance(name, _Unset):
        body["name"] = name
    if not isinstance(topic, _Unset):
        body["topic"] = topic
    return Call("PATCH", f"/v1/rooms/{seg(room_id)}", json=body)


def add_member(room_id: str, user_id: str) -> Call:
    return Call("PUT", f"/v1/rooms/{seg(room_id)}/members/{seg(user_id)}")


def remove_member(room_id: str, user_id: str, stay_out: bool) -> Call:
    params: dict[str, str | int] = {"stay_out": "true"} if stay_out else {}
    return Call("DELETE", f"/v1/rooms/{seg(room_id)}/members/{seg(user_id)}", params=params)


def open_dm(user_id: str) -> Call:
    return Call("PUT", f"/v1/dms/{seg(user_id)}")


def send_message(room_id: str, body: str, reply_to: int | None, idempotency_key: str | None) -> Call:
    # One key per send, the same on every retry of it: the service answers a retry with the message
    # the first attempt made (200, Idempotent-Replayed: true), never a second message.
    key = idempotency_key or str(uuid.uuid4())
    payload: dict[str, Any] = {"body": body}
    if reply_to is not None:
        payload["reply_to"] = reply_to
    return Call("POST", f"/v1/rooms/{seg(room_id)}/messages", json=payload, headers={"Idempotency-Key": key})


def get_messages(
    room_id: str, limit: int | None, before: int | None, after: int | None, thread: int | None = None
) -> Call:
    params = _page(limit, before=before, after=after, thread=thread)
    return Call("GET", f"/v1/rooms/{seg(room_id)}/messages", params=params)


def get_message(room_id: str, seq: int) -> Call:
    return Call("GET", f"/v1/rooms/{seg(room_id)}/messages/{seg(seq)}")


def edit_message(room_id: str, seq: int, body: str) -> Call:
    return Call("PATCH", f"/v1/rooms/{seg(room_id)}/messages/{seg(seq)}", json={"body": body})


def delete_message(room_id: str, seq: int) -> Call:
    return Call("DELETE", f"/v1/rooms/{seg(room_id)}/messages/{seg(seq)}")


def reaction(method: str, room_id: str, seq: int, emoji: str) -> Call:
    return Call(method, f"/v1/rooms/{seg(room_id)}/messages/{seg(seq)}/reactions/{seg(emoji)}")


def mark_read(room_id: str, seq: int) -> Call:
    return Call("POST", f"/v1/rooms/{seg(room_id)}/read", json={"seq": seq})


def typing(room_id: str) -> Call:
    return Call("POST", f"/v1/rooms/{seg(room_id)}/typing")


def search(q: str, room_id: str | None, limit: int | None, cursor: str | None) -> Call:
    return Call("GET", "/v1/search", params={"q": q, **_page(limit, room_id=room_id, cursor=cursor)})


# --- what both clients share -------------------------------------------------------------------------


def request_headers(call: Call, token: str) -> dict[str, str]:
    return {**call.headers, "Authorization": f"Bearer {token}"}


def backoff(attempt: int, base: float = 0.5, cap: float = MAX_RETRY_WAIT) -> float:
    """The wait before the `attempt`th retry (1, 2, ...): exponential from `base`, capped, jittered."""
    delay: float = min(cap, base * 2 ** (attempt - 1))
    return delay * random.uniform(0.75, 1.0)  # noqa: S311 (not crypto)


def retry_wait(call: Call, response: httpx.Response, attempt: int) -> float | None:
    """How long to wait before sending `call` again after `response`, or None: do not."""
    if response.status_code not in RETRY_STATUSES:
        return None
    if response.status_code != 429 and not call.repeatable:
        return None
    wait = retry_after(response)
    wait = backoff(attempt) if wait is None else wait
    return wait if wait <= MAX_RETRY_WAIT else None


def may_resend_after(call: Call, error: httpx.TransportError) -> bool:
    """A refused connection never reached the service; anything else may have done the work."""
    return call.repeatable or isinstance(error, httpx.ConnectError)


def result(response: httpx.Response) -> Any:
    """The answer's JSON, None for 204; an error answer raised as ProblemError."""
    if response.status_code >= 400:
        raise ProblemError.from_response(response)
    if response.status_code == 204 or not response.content:
        return None
    return response.json()


def token_subject(token: str) -> str:
    """The `sub` of a JWT, read without checking it (the service checks it): who this client is."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return str(claims["sub"])
    except (IndexError, ValueError, KeyError, TypeError) as exc:
        raise ValueError("the token is not a JWT with a `sub` claim") from exc
