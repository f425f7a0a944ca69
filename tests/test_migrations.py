"""Schema migrations: `chat-api migrate` twice at once (the advisory lock), models == migrations, and a
full downgrade / upgrade round trip. Each test has its own throwaway database (chat_test_cli_*)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
import warnings
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, text

import chat_api.events.models
import chat_api.messages.models
import chat_api.rooms.models  # noqa: F401 - registers the tables on Base.metadata
from chat_api.core.migrations import (
    MIGRATION_LOCK_KEY,
    alembic_config,
    head_revision,
    include_name,
    migrate,
    new_engine,
)
from chat_api.core.schema import SCHEMA_REVISION, Base
from tests.support.databases import throwaway_database
from tests.support.migrate import COMMAND_TIMEOUT, cli_env, run_migrate
from tests.support.settings import make_settings, with_user

TABLES = {
    "rooms",
    "members",
    "room_refusals",
    "messages",
    "reactions",
    "message_mentions",
    "events",
    "event_log_state",
}


async def start_migrate(env: dict[str, str], out: Path) -> asyncio.subprocess.Process:
    with out.open("wb") as sink:  # the child keeps its own copy of the descriptor
        return await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "chat_api",
            "migrate",
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )


async def kill(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.kill()
        await asyncio.wait_for(proc.wait(), 10)


@pytest.fixture
async def fresh_url(admin_url: str) -> AsyncIterator[str]:
    """An empty database of our own, dropped afterwards."""
    async with throwaway_database(admin_url, "chat_test_cli") as url:
        yield url


WAITING = "waiting for another chat-api migrate to finish"


async def test_two_migrates_at_once_one_upgrades_the_other_waits(fresh_url: str, tmp_path: Path) -> None:
    env = cli_env(fresh_url)
    holder = await asyncpg.connect(fresh_url)
    procs: list[asyncio.subprocess.Process] = []
    try:
        # Hold the lock ourselves so both processes are certainly queued on it at the same time.
        await holder.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
        outs = [tmp_path / "migrate-a.log", tmp_path / "migrate-b.log"]
        procs = list(await asyncio.gather(*(start_migrate(env, out) for out in outs)))
        deadline = time.monotonic() + 30
        while not all(WAITING in out.read_text() for out in outs):
            assert all(p.returncode is None for p in procs), [out.read_text() for out in outs]
            assert time.monotonic() < deadline, "the two migrate processes never both waited for the lock"
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # both keep trying while the lock is held: neither goes ahead
        assert not any("Running upgrade" in out.read_text() for out in outs)
        await holder.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)
        codes = [await asyncio.wait_for(p.wait(), COMMAND_TIMEOUT) for p in procs]
        logs = [out.read_text() for out in outs]
        assert codes == [0, 0], logs
        upgraded = ["Running upgrade" in log for log in logs]
        assert sorted(upgraded) == [False, True], logs
        assert all("database schema is at the head revision" in log for log in logs), logs

        revision = await holder.fetchval("SELECT version_num FROM alembic_version")
        assert revision == head_revision() and revision is not None
        assert await holder.fetchval("SELECT count(*) FROM alembic_version") == 1

        # Later, once more: nothing to do.
        later = tmp_path / "migrate-later.log"
        procs.append(await start_migrate(env, later))
        assert await asyncio.wait_for(procs[-1].wait(), COMMAND_TIMEOUT) == 0, later.read_text()
        assert "Running upgrade" not in later.read_text()
        assert "database schema is at the head revision" in later.read_text()
        assert await holder.fetchval("SELECT version_num FROM alembic_version") == head_revision()
    finally:
        for proc in procs:
            await kill(proc)
        await holder.close()


def schema_diff(connection: Connection, *, server_defaults: bool = False) -> list[Any]:
    context = MigrationContext.configure(
        connection, opts={"compare_server_default": server_defaults, "include_name": include_name}
    )
    with warnings.catch_warnings():
        # SQLAlchemy reflects xid8 as NullType, so Alembic skips those two columns' types;
        # test_models_match_the_migrations checks them itself.
        warnings.filterwarnings("ignore", "Did not recognize type 'xid8'")
        return list(compare_metadata(context, Base.metadata))


def column_types(connection: Connection) -> dict[str, str]:
    rows = connection.execute(
        text("SELECT table_name || '.' || column_name, udt_name FROM information_schema.columns")
    )
    return {row[0]: row[1] for row in rows}


async def test_models_match_the_migrations(fresh_url: str) -> None:
    settings = make_settings(fresh_url)
    await migrate(settings)
    engine = new_engine(settings)
    try:
        async with engine.connect() as conn:
            diff = await conn.run_sync(schema_diff)
            with_defaults = await conn.run_sync(lambda c: schema_diff(c, server_defaults=True))
            types = await conn.run_sync(column_types)
    finally:
        await engine.dispose()
    assert diff == []
    assert with_defaults == []  # stricter than autogenerate's default: server defaults agree too
    for column in ("events.xid", "event_log_state.pruned_xid"):
        assert types[column] == "xid8"
        table, name = column.split(".")
        assert Base.metadata.tables[table].c[name].type.compile() == "xid8"


def table_names(connection: Connection) -> set[str]:
    rows = connection.execute(
        text("SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")
    )
    return {row[0] for row in rows}


def scalar(connection: Connection, sql: str) -> Any:
    return connection.execute(text(sql)).scalar()


def round_trip(connection: Connection) -> dict[str, Any]:
    """downgrade base, then upgrade head, the way chat_api.core.migrations hands Alembic a connection."""
    config = alembic_config()
    config.attributes["connection"] = connection
    seen: dict[str, Any] = {}
    command.downgrade(config, "base")
    connection.commit()
    seen["after_downgrade_tables"] = table_names(connection)
    seen["after_downgrade_versions"] = scalar(connection, "SELECT count(*) FROM alembic_version")
    # The comparison is not vacuous: on the empty schema it wants every table back.
    seen["after_downgrade_diff"] = schema_diff(connection)
    command.upgrade(config, "head")
    connection.commit()
    seen["after_upgrade_tables"] = table_names(connection)
    seen["after_upgrade_version"] = scalar(connection, "SELECT version_num FROM alembic_version")
    seen["after_upgrade_diff"] = schema_diff(connection)
    seen["event_log_state_rows"] = scalar(connection, "SELECT count(*) FROM event_log_state")
    return seen


async def on_migrated(url: str, steps: Callable[[Connection], dict[str, Any]]) -> dict[str, Any]:
    """Migrates the database at `url` to head, then runs `steps` (Alembic commands and checks) on
    a connection the way chat_api.core.migrations hands one to Alembic."""
    settings = make_settings(url)
    await migrate(settings)
    engine = new_engine(settings)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(steps)
    finally:
        await engine.dispose()


async def test_downgrade_to_base_and_upgrade_again(fresh_url: str) -> None:
    seen = await on_migrated(fresh_url, round_trip)
    assert seen["after_downgrade_tables"] & TABLES == set(), seen
    assert seen["after_downgrade_versions"] == 0, seen
    added = {diff[1].name for diff in seen["after_downgrade_diff"] if diff[0] == "add_table"}
    assert added == TABLES, seen
    assert seen["after_upgrade_tables"] >= TABLES | {"alembic_version"}, seen
    assert seen["after_upgrade_version"] == head_revision(), seen
    assert seen["after_upgrade_diff"] == [], seen
    assert seen["event_log_state_rows"] == 1, seen


def test_the_schema_revision_readyz_waits_for_is_the_migration_head() -> None:
    assert head_revision() == SCHEMA_REVISION


def upgrade_with_a_message_stored_at_0003(connection: Connection) -> dict[str, Any]:
    """A message written at 0003 (no doc yet), then 0004 and back: its doc, and chat_send() working
    on both sides."""
    config = alembic_config()
    config.attributes["connection"] = connection
    command.downgrade(config, "0003")
    room = {"room": uuid.UUID("00000000-0000-0000-0000-00000000000a")}
    for statement in (
        "INSERT INTO rooms (id, name, created_by, last_seq) VALUES (:room, 'r', 'ann', 1)",
        "INSERT INTO members (room_id, user_id, role) VALUES (:room, 'ann', 'owner')",
        "INSERT INTO messages (room_id, seq, sender, body, created_at) "
        "VALUES (:room, 1, 'ann', 'before 0004', '2026-11-28 10:00:00.5+00')",
    ):
        connection.execute(text(statement), room)
    connection.commit()
    command.upgrade(config, "0004")
    connection.commit()
    seen: dict[str, Any] = {"doc": scalar(connection, "SELECT doc FROM messages WHERE seq = 1")}
    send = text("SELECT chat_send(:room, 10, 'ann', :body, NULL, NULL, NULL)")
    seen["sent_at_head"] = connection.execute(send, {**room, "body": "at head"}).scalar()
    connection.commit()
    command.downgrade(config, "0003")
    connection.commit()
    seen["sent_at_0003"] = connection.execute(send, {**room, "body": "at 0003"}).scalar()
    connection.commit()
    command.upgrade(config, "head")
    connection.commit()
    return seen


async def test_0004_writes_the_doc_of_messages_stored_before_it(fresh_url: str) -> None:
    seen = await on_migrated(fresh_url, upgrade_with_a_message_stored_at_0003)
    doc = orjson.loads(seen["doc"])
    assert doc["body"] == "before 0004" and doc["seq"] == 1 and doc["sender"] == "ann", doc
    assert doc["created_at"] == "2026-11-28T10:00:00.500000Z" and doc["edited_at"] is None, doc
    assert doc["deleted"] is False and doc["reply_to"] is None
    assert set(doc) == {
        "id",
        "room_id",
        "seq",
        "sender",
        "body",
        "reply_to",
        "created_at",
        "edited_at",
        "deleted",
    }
    assert orjson.loads(seen["sent_at_head"])["body"] == "at head"
    assert orjson.loads(seen["sent_at_0003"])["body"] == "at 0003"


async def applied(url: str) -> tuple[str, list[str]]:
    """The database's revision and the revisions recorded as applied."""
    db = await asyncpg.connect(url)
    try:
        at = await db.fetchval("SELECT version_num FROM alembic_version")
        recorded = [r[0] for r in await db.fetch("SELECT revision FROM chat_schema_revisions ORDER BY 1")]
    finally:
        await db.close()
    return at, recorded


