"""Alembic environment: `chat-api migrate` hands in a locked connection; plain `alembic` makes one.

Every run through here keeps the record of applied revisions that readiness reads
(chat_api/core/migrations.py): each migration records its own revision in its own transaction.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import Connection, text

import chat_api.events.models
import chat_api.messages.models
import chat_api.rooms.models  # noqa: F401 - registers the tables on Base.metadata
from chat_api.core.migrations import include_name, prepare_history, record_step
from chat_api.core.schema import Base

target_metadata = Base.metadata

# A migration that waits longer than this for a table lock gives up (the Job retries) rather than
# queue every request of the running release behind its ALTER TABLE.
LOCK_TIMEOUT = "5s"


def run_with(connection: Connection) -> None:
    connection.execute(text(f"SET lock_timeout = '{LOCK_TIMEOUT}'"))
    prepare_history(connection, context.script)
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        transaction_per_migration=True,
        include_name=include_name,
        on_version_apply=record_step,
    )
    with context.begin_transaction():
        context.run_migrations()
    connection.execute(text("RESET lock_timeout"))


async def run_standalone() -> None:
    # Plain `alembic` from a checkout (revision --autogenerate, history, ...); upgrades belong to
    # `chat-api migrate`, which also takes the advisory lock and grants the runtime role.
    from chat_api.core.config import load_settings
    from chat_api.core.migrations import new_engine

    engine = new_engine(load_settings())
    try:
        async with engine.connect() as connection:
            await connection.run_sync(run_with)
            await connection.commit()
    finally:
        await engine.dispose()


connection = context.config.attributes.get("connection")
if connection is not None:
    run_with(connection)
elif context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported")
else:
    asyncio.run(run_standalone())
