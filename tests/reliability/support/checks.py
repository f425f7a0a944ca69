"""What every fault run must end with: each acknowledged message once in the database and on the stream."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from tests.reliability.support.clients import Follower, Sender
from tests.reliability.support.cluster import ChatDatabase


@dataclass
class Tally:
    """What a run sent, what was acknowledged and what the database holds."""

    attempts: int  # HTTP requests (first tries and retries)
    messages: int  # distinct idempotency keys the clients tried to send
    acked: int
    replayed: int  # acknowledged by a 200 replay of a retry
    found: int  # acknowledged messages in the database (exactly once each)
    rows: int  # rows in the database for these senders (acked or not)

    def line(self) -> str:
        return (
            f"requests={self.attempts} messages={self.messages} acked={self.acked} "
            f"(replayed={self.replayed}) found={self.found} rows={self.rows}"
        )


async def check_database(db: ChatDatabase, room_id: str, senders: list[Sender]) -> Tally:
    """Every acknowledged message is in the database exactly once, with the acknowledged seq; no
    key and no body produced two rows; nothing is in the room that no client sent."""
    rows = await db.fetch(
        "SELECT sender, idempotency_key, body, seq, id::text AS id FROM messages WHERE room_id = $1::uuid",
        room_id,
    )
    by_key = Counter((r["sender"], r["idempotency_key"]) for r in rows)
    by_body = Counter(r["body"] for r in rows)
    assert not [k for k, n in by_key.items() if n > 1], "a key produced two messages"
    assert not [b[:40] for b, n in by_body.items() if n > 1], "a body is stored twice"
    index = {(r["sender"], r["idempotency_key"]): r for r in rows}
    tried = {(s.user, k) for s in senders for k in s.keys}
    assert set(index) <= tried, f"messages nobody sent: {set(index) - tried}"
    found = 0
    for sender in senders:
        for key, message in sender.acked.items():
            row = index.get((sender.user, key))
            assert row is not None, f"acknowledged message {sender.user}/{key} is not in the database"
            assert row["id"] == message["id"] and row["seq"] == message["seq"], (row, message)
            assert row["body"] == sender.body(key)
            found += 1
    return Tally(
        attempts=sum(len(s.attempts) for s in senders),
        messages=sum(len(s.keys) for s in senders),
        acked=sum(len(s.acked) for s in senders),
        replayed=sum(len(s.replayed) for s in senders),
        found=found,
        rows=len(rows),
    )


def check_stream(follower: Follower, senders: list[Sender], room_id: str) -> int:
    """Every acknowledged message arrived on the stream exactly once, and no event of the room
    twice; returns how many acknowledged messages were streamed."""
    seen = Counter((f.data["room_id"], f.data["seq"]) for f in follower.frames if f.data and "seq" in f.data)
    assert not [p for p, n in seen.items() if n > 1], f"events streamed twice: {seen.most_common(3)}"
    streamed = Counter(f.data["message"]["id"] for f in follower.messages() if f.data["room_id"] == room_id)
    acked = {m["id"] for s in senders for m in s.acked.values()}
    missing = acked - set(streamed)
    assert not missing, f"{len(missing)} acknowledged messages never arrived on the stream"
    return len(acked)


def report(name: str, **figures: Any) -> str:
    """One line of figures; printed (pytest -rP / -s shows it) and returned for record_property."""
    text = f"RELIABILITY {name}: " + " ".join(f"{k}={v}" for k, v in figures.items())
    print(text)
    return text
