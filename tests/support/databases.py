"""Throwaway databases on the tests' PostgreSQL server: created empty, dropped afterwards."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator

import asyncpg

from tests.support.settings import with_database


@contextlib.asynccontextmanager
async def throwaway_database(admin_url: str, prefix: str) -> AsyncIterator[str]:
    """An empty database of its own (named `prefix_<random>`), dropped with its sessions afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield with_database(admin_url, name)
        finally:
            await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    finally:
        await admin.close()
