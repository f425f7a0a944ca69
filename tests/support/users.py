"""Users of the tests: a name, a token signed with the test secret and an HTTP client carrying it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx

from chat_api.auth.tokens import mint_token
from tests.support.settings import TEST_SECRET


class User:
    """A user with a unique id for this test and an HTTP client carrying its token."""

    def __init__(self, name: str, base_url: str) -> None:
        self.name = name
        self.token = mint_token(TEST_SECRET, name, 3600)
        self.http = httpx.AsyncClient(
            base_url=base_url, headers={"Authorization": f"Bearer {self.token}"}, timeout=20
        )

    async def create_room(self, name: str = "room", members: list[User] | None = None) -> dict[str, Any]:
        r = await self.http.post("/v1/rooms", json={"name": name, "members": [m.name for m in members or []]})
        assert r.status_code == 201, r.text
        return dict(r.json())

    async def send(self, room_id: str, body: str, key: str | None = None, **extra: Any) -> httpx.Response:
        headers = {"Idempotency-Key": key} if key else {}
        return await self.http.post(
            f"/v1/rooms/{room_id}/messages", json={"body": body, **extra}, headers=headers
        )


UserFactory = Callable[[str], User]
