"""Chat features (SPEC §8): reactions, threads, search, direct messages, room topics, mentions.

What the database keeps, and who keeps it:
- rooms: `kind` ('group' or 'direct'), `topic`, and for a direct room the ordered pair of its two
  users (`dm_low` < `dm_high`) under a unique index: concurrent creation from both sides gives one room.
- messages: `thread_root`, `reply_count`, `last_reply_seq`, `mentions`, `reactions` (the summary of
  the reactions table, as clients get it) and `search` (the body's tsvector, 'simple' configuration,
  plus the room as one word that no text can make: chat_room_word()).
- reactions: one row per message, user and emoji; message_mentions: one row per unread-countable
  mention (a member mentioned by someone else), for GET /v1/rooms' mention_count.
- chat_message_doc(), the BEFORE trigger that writes `doc`, now also sets a reply's `thread_root`, and
  on a new or changed body its `search` vector and `mentions` (chat_mentions()); `doc` carries the new
  fields. An AFTER trigger counts a reply on its thread's root and keeps message_mentions. So every
  writer keeps them true: chat_send() (unchanged), the previous release's edits and deletes during
  the rollout, a bulk load in plain SQL.

Why `search` is a column the trigger writes and not `GENERATED ALWAYS AS (...) STORED`: adding a stored
generated column rewrites the whole table under an ACCESS EXCLUSIVE lock, which stops every read and
write of messages for as long as the rewrite takes. The trigger computes the same expression
(`to_tsvector('simple', coalesce(body, ''))`, and the room's word) on every insert and on every change of
the body.

Expand only, without a long lock: new nullable or constant-default columns (no rewrite), new tables,
indexes built CONCURRENTLY, existing replies joined to their threads (one statement per level of the
reply chains), and the existing rows' `doc`/`search`/`mentions` backfilled in batches of 2,000 rows,
each its own transaction. The running release's reads keep working throughout (`doc` of a row not yet
backfilled lacks the new fields until its batch); the next release starts once this has finished.

Frozen SQL: this file imports nothing from the application.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TIMESTAMP = """to_char({} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')"""

# The members a body mentions: for each '@', the longest member id that follows it and ends at the
# end of the body or before a character that is not a word character (letter, digit, underscore);
# each member once, in order of first mention. One indexed look-up per '@' (7 µs a call here; a single
# SQL statement over all the '@'s took 73 µs, most of a send's added cost when the body mentions).
_MENTIONS = r"""
CREATE FUNCTION chat_mentions(p_room uuid, p_body text) RETURNS text[] LANGUAGE plpgsql STABLE AS $function$
DECLARE
    mentioned text[] := '{}';
    rest text := p_body;
    at int;
    member text;
BEGIN
    LOOP
        at := strpos(rest, '@');
        EXIT WHEN at = 0;
        rest := substr(rest, at + 1);
        SELECT mem.user_id INTO member FROM members mem
        WHERE mem.room_id = p_room AND starts_with(rest, mem.user_id)
          AND substr(rest, length(mem.user_id) + 1, 1) !~ '\w'
        ORDER BY length(mem.user_id) DESC LIMIT 1;
        IF member IS NOT NULL AND NOT member = ANY(mentioned) THEN
            mentioned := mentioned || member;
        END IF;
    END LOOP;
    RETURN mentioned;
END
$function$
"""

_MESSAGE_DOC = f"""
CREATE OR REPLACE FUNCTION chat_message_doc() RETURNS trigger LANGUAGE plpgsql AS $function$
BEGIN
    IF NEW.reply_to IS NOT NULL AND NEW.thread_root IS NULL THEN
        NEW.thread_root := (SELECT coalesce(t.thread_root, t.seq) FROM messages t
                            WHERE t.room_id = NEW.room_id AND t.seq = NEW.reply_to);
    END IF;
    IF TG_OP = 'INSERT' OR NEW.body IS DISTINCT FROM OLD.body OR NEW.search IS NULL THEN
        NEW.search := to_tsvector('simple', coalesce(NEW.body, '')) || chat_room_word(NEW.room_id)::tsvector;
        NEW.mentions := CASE WHEN strpos(NEW.body, '@') > 0
                             THEN chat_mentions(NEW.room_id, NEW.body) ELSE '{{}}'::text[] END;
    END IF;
    NEW.doc := (SELECT row_to_json(x) FROM (SELECT NEW.id AS id, NEW.room_id AS room_id, NEW.seq AS seq,
        NEW.sender AS sender, NEW.body AS body, NEW.reply_to AS reply_to,
        {_TIMESTAMP.format("NEW.created_at")} AS created_at,
        {_TIMESTAMP.format("NEW.edited_at")} AS edited_at, NEW.deleted AS deleted,
        NEW.thread_root AS thread_root, NEW.reply_count AS reply_count,
        NEW.last_reply_seq AS last_reply_seq, NEW.mentions AS mentions, NEW.reactions AS reactions) x)::text;
    RETURN NEW;
END
$function$
"""

_MESSAGE_AFTER = """
CREATE FUNCTION chat_message_after() RETURNS trigger LANGUAGE plpgsql AS $function$
BEGIN
    IF NEW.thread_root IS NOT NULL AND (TG_OP = 'INSERT' OR OLD.thread_root IS NULL) THEN
        UPDATE messages SET reply_count = reply_count + 1,
                            last_reply_seq = greatest(last_reply_seq, NEW.seq)
        WHERE room_id = NEW.room_id AND seq = NEW.thread_root;
    END IF;
    IF TG_OP = 'UPDATE' AND OLD.mentions IS DISTINCT FROM NEW.mentions THEN
        DELETE FROM message_mentions
        WHERE user_id = ANY(OLD.mentions) AND room_id = NEW.room_id AND seq = NEW.seq;
    END IF;
    IF NEW.mentions <> '{}' AND (TG_OP = 'INSERT' OR OLD.mentions IS DISTINCT FROM NEW.mentions) THEN
        INSERT INTO message_mentions (user_id, room_id, seq)
        SELECT u, NEW.room_id, NEW.seq FROM unnest(NEW.mentions) AS u WHERE u <> NEW.sender;
    END IF;
    RETURN NULL;
END
$function$
"""

# A room as a word of the search vector: `R` and the id's hex digits. The 'simple' configuration lower-
# cases every word it reads, so no text and no query ever makes this word; a search in one room asks the
# GIN index for "these words and this room's word", which costs what the room's matches cost, whatever
# the size of the room or of the whole table (btree_gin's (room_id, search) index would do the same,
# but it is an extension: not every PostgreSQL here has it).
_ROOM_WORD = """
CREATE FUNCTION chat_room_word(p_room uuid) RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $function$
    SELECT 'R' || replace(p_room::text, '-', '')
$function$
"""

# Newest first over the caller's rooms (or one of them), keyset-paged by (created_at, room_id, seq);
# p_limit rows at most. In two steps, each planned with its own words (EXECUTE: a prepared statement's
# generic plan cannot tell a common word from a rare one):
# 1. the newest messages of each room below the cursor, about 200 in all (`window` per room, at least
#    p_limit): where the words are common, the page is among them. `edge` is the newest of the rooms'
#    oldest windowed messages: every message above it is in some window, so if p_limit matches are
#    found above it, they are the page.
# 2. otherwise the matches in the rooms, through the GIN index in one scan: the words and any of the
#    rooms' words.
# Below the cursor, and above the edge, per room: a position (created_at, room_id, seq) compared within
# one room is (created_at, seq) compared with a seq that stands for the room's place beside the
# position's room (0 or the largest seq).
_SEARCH = """
CREATE FUNCTION chat_search(
    p_user text, p_room uuid, p_query text, p_at timestamptz, p_at_room uuid, p_at_seq bigint, p_limit int
) RETURNS TABLE (doc text, created_at timestamptz, room_id uuid, seq bigint)
LANGUAGE plpgsql STABLE AS $function$
DECLARE
    words tsquery := websearch_to_tsquery('simple', p_query);
    rooms uuid[];
    window_size int;
    edge record;
    docs text[];
    ats timestamptz[];
    ids uuid[];
    seqs bigint[];
BEGIN
    SELECT array_agg(mem.room_id) INTO rooms FROM members mem
    WHERE mem.user_id = p_user AND (p_room IS NULL OR mem.room_id = p_room);
    IF rooms IS NULL OR numnode(words) = 0 THEN
        RETURN;
    END IF;
    window_size := greatest(p_limit, 200 / cardinality(rooms));
    EXECUTE $query$
        SELECT e.created_at, e.room_id, e.seq FROM unnest($1::uuid[]) AS r(id) CROSS JOIN LATERAL (
            SELECT m.created_at, m.room_id, m.seq FROM messages m
            WHERE m.room_id = r.id AND ($2::timestamptz IS NULL OR (m.created_at, m.seq) < ($2, CASE
                    WHEN r.id < $3 THEN 9223372036854775807 WHEN r.id = $3 THEN $4 ELSE 0 END))
            ORDER BY m.created_at DESC, m.seq DESC OFFSET $5 - 1 LIMIT 1
        ) AS e ORDER BY e.created_at DESC, e.room_id DESC, e.seq DESC LIMIT 1
    $query$ INTO edge USING rooms, p_at, p_at_room, p_at_seq, window_size;
    EXECUTE $query$
        SELECT array_agg(f.doc ORDER BY f.created_at DESC, f.room_id DESC, f.seq DESC),
               array_agg(f.created_at ORDER BY f.created_at DESC, f.room_id DESC, f.seq DESC),
               array_agg(f.room_id ORDER BY f.created_at DESC, f.room_id DESC, f.seq DESC),
               array_agg(f.seq ORDER BY f.created_at DESC, f.room_id DESC, f.seq DESC)
        FROM (
            SELECT m.doc, m.created_at, m.room_id, m.seq FROM unnest($1::uuid[]) AS r(id) CROSS JOIN LATERAL (
                SELECT m.doc, m.created_at, m.room_id, m.seq FROM messages m
                WHERE m.room_id = r.id AND m.search @@ $2 AND NOT m.deleted
                  AND ($3::timestamptz IS NULL OR (m.created_at, m.seq) < ($3, CASE
                        WHEN r.id < $4 THEN 9223372036854775807 WHEN r.id = $4 THEN $5 ELSE 0 END))
                  AND ($6::timestamptz IS NULL OR (m.created_at, m.seq) > ($6, CASE
                        WHEN r.id < $7 THEN 9223372036854775807 WHEN r.id = $7 THEN $8 ELSE 0 END))
                ORDER BY m.created_at DESC, m.seq DESC LIMIT $9
            ) AS m ORDER BY m.created_at DESC, m.room_id DESC, m.seq DESC LIMIT $9
        ) AS f
    $query$ INTO docs, ats, ids, seqs
    USING rooms, words, p_at, p_at_room, p_at_seq, edge.created_at, edge.room_id, edge.seq, p_limit;
    IF edge.created_at IS NULL OR coalesce(cardinality(docs), 0) >= p_limit THEN
        RETURN QUERY SELECT * FROM unnest(docs, ats, ids, seqs);
        RETURN;
    END IF;
    RETURN QUERY EXECUTE $query$
        SELECT m.doc, m.created_at, m.room_id, m.seq FROM messages m
        WHERE m.search @@ ($1 && $2::tsquery) AND NOT m.deleted
          AND ($3::timestamptz IS NULL OR (m.created_at, m.room_id, m.seq) < ($3, $4, $5))
        ORDER BY m.created_at DESC, m.room_id DESC, m.seq DESC LIMIT $6
    $query$ USING words, (SELECT string_agg(chat_room_word(id), ' | ') FROM unnest(rooms) AS id),
                  p_at, p_at_room, p_at_seq, p_limit;
END
$function$
"""

BATCH = 2000
_NEXT_BATCH = sa.text(
    "SELECT room_id, seq FROM messages WHERE (room_id, seq) > (:room, :seq) "
    "ORDER BY room_id, seq OFFSET :last LIMIT 1"
)
_BACKFILL = sa.text(
    "UPDATE messages SET doc = NULL, search = NULL "
    "WHERE (room_id, seq) > (:room, :seq) AND (room_id, seq) <= (:to_room, :to_seq)"
)
_BACKFILL_REST = sa.text("UPDATE messages SET doc = NULL, search = NULL WHERE (room_id, seq) > (:room, :seq)")
_BEFORE_ALL = {"room": "00000000-0000-0000-0000-000000000000", "seq": 0}
# Existing replies join their threads one level of the reply chain per statement: a reply whose target
# is a thread's top (no reply_to) or already knows its thread. The AFTER trigger counts each on its root.
_THREAD_LEVEL = sa.text(
    "UPDATE messages r SET thread_root = coalesce(t.thread_root, t.seq) FROM messages t "
    "WHERE r.reply_to IS NOT NULL AND r.thread_root IS NULL AND t.room_id = r.room_id "
    "AND t.seq = r.reply_to AND (t.reply_to IS NULL OR t.thread_root IS NOT NULL)"
)


def upgrade() -> None:
    op.add_column("rooms", sa.Column("kind", sa.Text(), server_default="group", nullable=False))
    op.add_column("rooms", sa.Column("topic", sa.Text(), nullable=True))
    op.add_column("rooms", sa.Column("dm_low", sa.Text(), nullable=True))
    op.add_column("rooms", sa.Column("dm_high", sa.Text(), nullable=True))
    op.execute("ALTER TABLE rooms ADD CONSTRAINT ck_rooms_kind CHECK (kind IN ('group', 'direct')) NOT VALID")
    op.execute("ALTER TABLE rooms VALIDATE CONSTRAINT ck_rooms_kind")

    op.add_column("messages", sa.Column("thread_root", sa.BigInteger(), nullable=True))
    op.add_column("messages", sa.Column("reply_count", sa.Integer(), server_default="0", nullable=False))
    op.add_column("messages", sa.Column("last_reply_seq", sa.BigInteger(), nullable=True))
    op.add_column(
        "messages",
        sa.Column("mentions", sa.ARRAY(sa.Text()), server_default=sa.text("'{}'::text[]"), nullable=False),
    )
    op.add_column(
        "messages", sa.Column("reactions", sa.JSON(), server_default=sa.text("'[]'::json"), nullable=False)
    )
    op.add_column("messages", sa.Column("search", sa.dialects.postgresql.TSVECTOR(), nullable=True))

    op.create_table(
        "reactions",
        sa.Column("room_id", sa.Uuid(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("emoji", sa.Text(), nullable=False),
        sa.Column("user_id", sa.Text(), nullable=False),
        sa.Column("id", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.ForeignKeyConstraint(
            ["room_id"], ["rooms.id"], name=op.f("fk_reactions_room_id_rooms"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("room_id", "seq", "emoji", "user_id", name=op.f("pk_reactions")),
    )
    op.create_table(
        "message_mentions",
        sa.Column("user_id", sa.Text(), nullable=False),
        sa.Column("room_id", sa.Uuid(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["room_id"], ["rooms.id"], name=op.f("fk_message_mentions_room_id_rooms"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("user_id", "room_id", "seq", name=op.f("pk_message_mentions")),
    )

    op.execute(_MENTIONS)
    op.execute(_ROOM_WORD)
    op.execute(_MESSAGE_DOC)
    op.execute(_MESSAGE_AFTER)
    op.execute(
        "CREATE TRIGGER messages_after_insert AFTER INSERT ON messages FOR EACH ROW "
        "WHEN (NEW.thread_root IS NOT NULL OR NEW.mentions <> '{}') EXECUTE FUNCTION chat_message_after()"
    )
    op.execute(
        "CREATE TRIGGER messages_after_update AFTER UPDATE ON messages FOR EACH ROW "
        "WHEN (OLD.thread_root IS DISTINCT FROM NEW.thread_root "
        "OR OLD.mentions IS DISTINCT FROM NEW.mentions) "
        "EXECUTE FUNCTION chat_message_after()"
    )
    op.execute(_SEARCH)

    with op.get_context().autocommit_block():
        bind = op.get_bind()
        while bind.execute(_THREAD_LEVEL).rowcount:
            pass
        start = dict(_BEFORE_ALL)
        while True:
            end = bind.execute(_NEXT_BATCH, {**start, "last": BATCH - 1}).first()
            if end is None:
                bind.execute(_BACKFILL_REST, start)
                break
            bind.execute(_BACKFILL, {**start, "to_room": end.room_id, "to_seq": end.seq})
            start = {"room": end.room_id, "seq": end.seq}
        # IF NOT EXISTS: a Job that died after building one index can run again.
        op.execute(
            "CREATE INDEX CONCURRENTLY IF NOT EXISTS ix_messages_search ON messages USING gin (search)"
        )
        op.execute(
            "CREATE INDEX CONCURRENTLY IF NOT EXISTS ix_messages_room_id_thread_root_seq "
            "ON messages (room_id, thread_root, seq) WHERE thread_root IS NOT NULL"
        )
        op.execute(
            "CREATE INDEX CONCURRENTLY IF NOT EXISTS ix_messages_room_id_created_at_seq "
            "ON messages (room_id, created_at, seq)"
        )
        op.execute(
            "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS ix_rooms_dm_low_dm_high "
            "ON rooms (dm_low, dm_high)"
        )


# chat_message_doc() as migration 0004 made it: a frozen copy, for the downgrade.
_MESSAGE_DOC_0004 = f"""
CREATE OR REPLACE FUNCTION chat_message_doc() RETURNS trigger LANGUAGE plpgsql AS $function$
BEGIN
    NEW.doc := (SELECT row_to_json(x) FROM (SELECT NEW.id AS id, NEW.room_id AS room_id, NEW.seq AS seq,
        NEW.sender AS sender, NEW.body AS body, NEW.reply_to AS reply_to,
        {_TIMESTAMP.format("NEW.created_at")} AS created_at,
        {_TIMESTAMP.format("NEW.edited_at")} AS edited_at, NEW.deleted AS deleted) x)::text;
    RETURN NEW;
END
$function$
"""


def downgrade() -> None:
    with op.get_context().autocommit_block():
        for index in (
            "ix_rooms_dm_low_dm_high",
            "ix_messages_room_id_created_at_seq",
            "ix_messages_room_id_thread_root_seq",
            "ix_messages_search",
        ):
            op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {index}")
    op.execute("DROP FUNCTION chat_search(text, uuid, text, timestamptz, uuid, bigint, integer)")
    op.execute("DROP TRIGGER messages_after_update ON messages")
    op.execute("DROP TRIGGER messages_after_insert ON messages")
    op.execute("DROP FUNCTION chat_message_after()")
    op.execute(_MESSAGE_DOC_0004)
    op.execute("DROP FUNCTION chat_mentions(uuid, text)")
    op.execute("DROP FUNCTION chat_room_word(uuid)")
    op.drop_table("message_mentions")
    op.drop_table("reactions")
    for column in ("search", "reactions", "mentions", "last_reply_seq", "reply_count", "thread_root"):
        op.drop_column("messages", column)
    op.execute("UPDATE messages SET doc = NULL")  # the 0004 trigger writes the previous shape again
    op.execute("ALTER TABLE rooms DROP CONSTRAINT ck_rooms_kind")
    for column in ("dm_high", "dm_low", "topic", "kind"):
        op.drop_column("rooms", column)