def lineage(revision: str) -> list[str]:
    config = alembic_config()
    from alembic.script import ScriptDirectory

    return sorted(r.revision for r in ScriptDirectory.from_config(config).iterate_revisions(revision, "base"))


async def test_migrate_records_every_revision_it_applies(fresh_url: str) -> None:
    await migrate(make_settings(fresh_url))
    head = head_revision()
    assert head is not None
    assert await applied(fresh_url) == (head, lineage(head))


async def test_a_database_migrated_before_the_record_existed_gets_its_revisions_recorded(
    fresh_url: str,
) -> None:
    # What the previous release left: the schema at its head, no record.
    await migrate(make_settings(fresh_url))
    db = await asyncpg.connect(fresh_url)
    await db.execute("DROP TABLE chat_schema_revisions")
    await db.close()
    done = run_migrate(fresh_url)
    assert done.returncode == 0, done.stdout
    head = head_revision()
    assert head is not None
    assert await applied(fresh_url) == (head, lineage(head))


async def test_migrate_to_downgrades_the_newest_migration_and_back(fresh_url: str) -> None:
    head = head_revision()
    assert head is not None
    previous = lineage(head)[-2]
    assert run_migrate(fresh_url).returncode == 0
    down = run_migrate(fresh_url, "--to", previous)
    assert down.returncode == 0, down.stdout
    assert f"Running downgrade {head} -> {previous}" in down.stdout, down.stdout
    assert f"database schema is at revision {previous}" in down.stdout
    assert await applied(fresh_url) == (previous, lineage(previous))
    up = run_migrate(fresh_url)
    assert up.returncode == 0, up.stdout
    assert f"Running upgrade {previous} -> {head}" in up.stdout, up.stdout
    assert await applied(fresh_url) == (head, lineage(head))
    unknown = run_migrate(fresh_url, "--to", "nope")
    assert unknown.returncode == 1 and unknown.stdout.strip().endswith(
        "chat-api: migrate: --to nope: no such revision in this release"
    ), unknown.stdout


