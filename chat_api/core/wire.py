"""What values look like on the wire: timestamps and text PostgreSQL can store."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from pydantic import AfterValidator, PlainSerializer

# RFC 3339 in UTC with microseconds, e.g. 2026-11-28T08:57:18.123456Z (the database renders the same
# text for the JSON it stores: migration 0004).
TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


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
