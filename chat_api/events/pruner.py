"""Keeps the event log to its retention: periodically in the service, or once with `chat-api prune`."""

from __future__ import annotations

import asyncio
import logging

from sqlalchemy.ext.asyncio import AsyncEngine

from chat_api.core.config import Settings
from chat_api.core.db import connection
from chat_api.events.reader import prune

log = logging.getLogger("chat_api.events")

PRUNE_LOCK_KEY = 0x63686174_70727565  # "chat" "prue": one replica prunes at a time


async def prune_once(settings: Settings, engine: AsyncEngine) -> int | None:
    """Prunes unless another replica is doing it right now (then None)."""
    async with connection(engine) as conn:
        if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", PRUNE_LOCK_KEY):
            return None
        try:
            return await prune(engine, settings.event_retention_seconds)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", PRUNE_LOCK_KEY)


async def prune_periodically(settings: Settings, engine: AsyncEngine) -> None:
    while True:
        await asyncio.sleep(settings.event_prune_interval_seconds)
        try:
            deleted = await prune_once(settings, engine)
        except Exception as exc:  # the database may be away; try again next time
            log.warning("pruning the event log failed: %s", type(exc).__name__)
            continue
        if deleted:
            log.info("pruned %d events older than %d s", deleted, settings.event_retention_seconds)
