"""Typing notices (POST /v1/rooms/{room_id}/typing, events/router.py): "I am typing", to the room's
other members' streams, ephemeral.

Typing never touches the event log: it takes no seq, is not replayed, and a stream that was not open
misses it. The request's process checks membership and sends the notice as a NOTIFY on
TYPING_CHANNEL (events/contract.py) in the same statement, to every replica's hub (the hub of this
process too); each hub forwards it as `event: typing` with no `id:` line (events/hub.py). A user
typing in a room is forwarded at most once per TYPING_EVERY_SECONDS: this process sends at most one
NOTIFY per user and room in that time, and every hub drops a notice for a user and room it forwarded
less than that long ago (the calls of one user may reach different replicas).
"""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict
from datetime import UTC, datetime, timedelta

import orjson

from chat_api.events.contract import TYPING_EVERY_SECONDS, TYPING_LASTS_SECONDS

MAX_TRACKED = 100_000  # (user, room) pairs remembered; the oldest are forgotten first


class Throttle:
    """At most one pass per key per `every` seconds; remembers at most MAX_TRACKED keys."""

    def __init__(self, every: float = TYPING_EVERY_SECONDS) -> None:
        self.every = every
        self._last: OrderedDict[tuple[str, uuid.UUID], float] = OrderedDict()

    def due(self, key: tuple[str, uuid.UUID]) -> bool:
        """Whether `key` may pass now (nothing is recorded)."""
        last = self._last.get(key)
        return last is None or time.monotonic() - last >= self.every

    def passed(self, key: tuple[str, uuid.UUID]) -> None:
        """Records that `key` passed now."""
        self._last[key] = time.monotonic()
        self._last.move_to_end(key)
        if len(self._last) > MAX_TRACKED:
            self._last.popitem(last=False)

    def passes(self, key: tuple[str, uuid.UUID]) -> bool:
        """`due`, and if so recorded as passed."""
        if not self.due(key):
            return False
        self.passed(key)
        return True


def notice(room_id: uuid.UUID, user: str) -> str:
    """The `data:` of a typing frame: who types where, until when."""
    until = datetime.now(UTC) + timedelta(seconds=TYPING_LASTS_SECONDS)
    expires_at = until.isoformat(timespec="microseconds").replace("+00:00", "Z")
    return orjson.dumps({"room_id": str(room_id), "user_id": user, "expires_at": expires_at}).decode()


def frame(data: str) -> bytes:
    """The stream frame of a notice: no `id:` line, it is not a position in the log."""
    return b"event: typing\ndata: " + data.encode() + b"\n\n"
