"""What can go wrong with rooms and membership, in the rooms' own words (answered as problems by
core/errors.py)."""

from __future__ import annotations

from chat_api.core.errors import DomainError, NotFound


class NotOwner(DomainError):
    status = 403
    kind = "forbidden"


class RefusesToBeAdded(DomainError):
    """The user left this room with stay_out=true."""

    status = 403
    kind = "refused"

    def __init__(self) -> None:
        super().__init__("This user left the room and asked not to be added again.")


class OnlyLeavingMayStayOut(DomainError):
    status = 422
    kind = "validation"

    def __init__(self) -> None:
        super().__init__("stay_out: only a member leaving a room can ask to stay out.")


class NoSuchMember(NotFound):
    def __init__(self) -> None:
        super().__init__("member")


class MalformedPageCursor(DomainError):
    status = 400
    kind = "malformed-cursor"

    def __init__(self) -> None:
        super().__init__("cursor: not a cursor this service handed out.")


class DirectRoomFixed(DomainError):
    """A direct room's members and name are those of its pair, for good."""

    status = 409
    kind = "direct-room"


class DirectWithYourself(DomainError):
    status = 422
    kind = "validation"

    def __init__(self) -> None:
        super().__init__("user_id: a direct room is between you and someone else.")
