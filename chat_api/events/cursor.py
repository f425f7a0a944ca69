"""Stream cursors: an opaque, versioned encoding of a position (xid, id) in the event log."""

from __future__ import annotations

import base64
import binascii
import struct
from typing import NamedTuple

VERSION = "v1."
_PACK = struct.Struct(">QQ")
# Positions are PostgreSQL bigints (the event id) and 64-bit transaction ids that a cluster will not
# reach in centuries: anything at or above 2^63 was never handed out, and would fail in the query.
_LIMIT = 2**63


class MalformedCursor(ValueError):
    pass


class Cursor(NamedTuple):
    """Position after which a reader has seen nothing yet: events with (xid, id) > (xid, id)."""

    xid: int
    id: int

    def encode(self) -> str:
        return VERSION + base64.urlsafe_b64encode(_PACK.pack(self.xid, self.id)).rstrip(b"=").decode()

    @classmethod
    def decode(cls, raw: str) -> Cursor:
        if not raw.startswith(VERSION) or len(raw) != len(VERSION) + 22:
            raise MalformedCursor("not a stream cursor")
        try:
            packed = base64.urlsafe_b64decode(raw[len(VERSION) :] + "==")
        except (binascii.Error, ValueError):
            raise MalformedCursor("not a stream cursor") from None
        if len(packed) != _PACK.size:
            raise MalformedCursor("not a stream cursor")
        xid, id_ = _PACK.unpack(packed)
        if xid >= _LIMIT or id_ >= _LIMIT:
            raise MalformedCursor("not a stream cursor")
        cursor = cls(xid, id_)
        if cursor.encode() != raw:  # one text per position: no aliases through unused bits
            raise MalformedCursor("not a stream cursor")
        return cursor
