"""Schema migrations: `chat-api migrate` (Alembic under an advisory lock), the record of every
revision applied that readiness reads, and the grants of the server's runtime role.

Readiness accepts a schema at or ahead of the code's revision (health/router.py). A release cannot
know the revisions written after it, so the database tells it: `chat_schema_revisions` lists every
revision applied to it, and a release is ready when its own head is among them. The record is kept
by the Alembic environment itself (migrations/env.py calls `prepare_history` and `record_step`), in
the transaction of each migration, so no migration can forget it.
"""

from __future__ import annotations

import asyncio
import logging
from functools import cache
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.migration import MigrationContext, MigrationInfo
from alembic.script import ScriptDirectory
from alembic.script.revision import ResolutionError
from sqlalchemy import Connection, event, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

import chat_api
from chat_api.core.config import Settings
from chat_api.core.db import connect_options

log = logging.getLogger("chat_api.migrations")

# Any constant works as long as every replica uses the same one: `chat-api migrate` runs in a Job
# that may overlap another (a re-sync, a second replica of an init step).
MIGRATION_LOCK_KEY = 0x63686174_61706900  # "chat" "api\0"
LOCK_POLL_SECONDS = 0.2
_TRY_LOCK = "SELECT pg_try_advisory_lock(:key)"

SCHEMA_HISTORY_TABLE = "chat_schema_revisions"
# Tables of the migration machinery, not of the application: no model describes them, and the
# runtime role may read them (readiness) but never write them.
BOOKKEEPING_TABLES = frozenset({"alembic_version", SCHEMA_HISTORY_TABLE})

_CREATE_HISTORY = f"""
CREATE TABLE IF NOT EXISTS {SCHEMA_HISTORY_TABLE} (
    revision text PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
)"""
_RECORD = f"INSERT INTO {SCHEMA_HISTORY_TABLE} (revision) VALUES (:revision) ON CONFLICT DO NOTHING"
_FORGET = f"DELETE FROM {SCHEMA_HISTORY_TABLE} WHERE revision = :revision"
_RECORDED = f"SELECT EXISTS (SELECT 1 FROM {SCHEMA_HISTORY_TABLE} WHERE revision = :revision)"


def include_name(name: str | None, type_: str, parent_names: Any) -> bool:
    """Alembic's include_name hook: the bookkeeping has no model, so autogenerate and schema
    comparisons must neither create nor drop it."""
    return not (type_ == "table" and name in BOOKKEEPING_TABLES)


class MigrationError(Exception):
    """`chat-api migrate` cannot go on; the message is one line for the operator."""


def new_engine(settings: Settings) -> AsyncEngine:
    """A SQLAlchemy engine for Alembic (migrations and schema comparisons only: the service itself
    runs on core/db.py's pool), connected the way the settings say, one connection at a time."""
    settings.require_database()
    engine = create_async_engine(
        "postgresql+asyncpg://",
        poolclass=NullPool,
        # Errors must not carry statement parameters into logs.
        hide_parameters=True,
        connect_args=connect_options(settings),
    )

    @event.listens_for(engine.sync_engine, "do_connect")
    def _target_per_connection(dialect: Any, conn_rec: Any, cargs: Any, cparams: dict[str, Any]) -> None:
        cparams.update(settings.database_target().connect_kwargs())

    return engine


def migrations_dir() -> Path:
    package = Path(chat_api.__file__).parent
    installed = package / "_migrations"  # where the wheel puts them
    return installed if installed.is_dir() else package.parent / "migrations"


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    return config


def script_directory() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


@cache
def head_revision() -> str | None:
    return script_directory().get_current_head()


# ---- the record of applied revisions (used by migrations/env.py) ------------------------------------


def _knows(script: ScriptDirectory, revision: str) -> bool:
    try:
        return script.revision_map.get_revision(revision) is not None
    except ResolutionError:
        return False


def _lineage(script: ScriptDirectory, revision: str) -> list[str]:
    """`revision` and every revision below it."""
    return [r.revision for r in script.iterate_revisions(revision, "base")]


def prepare_history(connection: Connection, script: ScriptDirectory) -> None:
    """Creates the record if it is missing, and records the database's current revision and its
    ancestors (a database migrated before the record existed has applied them all)."""
    connection.execute(text(_CREATE_HISTORY))
    for head in MigrationContext.configure(connection).get_current_heads():
        if _knows(script, head):
            for revision in _lineage(script, head):
                connection.execute(text(_RECORD), {"revision": revision})
    connection.commit()


def record_step(*, ctx: MigrationContext, step: MigrationInfo, heads: set[str], run_args: Any) -> None:
    """Alembic's on_version_apply hook: runs inside each migration's own transaction, so a revision is
    recorded exactly when it is applied, and forgotten when it is downgraded."""
    assert ctx.connection is not None
    statement = _RECORD if step.is_upgrade else _FORGET
    # An upgrade applies its up revision; a downgrade undoes its up revision. (A stamp moves the
    # version the same way without running anything; chat-api never stamps.)
    for revision in step.up_revision_ids:
        ctx.connection.execute(text(statement), {"revision": revision})


