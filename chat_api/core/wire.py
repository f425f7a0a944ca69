"""What values look like on the wire: timestamps, validated text, and ids in paths."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated

from pydantic import AfterValidator, PlainSerializer

from chat_api.core.errors import not_found

# RFC 3339 in UTC with microseconds, e.g. 2026-11-28T08:57:18.123456Z. SQL_TIMESTAMP renders the
# same text in PostgreSQL for objects that are built as JSON by the database.
TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
SQL_TIMESTAMP = """to_char({} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')"""


def format_timestamp(value: datetime) -> str:
    return value.astimezone(UTC).strftime(TIMESTAMP_FORMAT)


Timestamp = Annotated[datetime, PlainSerializer(format_timestamp, return_type=str)]


def storable(value: str) -> bool:
    """PostgreSQL text holds neither NUL nor lone surrogates."""
    if "\x00" in value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _storable(value: str) -> str:
    # Refuse what PostgreSQL cannot store here, with a clear message, rather than fail later.
    if not storable(value):
        raise ValueError("must not contain NUL characters or lone surrogates")
    return value


StorableText = Annotated[str, AfterValidator(_storable)]


def parse_room_id(raw: str) -> uuid.UUID:
    """A room id from a path; one that does not parse names no room, so it is 404 like any other."""
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise not_found("room") from None


def room_lock_key(room_id: uuid.UUID) -> int:
    """The room's advisory-lock key: every writer of a room takes it first (see events/log.py)."""
    return int.from_bytes(room_id.bytes[:8], "big", signed=True)
