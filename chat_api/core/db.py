"""The database: SQLAlchemy's async engine owns the schema (models, Alembic) and the connection pool
(connected the way the settings say); queries are hand-written SQL run on the pooled asyncpg
connection, because SQLAlchemy's per-statement machinery costs more than the statement itself on
the hot paths (see bench/ and the README's Performance section)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Annotated, Any

import asyncpg
from fastapi import Depends, Request
from sqlalchemy import DateTime, MetaData, event
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.pool import QueuePool

from chat_api.core.config import Settings

# Constraint names are part of the schema that migrations refer to: keep them predictable.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


# The newest migration (migrations/versions), which this code needs: /readyz is not ready until the
# database is at it. Kept here rather than asked of Alembic, whose import would slow start-up;
# tests/test_migrations.py checks that it is Alembic's head.
SCHEMA_REVISION = "0006"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: DateTime(timezone=True)}  # noqa: RUF012 - SQLAlchemy's own hook


# Every connection speaks UTC (a startup parameter PgBouncer passes on). The limit on sessions idle
# inside a transaction, which would hold back the event stream's horizon (see events/log.py), is a
# database default set by migration 0002: PgBouncer refuses it as a startup parameter.
SERVER_SETTINGS = {"TimeZone": "UTC"}


def connect_args(settings: Settings) -> dict[str, Any]:
    """asyncpg connect() arguments that do not depend on where we connect."""
    args: dict[str, Any] = {
        "server_settings": dict(SERVER_SETTINGS),
        "command_timeout": settings.db_timeout,
        # Connecting is bounded too (asyncpg waits 60 s by default, e.g. for a database that hangs);
        # a connect_timeout in the URL wins (it is applied per connection, after these).
        "timeout": settings.db_timeout,
    }
    if not settings.db_statement_cache:
        # Behind PgBouncer in transaction mode a prepared statement may land on another server
        # connection: no cache, and a unique name for each statement (SQLAlchemy asyncpg docs).
        args["statement_cache_size"] = 0
        args["prepared_statement_cache_size"] = 0
        args["prepared_statement_name_func"] = lambda: f"__asyncpg_{uuid.uuid4()}__"
    return args


def new_engine(settings: Settings) -> AsyncEngine:
    settings.require_database()
    engine = create_async_engine(
        "postgresql+asyncpg://",
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_pool_max_overflow,
        pool_timeout=settings.db_timeout,
        pool_pre_ping=False,
        pool_recycle=1800,
        # Errors must not carry statement parameters (message bodies) into logs and telemetry.
        hide_parameters=True,
        connect_args=connect_args(settings),
    )

    @event.listens_for(engine.sync_engine, "do_connect")
    def _target_per_connection(dialect: Any, conn_rec: Any, cargs: Any, cparams: dict[str, Any]) -> None:
        # Read where to connect for every new connection: with DATABASE_URL_FILE a rotated password
        # (CloudNativePG rewrites the mounted secret) is used without a restart.
        cparams.update(settings.database_target().connect_kwargs())

    return engine


# async, though it awaits nothing: FastAPI runs plain `def` dependencies in a thread pool.
async def _engine(request: Request) -> AsyncEngine:
    engine: AsyncEngine = request.app.state.engine
    return engine


DbEngine = Annotated[AsyncEngine, Depends(_engine)]


# Failures that mean the connection itself is unusable: it must not go back to the pool.
CONNECTION_LOST = (
    asyncpg.exceptions.PostgresConnectionError,  # class 08, e.g. ConnectionDoesNotExistError
    # The server ends the session: shutdown, crash restart, not accepting connections yet.
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.InterfaceError,
    # The protocol is stuck mid-message, e.g. a FATAL that arrived while the connection was idle.
    asyncpg.exceptions.InternalClientError,
    ConnectionError,
    TimeoutError,
)


@asynccontextmanager
async def connection(engine: AsyncEngine) -> AsyncIterator[asyncpg.Connection]:
    """A pooled connection as the asyncpg connection. Run statements with `$n` parameters and
    explicit `async with conn.transaction():` blocks; a connection that broke meanwhile is dropped
    from the pool instead of being handed out again."""
    # One deadline for the database work of a `connection()` block, from asking for a connection to
    # giving it back: CHAT_API_DB_TIMEOUT (the pool's timeout). Waiting for the pool, connecting and
    # replacing dead connections share it (else a wait for the pool could be followed by a connect
    # timeout), and the statements get what is left (see `cut`).
    loop = asyncio.get_running_loop()
    timeout = engine.pool.timeout() if isinstance(engine.pool, QueuePool) else None
    deadline = None if timeout is None else loop.time() + timeout
    async with contextlib.AsyncExitStack() as stack:
        async with asyncio.timeout_at(deadline):
            pooled = await stack.enter_async_context(engine.connect())
            # Just checked out, so the driver connection is there: read it directly rather than by
            # SQLAlchemy's awaitable accessor, a greenlet switch on every request.
            raw = pooled.sync_connection.connection.driver_connection  # type: ignore[union-attr]  # started
            # A database restart closes every pooled connection at once: drop each dead one (the
            # pool connects afresh in its place) until a live one comes, not just the first.
            while raw is None or raw.is_closed():
                await pooled.invalidate()
                raw = (await pooled.get_raw_connection()).driver_connection
        # At the deadline the connection is cut: a statement in flight fails at once, and so does the
        # ROLLBACK after it, which on a hung server would wait as long again for asyncpg's cancel.
        cut = None if deadline is None else loop.call_at(deadline, raw.terminate)
        try:
            yield raw
        except CONNECTION_LOST:
            # No goodbye on a broken connection: SQLAlchemy would wait up to 2 s for a hung server.
            raw.terminate()
            await pooled.invalidate()
            raise
        finally:
            if cut is not None:
                cut.cancel()
