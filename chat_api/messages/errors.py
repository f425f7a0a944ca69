"""What can go wrong with messages, in the messages' own words (answered as problems by
core/errors.py)."""

from __future__ import annotations

from chat_api.core.errors import DomainError, NotFound


class NoSuchMessage(NotFound):
    def __init__(self) -> None:
        super().__init__("message")


class NotAllowed(DomainError):
    """A member without the right for this change (edit another's message, delete it unless owner)."""

    status = 403
    kind = "forbidden"


class MessageDeleted(DomainError):
    status = 409
    kind = "message-deleted"


class TooManyReactions(DomainError):
    status = 422
    kind = "too-many-reactions"

    def __init__(self, limit: int) -> None:
        super().__init__(f"A message has at most {limit} different reactions; add to one of them instead.")


class IdempotencyKeyReused(DomainError):
    status = 422
    kind = "idempotency-key-reused"

    def __init__(self) -> None:
        super().__init__("This Idempotency-Key was already used for a different request.")


class NoSuchReplyTarget(DomainError):
    status = 422
    kind = "validation"

    def __init__(self, seq: int) -> None:
        super().__init__(f"reply_to: no message {seq} in this room.")
