"""Alembic environment: `chat-api migrate` hands in a locked connection; plain `alembic` makes one."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import Connection

import chat_api.events.models
import chat_api.messages.models
import chat_api.rooms.models  # noqa: F401 - registers the tables on Base.metadata
from chat_api.core.db import Base

target_metadata = Base.metadata


def run_with(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata, transaction_per_migration=True)
    with context.begin_transaction():
        context.run_migrations()


async def run_standalone() -> None:
    # Plain `alembic` from a checkout (revision --autogenerate, history, ...); upgrades belong to
    # `chat-api migrate`, which also takes the advisory lock.
    from chat_api.core.config import load_settings
    from chat_api.core.db import new_engine

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
