"""Keeps the event log to its retention: periodically in the service, or once with `chat-api prune`."""

from __future__ import annotations

import asyncio
import logging

from chat_api.core.config import Settings
from chat_api.core.db import Database
from chat_api.events.reader import prune

log = logging.getLogger("chat_api.events")


async def prune_periodically(settings: Settings, db: Database) -> None:
    while True:
        await asyncio.sleep(settings.event_prune_interval_seconds)
        try:
            deleted = await prune(db, settings.event_retention_seconds)
        except Exception as exc:  # the database may be away; try again next time
            log.warning("pruning the event log failed: %s", type(exc).__name__)
            continue
        if deleted:
            log.info("pruned %d events older than %d s", deleted, settings.event_retention_seconds)


async def prune_once(settings: Settings) -> int:
    """One pass, with a pool of its own (`chat-api prune`); how many events were deleted."""
    db = Database(settings)
    await db.open()
    try:
        return await prune(db, settings.event_retention_seconds)
    finally:
        await db.close()