def has_applied(connection: Connection, revision: str) -> bool:
    return bool(connection.execute(text(_RECORDED), {"revision": revision}).scalar())


# ---- chat-api migrate -------------------------------------------------------------------------------


def _run(connection: Connection, target: str | None) -> str:
    """Upgrades to head, or to/down to `target`; returns what was done, for the log."""
    config = alembic_config()
    config.attributes["connection"] = connection
    script = ScriptDirectory.from_config(config)
    head = script.get_current_head()
    assert head is not None
    current = MigrationContext.configure(connection).get_current_heads()
    unknown = [revision for revision in current if not _knows(script, revision)]
    if unknown:
        # A later release migrated this database (e.g. this is a rollback to an older image). Its
        # migrations are expand-only with respect to this release, so there is nothing to do as long
        # as this release's head was applied on the way.
        connection.execute(text(_CREATE_HISTORY))
        if target is None and has_applied(connection, head):
            connection.commit()
            return f"the database schema ({', '.join(unknown)}) is ahead of this release's head {head}"
        connection.commit()
        raise MigrationError(
            f"the database is at revision {', '.join(unknown)}, which this release does not know"
            + ("" if target is None else "; downgrade it with the release that wrote it")
        )
    if target is None:
        command.upgrade(config, "head")
        return "database schema is at the head revision"
    if target != "base" and not _knows(script, target):
        raise MigrationError(f"--to {target}: no such revision in this release")
    below = {r for revision in current for r in _lineage(script, revision)}
    if target == "base" or (target in below and target not in current):
        command.downgrade(config, target)
    else:
        command.upgrade(config, target)
    return f"database schema is at revision {target}"


def grant_runtime_role(connection: Connection, role: str) -> None:
    """Lets `role` (the server's login, CHAT_API_DB_RUNTIME_ROLE) read and write rows of every table
    and use their sequences, and nothing else: it cannot create, alter or drop anything, and reads
    the migration bookkeeping only. Run after every migrate, so tables added later are covered."""
    found = connection.execute(
        text("SELECT rolname = current_user AS is_me FROM pg_roles WHERE rolname = :role"), {"role": role}
    ).first()
    if found is None:
        raise MigrationError(
            f"CHAT_API_DB_RUNTIME_ROLE: role {role!r} does not exist "
            "(declare it in the database cluster: CloudNativePG managed.roles, or a pgo user)"
        )
    if found.is_me:
        raise MigrationError(f"CHAT_API_DB_RUNTIME_ROLE: {role!r} is the migrating role itself")
    quoted = connection.dialect.identifier_preparer.quote(role)
    bookkeeping = ", ".join(sorted(BOOKKEEPING_TABLES))
    for statement in (
        f"GRANT USAGE ON SCHEMA public TO {quoted}",
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {quoted}",
        f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {quoted}",
        f"REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON {bookkeeping} FROM {quoted}",
    ):
        connection.execute(text(statement))
    connection.commit()


async def _take_lock(connection: AsyncConnection) -> None:
    """Takes the migration lock, trying again every LOCK_POLL_SECONDS. Not by waiting in
    pg_advisory_lock(): a session waiting inside a statement holds a snapshot, and CREATE INDEX
    CONCURRENTLY in the migrating session waits for every such snapshot: a deadlock."""
    waiting = False
    while True:
        taken = (await connection.execute(text(_TRY_LOCK), {"key": MIGRATION_LOCK_KEY})).scalar()
        await connection.commit()
        if taken:
            return
        if not waiting:
            log.info("waiting for another chat-api migrate to finish")
            waiting = True
        await asyncio.sleep(LOCK_POLL_SECONDS)


async def _migrate_locked(connection: AsyncConnection, target: str | None, runtime_role: str | None) -> str:
    """A second concurrent caller waits for the lock, then finds nothing to do."""
    await _take_lock(connection)
    try:
        done = await connection.run_sync(_run, target)
        if runtime_role is not None:
            await connection.run_sync(grant_runtime_role, runtime_role)
        return done
    except BaseException:
        # A failed statement leaves the transaction aborted: without a rollback the unlock below
        # fails too ("current transaction is aborted") and its error replaces the real one (e.g.
        # "permission denied for schema public") in the Job's log. The lock is a session lock: the
        # rollback keeps it for the unlock.
        await connection.rollback()
        raise
    finally:
        await connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK_KEY})
        await connection.commit()


async def migrate(settings: Settings, target: str | None = None) -> str:
    """Upgrades to head (or moves to `target`), then grants the runtime role if one is configured."""
    engine = new_engine(settings)
    try:
        async with engine.connect() as connection:
            done = await _migrate_locked(connection, target, settings.db_runtime_role)
    finally:
        await engine.dispose()
    log.info("%s", done)
    return done
