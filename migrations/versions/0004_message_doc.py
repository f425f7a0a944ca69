"""messages.doc: each message's JSON as clients get it, kept with the row by a trigger.

History pages, single-message reads, room previews and event payloads hand a message's JSON through
unchanged. Building it on every read (row_to_json over nine columns, two timestamps formatted) was
more than half of PostgreSQL's work for a history page: 0.44 ms per page of 50 against 0.20 ms for
reading stored text (pgbench, one client, this project's machine). It is now written when the row
is: a BEFORE INSERT OR UPDATE trigger sets `doc` from the row's own columns, so every writer
(chat_send(), edits, deletes, a bulk load with plain SQL) keeps it true, and its shape is defined
here once. The price is the body stored twice. The upgrade rewrites every existing message row once,
in one transaction: instant for a young database; for a large one, run it in a maintenance window
(the migration Job's deadline bounds it).

chat_send() is replaced by a version that returns and logs `doc` instead of building the JSON again.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TIMESTAMP = """to_char({} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')"""

MESSAGE_DOC = f"""
CREATE FUNCTION chat_message_doc() RETURNS trigger LANGUAGE plpgsql AS $function$
BEGIN
    NEW.doc := (SELECT row_to_json(x) FROM (SELECT NEW.id AS id, NEW.room_id AS room_id, NEW.seq AS seq,
        NEW.sender AS sender, NEW.body AS body, NEW.reply_to AS reply_to,
        {_TIMESTAMP.format("NEW.created_at")} AS created_at,
        {_TIMESTAMP.format("NEW.edited_at")} AS edited_at, NEW.deleted AS deleted) x)::text;
    RETURN NEW;
END
$function$
"""

SEND = """
CREATE OR REPLACE FUNCTION chat_send(
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
        RETURNING room_id, seq, doc
    ), event AS (
        INSERT INTO events (room_id, seq, kind, payload)
        SELECT m.room_id, m.seq, 'message.created',
               json_build_object('room_id', m.room_id, 'seq', m.seq, 'message', m.doc::json)
        FROM message m
    )
    SELECT (SELECT m.doc FROM message m), EXISTS (SELECT 1 FROM room)
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
    op.execute("ALTER TABLE messages ADD COLUMN doc text")
    op.execute(MESSAGE_DOC)
    op.execute(
        "CREATE TRIGGER messages_doc BEFORE INSERT OR UPDATE ON messages "
        "FOR EACH ROW EXECUTE FUNCTION chat_message_doc()"
    )
    op.execute("UPDATE messages SET doc = NULL")  # the trigger fills it in for existing rows
    op.execute("ALTER TABLE messages ALTER COLUMN doc SET NOT NULL")
    op.execute(SEND)


# chat_send() as migration 0003 made it (it builds the JSON itself): a frozen copy, for the downgrade.
_MESSAGE_JSON_0003 = f"""(SELECT row_to_json(x) FROM (SELECT m.id, m.room_id, m.seq, m.sender, m.body,
        m.reply_to, {_TIMESTAMP.format("m.created_at")} AS created_at,
        {_TIMESTAMP.format("m.edited_at")} AS edited_at, m.deleted) x)"""

SEND_0003 = f"""
CREATE OR REPLACE FUNCTION chat_send(
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
               json_build_object('room_id', m.room_id, 'seq', m.seq, 'message', {_MESSAGE_JSON_0003})
        FROM message m
    )
    SELECT (SELECT {_MESSAGE_JSON_0003}::text FROM message m), EXISTS (SELECT 1 FROM room)
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


def downgrade() -> None:
    op.execute(SEND_0003)
    op.execute("DROP TRIGGER messages_doc ON messages")
    op.execute("DROP FUNCTION chat_message_doc()")
    op.execute("ALTER TABLE messages DROP COLUMN doc")
