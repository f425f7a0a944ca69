"""HTTP routes for rooms and members: parse, call rooms.service, shape the answer."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Response

from chat_api.auth.dependencies import CurrentUser
from chat_api.core.db import DatabaseDep
from chat_api.core.errors import Problem, problem_responses
from chat_api.core.paths import RoomId
from chat_api.core.ratelimit import Action, RateLimitsDep
from chat_api.rooms import service
from chat_api.rooms.schemas import Member, NewRoom, RoomChange, RoomDetail, RoomPage, UserId

router = APIRouter(prefix="/v1/rooms", tags=["rooms"], responses=problem_responses(401, 422, 431, 503))


@router.post("", status_code=201, response_model=RoomDetail, responses=problem_responses(400, 413, 429))
async def create_room(new: NewRoom, user: CurrentUser, db: DatabaseDep, limits: RateLimitsDep) -> RoomDetail:
    """Create a room; you become its owner and the listed users its members."""
    limits.check(Action.CREATE_ROOM, user)
    return await service.create_room(db, user, new.name, new.members)


@router.get("", response_model=RoomPage, responses=problem_responses(400))
async def list_rooms(
    user: CurrentUser,
    db: DatabaseDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 50,
    cursor: Annotated[
        str | None, Query(max_length=100, description="next_cursor of the previous page")
    ] = None,
) -> RoomPage:
    """Your rooms, most recent activity first, with unread counts and a stream cursor."""
    return await service.list_rooms(db, user, limit, cursor)


@router.get("/{room_id}", response_model=RoomDetail, responses=problem_responses(404))
async def get_room(room_id: RoomId, user: CurrentUser, db: DatabaseDep) -> RoomDetail:
    """One of your rooms, with its members."""
    return await service.get_room(db, room_id, user)


@router.patch(
    "/{room_id}", response_model=RoomDetail, responses=problem_responses(400, 403, 404, 409, 413, 429)
)
async def change_room(
    room_id: RoomId, change: RoomChange, user: CurrentUser, db: DatabaseDep, limits: RateLimitsDep
) -> RoomDetail:
    """Rename the room or set its topic (owner): emits `room.updated` with the room."""
    given = change.model_fields_set
    if not given:
        raise Problem(422, "Give name, topic or both.", kind="validation")
    if "name" in given and change.name is None:
        raise Problem(422, "name: a room always has a name.", kind="validation")
    limits.check(Action.CHANGE_ROOM, user)
    return await service.change_room(db, room_id, user, change)


@router.put(
    "/{room_id}/members/{user_id}",
    response_model=Member,
    status_code=201,
    responses={200: {"model": Member, "description": "Already a member"}, **problem_responses(403, 404, 429)},
)
async def add_member(
    room_id: RoomId,
    user_id: Annotated[UserId, Path()],
    user: CurrentUser,
    db: DatabaseDep,
    limits: RateLimitsDep,
    response: Response,
) -> Member:
    """Add a member (owner only): 201 when added, 200 when already a member."""
    limits.check(Action.CHANGE_MEMBERS, user)
    member, added = await service.add_member(db, room_id, user, user_id)
    if not added:
        response.status_code = 200
    return member


@router.delete("/{room_id}/members/{user_id}", status_code=204, responses=problem_responses(403, 404, 429))
async def remove_member(
    room_id: RoomId,
    user_id: Annotated[UserId, Path()],
    user: CurrentUser,
    db: DatabaseDep,
    limits: RateLimitsDep,
    stay_out: Annotated[
        bool, Query(description="Leaving: and never be added to this room again (422 for anyone else)")
    ] = False,
) -> Response:
    """Remove a member (owner), or leave (yourself); `stay_out=true` refuses later adds."""
    limits.check(Action.CHANGE_MEMBERS, user)
    await service.remove_member(db, room_id, user, user_id, stay_out=stay_out)
    return Response(status_code=204)


dms = APIRouter(prefix="/v1/dms", tags=["rooms"], responses=problem_responses(401, 422, 431, 503))


@dms.put(
    "/{user_id}",
    response_model=RoomDetail,
    status_code=201,
    responses={200: {"model": RoomDetail, "description": "It exists"}, **problem_responses(429)},
)
async def open_direct(
    user_id: Annotated[UserId, Path()],
    user: CurrentUser,
    db: DatabaseDep,
    limits: RateLimitsDep,
    response: Response,
) -> RoomDetail:
    """Your one direct room with `user_id`: 201 when created now, 200 when it exists."""
    limits.check(Action.CREATE_ROOM, user)
    room, created = await service.open_direct(db, user, user_id)
    if not created:
        response.status_code = 200
    return room
