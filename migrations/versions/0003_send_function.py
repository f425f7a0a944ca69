"""chat_send(): a message send in one round trip, the room lock held only inside the database.

A send is a room lock followed by one statement. Sent from the service as separate statements
(BEGIN, lock, statement, COMMIT) the lock stays held while the process schedules its next step,
which serialises a busy room on the service's event loop rather than on PostgreSQL. As a function
called on its own (autocommit), it is one round trip, and the lock lasts as long as the database
work. The function is VOLATILE: its second statement takes a fresh snapshot after the lock, as a
separate statement would (READ COMMITTED).

Nothing is written when the send cannot happen (not a member, no such reply target, or the
idempotency key already used): it returns NULL and the caller finds out why. If a concurrent send
with the same key from another room committed after the check, the insert finds the key taken; the
function then raises P0002 so that the seq it took is rolled back.

Returns the message as JSON text, in the shape of chat_api/messages/schemas.py's Message (migration
0004 replaced it by a version that returns the stored messages.doc instead).
Parameters: room, room lock key, sender, body, reply_to, idempotency key, request hash.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TIMESTAMP = """to_char({} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')"""
_MESSAGE_JSON = f"""(SELECT row_to_json(x) FROM (SELECT m.id, m.room_id, m.seq, m.sender, m.body,
        m.reply_to, {_TIMESTAMP.format("m.created_at")} AS created_at,
        {_TIMESTAMP.format("m.edited_at")} AS edited_at, m.deleted) x)"""

UPGRADE = f"""
CREATE FUNCTION chat_send(
    p_room uuid, p_lock bigint, p_sender text, p_body text, p_reply_to bigint, p_key text, p_hash bytea
) RETURNS text LANGUAGE plpgsql VOLATILE AS $function$
DECLARE
    sent text;
    took_seq boolean;
BEGIN
    PERFORM pg_advisory_xact_lock(p_lock);
    WITH room AS (
        UPDATE rooms SET last_seq = last_seq + 1, activity_at = now()
        WHERE id = p_room
          AND EXISTS (SELECT 1 FROM members WHERE room_id = p_room AND user_id = p_sender)
          AND (p_reply_to IS NULL
               OR EXISTS (SELECT 1 FROM messages WHERE room_id = p_room AND seq = p_reply_to))
          AND (p_key IS NULL
               OR NOT EXISTS (SELECT 1 FROM messages WHERE sender = p_sender AND idempotency_key = p_key))
        RETURNING last_seq
    ), message AS (
        INSERT INTO messages (room_id, seq, sender, body, reply_to, idempotency_key, request_hash)
        SELECT p_room, room.last_seq, p_sender, p_body, p_reply_to, p_key, p_hash FROM room
        ON CONFLICT (sender, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
        RETURNING *
    ), event AS (
        INSERT INTO events (room_id, seq, kind, payload)
        SELECT m.room_id, m.seq, 'message.created',
               json_build_object('room_id', m.room_id, 'seq', m.seq, 'message', {_MESSAGE_JSON})
        FROM message m
    )
    SELECT (SELECT {_MESSAGE_JSON}::text FROM message m), EXISTS (SELECT 1 FROM room)
    INTO sent, took_seq;
    IF sent IS NOT NULL THEN
        PERFORM pg_notify('chat_events', '');  -- the stream's doorbell (chat_api/events/log.py)
        RETURN sent;
    END IF;
    IF took_seq THEN
        RAISE EXCEPTION 'idempotency key taken meanwhile' USING ERRCODE = 'no_data_found';
    END IF;
    RETURN NULL;
END
$function$
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute("DROP FUNCTION chat_send(uuid, bigint, text, text, bigint, text, bytea)")