async def test_migrate_leaves_a_database_ahead_of_its_release_alone(fresh_url: str) -> None:
    """A rollback to an older image: its wave-4 Job finds the schema of a later release. When that
    schema was reached through this release's head, there is nothing to do (exit 0), so the sync goes
    on to roll the Deployment back; a revision it cannot place is an error."""
    assert run_migrate(fresh_url).returncode == 0
    db = await asyncpg.connect(fresh_url)
    try:
        await db.execute(
            "INSERT INTO chat_schema_revisions (revision) VALUES ('9001');"
            "UPDATE alembic_version SET version_num = '9001'"
        )
        done = run_migrate(fresh_url)
        assert done.returncode == 0, done.stdout
        assert f"is ahead of this release's head {head_revision()}" in done.stdout, done.stdout
        assert await db.fetchval("SELECT version_num FROM alembic_version") == "9001"
        # A revision whose history does not include this release's head: refused, loudly.
        await db.execute(f"DELETE FROM chat_schema_revisions WHERE revision = '{head_revision()}'")
        refused = run_migrate(fresh_url)
        assert refused.returncode == 1, refused.stdout
        assert "the database is at revision 9001, which this release does not know" in refused.stdout
    finally:
        await db.close()


async def test_the_runtime_role_reads_and_writes_rows_but_changes_no_schema(
    fresh_url: str, admin_url: str
) -> None:
    """What `chat-api migrate` grants CHAT_API_DB_RUNTIME_ROLE (the server's login in the overlays)."""
    role = f"chat-rt-{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(admin_url)
    await admin.execute(f"CREATE ROLE \"{role}\" LOGIN PASSWORD 'rt'")
    try:
        done = run_migrate(fresh_url, CHAT_API_DB_RUNTIME_ROLE=role)
        assert done.returncode == 0, done.stdout
        runtime = await asyncpg.connect(with_user(fresh_url, role, "rt"))
        try:
            room = uuid.uuid4()
            await runtime.execute("INSERT INTO rooms (id, name, created_by) VALUES ($1, 'r', 'ann')", room)
            await runtime.execute(
                "INSERT INTO members (room_id, user_id, role) VALUES ($1, 'ann', 'owner')", room
            )
            sent = await runtime.fetchval("SELECT chat_send($1, 7, 'ann', 'hi', NULL, NULL, NULL)", room)
            assert orjson.loads(sent)["body"] == "hi"
            assert await runtime.fetchval("SELECT count(*) FROM events WHERE room_id = $1", room) == 1
            await runtime.execute("DELETE FROM events WHERE room_id = $1", room)
            assert await runtime.fetchval("SELECT version_num FROM alembic_version") == head_revision()
            assert await runtime.fetchval("SELECT count(*) FROM chat_schema_revisions") > 0
            for statement in (
                "CREATE TABLE intruder (id int)",
                "CREATE SCHEMA intruder",
                "ALTER TABLE messages ADD COLUMN intruder text",
                "DROP TABLE events",
                "CREATE INDEX intruder ON messages (body)",
                "TRUNCATE messages",
                "UPDATE alembic_version SET version_num = '0001'",
                "DELETE FROM chat_schema_revisions",
                "CREATE OR REPLACE FUNCTION chat_send() RETURNS int LANGUAGE sql AS 'SELECT 1'",
            ):
                with pytest.raises(asyncpg.exceptions.InsufficientPrivilegeError):
                    await runtime.execute(statement)
        finally:
            await runtime.close()
        missing = run_migrate(fresh_url, CHAT_API_DB_RUNTIME_ROLE="no-such-role")
        assert missing.returncode == 1
        assert "CHAT_API_DB_RUNTIME_ROLE: role 'no-such-role' does not exist" in missing.stdout
    finally:
        db = await asyncpg.connect(fresh_url)
        await db.execute(f'DROP OWNED BY "{role}"')  # its grants (roles belong to the whole server)
        await db.close()
        await admin.execute(f'DROP ROLE "{role}"')
        await admin.close()
