"""One owner of the event contract (chat_api/events/contract.py): every event any writer puts in the
log — the service's Python and the database's own chat_send() — has a kind of EventKind and the
envelope the contract gives that kind, and no writer rings the doorbell inside its transaction (the
process that wrote rings after the commit: chat_api/events/doorbell.py, migration 0007)."""

from __future__ import annotations

import uuid

import asyncpg
import orjson

from chat_api.events.contract import MEMBERSHIP, NOTIFY_CHANNEL, OBJECT_KEY, EventKind, room_lock_key
from tests.support.users import User


async def test_every_write_path_logs_the_contracts_kinds_and_envelopes(
    alice: User, bob: User, carol: User, database_url: str
) -> None:
    room = (await alice.create_room(members=[bob]))["id"]
    seq = (await alice.send(room, "hello")).json()["seq"]
    message = f"/v1/rooms/{room}/messages/{seq}"
    assert (await alice.http.patch(message, json={"body": "hi"})).status_code == 200
    assert (await bob.http.put(f"{message}/reactions/%F0%9F%91%8D")).status_code == 201
    assert (await alice.http.delete(message)).status_code == 204
    assert (await alice.http.patch(f"/v1/rooms/{room}", json={"topic": "t"})).status_code == 200
    assert (await alice.http.put(f"/v1/rooms/{room}/members/{carol.name}")).status_code == 201
    assert (await carol.http.delete(f"/v1/rooms/{room}/members/{carol.name}")).status_code == 204
    db = await asyncpg.connect(database_url)
    try:
        rows = await db.fetch(
            "SELECT kind, seq, subject, payload::text AS payload FROM events WHERE room_id = $1 ORDER BY seq",
            uuid.UUID(room),
        )
        function = await db.fetchval("SELECT pg_get_functiondef('chat_send'::regproc)")
    finally:
        await db.close()
    # Each kind once, and message.updated twice: an edit and a reaction.
    assert sorted(row["kind"] for row in rows) == sorted([*EventKind, EventKind.MESSAGE_UPDATED]), rows
    for row in rows:
        kind = EventKind(row["kind"])
        data = orjson.loads(row["payload"])
        assert list(data) == ["room_id", "seq", OBJECT_KEY[kind]], (kind, data)
        assert data["room_id"] == room and data["seq"] == row["seq"], (kind, data)
        assert (row["subject"] is not None) == (kind in MEMBERSHIP), row
        if kind in MEMBERSHIP:
            assert row["subject"] == data["member"]["user_id"]
    # The database's own writer: the kind it logs, and no doorbell inside the transaction (a NOTIFY
    # there serialises the commits of the whole cluster); the service rings NOTIFY_CHANNEL after it.
    assert f"'{EventKind.MESSAGE_CREATED}'" in function
    assert "pg_notify" not in function and NOTIFY_CHANNEL not in function


def test_the_room_lock_key_is_the_rooms_first_eight_bytes_signed() -> None:
    """chat_send() takes the key as an argument; every writer derives it the same way."""
    room = uuid.UUID("ffffffff-ffff-ffff-0000-000000000000")
    assert room_lock_key(room) == -1
    assert room_lock_key(uuid.UUID(int=1 << 64)) == 1
