"""Who may do what: every endpoint by {owner, member, removed member, outsider, no token}, in one
table. Each case runs on a fresh room, so a case that changes something cannot hide another."""

from __future__ import annotations

from dataclasses import dataclass

import httpx
import pytest

from tests.support.servers import RunningServer
from tests.support.users import User, UserFactory

ROLES = ("owner", "member", "removed", "outsider", "anonymous")


@dataclass
class Case:
    method: str
    path: str  # {room}, {owner_seq}, {member_seq}, {other}, {self} are filled in per case
    expect: tuple[int, int, int, int, int]  # statuses for ROLES, in order
    json: dict[str, object] | None = None


CASES = {
    "list rooms": Case("GET", "/v1/rooms", (200, 200, 200, 200, 401)),
    "create room": Case("POST", "/v1/rooms", (201, 201, 201, 201, 401), {"name": "mine"}),
    "show room": Case("GET", "/v1/rooms/{room}", (200, 200, 404, 404, 401)),
    "add member": Case("PUT", "/v1/rooms/{room}/members/newcomer", (201, 403, 404, 404, 401)),
    "remove another member": Case("DELETE", "/v1/rooms/{room}/members/{other}", (204, 403, 404, 404, 401)),
    "leave": Case("DELETE", "/v1/rooms/{room}/members/{self}", (204, 204, 404, 404, 401)),
    "send": Case("POST", "/v1/rooms/{room}/messages", (201, 201, 404, 404, 401), {"body": "hi"}),
    "history": Case("GET", "/v1/rooms/{room}/messages", (200, 200, 404, 404, 401)),
    "one message": Case("GET", "/v1/rooms/{room}/messages/{owner_seq}", (200, 200, 404, 404, 401)),
    "edit owner's message": Case(
        "PATCH", "/v1/rooms/{room}/messages/{owner_seq}", (200, 403, 404, 404, 401), {"body": "edited"}
    ),
    "edit member's message": Case(
        "PATCH", "/v1/rooms/{room}/messages/{member_seq}", (403, 200, 404, 404, 401), {"body": "edited"}
    ),
    "delete owner's message": Case(
        "DELETE", "/v1/rooms/{room}/messages/{owner_seq}", (204, 403, 404, 404, 401)
    ),
    "delete member's message": Case(
        "DELETE", "/v1/rooms/{room}/messages/{member_seq}", (204, 204, 404, 404, 401)
    ),
    "mark read": Case("POST", "/v1/rooms/{room}/read", (204, 204, 404, 404, 401), {"seq": 1}),
    "stream the room": Case("GET", "/v1/events?room_id={room}", (200, 200, 404, 404, 401)),
    # SPEC §8
    "react": Case(
        "PUT", "/v1/rooms/{room}/messages/{owner_seq}/reactions/%F0%9F%91%8D", (201, 201, 404, 404, 401)
    ),
    "remove a reaction": Case(
        "DELETE", "/v1/rooms/{room}/messages/{owner_seq}/reactions/%F0%9F%91%8D", (204, 204, 404, 404, 401)
    ),
    "thread": Case("GET", "/v1/rooms/{room}/messages?thread={owner_seq}", (200, 200, 404, 404, 401)),
    "search": Case("GET", "/v1/search?q=owner", (200, 200, 200, 200, 401)),
    "search the room": Case("GET", "/v1/search?q=owner&room_id={room}", (200, 200, 404, 404, 401)),
    "direct message": Case("PUT", "/v1/dms/{other}", (201, 201, 201, 201, 401)),
    "update room": Case("PATCH", "/v1/rooms/{room}", (200, 403, 404, 404, 401), {"topic": "new topic"}),
    "typing": Case("POST", "/v1/rooms/{room}/typing", (204, 204, 404, 404, 401)),
}


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("name", list(CASES))
async def test_authorization_matrix(
    name: str, role: str, server: RunningServer, make_user: UserFactory
) -> None:
    case = CASES[name]
    owner, member, other, removed, outsider = (
        make_user(r) for r in ("owner", "member", "other", "removed", "outsider")
    )
    room = await owner.create_room("matrix", members=[member, other, removed])
    owner_seq = (await owner.send(room["id"], "by owner")).json()["seq"]
    member_seq = (await member.send(room["id"], "by member")).json()["seq"]
    assert (await owner.http.delete(f"/v1/rooms/{room['id']}/members/{removed.name}")).status_code == 204
    actor: User | None = {"owner": owner, "member": member, "removed": removed, "outsider": outsider}.get(
        role
    )
    path = case.path.format(
        room=room["id"],
        owner_seq=owner_seq,
        member_seq=member_seq,
        other=other.name,
        self=actor.name if actor else "nobody",
    )
    client = actor.http if actor else httpx.AsyncClient(base_url=server.url)
    try:
        async with client.stream(case.method, path, json=case.json) as response:
            status = response.status_code
            if status >= 400:
                await response.aread()
                assert response.headers["content-type"].startswith("application/problem+json")
    finally:
        if actor is None:
            await client.aclose()
    expected = case.expect[ROLES.index(role)]
    assert status == expected, f"{name} as {role}: {status}, expected {expected}"
    if status == 404:
        assert "by owner" not in response.text and "by member" not in response.text
