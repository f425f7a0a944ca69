"""Schema migrations: Alembic upgrade to head under an advisory lock, and the head for /readyz."""

from __future__ import annotations

from functools import cache
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, text
from sqlalchemy.ext.asyncio import AsyncConnection

import chat_api
from chat_api.core.config import Settings
from chat_api.core.db import new_engine

# Any constant works as long as every replica uses the same one: `chat-api migrate` runs in a Job
# that may overlap another (a re-sync, a second replica of an init step).
MIGRATION_LOCK_KEY = 0x63686174_61706900  # "chat" "api\0"


def migrations_dir() -> Path:
    package = Path(chat_api.__file__).parent
    installed = package / "_migrations"  # where the wheel puts them
    return installed if installed.is_dir() else package.parent / "migrations"


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    return config


@cache
def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def _upgrade(connection: Connection) -> None:
    config = alembic_config()
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


async def upgrade_locked(connection: AsyncConnection) -> None:
    """Upgrades to head; a second concurrent caller waits for the lock, then finds nothing to do."""
    await connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
    await connection.commit()
    try:
        await connection.run_sync(_upgrade)
    finally:
        await connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK_KEY})
        await connection.commit()


async def migrate(settings: Settings) -> None:
    engine = new_engine(settings)
    try:
        async with engine.connect() as connection:
            await upgrade_locked(connection)
    finally:
        await engine.dispose()
