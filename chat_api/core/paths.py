"""Ids in request paths, parsed once: `RoomId` turns `{room_id}` into a UUID, or answers 404 (an id
that does not parse names no room, like any other room the caller cannot see)."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import Depends, Path

from chat_api.core.errors import NotAMember


def parse_room_id(raw: str) -> uuid.UUID:
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise NotAMember from None


# async, though it awaits nothing: FastAPI runs plain `def` dependencies in a thread pool.
async def _room_id(room_id: Annotated[str, Path(description="The room's opaque id.")]) -> uuid.UUID:
    return parse_room_id(room_id)


RoomId = Annotated[uuid.UUID, Depends(_room_id)]
