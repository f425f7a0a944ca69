"""chat_send() commits without ringing the doorbell: the process that called it rings after commit.

A NOTIFY inside a writing transaction takes a cluster-wide lock at commit and holds it until the
commit record is flushed, so every notifying writer in the whole cluster commits one at a time
(pgbench -c16 here: chat_send() 3,900-5,100 tps with its pg_notify, 9,800-12,200 without). The
service now rings after the transaction has committed, coalesced, from its own process
(chat_api/events/doorbell.py); a NOTIFY in a transaction of its own writes no WAL and waits for no
flush. This replacement is chat_send() as migration 0004 made it, same signature and result, minus
the `PERFORM pg_notify('chat_events', '')`.

Expand only: a compatible replacement of a function. The upgrade window: while the previous release
still serves, its code calls this chat_send() and so no longer rings for its sends (its edits,
deletes and room changes still ring in their transactions). Those sends are not lost: every hub
reads the log on its idle check with no doorbell at all (1 s in this release, 5 s in the previous
one), and any doorbell rung by a process of this release reads them too. So during the rollout,
and after a rollback to the previous release, a send made through a previous-release process may
reach streams up to one idle interval late. The downgrade puts 0004's function back.

Frozen SQL: this file imports nothing from the application.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_SEND = """
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
        RETURN sent;  -- no doorbell here: the caller rings after commit (chat_api/events/doorbell.py)
    END IF;
    IF took_seq THEN
        RAISE EXCEPTION 'idempotency key taken meanwhile' USING ERRCODE = 'no_data_found';
    END IF;
    RETURN NULL;
END
$function$
"""

# chat_send() as migration 0004 made it (ringing in the transaction): a frozen copy, for the downgrade.
_SEND_0004 = """
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
    op.execute(_SEND)


def downgrade() -> None:
    op.execute(_SEND_0004)
