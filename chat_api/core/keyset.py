"""Keyset positions as opaque cursors: a timestamp, an id and whole numbers (e.g. a seq), packed and
base64url-encoded without padding. GET /v1/rooms pages by (activity_at, room id) and GET /v1/search by
(created_at, room id, seq); each answers a cursor it cannot read with its own 400."""

from __future__ import annotations

import base64
import binascii
import struct
import uuid
from datetime import UTC, datetime, timedelta

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def encode(at: datetime, key: uuid.UUID, *numbers: int) -> str:
    packed = struct.pack(">q", (at - _EPOCH) // _MICROSECOND) + key.bytes
    packed += struct.pack(f">{len(numbers)}q", *numbers)
    return base64.urlsafe_b64encode(packed).rstrip(b"=").decode()


def decode(raw: str, numbers: int = 0) -> tuple[datetime, uuid.UUID, tuple[int, ...]]:
    """The position `encode` packed with `numbers` whole numbers; ValueError for anything else."""
    try:
        packed = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4))
        if len(packed) != 24 + 8 * numbers:
            raise ValueError("not a cursor of this shape")
        (micros,) = struct.unpack(">q", packed[:8])
        return (
            _EPOCH + micros * _MICROSECOND,
            uuid.UUID(bytes=packed[8:24]),
            struct.unpack(f">{numbers}q", packed[24:]),
        )
    except (binascii.Error, OverflowError, struct.error) as exc:
        raise ValueError(str(exc)) from None
