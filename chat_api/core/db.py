"""The database: one `Database` per process owns an asyncpg pool, connected the way the settings say
(the URL and password files re-read for every new connection, TLS, the statement cache off behind
PgBouncer). Services take a `Database` and run hand-written SQL on its connections; this module is
also where driver errors that mean "the database is gone" become `DatabaseUnavailable` (a 503).

A `connection()` block has one deadline, CHAT_API_DB_TIMEOUT, from asking for a connection to giving
it back: waiting for the pool, connecting and the statements share it, and at the deadline the
connection is cut (a statement in flight fails at once, and so does anything after it), instead of
waiting as long again for asyncpg's cancel on a hung server.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any

import asyncpg
from fastapi import Depends, Request

from chat_api.core.config import Settings

# Every connection speaks UTC (a startup parameter PgBouncer passes on). The limit on sessions idle
# inside a transaction, which would hold back the event stream's horizon (see events/log.py), is a
# database default set by migration 0002: PgBouncer refuses it as a startup parameter.
SERVER_SETTINGS = {"TimeZone": "UTC"}
# Idle pooled connections are closed after this; the pool connects again when it needs one.
IDLE_CONNECTION_SECONDS = 300.0
CLOSE_SECONDS = 5.0


class DatabaseUnavailable(Exception):
    """The database cannot be reached in time, or went away under the request (restart, crash,
    shutdown, a broken connection): the request may be retried. Answered 503 (core/errors.py)."""


# Driver errors that mean the database, not the request, is the problem: the connection broke
# (class 08), the server is shutting down, crashed or still starting (57P01-57P03), a FATAL reached
# an idle connection and left its protocol mid-message (InternalClientError), the network failed, or
# the deadline passed.
_UNAVAILABLE = (
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.InternalClientError,
    ConnectionError,
    TimeoutError,
    OSError,
)


def _unavailable(exc: BaseException) -> bool:
    if isinstance(exc, _UNAVAILABLE):
        return True
    # "connection is closed", "...: the underlying connection is closed": the connection broke (or
    # was cut at the deadline) under the request. Any other InterfaceError is a bug.
    return isinstance(exc, asyncpg.exceptions.InterfaceError) and "connection is closed" in str(exc)


def connect_options(settings: Settings) -> dict[str, Any]:
    """asyncpg connect() arguments that do not depend on where we connect."""
    options: dict[str, Any] = {
        "server_settings": dict(SERVER_SETTINGS),
        "command_timeout": settings.db_timeout,
        # Connecting is bounded too (asyncpg waits 60 s by default); a connect_timeout in the URL wins.
        "timeout": settings.db_timeout,
    }
    if not settings.db_statement_cache:
        # Behind PgBouncer in transaction mode a prepared statement may land on another server
        # connection: without a cache asyncpg prepares each statement unnamed, in its own round trip.
        options["statement_cache_size"] = 0
    return options


async def connect(settings: Settings, **extra: Any) -> asyncpg.Connection:
    """One connection where the settings say now (files re-read: a rotated password is used)."""
    return await asyncpg.connect(
        **{**connect_options(settings), **settings.database_target().connect_kwargs(), **extra}
    )


async def _reset(connection: asyncpg.Connection) -> None:
    # Instead of asyncpg's default reset on every release (a round trip running RESET ALL, UNLISTEN,
    # CLOSE ALL, unlocking advisory locks): the service leaves no session state behind, so only a
    # transaction left open by an error has to go.
    if connection.is_in_transaction():
        await connection.execute("ROLLBACK")


def _terminate(conn: asyncpg.Connection) -> None:
    # A connection cut at its deadline has already gone back to the pool, which dropped it.
    with contextlib.suppress(asyncpg.exceptions.InterfaceError):
        conn.terminate()


class Database:
    """The process's connection pool. `open()` in the lifespan (it connects to nothing yet: start-up
    never waits for the database), `close()` at the end."""

    def __init__(self, settings: Settings) -> None:
        settings.require_database()
        self.settings = settings
        self.timeout = settings.db_timeout
        self._pool: asyncpg.Pool | None = None
        # Called by `committed()`: the lifespan sets it to the event stream's doorbell
        # (chat_api/events/doorbell.py); with none (a bare Database) hubs find writes by their idle check.
        self.on_commit: Callable[[], None] | None = None

    async def open(self) -> None:
        self._pool = await asyncpg.create_pool(
            min_size=0,
            max_size=self.settings.db_pool_size + self.settings.db_pool_max_overflow,
            max_inactive_connection_lifetime=IDLE_CONNECTION_SECONDS,
            connect=self._connect,
            reset=_reset,
        )

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), CLOSE_SECONDS)
            except TimeoutError:
                pool.terminate()

    async def _connect(self, *args: Any, **kwargs: Any) -> asyncpg.Connection:
        # The pool's connect hook: where to connect is read for every new connection.
        return await connect(
            self.settings, connection_class=kwargs["connection_class"], record_class=kwargs["record_class"]
        )

    def committed(self) -> None:
        """A write that streams may show has just committed: ring the doorbell (never raises, never
        waits; see chat_api/events/doorbell.py). Call it after the transaction, never inside it."""
        if self.on_commit is not None:
            self.on_commit()

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("the database is not open")
        return self._pool

    def connections(self) -> tuple[int, int]:
        """(in use, idle) connections of the pool, for the metrics."""
        if self._pool is None:
            return 0, 0
        idle = self._pool.get_idle_size()
        return self._pool.get_size() - idle, idle

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection. Run statements with `$n` parameters; a block that must be atomic uses
        `transaction()` (or `async with conn.transaction():`). Raises DatabaseUnavailable."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        try:
            async with asyncio.timeout_at(deadline):
                conn = await self.pool.acquire()
        except BaseException as exc:
            if _unavailable(exc):
                raise DatabaseUnavailable(type(exc).__name__) from exc
            raise
        cut = loop.call_at(deadline, _terminate, conn)
        try:
            yield conn
        except BaseException as exc:
            if _unavailable(exc):
                _terminate(conn)  # no goodbye on a broken connection: the pool drops it
                raise DatabaseUnavailable(type(exc).__name__) from exc
            raise
        finally:
            try:
                # Still under the deadline: a ROLLBACK on a hung server is cut too.
                await self.pool.release(conn)
            finally:
                cut.cancel()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection inside a transaction, committed when the block ends (rolled back on
        an error)."""
        async with self.connection() as conn, conn.transaction():
            yield conn


# async, though it awaits nothing: FastAPI runs plain `def` dependencies in a thread pool.
async def _database(request: Request) -> Database:
    database: Database = request.state.database
    return database


DatabaseDep = Annotated[Database, Depends(_database)]
